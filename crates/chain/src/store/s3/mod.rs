//! A repository on an S3 or S3-compatible object store (AWS S3, Ceph RGW, MinIO, SeaweedFS,
//! Garage…), through Apache Arrow's `object_store`. Its async client runs on a private tokio
//! runtime owned by the store; everything outside this module stays synchronous.
//!
//! Objects under `PREFIX/`:
//!
//! - `point-…`: the points' files, named as in a folder (a copy of the objects is a local
//!   repository qemu-img opens);
//! - `vdisk-repo.NNNNNNNNNNNN.json`: the metadata, one object per commit, each created with a
//!   conditional put (`If-None-Match: *`), so that a commit can never replace a newer state;
//!   the highest number is current, and older ones are removed by the next writer;
//! - `vdisk-lease.json`: the writer's lease (created with `If-None-Match: *`, renewed with
//!   `If-Match` every 10 s, expiring 30 s after its last renewal). On the writer's host a kernel
//!   lock on a file in the temporary folder proves whether its holder is alive: a lease left
//!   by a run killed here is taken over at once, one from another host once it has expired;
//! - `.vdisk-upload.XXXXXXXXXXXXXXXX`: the key and id of a multipart upload in progress, so
//!   that the next writer aborts what a killed run was uploading.
//!
//! Large objects are uploaded as they are produced, in parts, with the first part (a sparse
//! extent's header and its first grains) kept in memory and sent last. Objects are read by
//! range through a small shared cache of 16 MiB blocks, with read-ahead.

mod client;
mod lease;
mod objects;
mod read;
#[cfg(test)]
mod tests;
mod upload;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use vdisk_core::{Error, ErrorKind, Result};
use vdisk_io::{Bytes, ImageOutput, OutputPolicy};

pub(crate) use self::client::Backend;
use self::client::{retrying, transient, Inner};
use self::lease::Lease;
pub(crate) use self::objects::S3Objects;
use self::upload::{S3ImageOutput, Upload};
use super::{name_in, ManifestSource, Store, StoredFile, StreamOutput, WriterLock};
use crate::layout2::meta::RepoMeta;

/// The writer's lease object.
pub(crate) const LEASE: &str = "vdisk-lease.json";
/// The name of an upload in progress starts so: `.vdisk-upload.XXXXXXXXXXXXXXXX`.
const UPLOAD_MARKER: &str = ".vdisk-upload.";
/// Largest metadata object read.
const MAX_META: u64 = 64 << 20;

fn meta_name(n: u64) -> String {
    format!("vdisk-repo.{n:012}.json")
}

