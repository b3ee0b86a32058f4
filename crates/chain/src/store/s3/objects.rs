//! A layout-3 repository's objects under `s3://BUCKET/PREFIX`: conditional creates
//! (`If-None-Match: *`), whole packs cached while they are read (a pack is one GET, not one
//! per block), index tables cached in a local folder of the user's (read by position, like a
//! folder's), large objects uploaded in parts.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutPayload};
use vdisk_core::{Error, Result};

use super::client::retrying;
use super::upload::Upload;
use super::S3Store;
use crate::store::objects::{valid_name, ObjectInfo, Objects};
use crate::store::StreamOutput;

/// Packs kept whole in memory while blocks are read from them.
const CACHED_PACKS: usize = 4;
/// Objects larger than this are read by range, never whole.
const WHOLE_MAX: u64 = 64 << 20;

/// The objects of a repository on an object store.
#[derive(Debug)]
pub(crate) struct S3Objects {
    store: S3Store,
    packs: Mutex<VecDeque<(String, Arc<Vec<u8>>)>>,
    cache_dir: Mutex<Option<PathBuf>>,
}

impl S3Objects {
    pub(crate) fn new(store: S3Store) -> Self {
        S3Objects {
            store,
            packs: Mutex::new(VecDeque::new()),
            cache_dir: Mutex::new(None),
        }
    }

    fn check(&self, name: &str) -> Result<()> {
        if valid_name(name) {
            Ok(())
        } else {
            Err(Error::invalid(format!("\"{name}\" is not an object name"))
                .with_path(self.location()))
        }
    }

    /// The folder this repository's cached index tables live in (made on first use, mode
    /// 0700): `$XDG_CACHE_HOME/vdisk` or `~/.cache/vdisk`, then a folder per repository.
    fn cache_dir(&self) -> Result<PathBuf> {
        let mut c = self.cache_dir.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = &*c {
            return Ok(d.clone());
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .ok_or_else(|| Error::invalid("no cache folder (set HOME or XDG_CACHE_HOME)"))?;
        let i = &self.store.inner;
        let tag = format!(
            "{}|{}|{}",
            std::env::var("AWS_ENDPOINT_URL").unwrap_or_default(),
            i.bucket,
            i.prefix
        );
        let dir = base.join("vdisk").join(crate::crypto::hex(
            &blake3::hash(tag.as_bytes()).as_bytes()[..12],
        ));
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io("cannot create the cache folder", e).with_path(&dir))?;
        *c = Some(dir.clone());
        Ok(dir)
    }

    fn get(&self, name: &str, range: Option<std::ops::Range<u64>>) -> Result<Vec<u8>> {
        let i = &self.store.inner;
        let key = i.key(name);
        let got = i.block_on(retrying(|| async {
            match &range {
                Some(r) => i.s3.get_range(&key, r.clone()).await,
                None => i.s3.get(&key).await?.bytes().await,
            }
        }));
        got.map(|b| b.to_vec()).map_err(|e| i.err("read", name, e))
    }

    fn head_len(&self, name: &str) -> Result<u64> {
        self.head(name).map(|h| h.0)
    }

    /// The length and entity tag of `name`.
    fn head(&self, name: &str) -> Result<(u64, String)> {
        let i = &self.store.inner;
        let key = i.key(name);
        i.block_on(retrying(|| i.s3.head(&key)))
            .map(|m| (m.size, m.e_tag.unwrap_or_default()))
            .map_err(|e| i.err("read", name, e))
    }

    /// A whole pack, from the cache or fetched (and cached).
    fn pack(&self, name: &str) -> Result<Arc<Vec<u8>>> {
        {
            let mut p = self.packs.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = p.iter().position(|(n, _)| n == name) {
                let e = p.remove(i).unwrap_or_default();
                let bytes = Arc::clone(&e.1);
                p.push_back(e);
                return Ok(bytes);
            }
        }
        let bytes = Arc::new(self.get(name, None)?);
        if bytes.len() as u64 > crate::pack::MAX_PACK {
            return Err(
                Error::corrupt("pack is far too large").with_path(self.location().join(name))
            );
        }
        let mut p = self.packs.lock().unwrap_or_else(|e| e.into_inner());
        p.push_back((name.to_string(), Arc::clone(&bytes)));
        while p.len() > CACHED_PACKS {
            p.pop_front();
        }
        Ok(bytes)
    }
}

impl Objects for S3Objects {
    fn location(&self) -> &Path {
        &self.store.inner.root
    }

    fn read(&self, name: &str, max: u64) -> Result<Vec<u8>> {
        self.check(name)?;
        let len = self.head_len(name)?;
        if len > max {
            return Err(Error::corrupt(format!(
                "object is {len} bytes, more than the {max} it may have"
            ))
            .with_path(self.location().join(name)));
        }
        let b = self.get(name, None)?;
        if b.len() as u64 > max {
            return Err(Error::corrupt("object grew while it was read")
                .with_path(self.location().join(name)));
        }
        Ok(b)
    }

