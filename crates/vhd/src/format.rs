//! The VHD format's driver: detection, opening, and outputs (fixed, dynamic, differencing).

use std::path::Path;

use vdisk_core::{Error, ErrorKind, ImageSink, Result};
use vdisk_io::{Bytes, CreateOptions, DeltaParent, Format, Layer, OpenContext, ProbeBytes};

use crate::footer::{footer_at_end, FOOTER_COOKIE};
use crate::image::{VhdImage, LINK_KIND};
use crate::uuid::Uuid;
use crate::write::{vhd_time_of, DynamicSink, FixedSink, NewParent};

/// The VHD format (Virtual PC, Hyper-V, Azure; qemu's `vpc`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Vhd;

/// The VHD format's driver.
pub static VHD: Vhd = Vhd;

/// Whether `bytes` look like a VHD: a footer copy at offset 0 (dynamic and differencing
/// disks; qemu's test), or an intact fixed-disk footer at the end (fixed disks, which qemu
/// only opens when told the format: their data is the disk's own, from offset 0).
///
/// ```
/// use vdisk_io::ProbeBytes;
/// let mut head = vec![0u8; 4096];
/// head[..8].copy_from_slice(b"conectix");
/// assert!(vdisk_vhd::probe(&ProbeBytes { head: &head, tail: &[], len: 1 << 20 }));
/// let raw = vec![0u8; 4096];
/// assert!(!vdisk_vhd::probe(&ProbeBytes { head: &raw, tail: &raw[..512], len: 4096 }));
/// ```
pub fn probe(bytes: &ProbeBytes<'_>) -> bool {
    if bytes.head.starts_with(FOOTER_COOKIE) {
        return true;
    }
    matches!(footer_at_end(bytes.tail), Some((f, _)) if f.disk_type == 2)
}

/// What [`CreateOptions`] ask of a new VHD: its type and block size.
fn subformat(dst: &Path, opts: &CreateOptions, delta: bool) -> Result<(bool, Option<u64>)> {
    let refuse = |m: String| Err(Error::new(ErrorKind::InvalidArgument, m).with_path(dst));
    if opts.compress {
        return refuse("a VHD cannot be compressed".into());
    }
    let fixed = match opts
        .subformat
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("dynamic") => false,
        Some("differencing") if delta => false,
        Some("fixed") if !delta => true,
        Some(other) => {
            let known = if delta {
                "a differencing disk is dynamic"
            } else {
                "fixed or dynamic"
            };
            return refuse(format!("no VHD subformat \"{other}\" ({known})"));
        }
    };
    if fixed && opts.cluster_size.is_some() {
        return refuse("a fixed VHD has no block size".into());
    }
    Ok((fixed, opts.cluster_size))
}

/// The unique id [`CreateOptions::link_id`] asks the new disk to keep.
fn kept_id(dst: &Path, opts: &CreateOptions) -> Result<Option<Uuid>> {
    match &opts.link_id {
        Some(l) if l.kind == LINK_KIND => Uuid::parse(&l.value).map(Some).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("\"{}\" is not a VHD unique id", l.value),
            )
            .with_path(dst)
        }),
        _ => Ok(None),
    }
}

/// What a new differencing disk records of `parent`: its unique id (when it is a VHD), its
/// modification time, and its names relative to `dst`'s folder and absolute.
pub fn new_parent(dst: &Path, parent: &DeltaParent<'_>) -> NewParent {
    let unique_id = parent
        .layer
        .link_id()
        .filter(|l| l.kind == LINK_KIND)
        .and_then(|l| Uuid::parse(&l.value))
        .unwrap_or(Uuid::NIL);
    let parent_path = parent.layer.path();
    let timestamp = std::fs::metadata(parent_path)
        .and_then(|m| m.modified())
        .map_or(0, vhd_time_of);
    let dir = dst.parent().unwrap_or(Path::new("."));
    let joined = if parent.name.is_absolute() {
        parent.name.to_path_buf()
    } else {
        dir.join(parent.name)
    };
    let absolute = std::fs::canonicalize(&joined)
        .or_else(|_| std::path::absolute(&joined))
        .unwrap_or(joined);
    NewParent {
        unique_id,
        timestamp,
        relative: parent.name.is_relative().then(|| parent.name.to_path_buf()),
        absolute,
    }
}

impl Format for Vhd {
    fn name(&self) -> &'static str {
        "vhd"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["vpc"]
    }

    fn extensions(&self) -> &'static [&'static str] {
        &["vhd"]
    }

    fn probe(&self, bytes: &ProbeBytes<'_>) -> bool {
        probe(bytes)
    }

    fn open(&self, bytes: Bytes, cx: &OpenContext<'_>) -> Result<Box<dyn Layer>> {
        Ok(Box::new(VhdImage::from_bytes_with(
            bytes,
            cx.allow_outside_paths,
        )?))
    }

    fn subformats(&self) -> &'static [&'static str] {
        &["dynamic", "fixed"]
    }

    fn writable(&self) -> bool {
        true
    }

    fn create(&self, dst: &Path, size: u64, opts: &CreateOptions) -> Result<Box<dyn ImageSink>> {
        let (fixed, block) = subformat(dst, opts, false)?;
        let id = kept_id(dst, opts)?;
        if fixed {
            Ok(Box::new(FixedSink::create(dst, size, &opts.policy, id)?))
        } else {
            Ok(Box::new(DynamicSink::create(
                dst,
                size,
                block,
                &opts.policy,
                id,
                None,
            )?))
        }
    }

    fn create_delta(
        &self,
        dst: &Path,
        parent: &DeltaParent<'_>,
        size: u64,
        opts: &CreateOptions,
    ) -> Result<Box<dyn ImageSink>> {
        let (_, block) = subformat(dst, opts, true)?;
        let id = kept_id(dst, opts)?;
        let p = new_parent(dst, parent);
        Ok(Box::new(DynamicSink::create(
            dst,
            size,
            block,
            &opts.policy,
            id,
            Some(&p),
        )?))
    }
}
