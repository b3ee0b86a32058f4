//! SEsparse extents: the data files of ESXi snapshots on VMFS6 (and of disks over 2 TB on
//! VMFS5), named `*-sesparse.vmdk` and listed as `SESPARSE` extents in a descriptor whose
//! createType is `seSparse`.
//!
//! The format has no public specification. The facts here are those qemu's `block/vmdk.c`
//! relies on (`vmdk_open_se_sparse`, `check_se_sparse_const_header`,
//! `check_se_sparse_volatile_header`, the SEsparse branches of `get_cluster_offset`), which
//! is the reference this reader matches, byte for byte:
//!
//! - sector 0 holds the constant header: 26 little-endian u64 fields and 304 bytes of zero
//!   padding (see [`SeSparseConstHeader`]); qemu accepts only magic `0xcafebabe`, version
//!   `0x200000001`, 8-sector (4 KiB) grains, 64-sector grain tables (4096 entries of 8
//!   bytes, 16 MiB of disk each), flags 0, and zero reserved fields and padding;
//! - the volatile header (magic `0xcafecafe`) sits at the sector the constant header names;
//!   a set `replay_journal` means the image is dirty, and qemu refuses it;
//! - the grain directory holds `grain_dir_size × 64` u64 entries: 0 for no table, or
//!   `0x1000_0000_xxxx_xxxx` for table number `x`, which starts at sector
//!   `grain_tables_offset + x × 64`;
//! - a grain-table entry's top nibble is its kind: 0 unallocated (the whole entry must be 0),
//!   1 unmapped (SCSI UNMAP) and 2 zero (both read as zero and hide the parent), 3 allocated;
//!   the other 60 bits of an allocated entry hold the grain's number in the grains area with
//!   their two parts swapped (see [`SeSparseGrain::decode`]).

use byteorder::{ByteOrder, LittleEndian as LE};
use vdisk_core::{Error, Result, SECTOR};

use crate::sparse::Run;
use vdisk_io::Bytes;

/// Magic of the constant header (u64 at byte 0).
pub const SESPARSE_CONST_MAGIC: u64 = 0xcafe_babe;
/// Magic of the volatile header (u64 at its byte 0).
pub const SESPARSE_VOLATILE_MAGIC: u64 = 0xcafe_cafe;
/// The one version qemu reads (and ESXi writes): 2.1.
pub const SESPARSE_VERSION: u64 = 0x2_0000_0001;
/// Grain size in sectors (the only one qemu accepts).
pub const SESPARSE_GRAIN_SECTORS: u64 = 8;
/// Grain-table size in sectors (the only one qemu accepts): 4096 entries of 8 bytes.
pub const SESPARSE_TABLE_SECTORS: u64 = 64;

/// Bytes of one grain.
const GRAIN: u64 = SESPARSE_GRAIN_SECTORS * SECTOR;
/// Entries of one grain table.
const GTES: u64 = SESPARSE_TABLE_SECTORS * SECTOR / 8;
/// Bytes of one grain table.
const TABLE_BYTES: u64 = SESPARSE_TABLE_SECTORS * SECTOR;
/// Bytes of disk one grain table covers (16 MiB).
const TABLE_SPAN: u64 = GTES * GRAIN;
/// Upper bound on grain-directory entries: qemu's bound for every VMDK kind ("L1 size too
/// big"), 32 Mi entries, enough for 512 TiB of SEsparse disk.
pub const SESPARSE_MAX_GD_ENTRIES: u64 = 32 << 20;
/// A directory entry naming a table has exactly these top 32 bits (qemu checks all 32).
const GD_ALLOCATED: u64 = 0x1000_0000_0000_0000;
/// Tables must start below sector 2^32: qemu keeps a table's sector in 32 bits and refuses
/// any beyond.
const MAX_TABLE_SECTOR: u64 = 0xffff_ffff;

/// The constant header (sector 0), as stored: nothing in it is checked yet. Sizes and offsets
/// are in sectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeSparseConstHeader {
    /// [`SESPARSE_CONST_MAGIC`].
    pub magic: u64,
    /// [`SESPARSE_VERSION`].
    pub version: u64,
    /// Disk size in sectors.
    pub capacity: u64,
    /// Grain size in sectors (8).
    pub grain_size: u64,
    /// Grain-table size in sectors (64).
    pub grain_table_size: u64,
    /// Feature flags (0).
    pub flags: u64,
    /// Four reserved fields (0).
    pub reserved: [u64; 4],
    /// Sector of the volatile header.
    pub volatile_header_offset: u64,
    /// Sectors of the volatile header.
    pub volatile_header_size: u64,
    /// Sector of the journal header.
    pub journal_header_offset: u64,
    /// Sectors of the journal header.
    pub journal_header_size: u64,
    /// Sector of the journal.
    pub journal_offset: u64,
    /// Sectors of the journal.
    pub journal_size: u64,
    /// Sector of the grain directory.
    pub grain_dir_offset: u64,
    /// Sectors of the grain directory (64 entries each).
    pub grain_dir_size: u64,
    /// Sector of the grain-tables area (table `x` starts `x × 64` sectors in).
    pub grain_tables_offset: u64,
    /// Sectors of the grain-tables area.
    pub grain_tables_size: u64,
    /// Sector of the free-space bitmap.
    pub free_bitmap_offset: u64,
    /// Sectors of the free-space bitmap.
    pub free_bitmap_size: u64,
    /// Sector of the back map (grain to disk position, for space reclamation).
    pub backmap_offset: u64,
    /// Sectors of the back map.
    pub backmap_size: u64,
    /// Sector of the grains area (grain `n` starts `n × 8` sectors in).
    pub grains_offset: u64,
    /// Sectors of the grains area.
    pub grains_size: u64,
    /// Whether the 304 bytes of padding after the fields are all zero.
    pub padding_is_zero: bool,
}

