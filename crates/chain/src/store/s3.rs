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

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes as Buf;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, UpdateVersion,
};
use tokio::runtime::Runtime;
use tokio::sync::OnceCell;
use vdisk_core::{Error, ErrorKind, Result};
use vdisk_io::{Bytes, ImageOutput, OutputFile, OutputPolicy, RangedFile, SealedOutput};

use super::{name_in, ManifestSource, Store, StoredFile, StreamOutput, WriterLock};
use crate::lock::RepoLock;
use crate::meta::RepoMeta;

/// The writer's lease object.
pub(crate) const LEASE: &str = "vdisk-lease.json";
const UPLOAD_MARKER: &str = ".vdisk-upload.";
/// A lease not renewed for this long has expired (its holder is gone or cut off).
const LEASE_TTL: Duration = Duration::from_secs(30);
/// How often the holder renews its lease.
const LEASE_RENEW: Duration = Duration::from_secs(10);
/// The first part of an upload, kept in memory and sent last (S3 parts but the last are at
/// least 5 MiB).
const HEAD_PART: u64 = 8 << 20;
/// Bytes of parts in flight at once, per upload.
const IN_FLIGHT_BYTES: u64 = 64 << 20;
/// Block size of ranged reads through the cache, and blocks kept (160 MiB).
const BLOCK: u64 = 16 << 20;
const CACHED_BLOCKS: usize = 10;
/// Blocks fetched ahead of a sequential reader.
const READ_AHEAD: u64 = 4;
/// Reads smaller than this of a file's metadata go straight to the store (a grain table
/// is 2 KiB; a 4 MiB block for it would be waste).
const SMALL_READ: usize = 64 << 10;
/// Largest metadata object read.
const MAX_META: u64 = 64 << 20;

/// Size of part `idx` (0 is the head): 16 MiB, 64 MiB from the 1,000th part, 128 MiB from
/// the 2,000th, so that S3's 10,000 parts hold 1.08 TiB, more than the largest extent (1 TiB
/// of grains and its tables), while the parts in memory stay under 300 MiB.
fn part_size(idx: usize) -> u64 {
    match idx {
        0 => HEAD_PART,
        1..1000 => 16 << 20,
        1000..2000 => 64 << 20,
        _ => 128 << 20,
    }
}

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
        || name == crate::meta::META_FILE
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

/// Whether an error is worth another try: server errors, time-outs and broken connections,
/// not answers about the request itself (not found, exists, denied, bad request).
fn transient(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    match e {
        E::Generic { .. } | E::JoinError { .. } => {
            let t = e.to_string();
            !(t.contains("status code: 4") && !t.contains("code: 408") && !t.contains("code: 429"))
        }
        _ => false,
    }
}

/// Run `op` until it succeeds, fails for good, or has failed transiently 5 times (on top of
/// the client's own retries of server errors), backing off between tries.
async fn retrying<T, F, Fut>(mut op: F) -> std::result::Result<T, object_store::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, object_store::Error>>,
{
    let mut delay = Duration::from_millis(200);
    let mut attempt = 0;
    loop {
        match op().await {
            Err(e) if attempt < 5 && transient(&e) => {
                attempt += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(4));
            }
            r => return r,
        }
    }
}

/// The client, its runtime and what every handle shares.
#[derive(Debug)]
struct Inner {
    rt: Runtime,
    s3: Arc<AmazonS3>,
    bucket: String,
    prefix: String,
    root: PathBuf,
    /// Values never to show in a message.
    secrets: Vec<String>,
    /// Number of the metadata object loaded (0: none, or the plain `vdisk-repo.json`).
    meta_seq: Mutex<u64>,
    cache: BlockCache,
    next_file: AtomicU64,
    /// Buffers of parts that have been sent, for the next parts.
    part_buffers: Arc<PartBuffers>,
}

/// Part buffers kept for reuse (a fresh 16 MiB buffer costs 4,096 page faults that zero its
/// pages, and giving it back to the system unmaps them again: a tenth of a backup's CPU
/// time), at most [`PartBuffers::KEEP`] bytes of them.
#[derive(Debug, Default)]
struct PartBuffers(Mutex<Vec<Vec<u8>>>);

impl PartBuffers {
    /// Bytes of idle buffers kept: the parts in flight, and one being filled.
    const KEEP: usize = (IN_FLIGHT_BYTES + 2 * (16 << 20)) as usize;