fn meta_number(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("vdisk-repo.")?.strip_suffix(".json")?;
    (digits.len() == 12 && digits.bytes().all(|c| c.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Whether `name` is one vdisk writes under a prefix.
fn is_ours(name: &str) -> bool {
    name.starts_with("point-")
        || name.starts_with(UPLOAD_MARKER)
        || name == LEASE
        || name == crate::layout2::meta::META_FILE
        || meta_number(name).is_some()
}

/// A random 64-bit number (upload markers, lease tokens).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A repository under `s3://BUCKET/PREFIX`.
#[derive(Debug, Clone)]
pub(crate) struct S3Store {
    inner: Arc<Inner>,
}

impl S3Store {
    /// A client for `bucket` with the credentials, region and endpoint of the environment.
    pub(crate) fn open(bucket: &str, prefix: &str) -> Result<Self> {
        let root = PathBuf::from(
            super::Location::S3 {
                bucket: bucket.into(),
                prefix: prefix.into(),
            }
            .to_string(),
        );
        let (backend, secrets) = client::from_environment(bucket, &root)?;
        Self::with_backend(backend, bucket, prefix, secrets)
    }

    /// A repository under `prefix` of `backend` (an S3 client, or `object_store`'s in-memory
    /// store in tests), naming itself `s3://BUCKET/PREFIX`; `secrets` are never shown in a
    /// message.
    pub(crate) fn with_backend(
        backend: Arc<dyn Backend>,
        bucket: &str,
        prefix: &str,
        secrets: Vec<String>,
    ) -> Result<Self> {
        let root = PathBuf::from(
            super::Location::S3 {
                bucket: bucket.into(),
                prefix: prefix.into(),
            }
            .to_string(),
        );
        Ok(S3Store {
            inner: Arc::new(Inner::new(backend, bucket, prefix, root, secrets)?),
        })
    }

    fn get_whole(&self, name: &str, max: u64) -> Result<(Vec<u8>, UpdateVersion)> {
        let i = &self.inner;
        let key = i.key(name);
        let got = i
            .block_on(retrying(|| async {
                let r = i.s3.get(&key).await?;
                let version = UpdateVersion {
                    e_tag: r.meta.e_tag.clone(),
                    version: r.meta.version.clone(),
                };
                if r.meta.size > max {
                    return Ok(Err(r.meta.size));
                }
                Ok(Ok((r.bytes().await?.to_vec(), version)))
            }))
            .map_err(|e| i.err("read", name, e))?;
        got.map_err(|size| {
            Error::corrupt(format!("object is {size} bytes, more than {max} expected"))
                .with_path(i.root.join(name))
        })
    }

    /// Create `name` unless it exists: `Ok(true)` when created by this call (a retried
    /// create that had succeeded is recognised by its content).
    fn create_only(&self, name: &str, bytes: &[u8]) -> Result<Option<UpdateVersion>> {
        let i = &self.inner;
        let key = i.key(name);
        let payload = PutPayload::from(bytes.to_vec());
        let opts = || PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let r = i.block_on(i.s3.put_opts(&key, payload.clone(), opts()));
        match r {
            Ok(p) => Ok(Some(UpdateVersion {
                e_tag: p.e_tag,
                version: p.version,
            })),
            Err(e) => {
                let is_exists = matches!(
                    e,
                    object_store::Error::AlreadyExists { .. }
                        | object_store::Error::Precondition { .. }
                );
                if !is_exists && !transient(&e) {
                    return Err(i.err("create", name, e));
                }
                // Did an attempt whose answer was lost create it?
                match self.get_whole(name, bytes.len() as u64 + 1) {
                    Ok((have, v)) if have == bytes => Ok(Some(v)),
                    Ok(_) => Ok(None),
                    Err(_) if is_exists => Ok(None),
                    Err(_) => Err(i.err("create", name, e)),
                }
            }
        }
    }

    fn list_all(&self) -> Result<Vec<StoredFile>> {
        let i = &self.inner;
        let prefix = if i.prefix.is_empty() {
            None
        } else {
            Some(Key::from(i.prefix.as_str()))
        };
        let strip = if i.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", i.prefix)
        };
        let metas = i
            .block_on(retrying(|| async {
                i.s3.list(prefix.as_ref()).try_collect::<Vec<_>>().await
            }))
            .map_err(|e| i.err("list", "", e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let key = m.location.to_string();
                key.strip_prefix(&strip).map(|n| StoredFile {
                    name: n.to_string(),
                    len: m.size,
                })
            })
            .collect())
    }

    fn delete(&self, name: &str) -> Result<()> {
        let i = &self.inner;
        let key = i.key(name);
        match i.block_on(retrying(|| i.s3.delete(&key))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(i.err("remove", name, e)),
        }
    }

    /// Abort the upload a marker names, and remove the marker.
    fn abort_marked(&self, marker: &str) -> Result<()> {
        let i = &self.inner;
        if let Ok((text, _)) = self.get_whole(marker, 4096) {
            let text = String::from_utf8_lossy(&text).into_owned();
            let mut lines = text.lines();
            if let (Some(key), Some(id)) = (lines.next(), lines.next()) {
                // Only keys under this repository's prefix: a marker is input too.
                let ours = name_of_key(&i.prefix, key).is_some_and(|n| !n.contains('/'));
                if ours {
                    let key = Key::from(key);
                    let id = id.to_string();
                    let _ = i.block_on(retrying(|| i.s3.abort_multipart(&key, &id)));
                }
            }
        }
        self.delete(marker)
    }
}

fn name_of_key<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    if prefix.is_empty() {
        Some(key)
    } else {
        key.strip_prefix(prefix)?.strip_prefix('/')
    }
}

impl Store for S3Store {
    fn root(&self) -> &Path {
        &self.inner.root
    }