impl SeSparseConstHeader {
    /// Size on disk.
    pub const SIZE: usize = 512;

    /// Decode the 512 bytes at the start of `bytes` (26 u64 fields at offsets 0, 8, … 200,
    /// then padding). Only the length is checked.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let Some(b) = bytes.get(..Self::SIZE) else {
            return Err(Error::invalid(format!(
                "SEsparse header is truncated ({} of 512 bytes)",
                bytes.len()
            )));
        };
        let f = |i: usize| LE::read_u64(&b[i * 8..i * 8 + 8]);
        Ok(SeSparseConstHeader {
            magic: f(0),
            version: f(1),
            capacity: f(2),
            grain_size: f(3),
            grain_table_size: f(4),
            flags: f(5),
            reserved: [f(6), f(7), f(8), f(9)],
            volatile_header_offset: f(10),
            volatile_header_size: f(11),
            journal_header_offset: f(12),
            journal_header_size: f(13),
            journal_offset: f(14),
            journal_size: f(15),
            grain_dir_offset: f(16),
            grain_dir_size: f(17),
            grain_tables_offset: f(18),
            grain_tables_size: f(19),
            free_bitmap_offset: f(20),
            free_bitmap_size: f(21),
            backmap_offset: f(22),
            backmap_size: f(23),
            grains_offset: f(24),
            grains_size: f(25),
            padding_is_zero: b[208..].iter().all(|&x| x == 0),
        })
    }

    /// Encode (the inverse of [`SeSparseConstHeader::parse`]; padding is written as zeros,
    /// or as one 0xff byte when `padding_is_zero` is false).
    pub fn to_bytes(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        let fields = [
            self.magic,
            self.version,
            self.capacity,
            self.grain_size,
            self.grain_table_size,
            self.flags,
            self.reserved[0],
            self.reserved[1],
            self.reserved[2],
            self.reserved[3],
            self.volatile_header_offset,
            self.volatile_header_size,
            self.journal_header_offset,
            self.journal_header_size,
            self.journal_offset,
            self.journal_size,
            self.grain_dir_offset,
            self.grain_dir_size,
            self.grain_tables_offset,
            self.grain_tables_size,
            self.free_bitmap_offset,
            self.free_bitmap_size,
            self.backmap_offset,
            self.backmap_size,
            self.grains_offset,
            self.grains_size,
        ];
        for (i, v) in fields.iter().enumerate() {
            LE::write_u64(&mut b[i * 8..i * 8 + 8], *v);
        }
        if !self.padding_is_zero {
            b[511] = 0xff;
        }
        b
    }
}

/// The volatile header, as stored (512 bytes at `volatile_header_offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeSparseVolatileHeader {
    /// [`SESPARSE_VOLATILE_MAGIC`].
    pub magic: u64,
    /// Number of the next free grain table.
    pub free_gt_number: u64,
    /// Sequence number of the next journal transaction.
    pub next_txn_seq_number: u64,
    /// Non-zero when the journal must be replayed before the image reads right.
    pub replay_journal: u64,
    /// Whether the 480 bytes of padding are all zero.
    pub padding_is_zero: bool,
}

impl SeSparseVolatileHeader {
    /// Size on disk.
    pub const SIZE: usize = 512;

    /// Decode the 512 bytes at the start of `bytes` (4 u64 fields, then padding).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let Some(b) = bytes.get(..Self::SIZE) else {
            return Err(Error::corrupt(
                "SEsparse volatile header is truncated".to_string(),
            ));
        };
        let f = |i: usize| LE::read_u64(&b[i * 8..i * 8 + 8]);
        Ok(SeSparseVolatileHeader {
            magic: f(0),
            free_gt_number: f(1),
            next_txn_seq_number: f(2),
            replay_journal: f(3),
            padding_is_zero: b[32..].iter().all(|&x| x == 0),
        })
    }

    /// Encode (the inverse of [`SeSparseVolatileHeader::parse`]).
    pub fn to_bytes(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        for (i, v) in [
            self.magic,
            self.free_gt_number,
            self.next_txn_seq_number,
            self.replay_journal,
        ]
        .iter()
        .enumerate()
        {
            LE::write_u64(&mut b[i * 8..i * 8 + 8], *v);
        }
        if !self.padding_is_zero {
            b[511] = 0xff;
        }
        b
    }
}