    /// An empty buffer that holds `len` bytes without growing.
    fn take(&self, len: usize) -> Vec<u8> {
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match idle.iter().position(|b| b.capacity() >= len) {
            Some(i) => idle.swap_remove(i),
            None => Vec::with_capacity(len),
        }
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let kept: usize = idle.iter().map(Vec::capacity).sum();
        if kept + buf.capacity() <= Self::KEEP {
            idle.push(buf);
        }
    }
}

/// A part's bytes, lent to the client; the buffer goes back to its pool when the last copy
/// of the payload (retries clone it) is dropped.
struct PooledPart {
    buf: Vec<u8>,
    pool: Arc<PartBuffers>,
}

impl AsRef<[u8]> for PooledPart {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledPart {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

impl Inner {
    fn key(&self, name: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(name)
        } else {
            Key::from(format!("{}/{name}", self.prefix))
        }
    }

    fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// A one-line error about `name`, without secrets or response bodies.
    fn err(&self, what: &str, name: &str, e: object_store::Error) -> Error {
        use object_store::Error as E;
        let path = if name.is_empty() {
            self.root.clone()
        } else {
            self.root.join(name)
        };
        let text = e.to_string();
        let (kind, msg) = match &e {
            E::NotFound { .. } if text.contains("NoSuchBucket") => (
                ErrorKind::NotFound,
                format!(
                    "no such bucket \"{}\" (vdisk never creates buckets: create it first)",
                    self.bucket
                ),
            ),
            E::NotFound { .. } => (ErrorKind::NotFound, format!("cannot {what}: not found")),
            E::AlreadyExists { .. } => (ErrorKind::AlreadyExists, format!("cannot {what}: exists")),
            E::Precondition { .. } => (
                ErrorKind::InUse,
                format!("cannot {what}: changed by another writer"),
            ),
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                (ErrorKind::Refused, denied())
            }
            _ if text.contains("NoSuchBucket") => (
                ErrorKind::NotFound,
                format!(
                    "no such bucket \"{}\" (vdisk never creates buckets: create it first)",
                    self.bucket
                ),
            ),
            _ if text.contains("status code: 403")
                || text.contains("SignatureDoesNotMatch")
                || text.contains("InvalidAccessKeyId")
                || text.contains("AccessDenied") =>
            {
                (ErrorKind::Refused, denied())
            }
            _ => (
                ErrorKind::Io,
                format!("cannot {what}: {}", self.clean(&text)),
            ),
        };
        Error::new(kind, msg).with_path(path)
    }

    /// An error text fit for one line: no XML body, no secret, not too long.
    fn clean(&self, text: &str) -> String {
        let mut t = text.split("<?xml").next().unwrap_or("").to_string();
        for s in &self.secrets {
            if !s.is_empty() {
                t = t.replace(s.as_str(), "[secret]");
            }
        }
        let t: String = t.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut out: String = t.chars().take(300).collect();
        if t.chars().count() > 300 {
            out.push('…');
        }
        out
    }
}

