//! The block allocation table (one big-endian sector number per block of the disk) and the
//! sector bitmaps in front of each block's data.

use byteorder::{BigEndian as BE, ByteOrder};
use vdisk_core::{Error, Result};
use vdisk_io::Bytes;

/// The most table entries copied into memory from a file that is not memory-mapped (an
/// object read by range): 64 Mi entries, 256 MiB, a 128 TiB disk in 2 MiB blocks. A mapped
/// file's table is read in place and costs nothing.
const MAX_OWNED_ENTRIES: u64 = 64 << 20;

/// A block allocation table: the entries covering the disk, read in place from the mapped
/// file, or copied when the file is not mapped.
#[derive(Debug)]
pub(crate) struct BlockAllocationTable {
    /// File offset of the first entry.
    offset: u64,
    /// Entries covering the disk.
    entries: u64,
    /// The entries, when the file is not mapped.
    owned: Option<Vec<u32>>,
}

impl BlockAllocationTable {
    /// The table of `entries` entries at `offset` of `bytes` (the caller checked that they
    /// lie inside the file).
    pub(crate) fn load(bytes: &Bytes, offset: u64, entries: u64) -> Result<Self> {
        let owned = match bytes.slice() {
            Some(_) => None,
            None => {
                if entries > MAX_OWNED_ENTRIES {
                    return Err(Error::unsupported(format!(
                        "VHD block allocation table of {entries} entries is too large to read \
                         from a file that is not memory-mapped"
                    )));
                }
                let mut raw = vec![0u8; (entries * 4) as usize];
                bytes.read_at(&mut raw, offset)?;
                Some(raw.chunks_exact(4).map(BE::read_u32).collect())
            }
        };
        Ok(BlockAllocationTable {
            offset,
            entries,
            owned,
        })
    }

    /// Entries covering the disk.
    pub(crate) fn len(&self) -> u64 {
        self.entries
    }

    /// Entry `i` (`i < len()`); an entry that cannot be read is unallocated.
    pub(crate) fn get(&self, bytes: &Bytes, i: u64) -> u32 {
        if i >= self.entries {
            return crate::header::UNALLOCATED;
        }
        match &self.owned {
            Some(v) => v[i as usize],
            None => {
                let at = (self.offset + i * 4) as usize;
                bytes
                    .slice()
                    .and_then(|s| s.get(at..at + 4))
                    .map_or(crate::header::UNALLOCATED, BE::read_u32)
            }
        }
    }
}

/// Whether sector `s` of a block is marked in its bitmap (most significant bit first, as the
/// specification and every writer lay it out). Sectors past the bitmap are not marked.
pub(crate) fn marked(bitmap: &[u8], s: u64) -> bool {
    bitmap
        .get((s / 8) as usize)
        .is_some_and(|b| b & (0x80 >> (s % 8)) != 0)
}

/// Hand `f` the runs of sectors `[first, end)` of a block that are all marked or all clear in
/// `bitmap`, in order: `(start, end, marked)`. Whole bytes of one kind are passed over at
/// once, so a block costs at most a step per bitmap byte plus one per change.
pub(crate) fn for_each_run(
    bitmap: &[u8],
    first: u64,
    end: u64,
    mut f: impl FnMut(u64, u64, bool) -> Result<()>,
) -> Result<()> {
    let mut s = first;
    while s < end {
        let set = marked(bitmap, s);
        let whole = if set { 0xff } else { 0 };
        let mut e = s + 1;
        while e < end {
            if e.is_multiple_of(8) && e + 8 <= end {
                let byte = bitmap.get((e / 8) as usize).copied().unwrap_or(0);
                if byte == whole {
                    e += 8;
                    continue;
                }
            }
            if marked(bitmap, e) != set {
                break;
            }
            e += 1;
        }
        f(s, e, set)?;
        s = e;
    }
    Ok(())
}

/// Mark sectors `[first, end)` in `bitmap`.
pub(crate) fn mark(bitmap: &mut [u8], first: u64, end: u64) {
    for s in first..end {
        if let Some(b) = bitmap.get_mut((s / 8) as usize) {
            *b |= 0x80 >> (s % 8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn runs(bitmap: &[u8], first: u64, end: u64) -> Vec<(u64, u64, bool)> {
        let mut v = Vec::new();
        for_each_run(bitmap, first, end, |a, b, m| {
            v.push((a, b, m));
            Ok(())
        })
        .unwrap();
        v
    }

    #[test]
    fn bits_are_most_significant_first() {
        // Sector 0 is bit 7 of byte 0; sector 9 is bit 6 of byte 1.
        let bm = [0b1000_0000, 0b0100_0000];
        assert!(marked(&bm, 0));
        assert!(!marked(&bm, 1));
        assert!(marked(&bm, 9));
        assert!(!marked(&bm, 16)); // past the bitmap
        let mut m = [0u8; 2];
        mark(&mut m, 0, 1);
        mark(&mut m, 9, 10);
        assert_eq!(m, bm);
        mark(&mut m, 14, 100); // clipped to the bitmap
        assert_eq!(m[1], 0b0100_0011);
    }

    #[test]
    fn runs_cover_the_range_and_join_whole_bytes() {
        let mut bm = vec![0xffu8; 64];
        bm[10] = 0b1111_0000; // sectors 84..88 clear
        bm[11] = 0;
        assert_eq!(
            runs(&bm, 0, 512),
            [(0, 84, true), (84, 96, false), (96, 512, true)]
        );
        assert_eq!(runs(&bm, 85, 90), [(85, 90, false)]);
        assert_eq!(runs(&bm, 3, 3), []);
        assert_eq!(runs(&[], 0, 20), [(0, 20, false)]);
        assert_eq!(runs(&[0x55], 0, 4).len(), 4);
    }

    #[test]
    fn tables_are_read_in_place() {
        let mut file = vec![0u8; 64];
        file[16..20].copy_from_slice(&7u32.to_be_bytes());
        file[20..24].copy_from_slice(&u32::MAX.to_be_bytes());
        let bytes = Bytes::Owned("t".into(), Arc::new(file));
        let t = BlockAllocationTable::load(&bytes, 16, 2).unwrap();
        assert_eq!(t.get(&bytes, 0), 7);
        assert_eq!(t.get(&bytes, 1), u32::MAX);
        assert_eq!(t.get(&bytes, 2), u32::MAX);
        assert_eq!(t.len(), 2);
    }
}
