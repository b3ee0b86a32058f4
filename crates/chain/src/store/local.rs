//! A repository in a local folder: files written unnamed (or under a temporary name), synced,
//! then linked into place; the metadata replaced atomically by rename; one writer at a time
//! by the kernel's lock on `.vdisk-lock`.

use std::collections::HashSet;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use vdisk_core::{Error, ErrorKind, Result};
use vdisk_io::{
    Bytes, Cache, ImageOutput, LocalFiles, MappedFile, OutputPolicy, ReadAhead, SparseWriter,
};

use super::{ManifestSource, Store, StoredFile, StreamOutput, WriterLock};
use crate::layout2::lock::{RepoLock, LOCK_FILE};
use crate::layout2::meta::{RepoMeta, META_FILE};

/// A repository folder.
#[derive(Debug)]
pub(crate) struct FolderStore {
    dir: PathBuf,
    /// Read-ahead on the points' files (off when reads are paced).
    read_ahead_off: AtomicBool,
    /// Whether the points' data read once is dropped from the page cache behind the reader.
    forget: AtomicBool,
}

impl FolderStore {
    pub(crate) fn new(dir: &Path) -> Self {
        FolderStore {
            dir: dir.to_path_buf(),
            read_ahead_off: AtomicBool::new(false),
            forget: AtomicBool::new(false),
        }
    }

    fn read_ahead(&self) -> ReadAhead {
        if self.read_ahead_off.load(Ordering::Relaxed) {
            ReadAhead::Off
        } else {
            ReadAhead::On
        }
    }

    fn cache(&self) -> Cache {
        if self.forget.load(Ordering::Relaxed) {
            Cache::Forget
        } else {
            Cache::Keep
        }
    }
}

impl WriterLock for RepoLock {}

/// Whether `name` is a file runs of vdisk write in a repository folder: point files, and the
/// temporary names of files being written.
fn is_ours(name: &str) -> bool {
    name.starts_with("point-")
        || (name.starts_with('.')
            && (name.ends_with(".vdisk-partial") || name.ends_with(".vdisk-extents")))
}

/// A manifest being written: buffered into an unnamed file, linked into place at the end.
struct LocalStream {
    file: Option<SparseWriter>,
    out: BufWriter<std::fs::File>,
    path: PathBuf,
}

impl StreamOutput for LocalStream {
    fn writer(&mut self) -> &mut (dyn Write + Send) {
        &mut self.out
    }
    fn finish(mut self: Box<Self>) -> Result<u64> {
        self.out
            .flush()
            .map_err(|e| Error::io("cannot write", e).with_path(&self.path))?;
        let file = self
            .file
            .take()
            .ok_or_else(|| Error::invalid("stream finished twice"))?;
        let len = file
            .file()
            .metadata()
            .map(|m| m.len())
            .map_err(|e| Error::io("cannot stat", e).with_path(&self.path))?;
        file.commit()?;
        Ok(len)
    }
}

impl Store for FolderStore {
    fn root(&self) -> &Path {
        &self.dir
    }

