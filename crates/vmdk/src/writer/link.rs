//! Delta links: a monolithicSparse image holding only the grains that changed, on top of a
//! parent VMDK (parentFileNameHint + parentCID), readable by qemu-img and VMware as the new disk.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use vdisk_core::{is_zero, DiskImage, Error, Result, SECTOR};

use super::clustered::ClusteredImage;
use super::{ImageOutput, Layout, OutputFiles, SparseImage, WriteOptions, GRAIN_SECTORS};
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
    /// How the link's extents are laid out.
    pub layout: Layout,
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

/// The image a link is written as.
// One value per link written: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
enum LinkImage {
    Sparse(SparseImage),
    Clustered(ClusteredImage),
}

impl LinkImage {
    fn put_grain(&mut self, g: u64, data: &[u8]) -> Result<()> {
        match self {
            LinkImage::Sparse(i) => i.put_grain(g, data),
            LinkImage::Clustered(i) => i.put_grain(g, data),
        }
    }
    fn put_zero(&mut self, g: u64) -> Result<()> {
        match self {
            LinkImage::Sparse(i) => i.put_zero(g),
            LinkImage::Clustered(i) => i.put_zero(g),
        }
    }
    fn finish_image(self) -> Result<()> {
        match self {
            LinkImage::Sparse(i) => i.finish_image(),
            LinkImage::Clustered(i) => i.finish_image(),
        }
    }
}

/// What a link stores for one changed grain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GrainPlan {
    /// The grain's bytes.
    Data,
    /// A zeroed grain: zero now, not zero in the parent, so the parent must be masked.
    Zeroed,
    /// Nothing: zero now and zero in the parent.
    Skip,
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

/// Write a delta link at `dst` (in `link.layout`: monolithicSparse, twoGbMaxExtentSparse or
/// clustered) on `link.parent`, holding every grain of `new` that touches a range of
/// `changed` (`(start, length)` in bytes, sorted; a change map's `extents()` fits). The link
/// reads as `new` wherever `changed` covers every difference between `new` and the parent.
///
/// A changed grain that is all zero is left out when the parent reads as zero there too, and
/// written as a zeroed grain otherwise. The link's size is `new`'s size.
///
/// ```
/// use vdisk_core::{copy_into, CopyOptions, DiskImage, MemImage};
/// use vdisk_vmdk::writer::{self, write_delta_link, Layout, LinkTarget, Subformat, WriteOptions};
/// use vdisk_vmdk::VmdkImage;
///
/// const G: usize = 64 << 10; // the grain size of every sparse output
/// let dir = tempfile::tempdir()?;
/// let opts = WriteOptions::default();
///
/// // A parent of four grains of 1s, written from memory.
/// let old = vec![1u8; 4 * G];
/// let base = dir.path().join("base.vmdk");
/// let sink = writer::create(&base, old.len() as u64, Subformat::MonolithicSparse, &opts)?;
/// copy_into(&MemImage::new(old.clone()), sink, &CopyOptions::default())?;
/// let parent = VmdkImage::open(&base)?;
///
/// // The new disk: grain 1 rewritten, grain 3 zeroed.
/// let mut new = old.clone();
/// new[G..2 * G].fill(2);
/// new[3 * G..].fill(0);
/// let new = MemImage::new(new);
///
/// let target = LinkTarget {
///     parent_path: &base,
///     parent: &parent,
///     layout: Layout::Monolithic,
///     opts: &opts,
///     on_grain: None,
/// };
/// let link = dir.path().join("link.vmdk");
/// let changed = [(G as u64, G as u64), (3 * G as u64, G as u64)];
/// let stats = write_delta_link(&target, &new, changed, &link)?;
/// assert_eq!((stats.data_grains, stats.zeroed_grains), (1, 1));
///
/// // Read through the link (and its parent), the disk is the new one.
/// let img = VmdkImage::open(&link)?;
/// assert_eq!(img.layers().len(), 2);
/// let mut back = vec![0u8; 4 * G];
/// img.read_at(&mut back, 0)?;
/// assert!(back == new.bytes());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_delta_link(
    link: &LinkTarget<'_>,
    new: &dyn DiskImage,
    changed: impl IntoIterator<Item = (u64, u64)>,
    dst: &Path,
) -> Result<LinkStats> {
    let gb = GRAIN_SECTORS * SECTOR;
    let size = new.size();
    let mut grains = changed.into_iter().flat_map(move |(start, len)| {
        let first = start / gb;
        let end = start.saturating_add(len).min(size).div_ceil(gb);
        first..end.max(first)
    });
    let groups = std::iter::from_fn(move || {
        let group: Vec<u64> = grains.by_ref().take(BATCH).collect();
        (!group.is_empty()).then_some(Ok(group))
    });
    write_delta_link_from(link, new, groups, dst)
}

