//! Input files: memory-mapped, with a positional-read fallback.
#![allow(unsafe_code)] // the memory map and its madvise calls (system calls are in `sys`)

use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use vdisk_core::{Error, ErrorKind, FileId, Result};

use crate::sys;

/// Whether the kernel may read ahead of what is asked, for an input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadAhead {
    /// The kernel's default: read ahead of sequential reads (fastest unpaced).
    #[default]
    On,
    /// No read-ahead from the very first read (`POSIX_FADV_RANDOM`, `MADV_RANDOM`): reads are
    /// paced (`--io-limit`), and the disk must read only what is asked. Set before anything is
    /// read: pages an earlier read-ahead marked would start read-ahead again when reached.
    Off,
}

/// What becomes of the host's page cache behind data read once (a backup, a hash, a
/// restore).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cache {
    /// Leave it as the kernel does: what was read stays cached.
    #[default]
    Keep,
    /// Drop the pages a read brought in once it is done with them, so that reading a disk
    /// once does not push the host's (and its VMs') own cache out; pages that were cached
    /// before the read stay.
    Forget,
}

/// Residency is noted per region of this many bytes (a 256 KiB vector each)...
const REGION: u64 = 1 << 30;
/// ...for at most this many regions per file at once (16 MiB).
const MAX_SNAPSHOTS: usize = 64;
const PAGE: u64 = 4096;

/// Reads of at least this many bytes use pread rather than a copy from the map.
const PREAD_FROM: usize = 32 << 10;

/// A file opened read-only, memory-mapped when the kernel allows it.
///
/// The map is private to this type: callers see [`MappedFile::bytes`] (the whole file as a
/// slice, when mapped) and [`MappedFile::read_at`] (which works either way).
///
/// A mapped file that another process truncates while it is read raises SIGBUS; vdisk reads
/// images that are not being written, as every image tool does.
#[derive(Debug)]
pub struct MappedFile {
    file: File,
    map: Option<Mmap>,
    len: u64,
    path: PathBuf,
    id: FileId,
    cache: Cache,
    /// Page residency of regions before anything in them was read, by region start.
    snapshots: std::sync::Mutex<Vec<(u64, Residency)>>,
}

/// Which pages of a region the host cached before a run read it.
#[derive(Debug)]
enum Residency {
    /// Every page (a warm file: nothing is dropped behind the reader).
    All,
    /// None (a cold file: everything read is dropped).
    Nothing,
    /// One byte per page, as `mincore` gives them.
    Pages(Vec<u8>),
}

/// Bytes sampled in every [`SAMPLE_STRIDE`] of a region when looking at its residency.
const SAMPLE: u64 = 64 << 10;
const SAMPLE_STRIDE: u64 = 4 << 20;

/// (cached pages, pages) of samples of `file` between `start` and `stop`; `None` without
/// cachestat.
fn sampled_residency(file: &File, start: u64, stop: u64) -> Option<(u64, u64)> {
    let (mut cached, mut sampled) = (0, 0);
    let mut at = start;
    while at < stop {
        let len = SAMPLE.min(stop - at);
        cached += sys::cached_pages(file, at, len)?;
        sampled += len.div_ceil(PAGE);
        at += SAMPLE_STRIDE;
    }
    Some((cached, sampled))
}