    fn load_meta(&self) -> Result<Option<RepoMeta>> {
        // The newest metadata object; a reader that lists just before a writer removes an
        // older one lists again.
        for _ in 0..3 {
            let files = self.list_all()?;
            let newest = files.iter().filter_map(|f| meta_number(&f.name)).max();
            let (name, n) = match newest {
                Some(n) => (meta_name(n), n),
                None if files
                    .iter()
                    .any(|f| f.name == crate::layout2::meta::META_FILE) =>
                {
                    (crate::layout2::meta::META_FILE.to_string(), 0)
                }
                None => {
                    *self
                        .inner
                        .meta_seq
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = 0;
                    return Ok(None);
                }
            };
            match self.get_whole(&name, MAX_META) {
                Ok((bytes, _)) => {
                    let meta =
                        RepoMeta::decode(&bytes).map_err(|e| e.with_path(self.path(&name)))?;
                    *self
                        .inner
                        .meta_seq
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = n;
                    return Ok(Some(meta));
                }
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::new(
            ErrorKind::InUse,
            "the metadata keeps changing while it is read; try again",
        )
        .with_path(self.root()))
    }

    fn commit_meta(&self, meta: &RepoMeta) -> Result<()> {
        let n = *self
            .inner
            .meta_seq
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            + 1;
        let name = meta_name(n);
        match self.create_only(&name, &meta.encode())? {
            Some(_) => {
                *self.inner.meta_seq.lock().unwrap_or_else(|e| e.into_inner()) = n;
                Ok(())
            }
            None => Err(Error::new(
                ErrorKind::InUse,
                "another writer changed the repository while this run was writing it (was its lease lost?); nothing was changed by this run",
            )
            .with_path(self.path(&name))),
        }
    }

    fn lock(&self) -> Result<Box<dyn WriterLock>> {
        Ok(Box::new(Lease::acquire(self.clone())?))
    }

    fn prepare(&self) -> Result<()> {
        Ok(())
    }

    fn is_ours(&self, name: &str) -> bool {
        is_ours(name)
    }

    fn list(&self) -> Result<Vec<StoredFile>> {
        self.list_all()
    }

    fn len(&self, name: &str) -> Result<u64> {
        let i = &self.inner;
        let key = i.key(name);
        i.block_on(retrying(|| i.s3.head(&key)))
            .map(|m| m.size)
            .map_err(|e| i.err("read", name, e))
    }

    fn read(&self, name: &str, max: u64) -> Result<Vec<u8>> {
        self.get_whole(name, max).map(|(b, _)| b)
    }

    fn put(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let i = &self.inner;
        let key = i.key(name);
        let payload = PutPayload::from(bytes.to_vec());
        i.block_on(retrying(|| i.s3.put(&key, payload.clone())))
            .map(|_| ())
            .map_err(|e| i.err("write", name, e))
    }

    fn create_stream(&self, name: &str) -> Result<Box<dyn StreamOutput>> {
        Ok(Box::new(Upload::new(self.clone(), name)))
    }

    fn remove(&self, name: &str) -> Result<()> {
        self.delete(name)
    }

    fn image_output(&self, name: &str, _policy: &OutputPolicy) -> Result<Box<dyn ImageOutput>> {
        Ok(Box::new(S3ImageOutput {
            store: self.clone(),
            dst: self.path(name),
            name: name.to_string(),
        }))
    }

    fn load(&self, path: &Path) -> Result<Bytes> {
        let name = name_in(self.root(), path)?;
        let len = self.len(name)?;
        // Descriptors and other small files are read whole; extents by range.
        if len <= 1 << 20 {
            let bytes = self.read(name, 1 << 20)?;
            return Ok(Bytes::Owned(path.to_path_buf(), Arc::new(bytes)));
        }
        Ok(Bytes::Remote(Arc::new(self.ranged(name, len, true))))
    }

    fn manifest_bytes(&self, name: &str) -> Result<ManifestSource> {
        let len = self.len(name)?;
        Ok(ManifestSource::Ranged(Arc::new(
            self.ranged(name, len, false),
        )))
    }

    fn clean_up(&self, keep: &HashSet<String>) -> Result<()> {
        let seq = *self
            .inner
            .meta_seq
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for f in self.list_all()? {
            let n = f.name.as_str();
            if n.contains('/') {
                continue;
            }
            if n.starts_with(UPLOAD_MARKER) {
                self.abort_marked(n)?;
            } else if (n.starts_with("point-") && !keep.contains(n))
                || meta_number(n).is_some_and(|m| m < seq)
                || (n == crate::layout2::meta::META_FILE && seq > 0)
            {
                self.delete(n)?;
            }
        }
        Ok(())
    }

    fn usage(&self) -> u64 {
        self.list_all()
            .map(|v| v.iter().filter(|f| is_ours(&f.name)).map(|f| f.len).sum())
            .unwrap_or(0)
    }
}
