//! Raw outputs: a new file (holes for zeros, published when complete), or a device written in
//! place (a logical volume, a LUN, a loop device): never renamed over, zeros written as zeros.
#![allow(unsafe_code)] // the BLKZEROOUT ioctl

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use vdisk_core::{Error, ErrorKind, ImageSink, Result};

use crate::output::{Destination, Existing, OutputPolicy};
use crate::writer::{start_writeback, SparseWriter};

/// `BLKZEROOUT` (`_IO(0x12, 127)` in `linux/fs.h`): zero a byte range of a block device, by
/// the device's own zeroing command where it has one (WRITE ZEROES, UNMAP with zeroing).
const BLKZEROOUT: u32 = 0x127f;
/// Zeros written at once where the device cannot zero a range itself.
const ZERO_CHUNK: usize = 1 << 20;

/// The size of the block device at `path` in bytes.
pub(crate) fn block_device_size(path: &Path) -> Result<u64> {
    let mut f = File::open(path).map_err(|e| Error::io("cannot open", e).with_path(path))?;
    f.seek(SeekFrom::End(0))
        .map_err(|e| Error::io("cannot find the size of", e).with_path(path))
}

/// Whether a device is a block device (sized, seekable) or a character device (a stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeviceKind {
    Block,
    Char,
}

/// A device being written in place with a disk's bytes, front to back: data where the disk
/// has data, zeros everywhere else (the device's old contents must not show through).
#[derive(Debug)]
pub struct DeviceWriter {
    file: File,
    path: PathBuf,
    kind: DeviceKind,
    /// Bytes of disk to write.
    size: u64,
    /// Everything before this offset is written.
    pos: u64,
    /// The device zeroes ranges itself (cleared at its first refusal).
    can_zero_out: bool,
}

impl DeviceWriter {
    /// Open the device at `dst` to write a disk of `size` bytes onto it.
    ///
    /// Refused before anything is written: without [`Existing::Replace`] (a device always
    /// holds something), when it is one of the policy's inputs or holds one, when the disk is
    /// larger than a block device, and when the block device is in use (mounted, or opened
    /// exclusively by another program: it is opened with `O_EXCL`).
    pub fn open(dst: &Path, size: u64, policy: &OutputPolicy) -> Result<Self> {
        policy.protected.check(dst)?;
        let kind = match Destination::of(dst)? {
            Destination::BlockDevice(dev_size) => {
                if size > dev_size {
                    return Err(Error::new(
                        ErrorKind::InvalidArgument,
                        format!(
                            "the disk is {size} bytes, larger than this {dev_size}-byte device; nothing was written"
                        ),
                    )
                    .with_path(dst));
                }
                DeviceKind::Block
            }
            Destination::CharDevice => DeviceKind::Char,
            _ => {
                return Err(Error::new(ErrorKind::InvalidArgument, "is not a device").with_path(dst))
            }
        };
        if policy.existing == Existing::Refuse {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                "is a device: writing the disk onto it replaces what it holds",
            )
            .with_path(dst));
        }
        let mut o = OpenOptions::new();
        o.write(true);
        if kind == DeviceKind::Block {
            o.custom_flags(libc::O_EXCL);
        }
        let file = o.open(dst).map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                Error::new(
                    ErrorKind::InUse,
                    "device is in use (mounted, or opened by another program)",
                )
                .with_path(dst)
            } else {
                Error::io("cannot open the device", e).with_path(dst)
            }
        })?;
        Ok(DeviceWriter {
            file,
            path: dst.to_path_buf(),
            kind,
            size,
            pos: 0,
            can_zero_out: kind == DeviceKind::Block,
        })
    }

    fn write(&mut self, data: &[u8], offset: u64) -> Result<()> {
        let r = match self.kind {
            DeviceKind::Block => self.file.write_all_at(data, offset),
            // A character device is a stream: bytes go in order.
            DeviceKind::Char => self.file.write_all(data),
        };
        r.map_err(|e| {
            Error::io("cannot write", e)
                .with_path(&self.path)
                .at(offset)
        })
    }

    /// Write zeros over `[start, end)`.
    fn zero(&mut self, start: u64, end: u64) -> Result<()> {
        if start >= end {
            return Ok(());
        }
        if self.can_zero_out {
            // The device's zeroing works on whole 512-byte sectors; edges are written.
            let a = start.next_multiple_of(512);
            let b = end / 512 * 512;
            if b > a {
                let range: [u64; 2] = [a, b - a];
                // SAFETY: BLKZEROOUT reads a two-u64 array (start, length) that lives for
                // the call; it touches nothing else of this process.
                let r =
                    unsafe { libc::ioctl(self.file.as_raw_fd(), BLKZEROOUT as _, range.as_ptr()) };
                if r == 0 {
                    self.zero_by_writing(start, a)?;
                    return self.zero_by_writing(b, end);
                }
                self.can_zero_out = false;
            }
        }
        self.zero_by_writing(start, end)
    }

    fn zero_by_writing(&mut self, start: u64, end: u64) -> Result<()> {
        let zeros = vec![0u8; ZERO_CHUNK.min((end - start) as usize)];
        let mut off = start;
        while off < end {
            let n = (end - off).min(ZERO_CHUNK as u64) as usize;
            self.write(&zeros[..n], off)?;
            off += n as u64;
        }
        Ok(())
    }

    /// Write `data` at `offset` (at or after everything written so far), zeroing the gap.
    pub fn put(&mut self, data: &[u8], offset: u64) -> Result<()> {
        if offset < self.pos {
            return Err(Error::invalid(
                "device writes must come in increasing order",
            ));
        }
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| Error::invalid("write past the end of the disk"))?;
        self.zero(self.pos, offset)?;
        self.write(data, offset)?;
        if self.kind == DeviceKind::Block {
            start_writeback(&self.file, offset, data.len() as u64);
        }
        self.pos = end;
        Ok(())
    }

    /// Zero the rest of the disk and flush the device.
    pub fn finish(mut self) -> Result<()> {
        self.zero(self.pos, self.size)?;
        self.pos = self.size;
        match self.file.sync_all() {
            Ok(()) => Ok(()),
            // Character devices such as /dev/null cannot be synced, and need not be.
            Err(e) if self.kind == DeviceKind::Char && e.raw_os_error() == Some(libc::EINVAL) => {
                Ok(())
            }
            Err(e) => Err(Error::io("cannot flush the device", e).with_path(&self.path)),
        }
    }
}