/// What one grain-table entry says, decoded (before it is checked against the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeSparseGrain {
    /// Kind 0: not stored here (the parent's data, or zero in a base).
    Unallocated,
    /// Kind 1: unmapped by the guest (SCSI UNMAP): reads as zero, hides the parent. qemu
    /// reads it as zero, like kind 2.
    Unmapped,
    /// Kind 2: a zero grain: reads as zero, hides the parent.
    Zero,
    /// Kind 3: grain number `n` of the grains area.
    Allocated(u64),
    /// Anything else (kinds 4 to 15, or kind 0 with other bits set): qemu fails the read.
    Invalid(u64),
}

impl SeSparseGrain {
    /// Decode a grain-table entry. An allocated entry holds the grain number's low 12 bits
    /// in bits 48-59 and its high 48 bits in bits 0-47 (qemu's `get_cluster_offset`:
    /// `((e & 0x0fff000000000000) >> 48) | ((e & 0x0000ffffffffffff) << 12)`).
    pub fn decode(raw: u64) -> Self {
        match raw >> 60 {
            0 if raw == 0 => SeSparseGrain::Unallocated,
            1 => SeSparseGrain::Unmapped,
            2 => SeSparseGrain::Zero,
            3 => SeSparseGrain::Allocated(
                ((raw & 0x0fff_0000_0000_0000) >> 48) | ((raw & 0x0000_ffff_ffff_ffff) << 12),
            ),
            _ => SeSparseGrain::Invalid(raw),
        }
    }

    /// Encode (the inverse of [`SeSparseGrain::decode`]; `Allocated(n)` needs n < 2^60).
    pub fn encode(self) -> u64 {
        match self {
            SeSparseGrain::Unallocated => 0,
            SeSparseGrain::Unmapped => 1 << 60,
            SeSparseGrain::Zero => 2 << 60,
            SeSparseGrain::Allocated(n) => {
                (3 << 60) | ((n & 0xfff) << 48) | ((n >> 12) & 0x0000_ffff_ffff_ffff)
            }
            SeSparseGrain::Invalid(raw) => raw,
        }
    }
}

/// Where one grain directory slot's table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeSparseTable {
    /// No table: the slot's 16 MiB are unallocated.
    None,
    /// The table starts at this byte of the file (and lies inside it).
    At(u64),
    /// The entry is not 0 and not `0x10000000_xxxxxxxx` (raw value).
    Invalid(u64),
    /// The table would start at or past sector 2^32 (table number).
    TooFar(u64),
    /// The table lies (partly) outside the file (its byte offset).
    OutsideFile(u64),
}

/// An SEsparse extent, validated: the constant and volatile headers check out, and the grain
/// directory lies inside the file. Grain tables and grains are checked as they are looked up
/// (a lookup is a few comparisons), so a damaged table fails the reads it serves, not the
/// open.
#[derive(Debug)]
pub struct SeSparseExtent {
    bytes: Bytes,
    header: SeSparseConstHeader,
    volatile: SeSparseVolatileHeader,
    /// Byte offset of the grain directory.
    gd_start: u64,
    /// Entries of the grain directory, as the header declares (qemu's l1_size).
    gd_entries: u64,
    /// Entries the capacity needs and the file holds: min(gd_entries, needed).
    gd_used: u64,
}

impl SeSparseExtent {
    /// Parse and validate the SEsparse extent held in `bytes`.
    pub fn open(bytes: Bytes) -> Result<Self> {
        let path = bytes.path().to_path_buf();
        Self::open_inner(bytes).map_err(|e| e.with_path(path))
    }

