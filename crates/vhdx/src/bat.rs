//! The block allocation table: one 64-bit entry per payload block, with a sector bitmap
//! entry after every chunk of `chunk_ratio` payload entries.

use vdisk_core::{Error, Result};

use crate::header::{Region, HEADER_SECTION, MIB};
use crate::metadata::{Metadata, SECTORS_PER_BITMAP};

/// State bits of a BAT entry (bits 0-2).
pub const STATE_MASK: u64 = 7;
/// Reserved bits of a BAT entry (bits 3-19), zero in a valid entry.
pub const RESERVED_MASK: u64 = 0x000F_FFF8;
/// File offset bits of a BAT entry (bits 20-63: the offset in MiB, shifted into place).
pub const OFFSET_MASK: u64 = !0xF_FFFF;

/// Payload block: not in the file (a differencing disk reads its parent).
pub const PAYLOAD_BLOCK_NOT_PRESENT: u64 = 0;
/// Payload block: contents undefined.
pub const PAYLOAD_BLOCK_UNDEFINED: u64 = 1;
/// Payload block: reads as zero.
pub const PAYLOAD_BLOCK_ZERO: u64 = 2;
/// Payload block: unmapped by the guest (reads as zero here).
pub const PAYLOAD_BLOCK_UNMAPPED: u64 = 3;
/// Payload block: unmapped, as the 0.95 draft of the format numbered it.
pub const PAYLOAD_BLOCK_UNMAPPED_V095: u64 = 5;
/// Payload block: all of it in the file.
pub const PAYLOAD_BLOCK_FULLY_PRESENT: u64 = 6;
/// Payload block: in the file for the sectors its sector bitmap marks (differencing disks).
pub const PAYLOAD_BLOCK_PARTIALLY_PRESENT: u64 = 7;
/// Sector bitmap block: not in the file.
pub const SB_BLOCK_NOT_PRESENT: u64 = 0;
/// Sector bitmap block: in the file.
pub const SB_BLOCK_PRESENT: u64 = 6;
/// Bytes of a sector bitmap block.
pub const BITMAP_BLOCK_SIZE: u64 = MIB;

/// How a payload block reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    /// Not stored here: zero in a disk without a parent, the parent's in a differencing disk.
    NotPresent,
    /// Reads as zero and masks any parent (ZERO; UNDEFINED and UNMAPPED, whose contents the
    /// specification leaves to the reader, read as zero too).
    Zero,
    /// All of it at this file offset.
    Full(u64),
    /// At this file offset for the sectors the chunk's bitmap (at the second offset) marks.
    Partial(u64, u64),
}

/// The sizes everything else is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Payload block size in bytes.
    pub block_size: u64,
    /// Logical sector size in bytes.
    pub sector_size: u64,
    /// Payload blocks per chunk (per sector bitmap block).
    pub chunk_ratio: u64,
    /// Payload blocks covering the virtual size.
    pub data_blocks: u64,
    /// Entries the BAT must hold.
    pub bat_entries: u64,
    /// A differencing disk.
    pub has_parent: bool,
}

impl Geometry {
    /// The geometry of a disk with this metadata.
    pub fn new(m: &Metadata) -> Geometry {
        Geometry::of(
            m.virtual_size,
            m.block_size,
            u64::from(m.logical_sector_size),
            m.has_parent,
        )
    }

    /// The geometry of a disk of `virtual_size` bytes in `block_size` blocks of
    /// `sector_size`-byte sectors (all powers of two, checked by the caller).
    pub fn of(virtual_size: u64, block_size: u64, sector_size: u64, has_parent: bool) -> Geometry {
        let chunk_ratio = (SECTORS_PER_BITMAP * sector_size / block_size).max(1);
        let data_blocks = virtual_size.div_ceil(block_size);
        let bat_entries = if has_parent {
            data_blocks.div_ceil(chunk_ratio) * (chunk_ratio + 1)
        } else if data_blocks == 0 {
            0
        } else {
            data_blocks + (data_blocks - 1) / chunk_ratio
        };
        Geometry {
            virtual_size,
            block_size,
            sector_size,
            chunk_ratio,
            data_blocks,
            bat_entries,
            has_parent,
        }
    }

    /// The BAT index of payload block `block`.
    pub fn payload_index(&self, block: u64) -> u64 {
        block + block / self.chunk_ratio
    }