fn denied() -> String {
    "access denied: the store refused the credentials (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and that they may use this bucket)".into()
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
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let has_keys = env("AWS_ACCESS_KEY_ID").is_some() && env("AWS_SECRET_ACCESS_KEY").is_some();
        let other = env("AWS_WEB_IDENTITY_TOKEN_FILE").is_some()
            || env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
            || env("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some();
        if !has_keys && !other {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for a server other than AWS S3)",
            )
            .with_path(&root));
        }
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(4),
                base: 2.0,
            },
            max_retries: 6,
            retry_timeout: Duration::from_secs(60),
        };
        let client = ClientOptions::new()
            .with_timeout(Duration::from_secs(60))
            .with_connect_timeout(Duration::from_secs(5));
        // Client options first: the environment's (AWS_ALLOW_HTTP…) go on top of them.
        let mut builder = AmazonS3Builder::new()
            .with_client_options(client)
            .with_retry(retry);
        for (k, v) in std::env::vars() {
            if k.starts_with("AWS_") {
                if let Ok(key) = k.to_ascii_lowercase().parse() {
                    builder = builder.with_config(key, v);
                }
            }
        }
        let mut builder = builder.with_bucket_name(bucket);
        if env("AWS_REGION").is_none() && env("AWS_DEFAULT_REGION").is_none() {
            builder = builder.with_region("us-east-1");
        }
        let s3 = builder.build().map_err(|e| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "cannot set up the S3 client: {}",
                    e.to_string().split('\n').next().unwrap_or("")
                ),
            )
            .with_path(&root)
        })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .thread_name("vdisk-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::io("cannot start the S3 client's threads", e))?;
        let secrets = ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]
            .iter()
            .filter_map(|k| env(k))
            .collect();
        Ok(S3Store {
            inner: Arc::new(Inner {
                rt,
                s3: Arc::new(s3),
                bucket: bucket.into(),
                prefix: prefix.into(),
                root,
                secrets,
                meta_seq: Mutex::new(0),
                cache: BlockCache::default(),
                next_file: AtomicU64::new(1),
                part_buffers: Arc::default(),
            }),
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
                None if files.iter().any(|f| f.name == crate::meta::META_FILE) => {
                    (crate::meta::META_FILE.to_string(), 0)
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
                || (n == crate::meta::META_FILE && seq > 0)
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

impl S3Store {
    fn ranged(&self, name: &str, len: u64, small_direct: bool) -> S3File {
        S3File {
            store: self.clone(),
            name: name.to_string(),
            key: self.inner.key(name),
            path: self.inner.root.join(name),
            len,
            id: self.inner.next_file.fetch_add(1, Ordering::Relaxed),
            small_direct,
        }
    }
}

/// Blocks of objects read by range, shared by every file of the store: a reader that misses
/// fetches the block (others wanting it wait for that fetch) and starts fetching the next
/// few in the background.
#[derive(Debug, Default)]
struct BlockCache {
    /// Least recently used first: ((file, block), the block once fetched).
    slots: Mutex<VecDeque<(BlockKey, Arc<OnceCell<Buf>>)>>,
}

/// A block: (file id, block number).
type BlockKey = (u64, u64);

impl BlockCache {
    /// The slot of block `b` of file `id`, and whether it was there already.
    fn slot(&self, id: u64, b: u64) -> (Arc<OnceCell<Buf>>, bool) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = slots.iter().position(|(k, _)| *k == (id, b)) {
            let entry = slots.remove(i).unwrap_or_else(|| ((id, b), Arc::default()));
            let cell = Arc::clone(&entry.1);
            slots.push_back(entry);
            return (cell, true);
        }
        let cell: Arc<OnceCell<Buf>> = Arc::default();
        slots.push_back(((id, b), Arc::clone(&cell)));
        while slots.len() > CACHED_BLOCKS {
            slots.pop_front();
        }
        (cell, false)
    }
}

/// An object read by range.
#[derive(Debug)]
struct S3File {
    store: S3Store,
    name: String,
    key: Key,
    path: PathBuf,
    len: u64,
    id: u64,
    /// Whether small reads skip the cache (extents: their tables and headers).
    small_direct: bool,
}

async fn fetch(
    s3: Arc<AmazonS3>,
    key: Key,
    range: std::ops::Range<u64>,
) -> object_store::Result<Buf> {
    retrying(|| s3.get_range(&key, range.clone())).await
}

impl S3File {
    fn block(&self, b: u64) -> Result<Buf> {
        let i = &self.store.inner;
        let (cell, had) = i.cache.slot(self.id, b);
        // Keep the next blocks coming in the background (a window that slides with the
        // reader: a hit on a block fetched ahead asks for the one after the window).
        if !had || cell.initialized() {
            for next in b + 1..=b + READ_AHEAD {
                let start = next * BLOCK;
                if start >= self.len {
                    break;
                }
                let (c, had) = i.cache.slot(self.id, next);
                if had {
                    continue;
                }
                let (s3, key) = (Arc::clone(&i.s3), self.key.clone());
                let range = start..(start + BLOCK).min(self.len);
                i.rt.spawn(async move {
                    let _ = c.get_or_try_init(|| fetch(s3, key, range)).await;
                });
            }
        }
        let start = b * BLOCK;
        let range = start..(start + BLOCK).min(self.len);
        let (s3, key) = (Arc::clone(&i.s3), self.key.clone());
        i.block_on(cell.get_or_try_init(|| fetch(s3, key, range)))
            .cloned()
            .map_err(|e| i.err("read", &self.name, e))
    }
}

impl RangedFile for S3File {
    fn path(&self) -> &Path {
        &self.path
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| {
                Error::new(ErrorKind::OutOfBounds, "read past the end of the object")
                    .with_path(&self.path)
            })?;
        if buf.is_empty() {
            return Ok(());
        }
        let i = &self.store.inner;
        if self.small_direct && buf.len() < SMALL_READ {
            let got = i
                .block_on(fetch(Arc::clone(&i.s3), self.key.clone(), offset..end))
                .map_err(|e| i.err("read", &self.name, e))?;
            if got.len() != buf.len() {
                return Err(
                    Error::corrupt("the store returned a short range").with_path(&self.path)
                );
            }
            buf.copy_from_slice(&got);
            return Ok(());
        }
        let mut pos = offset;
        while pos < end {
            let b = pos / BLOCK;
            let data = self.block(b)?;
            let within = (pos - b * BLOCK) as usize;
            let n = ((end - pos) as usize).min(data.len().saturating_sub(within));
            if n == 0 {
                return Err(
                    Error::corrupt("the store returned a short range").with_path(&self.path)
                );
            }
            let at = (pos - offset) as usize;
            buf[at..at + n].copy_from_slice(&data[within..within + n]);
            pos += n as u64;
        }
        Ok(())
    }
}

/// An object being uploaded as it is written: bytes before [`HEAD_PART`] are kept in memory
/// (they may be written last: a sparse extent's header) and sent as part 1 at the end;
/// bytes after it must come in order and leave in parts as they fill. An object that ends
/// within the head is one plain put.
struct Upload {
    store: S3Store,
    name: String,
    key: Key,
    head: Vec<u8>,
    /// Bytes after the head not yet sent.
    tail: Vec<u8>,
    /// Bytes after the head written so far (sent or not).
    tail_len: u64,
    /// The multipart upload, once started: its id and the marker naming it.
    upload: Option<(String, String)>,
    /// Parts sent or in flight, from part 2 (index 1) on.
    parts: Vec<tokio::task::JoinHandle<object_store::Result<PartId>>>,
    done: Vec<PartId>,
    finished: bool,
}

impl Upload {
    fn new(store: S3Store, name: &str) -> Self {
        let key = store.inner.key(name);
        Upload {
            store,
            name: name.to_string(),
            key,
            head: Vec::new(),
            tail: Vec::new(),
            tail_len: 0,
            upload: None,
            parts: Vec::new(),
            done: Vec::new(),
            finished: false,
        }
    }

    fn end(&self) -> u64 {
        if self.tail_len > 0 {
            HEAD_PART + self.tail_len
        } else {
            self.head.len() as u64
        }
    }

    fn write_bytes(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        let mut buf = buf;
        let mut offset = offset;
        if offset < HEAD_PART {
            let n = ((HEAD_PART - offset) as usize).min(buf.len());
            let end = offset as usize + n;
            if self.head.len() < end {
                self.head.resize(end, 0);
            }
            self.head[offset as usize..end].copy_from_slice(&buf[..n]);
            buf = &buf[n..];
            offset += n as u64;
            if buf.is_empty() {
                return Ok(());
            }
        }
        let at = offset - HEAD_PART;
        if at < self.tail_len {
            return Err(Error::invalid(format!(
                "an upload was written out of order (at {offset}, after {})",
                HEAD_PART + self.tail_len
            ))
            .with_path(self.store.inner.root.join(&self.name)));
        }
        if at > self.tail_len {
            self.append_zeros(at - self.tail_len)?;
        }
        self.append(buf)
    }

    fn append_zeros(&mut self, mut n: u64) -> Result<()> {
        let zeros = vec![0u8; 1 << 20];
        while n > 0 {
            let k = n.min(zeros.len() as u64) as usize;
            self.append(&zeros[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    fn append(&mut self, mut buf: &[u8]) -> Result<()> {
        while !buf.is_empty() {
            let want = part_size(self.done.len() + self.parts.len() + 1) as usize;
            if self.tail.is_empty() && self.tail.capacity() < want {
                self.tail = self.store.inner.part_buffers.take(want);
            }
            let n = (want - self.tail.len()).min(buf.len());
            self.tail.extend_from_slice(&buf[..n]);
            self.tail_len += n as u64;
            buf = &buf[n..];
            if self.tail.len() == want {
                self.send_part()?;
            }
        }
        Ok(())
    }

    fn start(&mut self) -> Result<(String, String)> {
        if let Some(u) = &self.upload {
            return Ok(u.clone());
        }
        let i = &self.store.inner;
        let id = i
            .block_on(retrying(|| i.s3.create_multipart(&self.key)))
            .map_err(|e| i.err("start uploading", &self.name, e))?;
        let marker = format!("{UPLOAD_MARKER}{:016x}", random_u64());
        let note = format!("{}\n{id}\n", self.key);
        if let Err(e) = super::Store::put(&self.store, &marker, note.as_bytes()) {
            let _ = i.block_on(i.s3.abort_multipart(&self.key, &id));
            return Err(e);
        }
        self.upload = Some((id.clone(), marker.clone()));
        Ok((id, marker))
    }

    /// Send the tail as the next part, waiting for older parts while too many bytes fly.
    fn send_part(&mut self) -> Result<()> {
        let (id, _) = self.start()?;
        let idx = self.done.len() + self.parts.len() + 1;
        let i = &self.store.inner;
        let payload = PutPayload::from(Buf::from_owner(PooledPart {
            buf: std::mem::take(&mut self.tail),
            pool: Arc::clone(&i.part_buffers),
        }));
        let (s3, key) = (Arc::clone(&i.s3), self.key.clone());
        self.parts.push(
            i.rt.spawn(
                async move { retrying(|| s3.put_part(&key, &id, idx, payload.clone())).await },
            ),
        );
        let max_in_flight = (IN_FLIGHT_BYTES / part_size(idx)).max(1) as usize;
        while self.parts.len() > max_in_flight {
            self.wait_oldest()?;
        }
        Ok(())
    }

    fn wait_oldest(&mut self) -> Result<()> {
        let h = self.parts.remove(0);
        let i = &self.store.inner;
        let part = i
            .block_on(h)
            .map_err(|e| Error::new(ErrorKind::Io, format!("an upload task failed: {e}")))?
            .map_err(|e| i.err("upload a part of", &self.name, e))?;
        self.done.push(part);
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> Result<()> {
        let end = self.end();
        if len < end {
            return Err(Error::invalid("an upload cannot be cut shorter")
                .with_path(self.store.inner.root.join(&self.name)));
        }
        if len > end {
            if len <= HEAD_PART {
                self.head.resize(len as usize, 0);
            } else {
                self.write_bytes(&[], len)?;
                self.append_zeros(len - self.end())?;
            }
        }
        Ok(())
    }

    fn complete(&mut self) -> Result<u64> {
        let len = self.end();
        let i = Arc::clone(&self.store.inner);
        if self.tail_len == 0 {
            // Small: one put.
            super::Store::put(&self.store, &self.name, &self.head)?;
            self.finished = true;
            return Ok(len);
        }
        if !self.tail.is_empty() {
            self.send_part()?;
        }
        while !self.parts.is_empty() {
            self.wait_oldest()?;
        }
        let (id, marker) = self.start()?;
        self.head.resize(HEAD_PART as usize, 0);
        let head = PutPayload::from(Buf::from(std::mem::take(&mut self.head)));
        let first = i
            .block_on(retrying(|| i.s3.put_part(&self.key, &id, 0, head.clone())))
            .map_err(|e| i.err("upload the first part of", &self.name, e))?;
        let mut parts = vec![first];
        parts.append(&mut self.done);
        let done = i.block_on(retrying(|| {
            i.s3.complete_multipart(&self.key, &id, parts.clone())
        }));
        if let Err(e) = done {
            // An attempt whose answer was lost may have completed it.
            let key = self.key.clone();
            match i.block_on(i.s3.head(&key)) {
                Ok(m) if m.size == len => {}
                _ => return Err(i.err("finish uploading", &self.name, e)),
            }
        }
        self.finished = true;
        super::Store::remove(&self.store, &marker)?;
        Ok(len)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        for h in self.parts.drain(..) {
            h.abort();
        }
        if let Some((id, marker)) = self.upload.take() {
            let i = &self.store.inner;
            let aborted = i.block_on(i.s3.abort_multipart(&self.key, &id)).is_ok();
            if aborted {
                let _ = super::Store::remove(&self.store, &marker);
            }
        }
    }
}

impl Write for Upload {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let end = self.end();
        self.write_bytes(buf, end)
            .map(|()| buf.len())
            .map_err(std::io::Error::other)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl StreamOutput for Upload {
    fn writer(&mut self) -> &mut (dyn Write + Send) {
        self
    }
    fn finish(mut self: Box<Self>) -> Result<u64> {
        self.complete()
    }
}

impl OutputFile for Upload {
    fn write(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.write_bytes(buf, offset)
    }
    fn write_raw(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.write_bytes(buf, offset)
    }
    fn set_len(&mut self, len: u64) -> Result<()> {
        Upload::set_len(self, len)
    }
    /// An object is complete once its upload is: nothing refers to it until the metadata
    /// names its point, so it needs no renaming to be published.
    fn seal(mut self: Box<Self>) -> Result<Box<dyn SealedOutput>> {
        let path = self.store.inner.root.join(&self.name);
        self.complete()?;
        Ok(Box::new(Uploaded(path)))
    }
}

/// An object whose upload is complete.
struct Uploaded(PathBuf);

impl SealedOutput for Uploaded {
    fn destination(&self) -> &Path {
        &self.0
    }
    fn publish(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// The files of an image written to the store: each extent uploaded as it is written and
/// complete when kept (nothing refers to it until the metadata names the point), the
/// descriptor last.
struct S3ImageOutput {
    store: S3Store,
    dst: PathBuf,
    name: String,
}

impl ImageOutput for S3ImageOutput {
    fn dst(&self) -> &Path {
        &self.dst
    }
    fn exists(&self, name: &Path) -> Result<bool> {
        let name = name.to_string_lossy();
        match super::Store::len(&self.store, &name) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
    fn create(&mut self, name: Option<&Path>) -> Result<Box<dyn OutputFile>> {
        let name = match name {
            Some(n) => n.to_string_lossy().into_owned(),
            None => self.name.clone(),
        };
        Ok(Box::new(Upload::new(self.store.clone(), &name)))
    }
    fn keep(&mut self, file: Box<dyn SealedOutput>) -> Result<()> {
        file.publish()
    }
    fn commit(self: Box<Self>, main: Box<dyn SealedOutput>) -> Result<()> {
        main.publish()
    }
}

/// The writer's lease (see the module docs).
#[derive(Debug)]
struct Lease {
    store: S3Store,
    /// The kernel lock that tells other runs on this host that the holder is alive.
    _local: RepoLock,
    state: Arc<Mutex<LeaseState>>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug)]
struct LeaseState {
    version: UpdateVersion,
    lost: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct LeaseBody {
    format: String,
    host: String,
    boot: String,
    pid: u32,
    token: String,
    expires: u64,
}

fn host_ids() -> (String, String) {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    (
        read("/proc/sys/kernel/hostname"),
        read("/proc/sys/kernel/random/boot_id"),
    )
}

impl Lease {
    fn body(token: &str) -> Vec<u8> {
        let (host, boot) = host_ids();
        let b = LeaseBody {
            format: "vdisk-lease".into(),
            host,
            boot,
            pid: std::process::id(),
            token: token.into(),
            expires: unix_now() + LEASE_TTL.as_secs(),
        };
        serde_json::to_vec_pretty(&b).unwrap_or_default()
    }

    fn acquire(store: S3Store) -> Result<Self> {
        let root = store.inner.root.clone();
        let in_use = |why: String| {
            Error::new(
                ErrorKind::InUse,
                format!("repository is in use by another vdisk run ({why})"),
            )
            .with_path(&root)
        };
        // One run at a time on this host, proved by the kernel (released when a run dies).
        let tag = format!(
            "{}|{}|{}",
            std::env::var("AWS_ENDPOINT_URL").unwrap_or_default(),
            store.inner.bucket,
            store.inner.prefix
        );
        let lock_path = std::env::temp_dir().join(format!(
            ".vdisk-s3-{}-{:08x}.lock",
            store.inner.bucket,
            crc32fast::hash(tag.as_bytes())
        ));
        let local = RepoLock::acquire_file(&lock_path, &root).map_err(|e| {
            if e.kind() == ErrorKind::InUse {
                in_use("a backup or prune on this host is writing it".into())
            } else {
                e
            }
        })?;
        let token = format!("{:016x}", random_u64());
        let body = Self::body(&token);
        let version = match store.create_only(LEASE, &body)? {
            Some(v) => v,
            None => {
                // Someone's lease: take it over if its holder is gone.
                let (old, version) = match store.get_whole(LEASE, 64 << 10) {
                    Ok(x) => x,
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        return Err(in_use(
                            "its lease changed while it was read; try again".into(),
                        ))
                    }
                    Err(e) => return Err(e),
                };
                let (host, boot) = host_ids();
                let parsed: Option<LeaseBody> = serde_json::from_slice(&old).ok();
                let takeover = match &parsed {
                    // Here (we hold the kernel lock: its holder is gone), or here before a
                    // reboot (gone too).
                    Some(l) if l.host == host => {
                        let _ = &boot;
                        true
                    }
                    Some(l) => l.expires < unix_now(),
                    // Not a lease of ours: nobody holds it.
                    None => true,
                };
                if !takeover {
                    let l = parsed.as_ref();
                    return Err(in_use(format!(
                        "host {}, pid {}; its lease expires in {} s unless renewed",
                        l.map_or("?", |l| l.host.as_str()),
                        l.map_or(0, |l| l.pid),
                        l.map_or(0, |l| l.expires.saturating_sub(unix_now()))
                    )));
                }
                let i = &store.inner;
                let key = i.key(LEASE);
                let opts = PutOptions {
                    mode: PutMode::Update(version),
                    ..Default::default()
                };
                match i.block_on(i.s3.put_opts(&key, PutPayload::from(body), opts)) {
                    Ok(p) => UpdateVersion {
                        e_tag: p.e_tag,
                        version: p.version,
                    },
                    Err(object_store::Error::Precondition { .. }) => {
                        return Err(in_use("another run took its lease over first".into()))
                    }
                    Err(e) => return Err(i.err("take over the lease", LEASE, e)),
                }
            }
        };
        let state = Arc::new(Mutex::new(LeaseState {
            version,
            lost: false,
        }));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let renewer = {
            let store = store.clone();
            let state = Arc::clone(&state);
            std::thread::Builder::new()
                .name("vdisk-lease".into())
                .spawn(move || renew(store, state, rx, token))
                .map_err(|e| Error::io("cannot start the lease renewer", e))?
        };
        Ok(Lease {
            store,
            _local: local,
            state,
            stop: Some(tx),
            renewer: Some(renewer),
        })
    }
}

/// Renew the lease every [`LEASE_RENEW`] until told to stop or the lease is lost.
fn renew(
    store: S3Store,
    state: Arc<Mutex<LeaseState>>,
    stop: std::sync::mpsc::Receiver<()>,
    token: String,
) {
    let i = &store.inner;
    let key = i.key(LEASE);
    let mut deadline = unix_now() + LEASE_TTL.as_secs();
    loop {
        match stop.recv_timeout(LEASE_RENEW) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let version = state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .version
            .clone();
        let opts = PutOptions {
            mode: PutMode::Update(version),
            ..Default::default()
        };
        let body = Lease::body(&token);
        let r = i.block_on(i.s3.put_opts(&key, PutPayload::from(body), opts));
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Ok(p) => {
                s.version = UpdateVersion {
                    e_tag: p.e_tag,
                    version: p.version,
                };
                deadline = unix_now() + LEASE_TTL.as_secs();
            }
            Err(object_store::Error::Precondition { .. }) => {
                s.lost = true;
                return;
            }
            Err(_) if unix_now() >= deadline => {
                s.lost = true;
                return;
            }
            Err(_) => {}
        }
    }
}

impl WriterLock for Lease {
    fn check(&self) -> Result<()> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let lost = || {
            Error::new(
                ErrorKind::InUse,
                "this run lost the repository's lease (another run took it over); nothing was changed by this run",
            )
            .with_path(self.store.path(LEASE))
        };
        if s.lost {
            return Err(lost());
        }
        let i = &self.store.inner;
        let key = i.key(LEASE);
        match i.block_on(retrying(|| i.s3.head(&key))) {
            Ok(m) if m.e_tag.is_some() && m.e_tag == s.version.e_tag => Ok(()),
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Err(lost()),
            Err(e) => Err(i.err("read", LEASE, e)),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        let lost = self.state.lock().map(|s| s.lost).unwrap_or(true);
        if !lost {
            let _ = super::Store::remove(&self.store, LEASE);
        }
    }
}