/// [`write_delta_link`] fed with grain indices as they are found, in groups (for example one
/// group per window of a scan that is still running in another thread). Grains must come in
/// ascending order across groups; repeats are skipped. Each group is written before the next
/// is waited for, so writing overlaps with whatever produces the groups. An `Err` from
/// `groups` stops the writer: the partial link is removed and the error returned.
pub fn write_delta_link_from(
    link: &LinkTarget<'_>,
    new: &dyn DiskImage,
    groups: impl IntoIterator<Item = Result<Vec<u64>>>,
    dst: &Path,
) -> Result<LinkStats> {
    let parent_cid = parent_cid(link)?;
    let hint = parent_hint(dst, link.parent_path)?;
    let sectors = new.size().div_ceil(SECTOR);
    let files = OutputFiles::new(dst, &link.opts.policy)?;
    let parent_link = Some((parent_cid, hint));
    let out = match link.layout {
        Layout::Clustered => LinkImage::Clustered(ClusteredImage::create(
            Box::new(files),
            sectors,
            link.opts,
            parent_link,
        )?),
        l => LinkImage::Sparse(SparseImage::create(
            files,
            sectors,
            l,
            link.opts,
            parent_link,
        )?),
    };
    write_link(link, new, groups, out)
}

/// [`write_delta_link_from`] into `out` (local files, or another storage's), in the clustered
/// layout whatever `link.layout` says, naming the parent `parent_hint` (a name beside the
/// link, or a path).
pub fn write_delta_link_into(
    link: &LinkTarget<'_>,
    new: &dyn DiskImage,
    groups: impl IntoIterator<Item = Result<Vec<u64>>>,
    out: Box<dyn ImageOutput>,
    parent_hint: PathBuf,
) -> Result<LinkStats> {
    let parent_link = Some((parent_cid(link)?, parent_hint));
    let image = ClusteredImage::create(out, new.size().div_ceil(SECTOR), link.opts, parent_link)?;
    write_link(link, new, groups, LinkImage::Clustered(image))
}

fn parent_cid(link: &LinkTarget<'_>) -> Result<u32> {
    link.parent.layers()[0]
        .descriptor()
        .cid
        .ok_or_else(|| Error::invalid("parent has no CID to link to").with_path(link.parent_path))
}

fn write_link(
    link: &LinkTarget<'_>,
    new: &dyn DiskImage,
    groups: impl IntoIterator<Item = Result<Vec<u64>>>,
    mut out: LinkImage,
) -> Result<LinkStats> {
    let LinkTarget {
        parent, on_grain, ..
    } = *link;
    let size = new.size();

    let gb = GRAIN_SECTORS * SECTOR;
    let grain_count = size.div_ceil(gb);
    let mut stats = LinkStats::default();
    let mut batch: Vec<u64> = Vec::with_capacity(BATCH);
    // Buffers for sources that cannot lend their bytes (kept across batches); a mapped source
    // (a raw disk) hands out slices of its map instead, with no copy.
    let mut bufs: Vec<Vec<u8>> = Vec::new();
    let mut last: Option<u64> = None;
    let grain_range = |g: u64| {
        let off = g * gb;
        (off, gb.min(size - off))
    };
    let mut flush =
        |batch: &mut Vec<u64>, ext: &mut LinkImage, stats: &mut LinkStats| -> Result<()> {
            if bufs.len() < batch.len() {
                bufs.resize_with(batch.len(), Vec::new);
            }
            // Per grain: where its bytes are and what the link stores for it.
            let plans: Vec<(Option<&[u8]>, GrainPlan)> = batch
                .par_iter()
                .zip(bufs.par_iter_mut())
                .map(|(&g, buf)| {
                    let (off, len) = grain_range(g);
                    new.read_once(off, len);
                    let lent = new.mapped(off, len);
                    let data = match lent {
                        Some(d) => d,
                        None => {
                            buf.resize(len as usize, 0);
                            new.read_at(buf, off)?;
                            &buf[..]
                        }
                    };
                    if let Some(f) = on_grain {
                        f(g, data);
                    }
                    let plan = if !is_zero(data) {
                        GrainPlan::Data
                    } else if parent_reads_zero(parent, off, len)? {
                        GrainPlan::Skip
                    } else {
                        GrainPlan::Zeroed
                    };
                    Ok((lent, plan))
                })
                .collect::<Result<_>>()?;
            for ((&g, buf), (lent, plan)) in batch.iter().zip(&bufs).zip(plans) {
                let (off, len) = grain_range(g);
                stats.bytes_read += len;
                match plan {
                    GrainPlan::Data => {
                        ext.put_grain(g, lent.unwrap_or(buf))?;
                        stats.data_grains += 1;
                    }
                    GrainPlan::Zeroed => {
                        ext.put_zero(g)?;
                        stats.zeroed_grains += 1;
                    }
                    GrainPlan::Skip => {}
                }
                // Read once and written: unmap what the source's map lent (a page fault can map
                // a whole 2 MiB folio) and drop behind the reader what it brought into the cache.
                new.release(off, len);
                new.forget(off, len);
            }
            batch.clear();
            Ok(())
        };
    for group in groups {
        for g in group? {
            // Ranges may share a grain, and grains past the end are not the disk's.
            if last.is_some_and(|l| g <= l) || g >= grain_count {
                continue;
            }
            last = Some(g);
            batch.push(g);
            if batch.len() == BATCH {
                flush(&mut batch, &mut out, &mut stats)?;
            }
        }
        // Write what this group brought before waiting for the next one.
        flush(&mut batch, &mut out, &mut stats)?;
    }
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
