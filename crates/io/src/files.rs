//! Outputs of several files published together (a VMDK descriptor and its extents, a point
//! in a repository): on the local file system, or in any storage that takes files written
//! front to back (an object store's multipart uploads).

use std::path::Path;

use vdisk_core::{Error, Result};

use crate::writer::{SealedFile, SparseWriter};

/// Bytes at the start of a file of an [`ImageOutput`] that a writer may write out of order
/// (the header, written last); everything after them is written in order.
pub const HEAD_REGION: u64 = 4096;

/// Where the files of an image being written go.
///
/// A writer creates the files one at a time, writes each front to back (but for its first
/// [`HEAD_REGION`] bytes, which may be written at any time), seals each finished one
/// ([`OutputFile::seal`]) and hands it to [`ImageOutput::keep`], and finally hands the main
/// file (the one named by [`ImageOutput::dst`]) to [`ImageOutput::commit`], which publishes
/// the kept files first and the main file last. Until then nothing is visible under a name a
/// reader would follow.
pub trait ImageOutput: Send {
    /// The path of the image (its main file), as messages name it; other files are named
    /// beside it.
    fn dst(&self) -> &Path;
    /// Whether a file named `name` (beside the main file) exists already.
    fn exists(&self, name: &Path) -> Result<bool>;
    /// Start the file `name` beside the main file, or the main file itself when `None`.
    fn create(&mut self, name: Option<&Path>) -> Result<Box<dyn OutputFile>>;
    /// A finished file, sealed: to be published with the image.
    fn keep(&mut self, file: Box<dyn SealedOutput>) -> Result<()>;
    /// Publish the kept files, then `main`.
    fn commit(self: Box<Self>, main: Box<dyn SealedOutput>) -> Result<()>;
}

/// One file of an image being written: appended to front to back, except for a first region
/// of at most [`HEAD_REGION`] bytes (the header) that may be written at any time.
pub trait OutputFile: Send {
    /// Write `buf` at `offset`; all-zero blocks may be left as holes.
    fn write(&mut self, buf: &[u8], offset: u64) -> Result<()>;
    /// Write `buf` at `offset` as it is (metadata).
    fn write_raw(&mut self, buf: &[u8], offset: u64) -> Result<()>;
    /// Set the file's final length.
    fn set_len(&mut self, len: u64) -> Result<()>;
    /// The `len` bytes at `offset` are final: a good time to start writing them back.
    fn start_writeback(&mut self, _offset: u64, _len: u64) {}
    /// The file is complete: make it durable, not yet visible.
    fn seal(self: Box<Self>) -> Result<Box<dyn SealedOutput>>;
}

/// A complete, durable file of an image, waiting to be published with the rest.
pub trait SealedOutput: Send {
    /// The name it will have, as messages name it.
    fn destination(&self) -> &Path;
    /// Make it visible under its name.
    fn publish(self: Box<Self>) -> Result<()>;
}

impl OutputFile for SparseWriter {
    fn write(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.write_at(buf, offset)
    }
    fn write_raw(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        SparseWriter::write_raw(self, buf, offset)
    }
    fn set_len(&mut self, len: u64) -> Result<()> {
        self.file()
            .set_len(len)
            .map_err(|e| Error::io("cannot size", e).with_path(self.destination()))
    }
    fn start_writeback(&mut self, offset: u64, len: u64) {
        SparseWriter::start_writeback(self, offset, len)
    }
    fn seal(self: Box<Self>) -> Result<Box<dyn SealedOutput>> {
        Ok(Box::new(SparseWriter::seal(*self)?))
    }
}

impl SealedOutput for SealedFile {
    fn destination(&self) -> &Path {
        SealedFile::destination(self)
    }
    fn publish(self: Box<Self>) -> Result<()> {
        self.commit()
    }
}

/// The files of an image in a local folder, for a writer that takes an [`ImageOutput`]:
/// each written unnamed ([`SparseWriter`]), synced when finished, and all linked under their
/// names together, the main file last. For new names (a repository's points); replacing an
/// image of several files that already exists is a format's own business.
pub struct LocalFiles {
    dst: std::path::PathBuf,
    policy: crate::OutputPolicy,
    pending: Vec<Box<dyn SealedOutput>>,
}

impl LocalFiles {
    /// The files of an image whose main file is `dst`, written under `policy`.
    pub fn new(dst: &Path, policy: &crate::OutputPolicy) -> Self {
        LocalFiles {
            dst: dst.to_path_buf(),
            policy: policy.clone(),
            pending: Vec::new(),
        }
    }
}

impl ImageOutput for LocalFiles {
    fn dst(&self) -> &Path {
        &self.dst
    }
    fn exists(&self, name: &Path) -> Result<bool> {
        Ok(std::fs::symlink_metadata(self.dst.with_file_name(name)).is_ok())
    }
    fn create(&mut self, name: Option<&Path>) -> Result<Box<dyn OutputFile>> {
        let path = match name {
            Some(n) => self.dst.with_file_name(n),
            None => self.dst.clone(),
        };
        Ok(Box::new(SparseWriter::create(&path, 0, &self.policy)?))
    }
    fn keep(&mut self, file: Box<dyn SealedOutput>) -> Result<()> {
        self.pending.push(file);
        Ok(())
    }
    fn commit(self: Box<Self>, main: Box<dyn SealedOutput>) -> Result<()> {
        // The files go under their names together, or (interrupted before) not at all.
        let _publishing = crate::interrupt::publishing();
        for f in self.pending {
            f.publish()?;
        }
        main.publish()
    }
}