    /// The BAT index of the sector bitmap block of chunk `chunk`.
    pub fn bitmap_index(&self, chunk: u64) -> u64 {
        chunk * (self.chunk_ratio + 1) + self.chunk_ratio
    }

    /// Bytes the BAT region needs, rounded up to 1 MiB.
    pub fn bat_region_len(&self) -> u64 {
        (self.bat_entries * 8).div_ceil(MIB).max(1) * MIB
    }

    /// Bytes of virtual disk payload block `block` covers (the last one may be short).
    pub fn block_len(&self, block: u64) -> u64 {
        self.block_size
            .min(self.virtual_size.saturating_sub(block * self.block_size))
    }
}

/// The BAT, validated: every present block lies after the header section, clear of the
/// log, the BAT and the metadata region, and inside the file.
#[derive(Debug, Clone)]
pub struct BlockAllocationTable {
    /// The sizes.
    pub geometry: Geometry,
    /// The raw entries (payload and sector bitmap entries interleaved).
    pub entries: Vec<u64>,
}

impl BlockAllocationTable {
    /// Validate the `entries` read from the BAT region. `file_len` is the file's length after
    /// log replay; `regions` are the structures no block may overlap.
    pub fn new(
        geometry: Geometry,
        entries: Vec<u64>,
        file_len: u64,
        regions: &[Region],
        bat_offset: u64,
    ) -> Result<Self> {
        let g = geometry;
        let entry_err = |i: u64, msg: String| Error::corrupt(msg).at(bat_offset + 8 * i);
        for block in 0..g.data_blocks {
            let i = g.payload_index(block);
            let e = entries[i as usize];
            let state = e & STATE_MASK;
            match state {
                PAYLOAD_BLOCK_NOT_PRESENT
                | PAYLOAD_BLOCK_UNDEFINED
                | PAYLOAD_BLOCK_ZERO
                | PAYLOAD_BLOCK_UNMAPPED
                | PAYLOAD_BLOCK_UNMAPPED_V095 => continue,
                PAYLOAD_BLOCK_FULLY_PRESENT => {}
                PAYLOAD_BLOCK_PARTIALLY_PRESENT if g.has_parent => {
                    let chunk = block / g.chunk_ratio;
                    let sb = entries[g.bitmap_index(chunk) as usize];
                    if sb & STATE_MASK != SB_BLOCK_PRESENT {
                        return Err(entry_err(
                            i,
                            format!(
                                "payload block {block} is partially present but its chunk has no sector bitmap"
                            ),
                        ));
                    }
                }
                PAYLOAD_BLOCK_PARTIALLY_PRESENT => {
                    return Err(entry_err(
                        i,
                        format!(
                            "payload block {block} is partially present in a disk without a parent"
                        ),
                    ))
                }
                s => {
                    return Err(entry_err(
                        i,
                        format!("payload block {block} has the reserved state {s}"),
                    ))
                }
            }
            let len = g.block_len(block);
            check_block(e & OFFSET_MASK, g.block_size, len, file_len, regions)
                .map_err(|m| entry_err(i, format!("payload block {block} {m}")))?;
        }
        if g.has_parent {
            for chunk in 0..g.data_blocks.div_ceil(g.chunk_ratio) {
                let i = g.bitmap_index(chunk);
                let e = entries[i as usize];
                match e & STATE_MASK {
                    SB_BLOCK_NOT_PRESENT => {}
                    SB_BLOCK_PRESENT => check_block(
                        e & OFFSET_MASK,
                        BITMAP_BLOCK_SIZE,
                        BITMAP_BLOCK_SIZE,
                        file_len,
                        regions,
                    )
                    .map_err(|m| entry_err(i, format!("sector bitmap block {chunk} {m}")))?,
                    s => {
                        return Err(entry_err(
                            i,
                            format!("sector bitmap block {chunk} has the reserved state {s}"),
                        ))
                    }
                }
            }
        }
        Ok(BlockAllocationTable { geometry, entries })
    }

    /// How payload block `block` reads.
    pub fn state(&self, block: u64) -> BlockState {
        let g = &self.geometry;
        // Blocks past the disk's end have no entry (callers stay inside the disk).
        let Some(&e) = self.entries.get(g.payload_index(block) as usize) else {
            return BlockState::NotPresent;
        };
        match e & STATE_MASK {
            PAYLOAD_BLOCK_FULLY_PRESENT => BlockState::Full(e & OFFSET_MASK),
            PAYLOAD_BLOCK_PARTIALLY_PRESENT => {
                let sb = self
                    .entries
                    .get(g.bitmap_index(block / g.chunk_ratio) as usize)
                    .copied()
                    .unwrap_or(0);
                BlockState::Partial(e & OFFSET_MASK, sb & OFFSET_MASK)
            }
            PAYLOAD_BLOCK_NOT_PRESENT => BlockState::NotPresent,
            _ => BlockState::Zero,
        }
    }

