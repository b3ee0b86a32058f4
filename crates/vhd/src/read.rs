//! Reading a VHD: positional reads and allocation maps, from `&self` on any thread.

use std::borrow::Cow;

use vdisk_core::{
    check_range, coalesce, Advice, Allocation, DiskImage, Error, Extent, FileId, Result, SECTOR,
};

use crate::bat::{for_each_run, marked};
use crate::header::UNALLOCATED;
use crate::image::{Layout, Sparse, VhdImage};

/// A block located in the file.
struct Block<'a> {
    /// File offset of its data.
    data: u64,
    /// Its sector bitmap.
    bitmap: Cow<'a, [u8]>,
}

/// Ranges asked of [`DiskImage::advise`] that cover more blocks than this are passed over:
/// advice is a hint, and a hostile disk of 512-byte blocks must not make it loop for long.
const MAX_ADVISED_BLOCKS: u64 = 1 << 20;

impl VhdImage {
    /// The block `i` of a sparse disk, or `None` when it is not allocated; an error when its
    /// bitmap and data (as much of it as the disk uses) are not inside the file.
    fn block(&self, s: &Sparse, i: u64) -> Result<Option<Block<'_>>> {
        let entry = s.bat.get(&self.bytes, i);
        if entry == UNALLOCATED {
            return Ok(None);
        }
        let bs = s.header.block_size;
        let bitmap_at = u64::from(entry) * SECTOR;
        let data = bitmap_at + s.header.bitmap_size;
        let used = bs.min(self.footer.size - i * bs);
        if data + used > self.bytes.len() {
            return Err(Error::corrupt(format!(
                "VHD block {i} (table entry {entry:#x}) lies past the end of the file ({} bytes)",
                self.bytes.len()
            ))
            .with_path(self.bytes.path())
            .at(bitmap_at));
        }
        let n = s.header.bitmap_size as usize;
        let bitmap = match self.bytes.slice() {
            Some(all) => Cow::Borrowed(&all[bitmap_at as usize..bitmap_at as usize + n]),
            None => {
                let mut v = vec![0u8; n];
                self.bytes.read_at(&mut v, bitmap_at)?;
                Cow::Owned(v)
            }
        };
        Ok(Some(Block { data, bitmap }))
    }

    /// Walk `[offset, offset + len)` of a sparse disk block by block: `f(block index, offset
    /// in the block, bytes, the block if allocated or why it cannot be read)`.
    fn for_each_block(
        &self,
        s: &Sparse,
        offset: u64,
        len: u64,
        mut f: impl FnMut(u64, u64, u64, Result<Option<Block<'_>>>) -> Result<()>,
    ) -> Result<()> {
        let bs = s.header.block_size;
        let end = offset + len;
        let mut off = offset;
        while off < end {
            let i = off / bs;
            let in_block = off % bs;
            let n = (bs - in_block).min(end - off);
            f(i, in_block, n, self.block(s, i))?;
            off += n;
        }
        Ok(())
    }

    fn read_sparse(&self, s: &Sparse, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut pos = 0usize;
        self.for_each_block(s, offset, buf.len() as u64, |_, in_block, n, block| {
            let dst = &mut buf[pos..pos + n as usize];
            pos += n as usize;
            let Some(b) = block? else {
                dst.fill(0);
                return Ok(());
            };
            let first = in_block / SECTOR;
            let last = (in_block + n).div_ceil(SECTOR);
            for_each_run(&b.bitmap, first, last, |s0, s1, set| {
                let a = (s0 * SECTOR).max(in_block);
                let z = (s1 * SECTOR).min(in_block + n);
                let part = &mut dst[(a - in_block) as usize..(z - in_block) as usize];
                if set {
                    self.bytes.read_at(part, b.data + a)
                } else {
                    part.fill(0);
                    Ok(())
                }
            })
        })
    }

    fn map_sparse(&self, s: &Sparse, offset: u64, length: u64) -> Result<Vec<Extent>> {
        let mut map = Vec::new();
        // A file with holes (written by vdisk or qemu-img, which leave zeros unwritten) has
        // them inside blocks too: they are zeros stored, masking a parent like data.
        let holes = !self.bytes.is_dense();
        let bs = s.header.block_size;
        self.for_each_block(s, offset, length, |i, in_block, n, block| {
            let start = i * bs;
            let b = match block {
                Ok(Some(b)) => b,
                Ok(None) => {
                    push(&mut map, start + in_block, n, Allocation::Unallocated);
                    return Ok(());
                }
                // A block the file does not hold is data the table claims: reading it
                // fails, naming the block, and the check reports it.
                Err(_) => {
                    push(&mut map, start + in_block, n, Allocation::Data);
                    return Ok(());
                }
            };
            let first = in_block / SECTOR;
            let last = (in_block + n).div_ceil(SECTOR);
            for_each_run(&b.bitmap, first, last, |s0, s1, set| {
                let a = (s0 * SECTOR).max(in_block);
                let z = (s1 * SECTOR).min(in_block + n);
                if !set {
                    push(&mut map, start + a, z - a, Allocation::Unallocated);
                } else if !holes {
                    push(&mut map, start + a, z - a, Allocation::Data);
                } else {
                    let mut pos = a;
                    for (d, dl) in self.bytes.data_ranges(b.data + a, b.data + z) {
                        let d = d - b.data;
                        push(&mut map, start + pos, d - pos, Allocation::Zero);
                        push(&mut map, start + d, dl, Allocation::Data);
                        pos = d + dl;
                    }
                    push(&mut map, start + pos, z - pos, Allocation::Zero);
                }
                Ok(())
            })
        })?;
        Ok(map)
    }

    fn map_fixed(&self, data_len: u64, offset: u64, length: u64) -> Vec<Extent> {
        let mut map = Vec::new();
        let end = offset + length;
        let mut pos = offset;
        for (d, dl) in self.bytes.data_ranges(offset, end.min(data_len)) {
            push(&mut map, pos, d - pos, Allocation::Unallocated);
            push(&mut map, d, dl, Allocation::Data);
            pos = d + dl;
        }
        push(&mut map, pos, end - pos, Allocation::Unallocated);
        map
    }
}

