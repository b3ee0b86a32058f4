//! Devices as outputs (a logical volume, a LUN, a loop device): written in place, never
//! renamed over, zeros written as zeros.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use vdisk_core::{Error, ErrorKind, Result};

use crate::output::{Destination, Existing, OutputPolicy};
use crate::sys;

/// Zeros written at once where the device cannot zero a range itself.
const ZERO_CHUNK: usize = 1 << 20;

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
            o.custom_flags(sys::flags::O_EXCL);
        }
        let file = o.open(dst).map_err(|e| {
            if e.raw_os_error() == Some(sys::errno::EBUSY) {
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
                if sys::block_zero_out(&self.file, a, b - a).is_ok() {
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
            sys::start_writeback(&self.file, offset, data.len() as u64);
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
            Err(e)
                if self.kind == DeviceKind::Char
                    && e.raw_os_error() == Some(sys::errno::EINVAL) =>
            {
                Ok(())
            }
            Err(e) => Err(Error::io("cannot flush the device", e).with_path(&self.path)),
        }
    }
}
