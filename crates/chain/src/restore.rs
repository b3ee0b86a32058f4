//! Reading a point back: a disk of a point as a [`DiskImage`] whose every block is opened
//! and checked (its seal, and its bytes against its id) before a byte of it is handed out.
//! Restore, `serve` and the copies of `sync` read points through it.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vdisk_core::{
    check_range, coalesce, Allocation, DiskImage, Error, ErrorKind, Extent, FileId, Result,
};

use crate::crypto::BlockId;
use crate::point::{DiskRecord, PointRecord};
use crate::repository::{err_at, Point, Repository};
use crate::tree::{LeafEntry, Shape, TreeReader, FANOUT};

/// Leaves kept opened.
const CACHED_LEAVES: usize = 64;
/// Blocks kept opened (for reads of parts of blocks: NBD clients read 4 KiB at a time).
const CACHED_BLOCKS: usize = 32;

/// A leaf of zero blocks (shared by every zero leaf: a thin disk's empty terabytes cost one).
fn zero_leaf() -> Arc<Vec<LeafEntry>> {
    static ZERO: std::sync::OnceLock<Arc<Vec<LeafEntry>>> = std::sync::OnceLock::new();
    Arc::clone(ZERO.get_or_init(|| Arc::new(vec![LeafEntry::ZERO; FANOUT as usize])))
}

/// A few opened things by number, the oldest put first dropped once there are more than `N`.
struct Kept<T, const N: usize> {
    map: HashMap<u64, Arc<T>>,
    order: VecDeque<u64>,
}