fn push(map: &mut Vec<Extent>, start: u64, length: u64, allocation: Allocation) {
    coalesce(
        map,
        Extent {
            start,
            length,
            allocation,
            depth: 0,
        },
    );
}

impl DiskImage for VhdImage {
    fn size(&self) -> u64 {
        self.footer.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.size(), offset, buf.len() as u64)
            .map_err(|e| e.with_path(self.bytes.path()))?;
        match &self.layout {
            Layout::Fixed { data_len } => {
                // Data past what the file holds (a truncated file) reads as zero, never as
                // the footer.
                let n = data_len.saturating_sub(offset).min(buf.len() as u64) as usize;
                let (stored, past) = buf.split_at_mut(n);
                self.bytes.read_at(stored, offset)?;
                past.fill(0);
                Ok(())
            }
            Layout::Sparse(s) => self.read_sparse(s, buf, offset),
        }
    }

    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        check_range(self.size(), offset, length).map_err(|e| e.with_path(self.bytes.path()))?;
        match &self.layout {
            Layout::Fixed { data_len } => Ok(self.map_fixed(*data_len, offset, length)),
            Layout::Sparse(s) => self.map_sparse(s, offset, length),
        }
    }

    fn format_name(&self) -> &'static str {
        "vhd"
    }

    fn mapped(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        if end > self.size() {
            return None;
        }
        let all = self.bytes.slice()?;
        let file_range = match &self.layout {
            Layout::Fixed { data_len } => (end <= *data_len).then_some(offset)?,
            Layout::Sparse(s) => {
                // Inside one block whose bitmap marks every sector of the range.
                let bs = s.header.block_size;
                let in_block = offset % bs;
                if in_block + len > bs {
                    return None;
                }
                let b = self.block(s, offset / bs).ok()??;
                let first = in_block / SECTOR;
                let last = (in_block + len).div_ceil(SECTOR);
                if !(first..last).all(|k| marked(&b.bitmap, k)) {
                    return None;
                }
                b.data + in_block
            }
        };
        all.get(file_range as usize..(file_range + len) as usize)
    }

    fn advise(&self, offset: u64, len: u64, advice: Advice) {
        match (&self.layout, advice) {
            (_, Advice::Paced) => self.bytes.advise(0, self.bytes.len(), advice),
            (Layout::Fixed { data_len }, _) => {
                let len = len.min(data_len.saturating_sub(offset));
                self.bytes.advise(offset, len, advice)
            }
            (Layout::Sparse(s), _) => {
                let Some(end) = offset.checked_add(len).filter(|&e| e <= self.size()) else {
                    return;
                };
                let bs = s.header.block_size;
                if (end.div_ceil(bs)).saturating_sub(offset / bs) > MAX_ADVISED_BLOCKS {
                    return;
                }
                let _ = self.for_each_block(s, offset, len, |_, in_block, n, block| {
                    if let Ok(Some(b)) = block {
                        self.bytes.advise(b.data + in_block, n, advice);
                    }
                    Ok(())
                });
            }
        }
    }

    fn files(&self) -> Vec<FileId> {
        self.bytes.id().into_iter().collect()
    }
}