    fn open_inner(bytes: Bytes) -> Result<Self> {
        let data = bytes.require_slice()?;
        let len = data.len() as u64;
        let h = SeSparseConstHeader::parse(data)?;
        // The checks of qemu's check_se_sparse_const_header, in its order.
        if h.magic != SESPARSE_CONST_MAGIC {
            return Err(Error::invalid(format!(
                "not an SEsparse extent (header magic {:#x}, not 0xcafebabe)",
                h.magic
            )));
        }
        if h.version != SESPARSE_VERSION {
            return Err(Error::unsupported(format!(
                "SEsparse version {:#x} (vdisk reads 0x200000001, as qemu does)",
                h.version
            )));
        }
        if h.grain_size != SESPARSE_GRAIN_SECTORS {
            return Err(Error::unsupported(format!(
                "SEsparse grain size of {} sectors (vdisk reads 8-sector grains, as qemu does)",
                h.grain_size
            )));
        }
        if h.grain_table_size != SESPARSE_TABLE_SECTORS {
            return Err(Error::unsupported(format!(
                "SEsparse grain tables of {} sectors (vdisk reads 64-sector tables, as qemu does)",
                h.grain_table_size
            )));
        }
        if h.flags != 0 {
            return Err(Error::unsupported(format!(
                "SEsparse flags {:#x} (vdisk reads flags 0, as qemu does)",
                h.flags
            )));
        }
        if h.reserved != [0; 4] {
            return Err(Error::unsupported(
                "SEsparse header has non-zero reserved fields (qemu refuses them too)",
            ));
        }
        if !h.padding_is_zero {
            return Err(Error::unsupported(
                "SEsparse header has non-zero padding (qemu refuses it too)",
            ));
        }
        let volatile_at = h
            .volatile_header_offset
            .checked_mul(SECTOR)
            .filter(|&at| at.checked_add(SECTOR).is_some_and(|end| end <= len))
            .ok_or_else(|| {
                Error::corrupt(format!(
                    "SEsparse volatile header (sector {}) lies past the end of the file ({len} bytes)",
                    h.volatile_header_offset
                ))
            })?;
        let volatile = SeSparseVolatileHeader::parse(&data[volatile_at as usize..])?;
        if volatile.magic != SESPARSE_VOLATILE_MAGIC {
            return Err(Error::invalid(format!(
                "SEsparse volatile header magic is {:#x}, not 0xcafecafe",
                volatile.magic
            ))
            .at(volatile_at));
        }
        if volatile.replay_journal != 0 {
            return Err(Error::unsupported(
                "SEsparse image is dirty: its journal must be replayed first (ESXi does so when it opens the disk; qemu refuses it too)",
            )
            .at(volatile_at));
        }
        if !volatile.padding_is_zero {
            return Err(Error::unsupported(
                "SEsparse volatile header has non-zero padding (qemu refuses it too)",
            )
            .at(volatile_at));
        }
        // capacity × 512 must fit in a byte count, with room for extent arithmetic.
        if h.capacity > (u64::MAX >> 10) {
            return Err(Error::invalid(format!(
                "capacity of {} sectors is out of range",
                h.capacity
            )));
        }
        let gd_entries = h
            .grain_dir_size
            .checked_mul(SECTOR / 8)
            .filter(|&n| n <= SESPARSE_MAX_GD_ENTRIES)
            .ok_or_else(|| {
                Error::unsupported(format!(
                    "grain directory of {} sectors is too large (at most {SESPARSE_MAX_GD_ENTRIES} entries, qemu's bound)",
                    h.grain_dir_size
                ))
            })?;
        let needed = h.capacity.div_ceil(TABLE_SPAN / SECTOR);
        let gd_used = gd_entries.min(needed);
        // qemu reads whatever lies at these offsets (zeros past the end of the file); the
        // header and directory never overlap, and the areas start after the header, in
        // every file ESXi writes. Files that break this are damaged or hostile.
        for (what, sector) in [
            ("grain directory", h.grain_dir_offset),
            ("grain tables", h.grain_tables_offset),
            ("grains", h.grains_offset),
        ] {
            if sector == 0 {
                return Err(Error::corrupt(format!(
                    "SEsparse {what} area starts at sector 0, over the header"
                )));
            }
        }
        let gd_start = h.grain_dir_offset.checked_mul(SECTOR);
        let gd_end = gd_start.and_then(|s| s.checked_add(gd_used * 8));
        let (Some(gd_start), Some(gd_end)) = (gd_start, gd_end) else {
            return Err(Error::corrupt(format!(
                "grain directory (sector {}) lies past the end of the file",
                h.grain_dir_offset
            )));
        };
        if gd_end > len {
            return Err(Error::corrupt(format!(
                "grain directory (sector {}, {gd_used} entries) lies past the end of the file ({len} bytes)",
                h.grain_dir_offset
            )));
        }
        Ok(SeSparseExtent {
            bytes,
            header: h,
            volatile,
            gd_start,
            gd_entries,
            gd_used,
        })
    }

    /// The constant header.
    pub fn header(&self) -> &SeSparseConstHeader {
        &self.header
    }

    /// The volatile header.
    pub fn volatile_header(&self) -> &SeSparseVolatileHeader {
        &self.volatile
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.header.capacity * SECTOR
    }

    /// Grain size in bytes (4096).
    pub fn grain_bytes(&self) -> u64 {
        GRAIN
    }

    /// Grain-directory entries the header declares.
    pub fn directory_len(&self) -> u64 {
        self.gd_entries
    }

    /// Grain-directory entries that cover the capacity and are looked at.
    pub fn directory_used(&self) -> u64 {
        self.gd_used
    }

    fn data(&self) -> &[u8] {
        // Mapped or in memory: open() required the slice.
        self.bytes.slice().unwrap_or(&[])
    }

    /// The raw grain-directory entry of `slot` (`slot < directory_used()`).
    pub fn directory_entry(&self, slot: u64) -> Option<u64> {
        if slot >= self.gd_used {
            return None;
        }
        // gd_start + gd_used * 8 <= file length, checked at open.
        let at = (self.gd_start + slot * 8) as usize;
        Some(LE::read_u64(&self.data()[at..at + 8]))
    }