impl<T, const N: usize> Default for Kept<T, N> {
    fn default() -> Self {
        Kept {
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<T, const N: usize> Kept<T, N> {
    fn get(&self, k: u64) -> Option<Arc<T>> {
        self.map.get(&k).cloned()
    }

    fn put(&mut self, k: u64, v: &Arc<T>) {
        if self.map.insert(k, Arc::clone(v)).is_none() {
            self.order.push_back(k);
        }
        while self.order.len() > N {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
}

/// Small caches of opened leaves and blocks.
#[derive(Default)]
struct Caches {
    leaves: Kept<Vec<LeafEntry>, CACHED_LEAVES>,
    blocks: Kept<Vec<u8>, CACHED_BLOCKS>,
}

/// One disk of a point, read with every block checked.
pub struct PointImage {
    repo: Repository,
    point: PointRecord,
    disk: DiskRecord,
    index: usize,
    shape: Shape,
    caches: Mutex<Caches>,
    /// The disk's index, its nodes on the way to the last leaf read kept.
    tree: Mutex<TreeReader<'static>>,
}

impl std::fmt::Debug for PointImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PointImage({} #{} disk {})",
            self.point.name, self.point.seq, self.disk.label
        )
    }
}

/// Pick disk `disk` of `point` (by position from 0, or by label); `None` when it holds one.
pub fn pick_disk(point: &PointRecord, disk: Option<&str>, root: &std::path::Path) -> Result<usize> {
    let labels: Vec<&str> = point.disks.iter().map(|d| d.label.as_str()).collect();
    match disk {
        None if labels.len() == 1 => Ok(0),
        None => Err(err_at(
            root,
            ErrorKind::Ambiguous,
            format!(
                "point {} of \"{}\" holds {} disks ({})",
                point.seq,
                point.name,
                labels.len(),
                labels.join(", ")
            ),
        )),
        Some(d) => {
            if let Some(i) = labels.iter().position(|l| *l == d) {
                return Ok(i);
            }
            match d.parse::<usize>() {
                Ok(i) if i < labels.len() => Ok(i),
                _ => Err(err_at(
                    root,
                    ErrorKind::NotFound,
                    format!(
                        "point {} of \"{}\" has no disk \"{d}\" (disks: {})",
                        point.seq,
                        point.name,
                        labels
                            .iter()
                            .enumerate()
                            .map(|(i, l)| format!("{i} {l}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
            }
        }
    }
}

impl Repository {
    /// Disk `disk` of `point` as an image whose reads are checked.
    ///
    /// ```
    /// use vdisk_chain::{BackupOptions, DiskSource, InitOptions, Repository, Source};
    /// use vdisk_core::{DiskImage, MemImage};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let repo = Repository::init(dir.path().join("repo"), &InitOptions::default())?;
    /// let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i / 7) as u8).collect();
    /// let img = MemImage::new(bytes.clone());
    /// let src = DiskSource { image: &img, source: Source { identity: "/a".into(), unclean: false }, label: "a".into() };
    /// repo.backup("vm", &[src], &BackupOptions::default())?;
    /// let point = repo.select(Some("vm"), None)?;
    /// let disk = repo.point_image(&point, None)?;
    /// let mut back = vec![0u8; disk.size() as usize];
    /// disk.read_at(&mut back, 0)?;
    /// assert_eq!(back, bytes);
    /// # Ok::<(), vdisk_core::Error>(())
    /// ```
    pub fn point_image(&self, point: &Point, disk: Option<&str>) -> Result<PointImage> {
        let index = pick_disk(&point.record, disk, self.location())?;
        let d = point.record.disks[index].clone();
        let shape = Shape::new(d.size, self.block_size())?;
        let repo = self.clone();
        let max = self.max_blob();
        let tree = TreeReader::new(shape.clone(), d.root_id(), move |id: &BlockId| {
            repo.read_blob(id, max)
        });
        Ok(PointImage {
            repo: self.clone(),
            tree: Mutex::new(tree),
            shape,
            point: point.record.clone(),
            disk: d,
            index,
            caches: Mutex::default(),
        })
    }
}

impl PointImage {
    /// The point.
    pub fn point(&self) -> &PointRecord {
        &self.point
    }

    /// The disk.
    pub fn disk(&self) -> &DiskRecord {
        &self.disk
    }

    /// The disk's position in its point.
    pub fn disk_index(&self) -> usize {
        self.index
    }

    fn caches(&self) -> std::sync::MutexGuard<'_, Caches> {
        self.caches.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn damaged(&self, what: String, offset: u64) -> Error {
        Error::new(
            ErrorKind::Corrupt,
            format!(
                "point {} of \"{}\", disk {}: {what}; refusing to return other data",
                self.point.seq, self.point.name, self.disk.label
            ),
        )
        .with_path(PathBuf::from(self.repo.location()))
        .at(offset)
    }

    /// The entries of leaf `j`.
    pub(crate) fn leaf(&self, j: u64) -> Result<Arc<Vec<LeafEntry>>> {
        if let Some(l) = self.caches().leaves.get(j) {
            return Ok(l);
        }
        let got = {
            let mut t = self.tree.lock().unwrap_or_else(|e| e.into_inner());
            match t.chunk_id(0, j) {
                Ok(id) if id.is_zero() => return Ok(zero_leaf()),
                Ok(_) => t.leaf(j),
                Err(e) => Err(e),
            }
        };
        let leaf = Arc::new(got.map_err(|e| {
            self.damaged(
                format!("its index cannot be read ({})", e.message()),
                j * FANOUT * self.repo.block_size(),
            )
        })?);
        self.caches().leaves.put(j, &leaf);
        Ok(leaf)
    }

    /// Where the run of zero blocks that the index stores nothing for, from block `b`, ends
    /// (`None`: the leaf of `b` is stored).
    fn zero_until(&self, b: u64) -> Result<Option<u64>> {
        let mut t = self.tree.lock().unwrap_or_else(|e| e.into_inner());
        t.zero_until(b).map_err(|e| {
            self.damaged(
                format!("its index cannot be read ({})", e.message()),
                b * self.repo.block_size(),
            )
        })
    }

    fn block_len(&self, b: u64) -> u64 {
        let bs = self.repo.block_size();
        bs.min(self.disk.size - b * bs)
    }

    /// The entry of block `b`.
    pub(crate) fn entry(&self, b: u64) -> Result<LeafEntry> {
        let leaf = self.leaf(b / FANOUT)?;
        leaf.get((b % FANOUT) as usize)
            .copied()
            .ok_or_else(|| self.damaged("its index is shorter than the disk".into(), b))
    }

    /// Block `b` cannot be read: `err`, as an error naming its bytes.
    fn unreadable(&self, b: u64, err: &Error) -> Error {
        let bs = self.repo.block_size();
        self.damaged(
            format!(
                "the block at bytes {}..{} cannot be read ({})",
                b * bs,
                b * bs + self.block_len(b),
                err.message()
            ),
            b * bs,
        )
    }

    /// Whole block `b` into `out` (its length), checked; not kept. Opened straight into
    /// `out`: no buffer of its own, no copy.
    fn whole_block_into(&self, b: u64, out: &mut [u8]) -> Result<()> {
        if let Some(d) = self.caches().blocks.get(b) {
            out.copy_from_slice(&d[..]);
            return Ok(());
        }
        let e = self.entry(b)?;
        if e.is_zero() {
            out.fill(0);
            return Ok(());
        }
        self.repo
            .read_blob_into(&e.id, out)
            .map_err(|err| self.unreadable(b, &err))
    }

    /// The bytes of block `b` (`None`: all zero), checked, and kept for the next part of it
    /// that is read.
    fn block(&self, b: u64) -> Result<Option<Arc<Vec<u8>>>> {
        if let Some(d) = self.caches().blocks.get(b) {
            return Ok(Some(d));
        }
        let e = self.entry(b)?;
        if e.is_zero() {
            return Ok(None);
        }
        let bs = self.repo.block_size();
        let data = self
            .repo
            .read_blob(&e.id, bs as usize)
            .map_err(|err| self.unreadable(b, &err))?;
        if data.len() as u64 != self.block_len(b) {
            return Err(self.damaged(
                format!(
                    "the block at bytes {}.. is {} bytes, not {}",
                    b * bs,
                    data.len(),
                    self.block_len(b)
                ),
                b * bs,
            ));
        }
        let data = Arc::new(data);
        self.caches().blocks.put(b, &data);
        Ok(Some(data))
    }
}

impl DiskImage for PointImage {
    fn size(&self) -> u64 {
        self.disk.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.disk.size, offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let bs = self.repo.block_size();
        let end = offset + buf.len() as u64;
        let first = offset / bs;
        let last = (end - 1) / bs;
        for b in first..=last {
            let bstart = b * bs;
            let s = bstart.max(offset);
            let e = (bstart + self.block_len(b)).min(end);
            let out = &mut buf[(s - offset) as usize..(e - offset) as usize];
            // Whole blocks (what copies ask for) are not kept; parts are, for the next part.
            let whole = s == bstart && e == bstart + self.block_len(b);
            if whole {
                self.whole_block_into(b, out)?;
                continue;
            }
            match self.block(b)? {
                None => out.fill(0),
                Some(d) => out.copy_from_slice(&d[(s - bstart) as usize..(e - bstart) as usize]),
            }
        }
        Ok(())
    }

    /// Data where a block holds data; a hole (reading as zero) where a block is all zero.
    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        check_range(self.disk.size, offset, length)?;
        let mut out = Vec::new();
        if length == 0 {
            return Ok(out);
        }
        let bs = self.repo.block_size();
        let end = offset + length;
        let mut b = offset / bs;
        while b * bs < end {
            // A zero chunk of the index (a leaf, or a node over many): one hole, whatever its
            // size, so a thin disk's map costs what its data does.
            if let Some(z) = self.zero_until(b)? {
                let s = (b * bs).max(offset);
                let t = (z * bs).min(self.disk.size).min(end);
                coalesce(
                    &mut out,
                    Extent {
                        start: s,
                        length: t - s,
                        allocation: Allocation::Unallocated,
                        depth: 0,
                    },
                );
                b = z;
                continue;
            }
            let j = b / FANOUT;
            let leaf = self.leaf(j)?;
            let leaf_end = ((j + 1) * FANOUT).min(self.shape.blocks);
            while b < leaf_end && b * bs < end {
                let e = leaf[(b - j * FANOUT) as usize];
                let s = (b * bs).max(offset);
                let t = (b * bs + self.block_len(b)).min(end);
                coalesce(
                    &mut out,
                    Extent {
                        start: s,
                        length: t - s,
                        allocation: if e.is_zero() {
                            Allocation::Unallocated
                        } else {
                            Allocation::Data
                        },
                        depth: 0,
                    },
                );
                b += 1;
            }
        }
        Ok(out)
    }

    fn format_name(&self) -> &'static str {
        "vdisk-point"
    }

    fn files(&self) -> Vec<FileId> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_drops_the_oldest_put_beyond_its_size() {
        let mut k: Kept<u32, 2> = Kept::default();
        for n in 1..=3u64 {
            k.put(n, &Arc::new(n as u32 * 10));
        }
        // Putting one again does not make it newer, nor count twice.
        k.put(2, &Arc::new(21));
        assert_eq!(k.get(1), None);
        assert_eq!(k.get(2).as_deref(), Some(&21));
        assert_eq!(k.get(3).as_deref(), Some(&30));
        k.put(4, &Arc::new(40));
        assert_eq!(k.get(2), None);
        assert_eq!((k.map.len(), k.order.len()), (2, 2));
    }
}
