use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::mapped::MappedFile;
use vdisk_core::{Advice, Error, ErrorKind, Result};

/// A file read by range (an object in an object store): nothing of it is resident until read,
/// and every read may be a request, so readers ask for what they need and no more.
pub trait RangedFile: Send + Sync + std::fmt::Debug {
    /// The name used in messages.
    fn path(&self) -> &Path;
    /// Length in bytes.
    fn len(&self) -> u64;
    /// Whether the file is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fill `buf` from `offset`; the range lies inside the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
}

/// The bytes of one file of an image: a memory-mapped file, a buffer already in memory
/// (tests, fuzzing, a stream read from standard input), or a file read by range (an object
/// in an object store).
#[derive(Debug)]
pub enum Bytes {
    /// A file on disk.
    File(MappedFile),
    /// Bytes in memory, with the name used in messages.
    Owned(PathBuf, std::sync::Arc<Vec<u8>>),
    /// A byte range of a mapped file, read in place: a member of an OVA archive.
    Range(FileRange),
    /// A file read by range, never whole (sparse extents read their directory at open and
    /// their tables and grains as they are needed).
    Remote(Arc<dyn RangedFile>),
}

/// `len` bytes of a mapped file from `start`, seen as a file of its own (a member of a tar
/// archive, read where it lies without a copy).
#[derive(Debug, Clone)]
pub struct FileRange {
    file: Arc<MappedFile>,
    start: u64,
    len: u64,
    path: PathBuf,
}

impl FileRange {
    /// The range of `len` bytes at `start` in `file`, named `path` in messages; an error
    /// when it does not lie inside the file.
    pub fn new(file: Arc<MappedFile>, start: u64, len: u64, path: PathBuf) -> Result<Self> {
        match start.checked_add(len) {
            Some(end) if end <= file.len() => Ok(FileRange {
                file,
                start,
                len,
                path,
            }),
            _ => Err(Error::corrupt(format!(
                "{len} bytes at offset {start} run past the end of the file ({} bytes)",
                file.len()
            ))
            .with_path(file.path())),
        }
    }

    /// The file the range is part of.
    pub fn file(&self) -> &MappedFile {
        &self.file
    }

    /// Where the range starts in its file.
    pub fn start(&self) -> u64 {
        self.start
    }
}