    /// Where the table of directory slot `slot` is (`None` for slots past the used part of
    /// the directory).
    pub fn table(&self, slot: u64) -> Option<SeSparseTable> {
        let raw = self.directory_entry(slot)?;
        Some(self.classify_table(raw))
    }

    fn classify_table(&self, raw: u64) -> SeSparseTable {
        if raw == 0 {
            return SeSparseTable::None;
        }
        if raw & 0xffff_ffff_0000_0000 != GD_ALLOCATED {
            return SeSparseTable::Invalid(raw);
        }
        let number = raw & 0xffff_ffff;
        let sector = number
            .checked_mul(SESPARSE_TABLE_SECTORS)
            .and_then(|s| s.checked_add(self.header.grain_tables_offset))
            .filter(|&s| s <= MAX_TABLE_SECTOR);
        let Some(sector) = sector else {
            return SeSparseTable::TooFar(number);
        };
        // sector < 2^32, so these products fit.
        let at = sector * SECTOR;
        if at + TABLE_BYTES > self.bytes.len() {
            return SeSparseTable::OutsideFile(at);
        }
        SeSparseTable::At(at)
    }

    /// The grain-table entry of grain `grain` in the table at byte `table`.
    fn entry(&self, table: u64, grain: u64) -> u64 {
        // table + TABLE_BYTES <= file length (SeSparseTable::At).
        let at = (table + (grain % GTES) * 8) as usize;
        LE::read_u64(&self.data()[at..at + 8])
    }

    /// Byte offset of grain number `n` of the grains area, if it fits in a u64.
    pub fn grain_offset(&self, n: u64) -> Option<u64> {
        n.checked_mul(SESPARSE_GRAIN_SECTORS)?
            .checked_add(self.header.grains_offset)?
            .checked_mul(SECTOR)
    }

    /// What the table says about grain `grain` (index from the start of the disk), or the
    /// reason it cannot be looked up.
    pub fn grain(&self, grain: u64) -> Result<SeSparseGrain> {
        let table = self.table_for(grain / GTES, grain * GRAIN)?;
        Ok(match table {
            None => SeSparseGrain::Unallocated,
            Some(t) => SeSparseGrain::decode(self.entry(t, grain)),
        })
    }

    /// The table serving slot `slot`, or an error that names the problem. `offset` is the
    /// disk offset asked for (for messages).
    fn table_for(&self, slot: u64, offset: u64) -> Result<Option<u64>> {
        let err = |msg: String| Err(Error::corrupt(msg).with_path(self.bytes.path()));
        if slot >= self.gd_entries {
            return err(format!(
                "disk offset {offset} lies past what the grain directory covers ({} tables of 16 MiB; qemu fails this read too)",
                self.gd_entries
            ));
        }
        match self.table(slot) {
            // A slot the capacity needs but the file's directory does not hold cannot
            // happen: gd_used = min(entries, needed) and open checked the used part.
            None | Some(SeSparseTable::None) => Ok(None),
            Some(SeSparseTable::At(t)) => Ok(Some(t)),
            Some(SeSparseTable::Invalid(raw)) => err(format!(
                "grain directory entry {slot} is {raw:#018x}, not a grain table (qemu fails this read too)"
            )),
            Some(SeSparseTable::TooFar(n)) => err(format!(
                "grain directory entry {slot} names grain table {n}, past sector 2^32 (qemu refuses it too)"
            )),
            Some(SeSparseTable::OutsideFile(at)) => err(format!(
                "grain table {slot} (byte {at}) lies past the end of the file ({} bytes)",
                self.bytes.len()
            )),
        }
    }

