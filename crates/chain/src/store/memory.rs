//! A repository's storage held in memory, for the unit tests of the repository's logic
//! (backup, restore, verify, prune, sync, clean-up) without a file system, qemu or an object
//! store.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vdisk_core::{Error, ErrorKind, Result};
use vdisk_io::{Bytes, ImageOutput, OutputFile, OutputPolicy, RangedFile, SealedOutput};

use super::{name_in, ManifestSource, Store, StoredFile, StreamOutput, WriterLock};
use crate::layout2::meta::{RepoMeta, META_FILE};

type Files = Arc<Mutex<BTreeMap<String, Arc<Vec<u8>>>>>;

/// Files by name, the metadata among them, and a lock flag.
#[derive(Debug, Clone, Default)]
pub(crate) struct MemoryStore {
    root: PathBuf,
    files: Files,
    locked: Arc<AtomicBool>,
}

impl MemoryStore {
    /// An empty store that messages call `mem:/NAME`.
    pub(crate) fn new(name: &str) -> Self {
        MemoryStore {
            root: PathBuf::from(format!("mem:/{name}")),
            ..Default::default()
        }
    }

    /// The bytes of `name`, if it exists.
    pub(crate) fn get(&self, name: &str) -> Option<Vec<u8>> {
        self.lock_files().get(name).map(|b| b.to_vec())
    }

    /// Replace (or create) `name` with `bytes`, as damage or a foreign writer would.
    pub(crate) fn set(&self, name: &str, bytes: Vec<u8>) {
        self.lock_files().insert(name.to_string(), Arc::new(bytes));
    }

    /// The names of the files.
    pub(crate) fn names(&self) -> Vec<String> {
        self.lock_files().keys().cloned().collect()
    }

    fn lock_files(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Vec<u8>>>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn missing(&self, name: &str) -> Error {
        Error::new(ErrorKind::NotFound, "no such file").with_path(self.root.join(name))
    }
}

/// The lock of a [`MemoryStore`], released when dropped.
#[derive(Debug)]
struct MemoryLock(Arc<AtomicBool>);

impl WriterLock for MemoryLock {}

impl Drop for MemoryLock {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// A file being written into a store's map.
struct MemoryFile {
    files: Files,
    name: String,
    path: PathBuf,
    data: Vec<u8>,
}

impl MemoryFile {
    fn put(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        let end = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(buf.len()))
            .ok_or_else(|| Error::invalid("write past what memory holds"))?;
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[end - buf.len()..end].copy_from_slice(buf);
        Ok(())
    }
}

impl OutputFile for MemoryFile {
    fn write(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.put(buf, offset)
    }
    fn write_raw(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.put(buf, offset)
    }
    fn set_len(&mut self, len: u64) -> Result<()> {
        self.data.resize(
            usize::try_from(len).map_err(|_| Error::invalid("too long"))?,
            0,
        );
        Ok(())
    }
    fn seal(self: Box<Self>) -> Result<Box<dyn SealedOutput>> {
        Ok(self)
    }
}

impl SealedOutput for MemoryFile {
    fn destination(&self) -> &Path {
        &self.path
    }
    fn publish(self: Box<Self>) -> Result<()> {
        let MemoryFile {
            files, name, data, ..
        } = *self;
        files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, Arc::new(data));
        Ok(())
    }
}

/// The files of an image written into the store.
struct MemoryOutput {
    store: MemoryStore,
    dst: PathBuf,
    name: String,
    pending: Vec<Box<dyn SealedOutput>>,
}

impl ImageOutput for MemoryOutput {
    fn dst(&self) -> &Path {
        &self.dst
    }
    fn exists(&self, name: &Path) -> Result<bool> {
        Ok(self
            .store
            .lock_files()
            .contains_key(name.to_string_lossy().as_ref()))
    }
    fn create(&mut self, name: Option<&Path>) -> Result<Box<dyn OutputFile>> {
        let name = match name {
            Some(n) => n.to_string_lossy().into_owned(),
            None => self.name.clone(),
        };
        Ok(Box::new(MemoryFile {
            files: Arc::clone(&self.store.files),
            path: self.store.root.join(&name),
            name,
            data: Vec::new(),
        }))
    }
    fn keep(&mut self, file: Box<dyn SealedOutput>) -> Result<()> {
        self.pending.push(file);
        Ok(())
    }
    fn commit(self: Box<Self>, main: Box<dyn SealedOutput>) -> Result<()> {
        for f in self.pending {
            f.publish()?;
        }
        main.publish()
    }
}

