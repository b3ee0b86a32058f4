//! Uploads: objects written front to back as multipart uploads, their head part sent last,
//! with part buffers reused.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes as Buf;
use object_store::multipart::PartId;
use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutPayload};
use vdisk_core::{Error, ErrorKind, Result};
use vdisk_io::{ImageOutput, OutputFile, SealedOutput};

use super::client::retrying;
use super::{random_u64, S3Store, UPLOAD_MARKER};
use crate::store::StreamOutput;

/// The first part of an upload, kept in memory and sent last (S3 parts but the last are at
/// least 5 MiB).
const HEAD_PART: u64 = 8 << 20;
/// Bytes of parts in flight at once, per upload.
pub(super) const IN_FLIGHT_BYTES: u64 = 64 << 20;

/// Size of part `idx` (0 is the head): 16 MiB, 64 MiB from the 1,000th part, 128 MiB from
/// the 2,000th, so that S3's 10,000 parts hold 1.08 TiB, more than the largest extent (1 TiB
/// of grains and its tables), while the parts in memory stay under 300 MiB.
pub(super) fn part_size(idx: usize) -> u64 {
    match idx {
        0 => HEAD_PART,
        1..1000 => 16 << 20,
        1000..2000 => 64 << 20,
        _ => 128 << 20,
    }
}

/// Part buffers kept for reuse (a fresh 16 MiB buffer costs 4,096 page faults that zero its
/// pages, and giving it back to the system unmaps them again: a tenth of a backup's CPU
/// time), at most [`PartBuffers::KEEP`] bytes of them.
#[derive(Debug, Default)]
pub(super) struct PartBuffers(Mutex<Vec<Vec<u8>>>);

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
pub(super) struct PooledPart {
    pub(super) buf: Vec<u8>,
    pub(super) pool: Arc<PartBuffers>,
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

/// An object being uploaded as it is written: bytes before [`HEAD_PART`] are kept in memory
/// (they may be written last: a sparse extent's header) and sent as part 1 at the end;
/// bytes after it must come in order and leave in parts as they fill. An object that ends
/// within the head is one plain put.
pub(super) struct Upload {
    pub(super) store: S3Store,
    pub(super) name: String,
    pub(super) key: Key,
    pub(super) head: Vec<u8>,
    /// Bytes after the head not yet sent.
    pub(super) tail: Vec<u8>,
    /// Bytes after the head written so far (sent or not).
    pub(super) tail_len: u64,
    /// The multipart upload, once started: its id and the marker naming it.
    pub(super) upload: Option<(String, String)>,
    /// Parts sent or in flight, from part 2 (index 1) on.
    pub(super) parts: Vec<tokio::task::JoinHandle<object_store::Result<PartId>>>,
    pub(super) done: Vec<PartId>,
    pub(super) finished: bool,
}

impl Upload {
    pub(super) fn new(store: S3Store, name: &str) -> Self {
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
pub(super) struct Uploaded(PathBuf);

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
pub(super) struct S3ImageOutput {
    pub(super) store: S3Store,
    pub(super) dst: PathBuf,
    pub(super) name: String,
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
