//! The raw output: a new file (holes for zeros, published when complete), or a device written
//! in place.

use std::path::Path;

use vdisk_core::{ImageSink, Result};
use vdisk_io::{Destination, DeviceWriter, OutputPolicy, SparseWriter};

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
