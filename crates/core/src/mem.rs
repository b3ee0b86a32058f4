//! An image held in memory: for tests, examples and documentation.

use crate::{check_range, coalesce, is_zero, Allocation, DiskImage, Error, Extent, Result};

/// Allocation is reported per block of this many bytes.
const BLOCK: u64 = 4096;

/// A disk held in a `Vec<u8>`: blocks of 4 KiB that are all zero are reported
/// [`Allocation::Unallocated`], the rest [`Allocation::Data`].
///
/// Reads can be made to fail from some offset on, to test what callers do with a source
/// that breaks half way (a disk that goes away during a backup).
///
/// ```
/// use vdisk_core::{DiskImage, MemImage, Allocation};
/// let mut bytes = vec![0u8; 1 << 20];
/// bytes[5000] = 7;
/// let img = MemImage::new(bytes);
/// let map = img.allocation(0, img.size())?;
/// assert_eq!(map[1].allocation, Allocation::Data); // the block holding byte 5000
/// let mut b = [0u8; 1];
/// img.read_at(&mut b, 5000)?;
/// assert_eq!(b, [7]);
/// # Ok::<(), vdisk_core::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemImage {
    bytes: Vec<u8>,
    fail_from: Option<u64>,
}

impl MemImage {
    /// A disk holding `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        MemImage {
            bytes,
            fail_from: None,
        }
    }

    /// The same disk, whose reads fail with an I/O error once they reach `offset`.
    pub fn failing_from(mut self, offset: u64) -> Self {
        self.fail_from = Some(offset);
        self
    }

    /// The disk's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl DiskImage for MemImage {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.size(), offset, buf.len() as u64)?;
        if let Some(f) = self.fail_from {
            if offset + buf.len() as u64 > f {
                return Err(Error::io(
                    "cannot read",
                    std::io::Error::other("the in-memory disk was told to fail here"),
                )
                .at(offset));
            }
        }
        let start = offset as usize;
        buf.copy_from_slice(&self.bytes[start..start + buf.len()]);
        Ok(())
    }

    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        check_range(self.size(), offset, length)?;
        let mut map = Vec::new();
        let end = offset + length;
        let mut off = offset;
        while off < end {
            let stop = ((off / BLOCK + 1) * BLOCK).min(end);
            let zero = is_zero(&self.bytes[off as usize..stop as usize]);
            let allocation = if zero {
                Allocation::Unallocated
            } else {
                Allocation::Data
            };
            coalesce(
                &mut map,
                Extent {
                    start: off,
                    length: stop - off,
                    allocation,
                    depth: 0,
                },
            );
            off = stop;
        }
        Ok(map)
    }

    fn format_name(&self) -> &'static str {
        "memory"
    }

    fn mapped(&self, offset: u64, len: u64) -> Option<&[u8]> {
        if self.fail_from.is_some() {
            return None;
        }
        let end = offset.checked_add(len)?;
        self.bytes
            .get(usize::try_from(offset).ok()?..usize::try_from(end).ok()?)
    }
}
