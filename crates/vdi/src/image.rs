//! A VDI image: the header, the block map, positional reads and allocation maps.

use std::path::Path;

use byteorder::{ByteOrder, LittleEndian as LE};
use vdisk_core::{
    check_range, coalesce, Advice, Allocation, DiskImage, Error, Extent, FileId, Result,
};
use vdisk_io::{Bytes, FileStore, FsStore};

use crate::header::{RawVdiHeader, VdiHeader, DISCARDED, HEADER_SIZE, UNALLOCATED};

/// The most block map entries copied into memory from a file that is not memory-mapped:
/// 64 Mi entries (256 MiB), a 64 TiB disk in 1 MiB blocks. A mapped file's map is read in
/// place.
const MAX_OWNED_ENTRIES: u64 = 64 << 20;

/// A VirtualBox disk image (static or dynamic), read.
///
/// ```no_run
/// use vdisk_core::DiskImage;
/// let img = vdisk_vdi::VdiImage::open(std::path::Path::new("disk.vdi"))?;
/// println!("{} bytes in {}-byte blocks", img.size(), img.header().block_size);
/// # Ok::<(), vdisk_core::Error>(())
/// ```
#[derive(Debug)]
pub struct VdiImage {
    pub(crate) bytes: Bytes,
    pub(crate) header: VdiHeader,
    /// The block map entries covering the disk, when the file is not mapped.
    owned_map: Option<Vec<u32>>,
}

/// Where a block of the disk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockState {
    /// Never written: reads as zero.
    Unallocated,
    /// Discarded: reads as zero.
    Discarded,
    /// In the file, at this offset.
    At(u64),
}