impl MappedFile {
    /// Open and map `path`. Mapping failures fall back to positional reads.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, ReadAhead::On)
    }

    /// Open and map `path`, with read-ahead as `read_ahead` says from the first read on.
    pub fn open_with(path: &Path, read_ahead: ReadAhead) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io("cannot open", e).with_path(path))?;
        let f = Self::from_file(file, path)?;
        if read_ahead == ReadAhead::Off {
            f.read_as_asked();
        }
        Ok(f)
    }

    /// Map an already opened file; `path` is used in error messages.
    pub fn from_file(file: File, path: &Path) -> Result<Self> {
        let meta = file
            .metadata()
            .map_err(|e| Error::io("cannot stat", e).with_path(path))?;
        if meta.is_dir() {
            return Err(Error::new(ErrorKind::InvalidArgument, "is a directory").with_path(path));
        }
        // A block device (the disk a raw-device descriptor names) has no length in its
        // metadata: its end is where a seek to the end lands.
        let len = if meta.file_type().is_block_device() {
            use std::io::Seek;
            (&file)
                .seek(std::io::SeekFrom::End(0))
                .map_err(|e| Error::io("cannot find the size of the device", e).with_path(path))?
        } else {
            meta.len()
        };
        let map = if meta.is_file() && len > 0 && usize::try_from(len).is_ok() {
            // SAFETY: the map is read-only and private to this struct. Its contents can change
            // if another process writes the file (which makes reads racy, not unsound for u8
            // slices), or raise SIGBUS if it is truncated; vdisk documents that images must not
            // be modified while read, like any image tool.
            unsafe { Mmap::map(&file) }.ok()
        } else {
            None
        };
        Ok(MappedFile {
            file,
            map,
            len,
            path: path.to_path_buf(),
            id: sys::file_id(&meta),
            cache: Cache::Keep,
            snapshots: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The file's length in bytes when it was opened.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The same file, with `cache` as its page-cache policy for data read once.
    pub fn with_cache(mut self, cache: Cache) -> Self {
        self.cache = cache;
        self
    }

    /// `len` bytes at `offset` are about to be read once: note which pages of the regions
    /// they fall in the host caches already (so that [`MappedFile::forget`] drops only what
    /// reading brings in). A region is looked at once, before anything in it is read, so that
    /// pages the kernel reads ahead for this run are not taken for the host's. Does nothing
    /// under [`Cache::Keep`] or without a map.
    pub fn read_once(&self, offset: u64, len: u64) {
        let (Cache::Forget, Some(m)) = (self.cache, &self.map) else {
            return;
        };
        let end = offset.saturating_add(len).min(self.len);
        if offset >= end {
            return;
        }
        let mut snaps = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        for region in offset / REGION..=(end - 1) / REGION {
            let start = region * REGION;
            if snaps.iter().any(|(s, _)| *s == start) {
                continue;
            }
            let stop = (start + REGION).min(self.len);
            // A sample first: 64 KiB in every 4 MiB, counted by cachestat (a warm GiB costs
            // 8 ms counted whole, 21 ms with mincore's byte per page, well under 1 ms
            // sampled). A region whose samples are all cached, or none, is taken as such; the
            // page map is taken only for a region the samples find partly cached. (Residency
            // scattered finer than the samples can be taken for all or nothing: a few pages
            // kept or dropped wrongly, never data.)
            let residency = match sampled_residency(&self.file, start, stop) {
                Some((cached, sampled)) if cached >= sampled => Residency::All,
                Some((0, _)) => Residency::Nothing,
                _ => {
                    // A page-aligned piece of our own mapping.
                    let Some(resident) = sys::resident_pages(&m[start as usize..stop as usize])
                    else {
                        return;
                    };
                    Residency::Pages(resident)
                }
            };
            if snaps.len() >= MAX_SNAPSHOTS {
                snaps.remove(0);
            }
            snaps.push((start, residency));
        }
    }

    /// The range read once is done: drop from the page cache the pages of it that were not
    /// cached when [`MappedFile::read_once`] looked at their region (pages of regions never
    /// looked at are kept).
    pub fn forget(&self, offset: u64, len: u64) {
        if self.cache != Cache::Forget {
            return;
        }
        let start = offset.min(self.len) / PAGE * PAGE;
        let end = offset.saturating_add(len).min(self.len);
        let snaps = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        let mut runs = Vec::new();
        let mut drop_from: Option<u64> = None;
        let mut page = start;
        while page < end {
            // One region at a time: its snapshot is looked up once.
            let region = page / REGION * REGION;
            let segment_end = (region + REGION).min(end);
            let resident = match snaps.iter().find(|(s, _)| *s == region) {
                Some((_, Residency::Pages(p))) => p,
                Some((_, Residency::Nothing)) => {
                    drop_from.get_or_insert(page);
                    page = segment_end;
                    continue;
                }
                // Never looked at, or all cached before: kept.
                Some((_, Residency::All)) | None => {
                    if let Some(f) = drop_from.take() {
                        runs.push((f, page));
                    }
                    page = segment_end;
                    continue;
                }
            };
            while page < segment_end {
                let was_cached = resident[((page - region) / PAGE) as usize] & 1 != 0;
                match (was_cached, drop_from) {
                    (false, None) => drop_from = Some(page),
                    (true, Some(f)) => {
                        runs.push((f, page));
                        drop_from = None;
                    }
                    _ => {}
                }
                page += PAGE;
            }
        }
        if let Some(f) = drop_from {
            runs.push((f, end));
        }
        drop(snaps);
        for (a, b) in runs {
            sys::fadvise(&self.file, a, b - a, sys::FileAdvice::DontNeed);
        }
    }

    /// The file's identity (device and inode), taken when it was opened.
    pub fn id(&self) -> FileId {
        self.id
    }

    /// Bytes the file takes on disk (allocated blocks).
    pub fn disk_usage(&self) -> u64 {
        self.file
            .metadata()
            .map(|m| sys::disk_usage(&m))
            .unwrap_or(0)
    }

    /// The path the file was opened as.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying file (for `SEEK_DATA`/`SEEK_HOLE` and metadata).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The whole file as bytes, when it is mapped (or empty).
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.map {
            Some(m) => Some(&m[..]),
            None if self.len == 0 => Some(&[]),
            None => None,
        }
    }

    /// Drop the pages of `len` bytes at `offset` from this process's resident set (the page
    /// cache keeps them); a no-op for unmapped files.
    pub fn release(&self, offset: u64, len: u64) {
        if let Some(m) = &self.map {
            let start = offset.min(self.len);
            let end = offset.saturating_add(len).min(self.len);
            // madvise wants page-aligned starts; shrink the range inward to whole pages.
            let page = 4096;
            let s = start.next_multiple_of(page);
            let e = end / page * page;
            if e > s {
                // SAFETY: MADV_DONTNEED on a private read-only file mapping only drops this
                // process's page-table entries; later reads fault the same file pages back in,
                // so no live slice sees different contents.
                let _ = unsafe {
                    m.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        s as usize,
                        (e - s) as usize,
                    )
                };
            }
        }
    }

    /// Map the pages of `len` bytes at `offset` in one call (MADV_POPULATE_READ) rather than
    /// one page fault at a time as they are touched; a no-op for unmapped files or kernels
    /// without it.
    pub fn populate(&self, offset: u64, len: u64) {
        if let Some(m) = &self.map {
            let start = offset.min(self.len);
            let end = offset.saturating_add(len).min(self.len);
            let page = 4096;
            let s = start / page * page;
            if end > s {
                let _ = m.advise_range(
                    memmap2::Advice::PopulateRead,
                    s as usize,
                    (end - s) as usize,
                );
            }
        }
    }

    /// Stop read-ahead on the file and its map (`POSIX_FADV_RANDOM`, `MADV_RANDOM`): reads
    /// are being paced, and the disk must read only what is asked.
    pub fn read_as_asked(&self) {
        sys::fadvise(&self.file, 0, 0, sys::FileAdvice::Random);
        if let Some(m) = &self.map {
            let _ = m.advise(memmap2::Advice::Random);
        }
    }

    /// Hint that the whole file will be read front to back.
    pub fn advise_sequential(&self) {
        if let Some(m) = &self.map {
            let _ = m.advise(memmap2::Advice::Sequential);
        }
    }

    /// Fill `buf` from the file at `offset`. Bytes past the end of the file read as zero:
    /// callers have already checked the range against the image size, and a file that is
    /// shorter than its image (a truncated flat extent) reads as zero, as qemu does.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let avail = self.len.saturating_sub(offset);
        let n = usize::try_from(avail).unwrap_or(usize::MAX).min(buf.len());
        let (head, tail) = buf.split_at_mut(n);
        if n > 0 {
            match &self.map {
                // Small reads copy from the map; large ones use pread, which copies from the
                // page cache without faulting the pages into this process (measured ~1.5x
                // faster for 64 KiB grains and up).
                Some(m) if n < PREAD_FROM => {
                    // offset < len <= usize::MAX here because n > 0.
                    let start = offset as usize;
                    head.copy_from_slice(&m[start..start + n]);
                }
                _ => self
                    .file
                    .read_exact_at(head, offset)
                    .map_err(|e| Error::io("cannot read", e).with_path(&self.path).at(offset))?,
            }
        }
        tail.fill(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Ask the kernel to drop `file`'s cached pages, or to read `len` bytes at `offset`
    /// without read-ahead beyond them.
    fn advise(file: &File, offset: u64, len: u64, advice: sys::FileAdvice) {
        sys::fadvise(file, offset, len, advice)
    }

    /// Cached pages of `len` bytes at `offset`, read by a fresh descriptor.
    fn cached(path: &Path, offset: u64, len: u64) -> u64 {
        sys::cached_pages(&File::open(path).unwrap(), offset, len).unwrap()
    }

    /// Behind a reader with [`Cache::Forget`], the page cache holds what it held before: a
    /// cold file is dropped after the read, a warm one stays, and of a half-warm one the
    /// warm half stays and the rest goes.
    #[test]
    fn forget_drops_only_what_the_read_brought_in() {
        const LEN: u64 = 8 << 20;
        const HALF: u64 = LEN / 2;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..LEN).map(|i| (i * 7 % 251) as u8).collect();
        f.write_all(&data).unwrap();
        f.as_file().sync_all().unwrap();
        advise(f.as_file(), 0, 0, sys::FileAdvice::DontNeed);
        if sys::cached_pages(f.as_file(), 0, LEN) != Some(0) {
            eprintln!("skipped: no cachestat(2), or a file system that keeps its pages (tmpfs)");
            return;
        }
        let read_all = |cache: Cache| {
            let m = MappedFile::open(f.path()).unwrap().with_cache(cache);
            m.read_once(0, LEN);
            let mut got = vec![0u8; LEN as usize];
            for at in (0..LEN).step_by(1 << 20) {
                m.read_at(&mut got[at as usize..][..1 << 20], at).unwrap();
            }
            assert!(got == data);
            m.forget(0, LEN);
        };
        // Cold: dropped.
        read_all(Cache::Forget);
        assert_eq!(cached(f.path(), 0, LEN), 0, "a cold file stayed cached");
        // Kept with Cache::Keep.
        read_all(Cache::Keep);
        assert_eq!(cached(f.path(), 0, LEN), LEN / 4096, "Keep dropped pages");
        // Warm: stays.
        read_all(Cache::Forget);
        assert_eq!(
            cached(f.path(), 0, LEN),
            LEN / 4096,
            "a warm file was dropped"
        );
        // Half warm: the host's half stays, the rest goes.
        advise(f.as_file(), 0, 0, sys::FileAdvice::DontNeed);
        let warm = File::open(f.path()).unwrap();
        advise(&warm, 0, 0, sys::FileAdvice::Random);
        let mut buf = vec![0u8; HALF as usize];
        warm.read_exact_at(&mut buf, 0).unwrap();
        let before = cached(f.path(), HALF, HALF);
        assert_eq!(cached(f.path(), 0, HALF), HALF / 4096);
        read_all(Cache::Forget);
        assert_eq!(
            cached(f.path(), 0, HALF),
            HALF / 4096,
            "the host's pages were dropped"
        );
        assert!(
            cached(f.path(), HALF, HALF) <= before,
            "the pages the read brought in stayed"
        );
    }

    #[test]
    fn reads_mapped_and_zero_fills_past_end() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"hello world").unwrap();
        let m = MappedFile::open(f.path()).unwrap();
        assert_eq!(m.bytes().unwrap(), b"hello world");
        let mut buf = [0xffu8; 8];
        m.read_at(&mut buf, 6).unwrap();
        assert_eq!(&buf, b"world\0\0\0");
        m.read_at(&mut buf, 100).unwrap();
        assert_eq!(buf, [0; 8]);
    }

    #[test]
    fn empty_file_is_empty_slice() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let m = MappedFile::open(f.path()).unwrap();
        assert!(m.is_empty());
        assert_eq!(m.bytes(), Some(&[][..]));
    }

    #[test]
    fn missing_file_names_path() {
        let e = MappedFile::open(Path::new("/nonexistent/vdisk-test")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e
            .to_string()
            .starts_with("/nonexistent/vdisk-test: cannot open"));
    }
}