    /// The run at byte `offset` (inside the capacity), at most `max` bytes long (and no
    /// further than the capacity). Neighbouring grains of the same kind, and allocated grains
    /// stored one after the other, make one run.
    pub(crate) fn run_at(&self, offset: u64, max: u64) -> Result<(u64, Run)> {
        let grain = offset / GRAIN;
        let within = offset % GRAIN;
        let slot = grain / GTES;
        let limit = max.min((slot + 1) * TABLE_SPAN - offset);
        let Some(table) = self.table_for(slot, offset)? else {
            // Following slots without a table join the run: a mostly empty disk maps in
            // one step per allocated table, not one per 16 MiB.
            let mut end = offset + limit;
            let mut next = slot + 1;
            while end - offset < max && self.directory_entry(next) == Some(0) {
                end += TABLE_SPAN;
                next += 1;
            }
            return Ok(((end - offset).min(max), Run::Unallocated));
        };
        let len_file = self.bytes.len();
        // Where grain number n of the grains area starts, if that is inside the file.
        let stored = |n: u64| self.grain_offset(n).filter(|&at| at < len_file);
        let first = SeSparseGrain::decode(self.entry(table, grain));
        let run = match first {
            SeSparseGrain::Unallocated => Run::Unallocated,
            SeSparseGrain::Unmapped | SeSparseGrain::Zero => Run::Zero,
            SeSparseGrain::Allocated(n) => match stored(n) {
                Some(at) => Run::Stored(at + within),
                None => {
                    return Err(Error::corrupt(format!(
                        "grain {grain} is stored at grain {n} of the grains area, past the end of the file ({len_file} bytes)"
                    ))
                    .with_path(self.bytes.path()))
                }
            },
            SeSparseGrain::Invalid(raw) => {
                return Err(Error::corrupt(format!(
                    "grain {grain}: table entry {raw:#018x} is of no known kind (qemu fails this read too)"
                ))
                .with_path(self.bytes.path()))
            }
        };
        let mut len = (GRAIN - within).min(limit);
        let mut g = grain + 1;
        while len < limit {
            let next = SeSparseGrain::decode(self.entry(table, g));
            let same = match (&run, next) {
                (Run::Unallocated, SeSparseGrain::Unallocated) => true,
                (Run::Zero, SeSparseGrain::Unmapped | SeSparseGrain::Zero) => true,
                (Run::Stored(at), SeSparseGrain::Allocated(n)) => {
                    // Stored right after the run so far, and inside the file.
                    stored(n) == Some(at - within + (g - grain) * GRAIN)
                }
                _ => false,
            };
            if !same {
                break;
            }
            len = (len + GRAIN).min(limit);
            g += 1;
        }
        Ok((len, run))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::Arc;

    /// A constant header as ESXi lays out a small disk, spelled out field by field.
    fn header_bytes(capacity: u64) -> [u8; 512] {
        let mut b = [0u8; 512];
        let mut put = |i: usize, v: u64| b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        put(0, 0xcafe_babe); // magic
        put(1, 0x2_0000_0001); // version 2.1
        put(2, capacity); // sectors
        put(3, 8); // grain: 8 sectors
        put(4, 64); // grain table: 64 sectors
        put(5, 0); // flags
                   // 6..=9: reserved
        put(10, 1); // volatile header at sector 1
        put(11, 1);
        put(12, 2); // journal header
        put(13, 2);
        put(14, 4); // journal
        put(15, 4);
        put(16, 8); // grain directory at sector 8
        put(17, 1); // one sector: 64 entries
        put(18, 9); // grain tables at sector 9
        put(19, 128); // two tables
        put(20, 137); // free bitmap
        put(21, 1);
        put(22, 138); // back map
        put(23, 1);
        put(24, 139); // grains at sector 139
        put(25, 16); // two grains
        b
    }

    fn volatile_bytes() -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..8].copy_from_slice(&0xcafe_cafeu64.to_le_bytes());
        b[8..16].copy_from_slice(&2u64.to_le_bytes()); // next free table
        b[16..24].copy_from_slice(&7u64.to_le_bytes()); // next transaction
        b
    }

    /// A 32 MiB disk: table 1 serves slot 0, table 0 slot 1; grain 0 allocated at grain 1 of
    /// the grains area, grain 1 zero, grain 2 unmapped, grain 3 at grain 0; slot 1's first
    /// grain allocated at grain 1 too.
    fn image() -> Vec<u8> {
        let mut f = vec![0u8; (139 + 16) * 512];
        f[..512].copy_from_slice(&header_bytes(65536));
        f[512..1024].copy_from_slice(&volatile_bytes());
        let gd = 8 * 512;
        f[gd..gd + 8].copy_from_slice(&0x1000_0000_0000_0001u64.to_le_bytes());
        f[gd + 8..gd + 16].copy_from_slice(&0x1000_0000_0000_0000u64.to_le_bytes());
        let t1 = (9 + 64) * 512;
        let t0 = 9 * 512;
        let put =
            |f: &mut Vec<u8>, at: usize, v: u64| f[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put(&mut f, t1, SeSparseGrain::Allocated(1).encode());
        put(&mut f, t1 + 8, SeSparseGrain::Zero.encode());
        put(&mut f, t1 + 16, SeSparseGrain::Unmapped.encode());
        put(&mut f, t1 + 24, SeSparseGrain::Allocated(0).encode());
        put(&mut f, t0, SeSparseGrain::Allocated(1).encode());
        let g0 = 139 * 512;
        f[g0..g0 + 4096].fill(0xaa);
        f[g0 + 4096..g0 + 8192].fill(0xbb);
        f
    }

    fn open(f: Vec<u8>) -> Result<SeSparseExtent> {
        SeSparseExtent::open(Bytes::Owned(PathBuf::from("t-sesparse.vmdk"), Arc::new(f)))
    }

    #[test]
    fn header_fields_sit_at_their_offsets() {
        let h = SeSparseConstHeader::parse(&header_bytes(65536)).unwrap();
        assert_eq!(h.magic, SESPARSE_CONST_MAGIC);
        assert_eq!(h.version, SESPARSE_VERSION);
        assert_eq!(h.capacity, 65536);
        assert_eq!((h.grain_size, h.grain_table_size, h.flags), (8, 64, 0));
        assert_eq!((h.volatile_header_offset, h.volatile_header_size), (1, 1));
        assert_eq!((h.journal_header_offset, h.journal_offset), (2, 4));
        assert_eq!((h.grain_dir_offset, h.grain_dir_size), (8, 1));
        assert_eq!((h.grain_tables_offset, h.grain_tables_size), (9, 128));
        assert_eq!((h.free_bitmap_offset, h.backmap_offset), (137, 138));
        assert_eq!((h.grains_offset, h.grains_size), (139, 16));
        assert!(h.padding_is_zero);
        assert_eq!(h.to_bytes(), header_bytes(65536));
        let v = SeSparseVolatileHeader::parse(&volatile_bytes()).unwrap();
        assert_eq!(
            (
                v.magic,
                v.free_gt_number,
                v.next_txn_seq_number,
                v.replay_journal
            ),
            (SESPARSE_VOLATILE_MAGIC, 2, 7, 0)
        );
        assert_eq!(v.to_bytes(), volatile_bytes());
    }

    #[test]
    fn grain_entries_decode_as_qemu_does() {
        assert_eq!(SeSparseGrain::decode(0), SeSparseGrain::Unallocated);
        // Kind 0 with any other bit set: qemu fails the read.
        assert_eq!(SeSparseGrain::decode(5), SeSparseGrain::Invalid(5));
        assert_eq!(
            SeSparseGrain::decode(0x1000_0000_0000_0123),
            SeSparseGrain::Unmapped
        );
        assert_eq!(
            SeSparseGrain::decode(0x2000_0000_0000_0000),
            SeSparseGrain::Zero
        );
        // Low 12 bits of the grain number in bits 48-59, the rest in bits 0-47.
        assert_eq!(
            SeSparseGrain::decode(0x3abc_0000_0001_2345),
            SeSparseGrain::Allocated(0x1234_5abc)
        );
        assert_eq!(
            SeSparseGrain::decode(0x3000_0000_0000_0001),
            SeSparseGrain::Allocated(0x1000)
        );
        for kind in 4..16u64 {
            let raw = kind << 60;
            assert_eq!(SeSparseGrain::decode(raw), SeSparseGrain::Invalid(raw));
        }
        for n in [0, 1, 0xfff, 0x1000, 0x1234_5abc, (1 << 60) - 1] {
            let g = SeSparseGrain::Allocated(n);
            assert_eq!(SeSparseGrain::decode(g.encode()), g);
        }
    }

    #[test]
    fn reads_each_entry_kind() {
        let x = open(image()).unwrap();
        assert_eq!(x.capacity(), 32 << 20);
        assert_eq!(x.directory_len(), 64);
        assert_eq!(x.directory_used(), 2);
        assert_eq!(x.table(0), Some(SeSparseTable::At((9 + 64) * 512)));
        assert_eq!(x.table(1), Some(SeSparseTable::At(9 * 512)));
        assert_eq!(x.grain(0).unwrap(), SeSparseGrain::Allocated(1));
        assert_eq!(x.grain(1).unwrap(), SeSparseGrain::Zero);
        assert_eq!(x.grain(2).unwrap(), SeSparseGrain::Unmapped);
        assert_eq!(x.grain(4).unwrap(), SeSparseGrain::Unallocated);
        let g1 = (139 + 8) * 512;
        match x.run_at(100, 1 << 30).unwrap() {
            (3996, Run::Stored(at)) => assert_eq!(at, g1 + 100),
            other => panic!("{other:?}"),
        }
        // Zero and unmapped grains make one zero run.
        assert!(matches!(
            x.run_at(4096, 1 << 30).unwrap(),
            (8192, Run::Zero)
        ));
        // Grain 3 at grain 0 of the area: not after grain 0's data, a run of its own.
        match x.run_at(3 * 4096, 1 << 30).unwrap() {
            (4096, Run::Stored(at)) => assert_eq!(at, 139 * 512),
            other => panic!("{other:?}"),
        }
        // The rest of slot 0 is unallocated, up to the table's end.
        assert!(matches!(
            x.run_at(4 * 4096, 1 << 30).unwrap(),
            (l, Run::Unallocated) if l == (16 << 20) - 4 * 4096
        ));
        assert!(matches!(
            x.run_at(16 << 20, 4096).unwrap(),
            (4096, Run::Stored(_))
        ));
    }

    #[test]
    fn allocated_neighbours_stored_in_order_make_one_run() {
        let mut f = image();
        let t1 = (9 + 64) * 512;
        f[t1..t1 + 8].copy_from_slice(&SeSparseGrain::Allocated(0).encode().to_le_bytes());
        f[t1 + 8..t1 + 16].copy_from_slice(&SeSparseGrain::Allocated(1).encode().to_le_bytes());
        let x = open(f).unwrap();
        match x.run_at(0, 1 << 30).unwrap() {
            (8192, Run::Stored(at)) => assert_eq!(at, 139 * 512),
            other => panic!("{other:?}"),
        }
    }

    fn with_field(i: usize, v: u64) -> Vec<u8> {
        let mut f = image();
        f[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        f
    }

    #[test]
    fn refuses_what_qemu_refuses() {
        let cases = [
            ("magic", with_field(0, 0xcafe_babf)),
            ("version", with_field(1, 0x1_0000_0001)),
            ("grain size 16", with_field(3, 16)),
            ("grain table size 128", with_field(4, 128)),
            ("flags", with_field(5, 1)),
            ("reserved", with_field(8, 1)),
            ("padding", {
                let mut f = image();
                f[300] = 1;
                f
            }),
            ("volatile magic", {
                let mut f = image();
                f[512] = 0;
                f
            }),
            ("dirty journal", {
                let mut f = image();
                f[512 + 24] = 1;
                f
            }),
            ("volatile padding", {
                let mut f = image();
                f[1000] = 1;
                f
            }),
        ];
        for (what, f) in cases {
            assert!(open(f).is_err(), "{what} accepted");
        }
    }

    #[test]
    fn refuses_hostile_numbers() {
        let len = image().len() as u64;
        let cases = [
            ("volatile header past the end", with_field(10, len / 512)),
            ("volatile header offset overflows", with_field(10, u64::MAX)),
            ("capacity overflows", with_field(2, u64::MAX)),
            ("huge directory", with_field(17, u64::MAX / 32)),
            (
                "directory over 32 Mi entries",
                with_field(17, (32 << 20) / 64 + 1),
            ),
            ("directory past the end", with_field(16, len / 512)),
            ("directory offset overflows", with_field(16, u64::MAX / 256)),
            ("directory over the header", with_field(16, 0)),
            ("tables over the header", with_field(18, 0)),
            ("grains over the header", with_field(24, 0)),
            ("truncated", image()[..300].to_vec()),
        ];
        for (what, f) in cases {
            assert!(open(f).is_err(), "{what} accepted");
        }
    }

    #[test]
    fn damaged_tables_and_entries_fail_the_reads_they_serve() {
        let set =
            |f: &mut Vec<u8>, at: usize, v: u64| f[at..at + 8].copy_from_slice(&v.to_le_bytes());
        let gd = 8 * 512;
        let t1 = (9 + 64) * 512;
        let cases: Vec<(&str, Vec<u8>, u64)> = vec![
            (
                "directory entry of kind 2",
                {
                    let mut f = image();
                    set(&mut f, gd, 0x2000_0000_0000_0001);
                    f
                },
                0,
            ),
            (
                "directory entry with stray bits",
                {
                    let mut f = image();
                    set(&mut f, gd, 0x1000_0001_0000_0001);
                    f
                },
                0,
            ),
            (
                "table past sector 2^32",
                {
                    let mut f = image();
                    set(&mut f, gd, 0x1000_0000_ffff_ffff);
                    f
                },
                0,
            ),
            (
                "table past the end",
                {
                    let mut f = image();
                    set(&mut f, gd, 0x1000_0000_0000_0002);
                    f
                },
                0,
            ),
            (
                "grain entry of kind 7",
                {
                    let mut f = image();
                    set(&mut f, t1, 0x7000_0000_0000_0000);
                    f
                },
                0,
            ),
            (
                "kind 0 with bits",
                {
                    let mut f = image();
                    set(&mut f, t1 + 32, 9);
                    f
                },
                4 * 4096,
            ),
            (
                "grain past the end",
                {
                    let mut f = image();
                    set(&mut f, t1, SeSparseGrain::Allocated(2).encode());
                    f
                },
                0,
            ),
            (
                "grain offset overflows",
                {
                    let mut f = image();
                    set(&mut f, t1, SeSparseGrain::Allocated((1 << 60) - 1).encode());
                    f
                },
                0,
            ),
        ];
        for (what, f, at) in cases {
            let x = open(f).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(x.run_at(at, 4096).is_err(), "{what} read");
            // The other slot still reads.
            assert!(x.run_at(16 << 20, 4096).is_ok(), "{what}: slot 1");
        }
    }

    #[test]
    fn offsets_past_the_directory_fail_as_in_qemu() {
        // Capacity of 2 TiB, but a directory of 64 entries (1 GiB): qemu opens it and fails
        // reads past 1 GiB.
        let f = with_field(2, 1 << 32);
        let x = open(f).unwrap();
        assert_eq!(x.directory_used(), 64);
        assert!(x.run_at(1 << 30, 4096).is_err());
        assert!(x.run_at((1 << 30) - 4096, 4096).is_ok());
        // Slots 2 to 63 have no table: one run, up to the directory's end.
        assert!(matches!(
            x.run_at(32 << 20, u64::MAX >> 12).unwrap(),
            (l, Run::Unallocated) if l == (1 << 30) - (32 << 20)
        ));
    }
}