impl Bytes {
    /// The length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Bytes::File(f) => f.len(),
            Bytes::Owned(_, v) => v.len() as u64,
            Bytes::Range(r) => r.len,
            Bytes::Remote(r) => r.len(),
        }
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Act on a hint about `len` bytes at `offset` of the file (see [`Advice`]): mapped files
    /// and ranges of them map, drop or stop reading ahead; other bytes ignore it.
    pub fn advise(&self, offset: u64, len: u64, advice: Advice) {
        let (file, offset, len) = match self {
            Bytes::File(f) => (f, offset, len),
            Bytes::Range(r) => {
                let len = len.min(r.len.saturating_sub(offset));
                (&*r.file, r.start.saturating_add(offset), len)
            }
            Bytes::Owned(..) | Bytes::Remote(_) => return,
        };
        match advice {
            Advice::Populate => file.populate(offset, len),
            Advice::Release => file.release(offset, len),
            Advice::ReadOnce => file.read_once(offset, len),
            Advice::Forget => file.forget(offset, len),
            Advice::Paced => file.read_as_asked(),
            _ => {}
        }
    }

    /// Where the next data at or after `offset` starts (`SEEK_DATA` for a file on disk; in
    /// memory and by range, everything is data).
    pub fn next_data(&self, offset: u64) -> Option<u64> {
        if offset >= self.len() {
            return None;
        }
        match self {
            Bytes::File(f) => crate::holes::next_data(f.file(), offset).filter(|&d| d < f.len()),
            _ => Some(offset),
        }
    }

    /// The file's identity, for files on disk.
    pub fn id(&self) -> Option<vdisk_core::FileId> {
        match self {
            Bytes::File(f) => Some(f.id()),
            Bytes::Range(r) => Some(r.file.id()),
            Bytes::Owned(..) | Bytes::Remote(_) => None,
        }
    }

    /// The name used in messages.
    pub fn path(&self) -> &Path {
        match self {
            Bytes::File(f) => f.path(),
            Bytes::Owned(p, _) => p,
            Bytes::Range(r) => &r.path,
            Bytes::Remote(r) => r.path(),
        }
    }

    /// All bytes as a slice, when the file is mapped or in memory.
    pub fn slice(&self) -> Option<&[u8]> {
        match self {
            Bytes::File(f) => f.bytes(),
            Bytes::Owned(_, v) => Some(v.as_slice()),
            // start + len <= file length, checked by FileRange::new.
            Bytes::Range(r) => r
                .file
                .bytes()?
                .get(r.start as usize..(r.start + r.len) as usize),
            Bytes::Remote(_) => None,
        }
    }

    /// All bytes as a slice, or an error naming the file when it could not be mapped.
    pub fn require_slice(&self) -> Result<&[u8]> {
        self.slice().ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                "cannot memory-map this file (sparse extents must be regular files)",
            )
            .with_path(self.path())
        })
    }

    /// Fill `buf` from `offset`; bytes past the end read as zero.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match self {
            Bytes::File(f) => f.read_at(buf, offset),
            Bytes::Owned(_, v) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(v.len());
                let n = (v.len() - start).min(buf.len());
                buf[..n].copy_from_slice(&v[start..start + n]);
                buf[n..].fill(0);
                Ok(())
            }
            Bytes::Range(r) => {
                let n = usize::try_from(r.len.saturating_sub(offset))
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                let (head, tail) = buf.split_at_mut(n);
                if n > 0 {
                    // offset < len here, so start + offset <= the file's length.
                    r.file.read_at(head, r.start + offset)?;
                }
                tail.fill(0);
                Ok(())
            }
            Bytes::Remote(r) => {
                let len = r.len();
                let n = if offset >= len {
                    0
                } else {
                    usize::try_from(len - offset)
                        .unwrap_or(usize::MAX)
                        .min(buf.len())
                };
                if n > 0 {
                    r.read_at(&mut buf[..n], offset)?;
                }
                buf[n..].fill(0);
                Ok(())
            }
        }
    }

    /// Ranges holding data between `start` and `end` (file offsets), from the file system's
    /// holes; in-memory bytes are all data.
    pub fn data_ranges(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        match self {
            Bytes::File(f) => crate::holes::data_ranges(f.file(), start, end.min(f.len())),
            Bytes::Range(r) => {
                let end = end.min(r.len);
                if start >= end {
                    return Vec::new();
                }
                crate::holes::data_ranges(r.file.file(), r.start + start, r.start + end)
                    .into_iter()
                    .map(|(s, l)| (s - r.start, l))
                    .collect()
            }
            Bytes::Owned(..) | Bytes::Remote(_) => {
                let end = end.min(self.len());
                if start < end {
                    vec![(start, end - start)]
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// Whether the file certainly has no holes (its allocated blocks cover its length), so
    /// that all of it can be reported as data without asking the file system range by range.
    pub fn is_dense(&self) -> bool {
        self.disk_usage() >= self.len()
    }

    /// Bytes the file takes on disk (allocated blocks); in-memory bytes count their length.
    pub fn disk_usage(&self) -> u64 {
        match self {
            Bytes::File(f) => f.disk_usage(),
            // The member's share of its archive.
            Bytes::Range(r) => r.len,
            Bytes::Owned(_, v) => v.len() as u64,
            Bytes::Remote(r) => r.len(),
        }
    }
}

/// Where the files of an image come from. Paths given to a store are already resolved and
/// checked against the descriptor's folder.
pub trait FileStore: Send + Sync {
    /// Load the file at `path`.
    fn load(&self, path: &Path) -> Result<Bytes>;

    /// A name that is the same for every path that reaches the same file (for loop detection).
    fn identity(&self, path: &Path) -> Result<PathBuf>;

    /// Whether there is a file at `path` (to choose between the names a descriptor's file
    /// may have: decoded from its `encoding`, or as written).
    fn exists(&self, path: &Path) -> bool {
        self.identity(path).is_ok()
    }
}

/// Files on the local file system, memory-mapped.
#[derive(Debug, Default, Clone, Copy)]
pub struct FsStore {
    /// Read-ahead on the files (off when reads are paced).
    pub read_ahead: crate::mapped::ReadAhead,
    /// The page-cache policy for data read once.
    pub cache: crate::mapped::Cache,
}

impl FileStore for FsStore {
    fn load(&self, path: &Path) -> Result<Bytes> {
        Ok(Bytes::File(
            MappedFile::open_with(path, self.read_ahead)?.with_cache(self.cache),
        ))
    }

    fn identity(&self, path: &Path) -> Result<PathBuf> {
        std::fs::canonicalize(path).map_err(|e| Error::io("cannot open", e).with_path(path))
    }
}

/// Files held in memory by name (for tests and fuzzing: a whole image without touching disk).
#[derive(Debug, Default, Clone)]
pub struct MemStore {
    files: HashMap<PathBuf, Arc<Vec<u8>>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a file.
    pub fn insert(&mut self, path: impl Into<PathBuf>, bytes: Vec<u8>) {
        self.files.insert(path.into(), Arc::new(bytes));
    }
}

impl FileStore for MemStore {
    fn load(&self, path: &Path) -> Result<Bytes> {
        match self.files.get(path) {
            Some(v) => Ok(Bytes::Owned(path.to_path_buf(), Arc::clone(v))),
            None => Err(Error::new(ErrorKind::NotFound, "no such file").with_path(path)),
        }
    }

    fn identity(&self, path: &Path) -> Result<PathBuf> {
        Ok(path.to_path_buf())
    }

    fn exists(&self, path: &Path) -> bool {
        self.files.contains_key(path)
    }
}
