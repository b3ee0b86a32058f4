//! Creating outputs of any writable format, and deltas on any image.

use std::path::{Component, Path, PathBuf};

use vdisk_core::{DeltaStats, DeltaTarget, DiskImage, Error, ErrorKind, ImageSink, Result};
use vdisk_io::{CreateOptions, DeltaParent, Format, ImageOutput};

use crate::image::Image;
use crate::registry;

/// Refuse a format vdisk does not write.
fn writable(format: &'static dyn Format, dst: &Path) -> Result<&'static dyn Format> {
    if format.writable() {
        Ok(format)
    } else {
        Err(format.not_writable(dst))
    }
}

/// The format an output at `dst` is written in: `explicit` (`-O`) when given, which must not
/// contradict the extension of `dst` when that names another writable format; otherwise the
/// format `dst`'s extension names (`.vmdk`, `.qcow2`, …), raw for any other name.
///
/// ```
/// use vdisk_image::output_format;
/// assert_eq!(output_format("disk.vmdk".as_ref(), None)?.name(), "vmdk");
/// assert_eq!(output_format("disk.img".as_ref(), None)?.name(), "raw");
/// assert_eq!(output_format("/dev/sdb".as_ref(), Some("raw"))?.name(), "raw");
/// assert!(output_format("disk.vmdk".as_ref(), Some("raw")).is_err());
/// # Ok::<(), vdisk_core::Error>(())
/// ```
pub fn output_format(dst: &Path, explicit: Option<&str>) -> Result<&'static dyn Format> {
    let by_ext = dst.extension().and_then(|e| e.to_str()).and_then(|ext| {
        registry::formats()
            .iter()
            .copied()
            .find(|f| f.writable() && f.extensions().iter().any(|x| x.eq_ignore_ascii_case(ext)))
    });
    match explicit {
        Some(name) => {
            let f = registry::require(name).map_err(|e| e.with_path(dst))?;
            let f = writable(f, dst)?;
            match by_ext {
                Some(e) if e.name() != f.name() && e.name() != "raw" => Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "the name says {}, but the output format asked for is {}: rename the output or leave the format out",
                        e.name(),
                        f.name()
                    ),
                )
                .with_path(dst)),
                _ => Ok(f),
            }
        }
        None => Ok(by_ext.unwrap_or(&vdisk_raw::RAW)),
    }
}

/// Start writing an image of `size` bytes in `format` at `dst`.
pub fn create(
    dst: &Path,
    format: &'static dyn Format,
    size: u64,
    opts: &CreateOptions,
) -> Result<Box<dyn ImageSink>> {
    writable(format, dst)?.create(dst, size, opts)
}

/// Start writing an image of `size` bytes in `format` into `out` (a repository's files).
pub fn create_in(
    out: Box<dyn ImageOutput>,
    format: &'static dyn Format,
    size: u64,
    opts: &CreateOptions,
) -> Result<Box<dyn ImageSink>> {
    let f = writable(format, out.dst())?;
    f.create_in(out, size, opts)
}

/// How a delta at `dst` names its parent at `parent`: relative to the delta's folder when
/// the parent lies inside it (or in a folder below it), and the parent's absolute path
/// otherwise. The flag says whether the name is relative: an absolute one is followed only
/// with `--allow-outside-paths`.
pub fn parent_name(dst: &Path, parent: &Path) -> Result<(PathBuf, bool)> {
    let canon_dir = |p: &Path| {
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::canonicalize(dir)
            .map_err(|e| Error::io("cannot resolve the folder of", e).with_path(p))
    };
    let name = parent
        .file_name()
        .ok_or_else(|| Error::invalid("parent has no file name").with_path(parent))?;
    let parent_dir = canon_dir(parent)?;
    let delta_dir = canon_dir(dst)?;
    match parent_dir.strip_prefix(&delta_dir) {
        Ok(rel) if rel.components().all(|c| matches!(c, Component::Normal(_))) => {
            Ok((rel.join(name), true))
        }
        _ => Ok((parent_dir.join(name), false)),
    }
}

/// How a delta is written.
#[derive(Default)]
pub struct DeltaOptions<'a> {
    /// The delta's format (the parent's top format when `None`).
    pub format: Option<&'static dyn Format>,
    /// Output policy and the format's options.
    pub create: CreateOptions,
    /// Sees every block read from the new image.
    pub on_block: Option<&'a vdisk_core::BlockHook<'a>>,
}

/// Start writing at `dst` a delta of `size` bytes on `parent` (opened from the path the
/// delta will name, relative where it can be), in `format` (the parent's when `None`).
pub fn create_delta(
    dst: &Path,
    format: Option<&'static dyn Format>,
    parent: &Image,
    size: u64,
    opts: &CreateOptions,
) -> Result<Box<dyn ImageSink>> {
    let format = writable(format.unwrap_or(parent.format()), dst)?;
    let (name, _) = parent_name(dst, parent.path())?;
    format.create_delta(
        dst,
        &DeltaParent {
            name: &name,
            format: parent.format().name(),
            layer: parent.top(),
        },
        size,
        opts,
    )
}

/// Start writing into `out` (a repository's files) a delta of `size` bytes on `parent`,
/// which the delta names `parent_name`, in `format`.
pub fn create_delta_in(
    out: Box<dyn ImageOutput>,
    format: &'static dyn Format,
    parent: &Image,
    parent_name: &Path,
    size: u64,
    opts: &CreateOptions,
) -> Result<Box<dyn ImageSink>> {
    let format = writable(format, out.dst())?;
    format.create_delta_in(
        out,
        &DeltaParent {
            name: parent_name,
            format: parent.format().name(),
            layer: parent.top(),
        },
        size,
        opts,
    )
}

/// Write at `dst` a delta on `parent` holding the blocks of `new` that `changed` lists
/// (`(start, length)` in bytes, sorted): read through the delta, the disk is `new`.
pub fn write_delta(
    parent: &Image,
    new: &dyn DiskImage,
    changed: impl IntoIterator<Item = (u64, u64)>,
    dst: &Path,
    opts: &DeltaOptions<'_>,
) -> Result<DeltaStats> {
    let sink = create_delta(dst, opts.format, parent, new.size(), &opts.create)?;
    vdisk_core::write_delta(
        DeltaTarget {
            parent,
            new,
            sink,
            on_block: opts.on_block,
        },
        changed,
    )
}
