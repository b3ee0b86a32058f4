//! Converting images: any image vdisk reads to a raw file, a device, or any VMDK subformat.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use vdisk_core::{copy_into, CopyOptions, CopyStats, DiskImage, ImageSink, Result, Throttle};
use vdisk_raw::{OutputPolicy, Protected, RawSink};
use vdisk_vmdk::writer::{self, Adapter, Subformat, WriteOptions};
use vdisk_vmdk::StreamReader;

/// What a conversion writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// A raw image: a sparse file, or a device written in place.
    #[default]
    Raw,
    /// A VMDK of this subformat.
    Vmdk(Subformat),
}

/// How a conversion writes and reads.
#[derive(Default, Clone)]
pub struct ConvertOptions<'a> {
    /// What happens to an existing destination. The source's files are always protected:
    /// an output never replaces an input.
    pub policy: OutputPolicy,
    /// The adapter type recorded in a VMDK output.
    pub adapter: Adapter,
    /// Read-rate limit.
    pub throttle: Option<&'a Throttle>,
    /// Called with bytes of virtual disk done, from any thread.
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
}

impl ConvertOptions<'_> {
    fn copy(&self) -> CopyOptions<'_> {
        CopyOptions {
            throttle: self.throttle,
            progress: self.progress,
        }
    }
}

/// The policy of `opts`, protecting `img`'s files as well.
fn protecting(opts: &ConvertOptions<'_>, img: &dyn DiskImage) -> OutputPolicy {
    let mut protected: Protected = (*opts.policy.protected).clone();
    protected.add_image(img);
    OutputPolicy {
        existing: opts.policy.existing,
        protected: Arc::new(protected),
    }
}

/// Start writing a `target` image of `size` bytes at `dst`: a raw file or device, or a VMDK.
pub fn create_sink(
    dst: &Path,
    size: u64,
    target: Target,
    opts: &ConvertOptions<'_>,
) -> Result<Box<dyn ImageSink>> {
    Ok(match target {
        Target::Raw => Box::new(RawSink::create(dst, size, &opts.policy)?),
        Target::Vmdk(sub) => {
            let wopts = WriteOptions {
                policy: opts.policy.clone(),
                adapter: opts.adapter,
                cid: None,
            };
            writer::create(dst, size, sub, &wopts)?
        }
    })
}

/// Convert `img` to `target` at `dst`, with default options: an existing `dst` is refused.
///
/// ```
/// use vdisk::{DiskImage, Target};
/// let dir = tempfile::tempdir()?;
/// let img = vdisk::open("fixtures/chain/top.vmdk")?;
/// let out = dir.path().join("disk.raw");
/// vdisk::convert(&img, &out, Target::Raw)?;
/// assert_eq!(vdisk::open(&out)?.size(), img.size());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn convert(img: &dyn DiskImage, dst: impl AsRef<Path>, target: Target) -> Result<CopyStats> {
    convert_with(img, dst, target, &ConvertOptions::default())
}

/// Convert `img` to `target` at `dst`. Nothing appears at `dst` until the whole image is
/// written and synced (a device is written in place). `dst` is refused when it is one of
/// `img`'s files, whatever the policy.
pub fn convert_with(
    img: &dyn DiskImage,
    dst: impl AsRef<Path>,
    target: Target,
    opts: &ConvertOptions<'_>,
) -> Result<CopyStats> {
    let opts = ConvertOptions {
        policy: protecting(opts, img),
        ..opts.clone()
    };
    let sink = create_sink(dst.as_ref(), img.size(), target, &opts)?;
    copy_into(img, sink, &opts.copy())
}

/// Convert a streamOptimized VMDK read front to back from `input` (a pipe, standard input)
/// to `target` at `dst`. A stream that stops before its end is an error, and nothing is
/// written.
pub fn convert_stream(
    input: impl Read,
    dst: impl AsRef<Path>,
    target: Target,
    opts: &ConvertOptions<'_>,
) -> Result<CopyStats> {
    let reader = StreamReader::new(input)?;
    let sink = create_sink(dst.as_ref(), reader.capacity(), target, opts)?;
    reader.copy_into(sink, &opts.copy())
}
