//! Converting: any image vdisk reads, written in any format it writes; collapsing chains.

use std::path::Path;
use std::sync::Arc;

use vdisk_core::{
    copy_into, walk_map, Allocation, CopyOptions, CopyStats, DiskImage, Error, ErrorKind, Progress,
    Result, Throttle,
};
use vdisk_io::{CreateOptions, FileStore, Format, Protected};

use crate::chain::{open_chain, OpenOptions};
use crate::create::{create, write_delta, DeltaOptions};
use crate::image::Image;

/// How a conversion writes and reads.
#[derive(Default, Clone)]
pub struct ConvertOptions<'a> {
    /// The output's policy (an existing destination refused or replaced; the source's files
    /// are always protected besides) and the format's options.
    pub create: CreateOptions,
    /// Read-rate limit.
    pub throttle: Option<&'a Throttle>,
    /// Told of bytes read and of unallocated bytes passed over, from any thread.
    pub progress: Option<&'a dyn Progress>,
}

impl ConvertOptions<'_> {
    fn copy(&self) -> CopyOptions<'_> {
        CopyOptions {
            throttle: self.throttle,
            progress: self.progress,
        }
    }

    /// The create options, protecting `img`'s files as well.
    fn protecting(&self, img: &dyn DiskImage) -> CreateOptions {
        let mut protected: Protected = (*self.create.policy.protected).clone();
        protected.add_image(img);
        let mut create = self.create.clone();
        create.policy.protected = Arc::new(protected);
        create
    }
}

/// Convert `img` to `format` at `dst`. Nothing appears at `dst` until the whole image is
/// written and synced (a device is written in place). `dst` is refused when it is one of
/// `img`'s files, whatever the policy.
///
/// ```
/// use vdisk_core::DiskImage;
/// let dir = tempfile::tempdir()?;
/// let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/chain");
/// let img = vdisk_image::open(format!("{fixtures}/top.vmdk"))?;
/// let out = dir.path().join("disk.raw");
/// let raw = vdisk_image::registry::require("raw")?;
/// vdisk_image::convert(&img, &out, raw, &Default::default())?;
/// assert_eq!(std::fs::metadata(&out)?.len(), img.size());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn convert(
    img: &dyn DiskImage,
    dst: &Path,
    format: &'static dyn Format,
    opts: &ConvertOptions<'_>,
) -> Result<CopyStats> {
    let sink = create(dst, format, img.size(), &opts.protecting(img))?;
    copy_into(img, sink, &opts.copy())
}

/// Convert a streamOptimized VMDK read front to back from `input` (a pipe, standard input) to
/// `format` at `dst`. A stream that stops before its end is an error, and nothing is
/// written.
#[cfg(feature = "vmdk")]
pub fn convert_stream(
    input: impl std::io::Read,
    dst: &Path,
    format: &'static dyn Format,
    opts: &ConvertOptions<'_>,
) -> Result<CopyStats> {
    let reader = vdisk_vmdk::StreamReader::new(input)?;
    let sink = create(dst, format, reader.capacity(), &opts.create)?;
    reader.copy_into(sink, &opts.copy())
}

/// Hand `f` every range layer `depth` of `img` itself stores (data or explicit zeros), up to
/// the smaller of its size and the image's.
pub fn for_each_stored(
    img: &Image,
    depth: usize,
    mut f: impl FnMut(u64, u64) -> Result<()>,
) -> Result<()> {
    let layer = img
        .layers()
        .get(depth)
        .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, "no such layer"))?;
    let size = layer.size().min(img.size());
    walk_map(
        size,
        |off, len| layer.allocation(off, len),
        |e| {
            if e.allocation == Allocation::Unallocated {
                Ok(())
            } else {
                f(e.start, e.length)
            }
        },
    )
}

/// Collapse the chain of `img` into `out`.
///
/// Without `base`, `out` is a standalone image (no backing file) in `format` that reads like
/// the chain. With `base` (a file of the chain), the layers above it become one delta at
/// `out` whose parent is `base` (in `format`, or the base's format when `format` is raw);
/// `base` and the layers below it are not touched.
pub fn merge(
    img: &Image,
    out: &Path,
    base: Option<&Path>,
    format: &'static dyn Format,
    open: &OpenOptions,
    opts: &ConvertOptions<'_>,
) -> Result<CopyStats> {
    let Some(base) = base else {
        return convert(img, out, format, opts);
    };
    let store = open.store();
    let want = store.identity(base)?;
    let depth = img
        .layers()
        .iter()
        .position(|l| store.identity(l.path()).is_ok_and(|id| id == want))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("is not a link of the chain of {}", img.path().display()),
            )
            .with_path(base)
        })?;
    if depth == 0 {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "is the image itself: there are no layers above it to merge",
        )
        .with_path(base));
    }
    // Every range any layer above the base stores (data or explicit zeros).
    let mut changed: Vec<(u64, u64)> = Vec::new();
    for d in 0..depth {
        for_each_stored(img, d, |s, l| {
            changed.push((s, l));
            Ok(())
        })?;
    }
    changed.sort_unstable();
    let base_path = img.layers()[depth].path().to_path_buf();
    let parent = open_chain(&store, &base_path, open)?;
    let delta_format = (format.name() != "raw").then_some(format);
    let stats = write_delta(
        &parent,
        img,
        changed,
        out,
        &DeltaOptions {
            format: delta_format,
            create: opts.protecting(img),
            on_block: None,
        },
    )?;
    Ok(CopyStats {
        size: img.size(),
        bytes_read: stats.bytes_read,
    })
}