    /// Where in the file the bitmap bits of payload block `block` start (bytes), given the
    /// chunk's sector bitmap block at `bitmap`.
    pub fn bitmap_bytes(&self, block: u64, bitmap: u64) -> (u64, u64) {
        let g = &self.geometry;
        let sectors_per_block = g.block_size / g.sector_size;
        let first_sector = (block % g.chunk_ratio) * sectors_per_block;
        (bitmap + first_sector / 8, sectors_per_block / 8)
    }
}

/// Why a block of `size` bytes at `offset` (of which `used` hold virtual disk) is misplaced.
fn check_block(
    offset: u64,
    size: u64,
    used: u64,
    file_len: u64,
    regions: &[Region],
) -> std::result::Result<(), String> {
    if offset < HEADER_SECTION {
        return Err(format!("lies at {offset}, inside the header section"));
    }
    // Old qemu versions wrote the last block only partially: allow what holds no disk.
    match offset.checked_add(used) {
        Some(end) if offset < file_len && end <= file_len => {}
        _ => {
            return Err(format!(
                "at {offset} runs past the end of the file ({file_len} bytes)"
            ))
        }
    }
    let r = Region {
        offset,
        length: size,
    };
    if let Some(o) = regions.iter().find(|o| o.overlaps(&r)) {
        return Err(format!(
            "at {offset} overlaps metadata ({} bytes at {})",
            o.length, o.offset
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_counts_and_interleaving() {
        // 32 MiB blocks of 512-byte sectors: 128 payload blocks per chunk.
        let g = Geometry::of(10 << 30, 32 * MIB, 512, false);
        assert_eq!(g.chunk_ratio, 128);
        assert_eq!(g.data_blocks, 320);
        assert_eq!(g.bat_entries, 320 + 2);
        assert_eq!(g.payload_index(127), 127);
        assert_eq!(g.payload_index(128), 129);
        assert_eq!(g.bitmap_index(0), 128);
        let d = Geometry::of(10 << 30, 32 * MIB, 512, true);
        assert_eq!(d.bat_entries, 3 * 129);
        // 1 MiB blocks of 4 KiB sectors: 32768 per chunk.
        assert_eq!(Geometry::of(1 << 30, MIB, 4096, false).chunk_ratio, 32768);
        assert_eq!(Geometry::of(0, MIB, 512, false).bat_entries, 0);
        assert_eq!(g.block_len(319), 32 * MIB);
        assert_eq!(
            Geometry::of(33 * MIB, 32 * MIB, 512, false).block_len(1),
            MIB
        );
    }

    #[test]
    fn misplaced_blocks_are_refused() {
        let g = Geometry::of(64 * MIB, 32 * MIB, 512, false);
        let meta = [Region {
            offset: 2 * MIB,
            length: MIB,
        }];
        let ok = vec![PAYLOAD_BLOCK_FULLY_PRESENT | (4 * MIB), PAYLOAD_BLOCK_ZERO];
        let bat = BlockAllocationTable::new(g, ok, 40 * MIB, &meta, 0).unwrap();
        assert_eq!(bat.state(0), BlockState::Full(4 * MIB));
        assert_eq!(bat.state(1), BlockState::Zero);
        for bad in [
            PAYLOAD_BLOCK_FULLY_PRESENT,                 // in the header section
            PAYLOAD_BLOCK_FULLY_PRESENT | (2 * MIB),     // on the metadata
            PAYLOAD_BLOCK_FULLY_PRESENT | (20 * MIB),    // past the end
            PAYLOAD_BLOCK_FULLY_PRESENT | OFFSET_MASK,   // far past the end
            4,                                           // reserved state
            PAYLOAD_BLOCK_PARTIALLY_PRESENT | (4 * MIB), // no parent
        ] {
            assert!(
                BlockAllocationTable::new(g, vec![bad, 0], 40 * MIB, &meta, 0).is_err(),
                "{bad:#x}"
            );
        }
    }
}