    fn read_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.check(name)?;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| Error::corrupt("range past the end"))?;
        if name.starts_with("data/") {
            let p = self.pack(name)?;
            return p
                .get(offset as usize..end as usize)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| {
                    Error::corrupt(format!(
                        "a read of {len} bytes at {offset} lies past the pack's end ({} bytes)",
                        p.len()
                    ))
                    .with_path(self.location().join(name))
                });
        }
        let b = self.get(name, Some(offset..end))?;
        if b.len() as u64 != len {
            return Err(Error::corrupt("the store returned a short range")
                .with_path(self.location().join(name)));
        }
        Ok(b)
    }

    fn create(&self, name: &str, bytes: &[u8]) -> Result<bool> {
        self.check(name)?;
        Ok(self.store.create_only(name, bytes)?.is_some())
    }

    fn replace(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.check(name)?;
        let i = &self.store.inner;
        let key = i.key(name);
        let payload = PutPayload::from(bytes.to_vec());
        i.block_on(retrying(|| i.s3.put(&key, payload.clone())))
            .map(|_| ())
            .map_err(|e| i.err("write", name, e))
    }

    fn create_streamed(
        &self,
        name: &str,
        fill: &mut dyn FnMut(&mut dyn Write) -> Result<()>,
    ) -> Result<()> {
        self.check(name)?;
        // Names given to streamed objects are fresh random ids: a plain upload cannot replace
        // anything.
        let mut up: Box<dyn StreamOutput> = Box::new(Upload::new(self.store.clone(), name));
        {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, up.writer());
            fill(&mut w)?;
            w.flush()
                .map_err(|e| Error::io("cannot upload", e).with_path(self.location().join(name)))?;
        }
        up.finish().map(|_| ())
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let i = &self.store.inner;
        let full = if i.prefix.is_empty() {
            prefix.trim_end_matches('/').to_string()
        } else {
            format!("{}/{}", i.prefix, prefix.trim_end_matches('/'))
        };
        let strip = if i.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", i.prefix)
        };
        let key = Key::from(full.as_str());
        let metas = i
            .block_on(retrying(|| async {
                i.s3.list(Some(&key)).try_collect::<Vec<_>>().await
            }))
            .map_err(|e| i.err("list", prefix, e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let k = m.location.to_string();
                let n = k.strip_prefix(&strip)?;
                valid_name(n).then(|| ObjectInfo {
                    name: n.to_string(),
                    len: m.size,
                    modified: m.last_modified.timestamp().max(0) as u64,
                })
            })
            .collect())
    }

    fn delete(&self, name: &str) -> Result<()> {
        self.check(name)?;
        self.store.delete(name)
    }

    fn prepare(&self) -> Result<()> {
        Ok(())
    }

    /// Index tables are cached whole in the user's cache folder (their names never change
    /// meaning: a table is never rewritten), and read by position there.
    fn local_copy(&self, name: &str) -> Result<Option<PathBuf>> {
        self.check(name)?;
        if !name.starts_with("index/") {
            return Ok(None);
        }
        let dir = match self.cache_dir() {
            Ok(d) => d,
            Err(_) => return Ok(None),
        };
        // Named by the object's entity tag too: an object replaced under the same name (which
        // vdisk never does: damage, or an attack) is fetched again, never read from a copy.
        let (len, etag) = self.head(name)?;
        let tag = crate::crypto::hex(&blake3::hash(etag.as_bytes()).as_bytes()[..8]);
        let path = dir.join(format!("{}_{tag}", name.replace('/', "_")));
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == len && m.is_file()) {
            return Ok(Some(path));
        }
        let temp = dir.join(format!(".part-{}", crate::crypto::random_id()?));
        let fetched = (|| -> Result<()> {
            let mut f = std::fs::File::create(&temp)
                .map_err(|e| Error::io("cannot write the cache", e).with_path(&temp))?;
            let mut at = 0u64;
            while at < len {
                let n = (len - at).min(WHOLE_MAX);
                let part = self.read_range(name, at, n)?;
                f.write_all(&part)
                    .map_err(|e| Error::io("cannot write the cache", e).with_path(&temp))?;
                at += n;
            }
            std::fs::rename(&temp, &path)
                .map_err(|e| Error::io("cannot write the cache", e).with_path(&path))
        })();
        if let Err(e) = fetched {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        Ok(Some(path))
    }

    fn forget_cached(&self, keep: &dyn Fn(&str) -> bool) {
        let Ok(dir) = self.cache_dir() else { return };
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in rd.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            let n = file
                .rsplit_once('_')
                .map_or(file.as_str(), |(n, _)| n)
                .replacen('_', "/", 1);
            if n.starts_with("index/") && !keep(&n) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
