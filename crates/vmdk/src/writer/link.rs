//! Delta links: a monolithicSparse image holding only the grains that changed, on top of a
//! parent VMDK (parentFileNameHint + parentCID), readable by qemu-img and VMware as the new disk.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use vdisk_core::{is_zero, DiskImage, Error, Result, SECTOR};

use super::{OutputFiles, SparseImage, Subformat, WriteOptions, GRAIN_SECTORS};
use crate::VmdkImage;

/// Called with every grain a link writer reads from the new image: (grain index, bytes).
pub type GrainHook<'a> = dyn Fn(u64, &[u8]) + Sync + 'a;

/// Where and how a delta link is written: its parent and its format.
#[derive(Clone, Copy)]
pub struct LinkTarget<'a> {
    /// The parent's file (the link names it in parentFileNameHint).
    pub parent_path: &'a Path,
    /// The parent, opened.
    pub parent: &'a VmdkImage,
    /// monolithicSparse or twoGbMaxExtentSparse.
    pub subformat: Subformat,
    /// Overwrite, adapter, CID.
    pub opts: &'a WriteOptions,
    /// Sees every grain read, e.g. to hash it on the way.
    pub on_grain: Option<&'a GrainHook<'a>>,
}

/// What writing a link did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Grains stored with data.
    pub data_grains: u64,
    /// Grains stored as zeroed grains (zero now, not zero in the parent).
    pub zeroed_grains: u64,
    /// Bytes read from the new image.
    pub bytes_read: u64,
}

/// Grains read in parallel before they are written.
const BATCH: usize = 256;

/// The parentFileNameHint for a link at `dst` whose parent is `parent`: the file name when
/// both are in the same folder, otherwise the parent's absolute path (which readers then only
/// follow when told to, since it leaves the link's folder).
fn parent_hint(dst: &Path, parent: &Path) -> Result<PathBuf> {
    let canon = |p: &Path| {
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::canonicalize(dir)
            .map_err(|e| Error::io("cannot resolve the folder of", e).with_path(p))
    };
    let parent_dir = canon(parent)?;
    let name = parent
        .file_name()
        .ok_or_else(|| Error::invalid("parent has no file name").with_path(parent))?;
    if canon(dst)? == parent_dir {
        Ok(PathBuf::from(name))
    } else {
        Ok(parent_dir.join(name))
    }
}

/// Write a delta link at `dst` (monolithicSparse, or twoGbMaxExtentSparse with a separate
/// descriptor) on `link.parent`, holding every grain of `new` that touches a range of
/// `changed` (`(start, length)` in bytes, sorted). The link reads as `new` wherever `changed`
/// covers every difference between `new` and the parent.
///
/// A changed grain that is all zero is left out when the parent reads as zero there too, and
/// written as a zeroed grain otherwise. The link's size is `new`'s size.
pub fn write_delta_link(
    link: &LinkTarget<'_>,
    new: &dyn DiskImage,
    changed: &[(u64, u64)],
    dst: &Path,
) -> Result<LinkStats> {
    let LinkTarget {
        parent_path,
        parent,
        subformat,
        opts,
        on_grain,
    } = *link;
    let split = match subformat {
        Subformat::MonolithicSparse => false,
        Subformat::TwoGbMaxExtentSparse => true,
        other => {
            return Err(Error::new(
                vdisk_core::ErrorKind::InvalidArgument,
                format!("delta links are sparse: {} cannot be one", other.name()),
            )
            .with_path(dst))
        }
    };
    let parent_cid = parent.layers()[0]
        .descriptor()
        .cid
        .ok_or_else(|| Error::invalid("parent has no CID to link to").with_path(parent_path))?;
    let hint = parent_hint(dst, parent_path)?;
    let size = new.size();
    let sectors = size.div_ceil(SECTOR);
    let files = OutputFiles::new(dst, opts.overwrite);
    let mut out = SparseImage::create(files, sectors, split, opts, Some((parent_cid, hint)))?;

    let gb = GRAIN_SECTORS * SECTOR;
    let grains = changed.iter().flat_map(|&(start, len)| {
        let first = start / gb;
        let end = start.saturating_add(len).min(size).div_ceil(gb);
        first..end.max(first)
    });
    let mut stats = LinkStats::default();
    let mut batch: Vec<u64> = Vec::with_capacity(BATCH);
    let mut last: Option<u64> = None;
    let flush =
        |batch: &mut Vec<u64>, ext: &mut SparseImage, stats: &mut LinkStats| -> Result<()> {
            let read: Vec<(u64, Vec<u8>, bool)> = batch
                .par_iter()
                .map(|&g| {
                    let off = g * gb;
                    let len = gb.min(size - off);
                    let mut buf = vec![0u8; len as usize];
                    new.read_at(&mut buf, off)?;
                    if let Some(f) = on_grain {
                        f(g, &buf);
                    }
                    let mask = if is_zero(&buf) {
                        !parent_reads_zero(parent, off, len)?
                    } else {
                        false
                    };
                    Ok((g, buf, mask))
                })
                .collect::<Result<_>>()?;
            for (g, buf, mask) in read {
                stats.bytes_read += buf.len() as u64;
                if !is_zero(&buf) {
                    ext.put_grain(g, &buf)?;
                    stats.data_grains += 1;
                } else if mask {
                    ext.put_zero(g)?;
                    stats.zeroed_grains += 1;
                }
            }
            batch.clear();
            Ok(())
        };
    for g in grains {
        // Ranges may share a grain; grains come in order because ranges are sorted.
        if last.is_some_and(|l| g <= l) {
            continue;
        }
        last = Some(g);
        batch.push(g);
        if batch.len() == BATCH {
            flush(&mut batch, &mut out, &mut stats)?;
        }
    }
    flush(&mut batch, &mut out, &mut stats)?;
    out.finish_image()?;
    Ok(stats)
}

/// Whether `parent` reads as zero over `len` bytes at `off` without storing data there
/// (past its end counts as zero).
fn parent_reads_zero(parent: &VmdkImage, off: u64, len: u64) -> Result<bool> {
    let psize = parent.size();
    if off >= psize {
        return Ok(true);
    }
    let len = len.min(psize - off);
    Ok(parent
        .allocation(off, len)?
        .iter()
        .all(|e| e.reads_as_zero()))
}