    fn local_dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }

    fn set_read_ahead(&self, ra: ReadAhead) {
        self.read_ahead_off
            .store(ra == ReadAhead::Off, Ordering::Relaxed);
    }

    fn set_cache(&self, cache: Cache) {
        self.forget.store(cache == Cache::Forget, Ordering::Relaxed);
    }

    fn load_meta(&self) -> Result<Option<RepoMeta>> {
        if !self.dir.is_dir() {
            return Err(
                Error::new(ErrorKind::NotFound, "no repository here (not a folder)")
                    .with_path(&self.dir),
            );
        }
        let path = self.dir.join(META_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("cannot read", e).with_path(&path)),
        };
        RepoMeta::decode(&bytes)
            .map(Some)
            .map_err(|e| e.with_path(&path))
    }

    fn commit_meta(&self, meta: &RepoMeta) -> Result<()> {
        vdisk_io::write_file(
            &self.dir.join(META_FILE),
            &meta.encode(),
            &OutputPolicy::replacing(),
        )
    }

    fn lock(&self) -> Result<Box<dyn WriterLock>> {
        Ok(Box::new(RepoLock::acquire(&self.dir)?))
    }

    fn prepare(&self) -> Result<()> {
        if !self.dir.exists() {
            std::fs::create_dir_all(&self.dir)
                .map_err(|e| Error::io("cannot create the repository", e).with_path(&self.dir))?;
        }
        Ok(())
    }

    fn is_ours(&self, name: &str) -> bool {
        name == LOCK_FILE || name == META_FILE || is_ours(name)
    }

    fn list(&self) -> Result<Vec<StoredFile>> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::io("cannot list", e).with_path(&self.dir))?;
        Ok(entries
            .filter_map(|e| e.ok())
            .map(|e| StoredFile {
                name: e.file_name().to_string_lossy().into_owned(),
                len: e.metadata().map(|m| m.len()).unwrap_or(0),
            })
            .collect())
    }

    fn len(&self, name: &str) -> Result<u64> {
        let p = self.dir.join(name);
        std::fs::metadata(&p)
            .map(|m| m.len())
            .map_err(|e| Error::io("cannot stat", e).with_path(&p))
    }

    fn read(&self, name: &str, max: u64) -> Result<Vec<u8>> {
        let p = self.dir.join(name);
        let buf = vdisk_io::read_head(&p, usize::try_from(max).unwrap_or(usize::MAX))?;
        if buf.len() as u64 >= max && self.len(name)? > max {
            return Err(Error::corrupt(format!("file is larger than {max} bytes")).with_path(&p));
        }
        Ok(buf)
    }

    fn put(&self, name: &str, bytes: &[u8]) -> Result<()> {
        vdisk_io::write_file(&self.dir.join(name), bytes, &OutputPolicy::replacing())
    }

    fn create_stream(&self, name: &str) -> Result<Box<dyn StreamOutput>> {
        let path = self.dir.join(name);
        let file = SparseWriter::create(&path, 0, &OutputPolicy::replacing())?;
        let clone = file
            .file()
            .try_clone()
            .map_err(|e| Error::io("cannot write", e).with_path(&path))?;
        Ok(Box::new(LocalStream {
            file: Some(file),
            out: BufWriter::with_capacity(1 << 20, clone),
            path,
        }))
    }

    fn remove(&self, name: &str) -> Result<()> {
        let p = self.dir.join(name);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("cannot remove", e).with_path(&p))
            }
            _ => Ok(()),
        }
    }

    fn image_output(&self, name: &str, policy: &OutputPolicy) -> Result<Box<dyn ImageOutput>> {
        Ok(Box::new(LocalFiles::new(&self.dir.join(name), policy)))
    }

    fn load(&self, path: &Path) -> Result<Bytes> {
        Ok(Bytes::File(
            MappedFile::open_with(path, self.read_ahead())?.with_cache(self.cache()),
        ))
    }

    fn manifest_bytes(&self, name: &str) -> Result<ManifestSource> {
        let path = self.dir.join(name);
        let file =
            std::fs::File::open(&path).map_err(|e| Error::io("cannot open", e).with_path(&path))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io("cannot stat", e).with_path(&path))?;
        Ok(ManifestSource::File {
            len: meta.len(),
            id: vdisk_io::file_id(&meta),
            file,
        })
    }

    /// Files with our names that the metadata does not list (written by a run killed before
    /// its switch, or replaced by a prune), and temporaries. Runs only under the lock, so no
    /// other run's files in the making are touched.
    fn clean_up(&self, keep: &HashSet<String>) -> Result<()> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::io("cannot list", e).with_path(&self.dir))?;
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_ours(&name) && !keep.contains(&name) && e.file_type().is_ok_and(|t| t.is_file()) {
                std::fs::remove_file(e.path()).map_err(|err| {
                    Error::io("cannot remove a leftover of an earlier run", err).with_path(e.path())
                })?;
            }
        }
        Ok(())
    }

    fn usage(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| vdisk_io::disk_usage(&m))
                    .sum()
            })
            .unwrap_or(0)
    }
}