/// A raw image output: a new file (zero blocks left as holes, published when complete), or a
/// device written in place.
#[derive(Debug)]
pub enum RawSink {
    /// A file, published when complete.
    File(SparseWriter),
    /// A device, written in place.
    Device(DeviceWriter),
}

impl RawSink {
    /// Start writing a raw disk of `size` bytes at `dst`: onto it in place when it is a
    /// device, otherwise as a new file.
    pub fn create(dst: &Path, size: u64, policy: &OutputPolicy) -> Result<Self> {
        if Destination::of(dst)?.is_device() {
            Ok(RawSink::Device(DeviceWriter::open(dst, size, policy)?))
        } else {
            Ok(RawSink::File(SparseWriter::create(dst, size, policy)?))
        }
    }
}

impl ImageSink for RawSink {
    fn block_size(&self) -> u64 {
        // Data ranges are rounded out to file-system blocks only: no more is read than the
        // source's map says holds data.
        4096
    }
    fn takes_runs(&self) -> bool {
        true
    }
    fn put(&mut self, blocks: &[(u64, &[u8])]) -> Result<()> {
        match self {
            // One writer: threads writing one file contend for its inode lock (measured ~6 %
            // of a restore). Writeback starts right away so the final fsync has little left.
            RawSink::File(w) => {
                for &(off, data) in blocks {
                    w.write_at(data, off)?;
                    w.start_writeback(off, data.len() as u64);
                }
                Ok(())
            }
            RawSink::Device(d) => {
                for &(off, data) in blocks {
                    d.put(data, off)?;
                }
                Ok(())
            }
        }
    }
    fn finish(self: Box<Self>) -> Result<()> {
        match *self {
            RawSink::File(w) => w.commit(),
            RawSink::Device(d) => d.finish(),
        }
    }
}