impl StreamOutput for MemoryFile {
    fn writer(&mut self) -> &mut (dyn std::io::Write + Send) {
        &mut self.data
    }
    fn finish(self: Box<Self>) -> Result<u64> {
        let len = self.data.len() as u64;
        SealedOutput::publish(self)?;
        Ok(len)
    }
}

/// A file of the store read by range.
#[derive(Debug)]
struct MemoryRanged {
    path: PathBuf,
    data: Arc<Vec<u8>>,
}

impl RangedFile for MemoryRanged {
    fn path(&self) -> &Path {
        &self.path
    }
    fn len(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let start = usize::try_from(offset).map_err(|_| Error::invalid("offset"))?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.data.get(start..end))
            .ok_or_else(|| Error::corrupt("read past the end").with_path(&self.path))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// The names runs of vdisk write in a repository.
fn is_ours(name: &str) -> bool {
    name == META_FILE || name.starts_with("point-")
}

impl Store for MemoryStore {
    fn root(&self) -> &Path {
        &self.root
    }

    fn load_meta(&self) -> Result<Option<RepoMeta>> {
        match self.get(META_FILE) {
            Some(b) => RepoMeta::decode(&b)
                .map(Some)
                .map_err(|e| e.with_path(self.path(META_FILE))),
            None => Ok(None),
        }
    }

    fn commit_meta(&self, meta: &RepoMeta) -> Result<()> {
        self.set(META_FILE, meta.encode());
        Ok(())
    }

    fn lock(&self) -> Result<Box<dyn WriterLock>> {
        if self.locked.swap(true, Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::InUse, "repository is in use").with_path(&self.root));
        }
        Ok(Box::new(MemoryLock(Arc::clone(&self.locked))))
    }

    fn prepare(&self) -> Result<()> {
        Ok(())
    }

    fn is_ours(&self, name: &str) -> bool {
        is_ours(name)
    }

    fn list(&self) -> Result<Vec<StoredFile>> {
        Ok(self
            .lock_files()
            .iter()
            .map(|(name, b)| StoredFile {
                name: name.clone(),
                len: b.len() as u64,
            })
            .collect())
    }

    fn len(&self, name: &str) -> Result<u64> {
        self.lock_files()
            .get(name)
            .map(|b| b.len() as u64)
            .ok_or_else(|| self.missing(name))
    }

    fn read(&self, name: &str, max: u64) -> Result<Vec<u8>> {
        let b = self.get(name).ok_or_else(|| self.missing(name))?;
        if b.len() as u64 > max {
            return Err(Error::corrupt(format!("more than {max} bytes")).with_path(self.path(name)));
        }
        Ok(b)
    }

    fn put(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.set(name, bytes.to_vec());
        Ok(())
    }

    fn create_stream(&self, name: &str) -> Result<Box<dyn StreamOutput>> {
        Ok(Box::new(MemoryFile {
            files: Arc::clone(&self.files),
            path: self.root.join(name),
            name: name.to_string(),
            data: Vec::new(),
        }))
    }

    fn remove(&self, name: &str) -> Result<()> {
        self.lock_files().remove(name);
        Ok(())
    }

    fn image_output(&self, name: &str, _policy: &OutputPolicy) -> Result<Box<dyn ImageOutput>> {
        Ok(Box::new(MemoryOutput {
            store: self.clone(),
            dst: self.path(name),
            name: name.to_string(),
            pending: Vec::new(),
        }))
    }

    fn load(&self, path: &Path) -> Result<Bytes> {
        let name = name_in(&self.root, path)?;
        let b = self
            .lock_files()
            .get(name)
            .cloned()
            .ok_or_else(|| self.missing(name))?;
        Ok(Bytes::Owned(path.to_path_buf(), b))
    }

    fn manifest_bytes(&self, name: &str) -> Result<ManifestSource> {
        let data = self
            .lock_files()
            .get(name)
            .cloned()
            .ok_or_else(|| self.missing(name))?;
        Ok(ManifestSource::Ranged(Arc::new(MemoryRanged {
            path: self.path(name),
            data,
        })))
    }

    fn clean_up(&self, keep: &HashSet<String>) -> Result<()> {
        self.lock_files()
            .retain(|name, _| name == META_FILE || !is_ours(name) || keep.contains(name));
        Ok(())
    }

    fn usage(&self) -> u64 {
        self.lock_files()
            .iter()
            .filter(|(n, _)| is_ours(n))
            .map(|(_, b)| b.len() as u64)
            .sum()
    }
}