impl VdiImage {
    /// Open the VDI at `path` (memory-mapped).
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_bytes(FsStore::default().load(path)?)
    }

    /// Open the VDI whose bytes are `bytes`.
    pub fn from_bytes(bytes: Bytes) -> Result<Self> {
        let path = bytes.path().to_path_buf();
        Self::open_bytes(bytes).map_err(|e| e.with_path(path))
    }

    fn open_bytes(bytes: Bytes) -> Result<Self> {
        let len = bytes.len();
        if len < HEADER_SIZE as u64 {
            return Err(Error::invalid(format!(
                "too small to be a VDI image ({len} bytes; the header takes 512)"
            )));
        }
        let mut hb = [0u8; HEADER_SIZE];
        bytes.read_at(&mut hb, 0)?;
        let header = RawVdiHeader::parse(&hb)?.validate(len)?;
        let owned_map = match bytes.slice() {
            Some(_) => None,
            None => {
                if header.blocks > MAX_OWNED_ENTRIES {
                    return Err(Error::unsupported(format!(
                        "VDI block map of {} entries is too large to read from a file that is \
                         not memory-mapped",
                        header.blocks
                    )));
                }
                let mut raw = vec![0u8; (header.blocks * 4) as usize];
                bytes.read_at(&mut raw, u64::from(header.raw.offset_bmap))?;
                Some(raw.chunks_exact(4).map(LE::read_u32).collect())
            }
        };
        Ok(VdiImage {
            bytes,
            header,
            owned_map,
        })
    }

    /// The validated header.
    pub fn header(&self) -> &VdiHeader {
        &self.header
    }

    /// The bytes of the file.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Block map entry `i` (`i` below `blocks_in_image`; entries past the disk are read for
    /// the check).
    pub(crate) fn entry(&self, i: u64) -> u32 {
        if let Some(v) = &self.owned_map {
            return v.get(i as usize).copied().unwrap_or(UNALLOCATED);
        }
        let at = u64::from(self.header.raw.offset_bmap) + i * 4;
        self.bytes
            .slice()
            .and_then(|s| s.get(at as usize..at as usize + 4))
            .map_or(UNALLOCATED, LE::read_u32)
    }

    /// Where block `i` is.
    pub(crate) fn block(&self, i: u64) -> BlockState {
        match self.entry(i) {
            UNALLOCATED => BlockState::Unallocated,
            DISCARDED => BlockState::Discarded,
            n => BlockState::At(
                u64::from(self.header.raw.offset_data) + u64::from(n) * self.header.block_size,
            ),
        }
    }

    /// Walk `[offset, offset + len)` block by block: `f(block index, offset in the block,
    /// bytes, where the block is)`.
    fn for_each_block(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(u64, u64, u64, BlockState) -> Result<()>,
    ) -> Result<()> {
        let bs = self.header.block_size;
        let end = offset + len;
        let mut off = offset;
        while off < end {
            let i = off / bs;
            let in_block = off % bs;
            let n = (bs - in_block).min(end - off);
            f(i, in_block, n, self.block(i))?;
            off += n;
        }
        Ok(())
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

impl DiskImage for VdiImage {
    fn size(&self) -> u64 {
        self.header.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.size(), offset, buf.len() as u64)
            .map_err(|e| e.with_path(self.bytes.path()))?;
        let mut pos = 0usize;
        self.for_each_block(offset, buf.len() as u64, |_, in_block, n, state| {
            let dst = &mut buf[pos..pos + n as usize];
            pos += n as usize;
            match state {
                // Past the end of a truncated file reads as zero, as in qemu.
                BlockState::At(at) => self.bytes.read_at(dst, at + in_block),
                BlockState::Unallocated | BlockState::Discarded => {
                    dst.fill(0);
                    Ok(())
                }
            }
        })
    }

    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        check_range(self.size(), offset, length).map_err(|e| e.with_path(self.bytes.path()))?;
        let mut map = Vec::new();
        // Static images qemu makes are one hole; dynamic ones hold holes where zeros were
        // written. Holes in blocks are zeros stored.
        let holes = !self.bytes.is_dense();
        let bs = self.header.block_size;
        self.for_each_block(offset, length, |i, in_block, n, state| {
            let start = i * bs + in_block;
            match state {
                BlockState::Unallocated => push(&mut map, start, n, Allocation::Unallocated),
                BlockState::Discarded => push(&mut map, start, n, Allocation::Zero),
                BlockState::At(at) if holes => {
                    let (a, z) = (at + in_block, at + in_block + n);
                    let mut pos = a;
                    for (d, dl) in self.bytes.data_ranges(a, z) {
                        push(&mut map, start + (pos - a), d - pos, Allocation::Zero);
                        push(&mut map, start + (d - a), dl, Allocation::Data);
                        pos = d + dl;
                    }
                    push(&mut map, start + (pos - a), z - pos, Allocation::Zero);
                }
                BlockState::At(_) => push(&mut map, start, n, Allocation::Data),
            }
            Ok(())
        })?;
        Ok(map)
    }

    fn format_name(&self) -> &'static str {
        "vdi"
    }

    fn mapped(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        let bs = self.header.block_size;
        if end > self.size() || offset % bs + len > bs {
            return None;
        }
        let BlockState::At(at) = self.block(offset / bs) else {
            return None;
        };
        let from = at + offset % bs;
        self.bytes
            .slice()?
            .get(usize::try_from(from).ok()?..usize::try_from(from + len).ok()?)
    }

    fn advise(&self, offset: u64, len: u64, advice: Advice) {
        if advice == Advice::Paced {
            return self.bytes.advise(0, self.bytes.len(), advice);
        }
        let Some(end) = offset.checked_add(len).filter(|&e| e <= self.size()) else {
            return;
        };
        let bs = self.header.block_size;
        // A hint: ranges of more than a million blocks are passed over.
        if end.div_ceil(bs) - offset / bs > 1 << 20 {
            return;
        }
        let _ = self.for_each_block(offset, len, |_, in_block, n, state| {
            if let BlockState::At(at) = state {
                self.bytes.advise(at + in_block, n, advice);
            }
            Ok(())
        });
    }

    fn files(&self) -> Vec<FileId> {
        self.bytes.id().into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::RawVdiHeader;
    use std::sync::Arc;
    use vdisk_io::Layer;

    /// A 4-block dynamic image in 4 KiB blocks: block 0 stored second, block 1 never
    /// written, block 2 discarded, block 3 stored first.
    fn image() -> Vec<u8> {
        let mut h = RawVdiHeader::new(4 * 4096, 4096, 1);
        h.blocks_allocated = 2;
        let data = u64::from(h.offset_data) as usize;
        let mut b = vec![0u8; data + 2 * 4096];
        b[..512].copy_from_slice(&h.to_bytes());
        for (i, e) in [1u32, UNALLOCATED, DISCARDED, 0].iter().enumerate() {
            b[0x200 + 4 * i..0x204 + 4 * i].copy_from_slice(&e.to_le_bytes());
        }
        b[data..data + 4096].fill(0x33); // data block 0: disk block 3
        b[data + 4096..data + 8192].fill(0x30); // data block 1: disk block 0
        b
    }

    fn open(b: Vec<u8>) -> VdiImage {
        VdiImage::from_bytes(Bytes::Owned("t.vdi".into(), Arc::new(b))).unwrap()
    }

    #[test]
    fn blocks_read_through_the_map() {
        let img = open(image());
        assert_eq!(img.size(), 4 * 4096);
        let mut all = vec![0u8; 4 * 4096];
        img.read_at(&mut all, 0).unwrap();
        assert!(all[..4096].iter().all(|&b| b == 0x30));
        assert!(all[4096..3 * 4096].iter().all(|&b| b == 0));
        assert!(all[3 * 4096..].iter().all(|&b| b == 0x33));
        let mut piece = [0u8; 2];
        img.read_at(&mut piece, 4095).unwrap();
        assert_eq!(piece, [0x30, 0]);
        assert!(img.read_at(&mut piece, 4 * 4096 - 1).is_err());
        let map: Vec<_> = img
            .allocation(0, img.size())
            .unwrap()
            .iter()
            .map(|e| (e.start, e.allocation))
            .collect();
        assert_eq!(
            map,
            [
                (0, Allocation::Data),
                (4096, Allocation::Unallocated),
                (8192, Allocation::Zero),
                (12288, Allocation::Data)
            ]
        );
        assert_eq!(img.mapped(12288, 4096).map(|s| s[0]), Some(0x33));
        assert!(img.mapped(4096, 10).is_none());
        assert!(img.mapped(4000, 200).is_none()); // across blocks
        assert!(img.check().is_empty(), "{:?}", img.check());
    }

    #[test]
    fn check_finds_shared_and_impossible_blocks_and_a_wrong_count() {
        let mut b = image();
        b[0x200..0x204].copy_from_slice(&0u32.to_le_bytes()); // block 0 shares data block 0
        b[0x204..0x208].copy_from_slice(&9u32.to_le_bytes()); // past the image's 4 blocks
        let img = open(b);
        let f: Vec<String> = img.check().iter().map(|f| f.message.clone()).collect();
        assert!(f.iter().any(|m| m.contains("used by block")), "{f:?}");
        assert!(f.iter().any(|m| m.contains("past the image")), "{f:?}");
        let mut b = image();
        b[0x184..0x188].copy_from_slice(&5u32.to_le_bytes());
        let f: Vec<String> = open(b).check().iter().map(|f| f.message.clone()).collect();
        assert_eq!(f, ["the header counts 5 allocated blocks, the block map 2"]);
    }
}
