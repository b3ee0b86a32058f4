//! Reads by range through a small shared block cache, with read-ahead.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes as Buf;
use object_store::path::Path as Key;
use object_store::ObjectStoreExt;
use tokio::sync::OnceCell;
use vdisk_core::{Error, ErrorKind, Result};
use vdisk_io::RangedFile;

use super::client::retrying;
use super::S3Store;

/// Block size of ranged reads through the cache, and blocks kept (160 MiB).
const BLOCK: u64 = 16 << 20;
const CACHED_BLOCKS: usize = 10;
/// Blocks fetched ahead of a sequential reader.
const READ_AHEAD: u64 = 4;
/// Reads smaller than this of a file's metadata go straight to the store (a grain table
/// is 2 KiB; a 4 MiB block for it would be waste).
const SMALL_READ: usize = 64 << 10;

impl S3Store {
    pub(super) fn ranged(&self, name: &str, len: u64, small_direct: bool) -> S3File {
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
pub(super) struct BlockCache {
    /// Least recently used first: ((file, block), the block once fetched).
    pub(super) slots: Mutex<VecDeque<(BlockKey, Arc<OnceCell<Buf>>)>>,
}

/// A block: (file id, block number).
pub(super) type BlockKey = (u64, u64);

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
pub(super) struct S3File {
    pub(super) store: S3Store,
    pub(super) name: String,
    pub(super) key: Key,
    pub(super) path: PathBuf,
    pub(super) len: u64,
    pub(super) id: u64,
    /// Whether small reads skip the cache (extents: their tables and headers).
    pub(super) small_direct: bool,
}

pub(super) async fn fetch(
    s3: Arc<dyn super::Backend>,
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
