//! COWD extents ("ESX Server sparse extents", vmfsSparse): the `*-delta.vmdk` data files of
//! snapshots on VMFS5 and older, listed as `VMFSSPARSE` extents in a descriptor whose
//! createType is `vmfsSparse`.
//!
//! Layout (VMware's Virtual Disk Format 1.1 and 5.0 technical notes; libvmdk's format
//! documentation), all little-endian:
//!
//! - a 2048-byte header (see [`CowdHeader`]): magic `COWD`, version 1, flags, capacity and
//!   grain size in sectors, the grain directory's sector and entry count, the next free
//!   sector, the parent's file name (in a child) or the geometry (in a root), generations, a
//!   name, a description and the unclean-shutdown flag;
//! - a grain directory of u32 sector numbers of grain tables (0: no table);
//! - grain tables of 4096 u32 sector numbers of grains (0: not stored here), allocated
//!   among the grains as they are written.
//!
//! qemu's `block/vmdk.c` (`vmdk_open_vmfs_sparse`, `get_cluster_offset`) is the reference
//! this reader matches, byte for byte. What qemu does with these files:
//!
//! - it reads the directory at the header's `gd_offset` with the header's entry count
//!   (not one computed from the capacity), tables of 4096 entries, and the grain size from
//!   the header; it checks no version or flags;
//! - it fails reads past what the directory covers, and refuses a grain size over 0x200000
//!   sectors or a directory of over 32 Mi entries; a grain size of 0 makes it divide by zero
//!   (vdisk refuses it, and sizes of 2^20 sectors and more, where qemu's 32-bit table span
//!   wraps);
//! - it opens a COWD file named directly (not through a descriptor) only if the text "CID"
//!   happens to follow byte 512, which no real header holds: `qemu-img info x-delta.vmdk`
//!   fails with "Invalid argument". vdisk refuses such a file with a message saying to open
//!   its descriptor.
//!
//! One deliberate difference: qemu reads a grain-table entry of 1 as the grain at sector 1,
//! inside the header, and returns the file's bytes from offset 512 on as disk data. With
//! ESX's 1-sector grains and a parent name under 480 bytes those are zeros from the
//! parent-name field, so qemu reads zeros that hide the parent (and maps them as data); with
//! a longer name, or larger grains, it returns header and grain-directory bytes. vdisk reads
//! entry 1 as a zeroed grain, always: zeros that hide the parent, mapped as zero. That is the
//! meaning VMware gives the value 1 in hosted sparse extents, the one Xen Orchestra's reader
//! of ESXi COWD files gives it, and the bytes qemu returns for ESX's own files.
//! Entries 2 and 3 (also inside the header) fail the read.

use byteorder::{ByteOrder, LittleEndian as LE};
use vdisk_core::{Error, Result, SECTOR};

use crate::sparse::Run;
use vdisk_io::Bytes;

/// Magic at byte 0.
pub const COWD_MAGIC: [u8; 4] = *b"COWD";
/// Size of the header in bytes (4 sectors).
pub const COWD_HEADER_BYTES: u64 = 2048;
/// Grain-table entries per table (fixed by the format).
pub const COWD_GTES_PER_GT: u64 = 4096;
/// Bytes of one grain table.
const TABLE_BYTES: u64 = COWD_GTES_PER_GT * 4;
/// Largest grain size vdisk reads, in sectors: qemu keeps `4096 × grain size` in 32 bits.
pub const COWD_MAX_GRAIN_SECTORS: u32 = (1 << 20) - 1;
/// Upper bound on grain-directory entries (qemu's bound for every VMDK kind).
pub const COWD_MAX_GD_ENTRIES: u32 = 32 << 20;
/// Bytes of the parent file name field.
const PARENT_NAME_BYTES: usize = 1024;

/// The COWD header, as stored: nothing in it is checked yet. Sizes and offsets are in
/// sectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CowdHeader {
    /// Byte 4: format version (1 in every file seen).
    pub version: u32,
    /// Byte 8: flags (3 in every file seen; qemu ignores them).
    pub flags: u32,
    /// Byte 12: disk size in sectors.
    pub capacity: u32,
    /// Byte 16: grain size in sectors.
    pub grain_size: u32,
    /// Byte 20: sector of the grain directory (4, right after the header, in every file
    /// seen).
    pub gd_offset: u32,
    /// Byte 24: entries of the grain directory.
    pub gd_entries: u32,
    /// Byte 28: the next free sector.
    pub free_sector: u32,
    /// Bytes 32-1055 of a child: the parent's file name, up to its first NUL (in a root the
    /// same bytes hold the geometry, and read as a short non-text "name").
    pub parent_file_name: Vec<u8>,
    /// Byte 1056 of a child: the parent's generation.
    pub parent_generation: u32,
    /// Byte 1060: generation.
    pub generation: u32,
    /// Byte 1648: non-zero while a writer has the file open; left set by a crash.
    pub unclean_shutdown: u32,
}

impl CowdHeader {
    /// Decode the 2048-byte header at the start of `bytes`. Only the length and the magic
    /// are checked.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let Some(b) = bytes.get(..COWD_HEADER_BYTES as usize) else {
            return Err(Error::invalid(format!(
                "COWD header is truncated ({} of 2048 bytes)",
                bytes.len()
            )));
        };
        if b[0..4] != COWD_MAGIC {
            return Err(Error::invalid("not a COWD extent (no COWD magic)"));
        }
        let u = |at: usize| LE::read_u32(&b[at..at + 4]);
        let name = &b[32..32 + PARENT_NAME_BYTES];
        let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        Ok(CowdHeader {
            version: u(4),
            flags: u(8),
            capacity: u(12),
            grain_size: u(16),
            gd_offset: u(20),
            gd_entries: u(24),
            free_sector: u(28),
            parent_file_name: name[..end].to_vec(),
            parent_generation: u(1056),
            generation: u(1060),
            unclean_shutdown: u(1648),
        })
    }

    /// Encode (the inverse of [`CowdHeader::parse`]; a parent name over 1023 bytes is cut).
    pub fn to_bytes(&self) -> [u8; 2048] {
        let mut b = [0u8; 2048];
        b[0..4].copy_from_slice(&COWD_MAGIC);
        for (at, v) in [
            (4, self.version),
            (8, self.flags),
            (12, self.capacity),
            (16, self.grain_size),
            (20, self.gd_offset),
            (24, self.gd_entries),
            (28, self.free_sector),
            (1056, self.parent_generation),
            (1060, self.generation),
            (1648, self.unclean_shutdown),
        ] {
            LE::write_u32(&mut b[at..at + 4], v);
        }
        let n = self.parent_file_name.len().min(PARENT_NAME_BYTES - 1);
        b[32..32 + n].copy_from_slice(&self.parent_file_name[..n]);
        b
    }

    /// Grain-directory entries the capacity needs.
    pub fn needed_entries(&self) -> u64 {
        let span = COWD_GTES_PER_GT * u64::from(self.grain_size.max(1));
        u64::from(self.capacity).div_ceil(span)
    }
}

/// What one grain-table entry says about a grain, checked against the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CowdGrain {
    /// 0: not stored here (the parent's data, or zero without a parent).
    Unallocated,
    /// 1: a zeroed grain (see the module documentation: qemu reads header bytes instead).
    Zero,
    /// The grain's data starts at this byte of the file.
    Data(u64),
    /// The entry points into the header (2 or 3) or past the end of the file (raw value).
    Invalid(u32),
}

/// Where one grain-directory slot's table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CowdTable {
    /// No table: the slot's grains are all unallocated.
    None,
    /// The table starts at this byte of the file (and lies inside it).
    At(u64),
    /// The table's sector (raw value) lies inside the header or (partly) past the end of
    /// the file.
    Invalid(u32),
}

/// A COWD extent, validated: the header checks out and the part of the grain directory the
/// capacity needs lies inside the file. Tables and grains are checked as they are looked up.
#[derive(Debug)]
pub struct CowdExtent {
    bytes: Bytes,
    header: CowdHeader,
    /// Byte offset of the grain directory.
    gd_start: u64,
    /// Directory entries looked at: min(header's count, what the capacity needs).
    gd_used: u64,
    /// Bytes of one grain.
    grain_bytes: u64,
}

impl CowdExtent {
    /// Parse and validate the COWD extent held in `bytes`.
    pub fn open(bytes: Bytes) -> Result<Self> {
        let path = bytes.path().to_path_buf();
        Self::open_inner(bytes).map_err(|e| e.with_path(path))
    }

    fn open_inner(bytes: Bytes) -> Result<Self> {
        let data = bytes.require_slice()?;
        let len = data.len() as u64;
        let h = CowdHeader::parse(data)?;
        if h.grain_size == 0 || h.grain_size > COWD_MAX_GRAIN_SECTORS {
            return Err(Error::invalid(format!(
                "COWD grain size of {} sectors is out of range (1 to {COWD_MAX_GRAIN_SECTORS})",
                h.grain_size
            )));
        }
        if h.gd_entries > COWD_MAX_GD_ENTRIES {
            return Err(Error::unsupported(format!(
                "COWD grain directory of {} entries is too large (at most {COWD_MAX_GD_ENTRIES}, qemu's bound)",
                h.gd_entries
            )));
        }
        let gd_used = u64::from(h.gd_entries).min(h.needed_entries());
        if u64::from(h.gd_offset) * SECTOR < COWD_HEADER_BYTES {
            return Err(Error::corrupt(format!(
                "COWD grain directory (sector {}) overlaps the 2048-byte header",
                h.gd_offset
            )));
        }
        // Both factors are u32-sized, so nothing here overflows.
        let gd_start = u64::from(h.gd_offset) * SECTOR;
        if gd_start + gd_used * 4 > len {
            return Err(Error::corrupt(format!(
                "COWD grain directory (sector {}, {gd_used} entries) lies past the end of the file ({len} bytes)",
                h.gd_offset
            )));
        }
        let grain_bytes = u64::from(h.grain_size) * SECTOR;
        Ok(CowdExtent {
            bytes,
            header: h,
            gd_start,
            gd_used,
            grain_bytes,
        })
    }

    /// The header.
    pub fn header(&self) -> &CowdHeader {
        &self.header
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        u64::from(self.header.capacity) * SECTOR
    }

    /// Grain size in bytes.
    pub fn grain_bytes(&self) -> u64 {
        self.grain_bytes
    }

    /// Grain-directory entries that cover the capacity and are looked at.
    pub fn directory_used(&self) -> u64 {
        self.gd_used
    }

    fn data(&self) -> &[u8] {
        self.bytes.slice().unwrap_or(&[])
    }

    /// Where the table of directory slot `slot` is (`None` past the used directory).
    pub fn table(&self, slot: u64) -> Option<CowdTable> {
        if slot >= self.gd_used {
            return None;
        }
        // gd_start + gd_used * 4 <= file length, checked at open.
        let at = (self.gd_start + slot * 4) as usize;
        let raw = LE::read_u32(&self.data()[at..at + 4]);
        let pos = u64::from(raw) * SECTOR;
        Some(match raw {
            0 => CowdTable::None,
            _ if pos < COWD_HEADER_BYTES || pos + TABLE_BYTES > self.bytes.len() => {
                CowdTable::Invalid(raw)
            }
            _ => CowdTable::At(pos),
        })
    }

    fn classify(&self, raw: u32) -> CowdGrain {
        let pos = u64::from(raw) * SECTOR;
        match raw {
            0 => CowdGrain::Unallocated,
            1 => CowdGrain::Zero,
            _ if pos < COWD_HEADER_BYTES || pos >= self.bytes.len() => CowdGrain::Invalid(raw),
            _ => CowdGrain::Data(pos),
        }
    }

    fn entry(&self, table: u64, grain: u64) -> u32 {
        // table + TABLE_BYTES <= file length (CowdTable::At).
        let at = (table + (grain % COWD_GTES_PER_GT) * 4) as usize;
        LE::read_u32(&self.data()[at..at + 4])
    }

    fn table_for(&self, slot: u64, offset: u64) -> Result<Option<u64>> {
        let err = |msg: String| Err(Error::corrupt(msg).with_path(self.bytes.path()));
        if slot >= u64::from(self.header.gd_entries) {
            return err(format!(
                "disk offset {offset} lies past what the grain directory covers ({} tables; qemu fails this read too)",
                self.header.gd_entries
            ));
        }
        match self.table(slot) {
            None | Some(CowdTable::None) => Ok(None),
            Some(CowdTable::At(t)) => Ok(Some(t)),
            Some(CowdTable::Invalid(raw)) => err(format!(
                "grain table {slot} at sector {raw} lies {}",
                if u64::from(raw) * SECTOR < COWD_HEADER_BYTES {
                    "inside the header".to_string()
                } else {
                    format!("past the end of the file ({} bytes)", self.bytes.len())
                }
            )),
        }
    }

    /// What the table says about grain `grain` (index from the start of the disk), or the
    /// reason it cannot be looked up.
    pub fn grain(&self, grain: u64) -> Result<CowdGrain> {
        let gtes = COWD_GTES_PER_GT;
        let table = self.table_for(grain / gtes, grain.saturating_mul(self.grain_bytes))?;
        Ok(match table {
            None => CowdGrain::Unallocated,
            Some(t) => self.classify(self.entry(t, grain)),
        })
    }

    /// The run at byte `offset` (inside the capacity), at most `max` bytes long.
    /// Neighbouring grains of the same kind, and grains stored one after the other, make one
    /// run.
    pub(crate) fn run_at(&self, offset: u64, max: u64) -> Result<(u64, Run)> {
        let gb = self.grain_bytes;
        let grain = offset / gb;
        let within = offset % gb;
        let slot = grain / COWD_GTES_PER_GT;
        let span = COWD_GTES_PER_GT * gb;
        let limit = max.min((slot + 1) * span - offset);
        let Some(table) = self.table_for(slot, offset)? else {
            // Following slots without a table join the run.
            let mut end = offset + limit;
            let mut next = slot + 1;
            while end - offset < max && self.table(next) == Some(CowdTable::None) {
                end += span;
                next += 1;
            }
            return Ok(((end - offset).min(max), Run::Unallocated));
        };
        let run = match self.classify(self.entry(table, grain)) {
            CowdGrain::Unallocated => Run::Unallocated,
            CowdGrain::Zero => Run::Zero,
            CowdGrain::Data(at) => Run::Stored(at + within),
            CowdGrain::Invalid(raw) => {
                return Err(Error::corrupt(format!(
                    "grain {grain} points to sector {raw}, {}",
                    if u64::from(raw) * SECTOR < COWD_HEADER_BYTES {
                        "inside the header".to_string()
                    } else {
                        format!("past the end of the file ({} bytes)", self.bytes.len())
                    }
                ))
                .with_path(self.bytes.path()))
            }
        };
        let mut len = (gb - within).min(limit);
        let mut g = grain + 1;
        while len < limit {
            let same = match (&run, self.classify(self.entry(table, g))) {
                (Run::Unallocated, CowdGrain::Unallocated) | (Run::Zero, CowdGrain::Zero) => true,
                (Run::Stored(at), CowdGrain::Data(p)) => p == at - within + (g - grain) * gb,
                _ => false,
            };
            if !same {
                break;
            }
            len = (len + gb).min(limit);
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

    /// A child header as ESX writes it for an 8 MiB disk with 512-byte grains, spelled out
    /// field by field.
    fn header_bytes() -> [u8; 2048] {
        let mut b = [0u8; 2048];
        b[0..4].copy_from_slice(b"COWD");
        b[4..8].copy_from_slice(&1u32.to_le_bytes()); // version
        b[8..12].copy_from_slice(&3u32.to_le_bytes()); // flags
        b[12..16].copy_from_slice(&16384u32.to_le_bytes()); // capacity: 8 MiB
        b[16..20].copy_from_slice(&1u32.to_le_bytes()); // grain: 1 sector
        b[20..24].copy_from_slice(&4u32.to_le_bytes()); // directory right after the header
        b[24..28].copy_from_slice(&4u32.to_le_bytes()); // 4 tables of 2 MiB
        b[28..32].copy_from_slice(&71u32.to_le_bytes()); // next free sector
        b[32..41].copy_from_slice(b"base.vmdk"); // parent file name
        b[1056..1060].copy_from_slice(&5u32.to_le_bytes()); // parent generation
        b[1060..1064].copy_from_slice(&6u32.to_le_bytes()); // generation
        b
    }

    /// Directory at sector 4; slot 1's table at sector 5; grain 4096 stored at 37, 4097 at
    /// 38 (contiguous), 4098 zeroed, 4100 at 39.
    fn image() -> Vec<u8> {
        let mut f = vec![0u8; 40 * 512];
        f[..2048].copy_from_slice(&header_bytes());
        f[4 * 512 + 4..4 * 512 + 8].copy_from_slice(&5u32.to_le_bytes());
        let t = 5 * 512;
        for (i, v) in [(0usize, 37u32), (1, 38), (2, 1), (4, 39)] {
            f[t + i * 4..t + i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        f[37 * 512..38 * 512].fill(0x11);
        f[38 * 512..39 * 512].fill(0x22);
        f[39 * 512..40 * 512].fill(0x44);
        f
    }

    fn open(f: Vec<u8>) -> Result<CowdExtent> {
        CowdExtent::open(Bytes::Owned(PathBuf::from("t-delta.vmdk"), Arc::new(f)))
    }

    #[test]
    fn header_fields_sit_at_their_offsets() {
        let h = CowdHeader::parse(&header_bytes()).unwrap();
        assert_eq!((h.version, h.flags), (1, 3));
        assert_eq!((h.capacity, h.grain_size), (16384, 1));
        assert_eq!((h.gd_offset, h.gd_entries, h.free_sector), (4, 4, 71));
        assert_eq!(h.parent_file_name, b"base.vmdk");
        assert_eq!((h.parent_generation, h.generation), (5, 6));
        assert_eq!(h.unclean_shutdown, 0);
        assert_eq!(h.needed_entries(), 4);
        assert_eq!(h.to_bytes(), header_bytes());
    }

    #[test]
    fn reads_each_entry_kind() {
        let x = open(image()).unwrap();
        assert_eq!(x.capacity(), 8 << 20);
        assert_eq!(x.grain_bytes(), 512);
        assert_eq!(x.table(0), Some(CowdTable::None));
        assert_eq!(x.table(1), Some(CowdTable::At(5 * 512)));
        assert_eq!(x.grain(4096).unwrap(), CowdGrain::Data(37 * 512));
        assert_eq!(x.grain(4098).unwrap(), CowdGrain::Zero);
        assert_eq!(x.grain(4099).unwrap(), CowdGrain::Unallocated);
        // Slot 0 has no table: its whole 2 MiB is one run.
        assert!(matches!(x.run_at(0, 1 << 30).unwrap(), (l, Run::Unallocated) if l == 2 << 20));
        // Grains 4096 and 4097 are stored one after the other: one run.
        match x.run_at((2 << 20) + 10, 1 << 30).unwrap() {
            (1014, Run::Stored(at)) => assert_eq!(at, 37 * 512 + 10),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            x.run_at((2 << 20) + 1024, 1 << 30).unwrap(),
            (512, Run::Zero)
        ));
        assert!(matches!(
            x.run_at((2 << 20) + 1536, 1 << 30).unwrap(),
            (512, Run::Unallocated)
        ));
        assert!(matches!(
            x.run_at((2 << 20) + 2048, 100).unwrap(),
            (100, Run::Stored(_))
        ));
    }

    fn with_u32(at: usize, v: u32) -> Vec<u8> {
        let mut f = image();
        f[at..at + 4].copy_from_slice(&v.to_le_bytes());
        f
    }

    #[test]
    fn refuses_hostile_headers() {
        let cases = [
            ("magic", with_u32(0, 0x4457_4f43 + 1)),
            ("grain 0 (qemu divides by zero)", with_u32(16, 0)),
            (
                "grain of 2^20 sectors (qemu's span wraps)",
                with_u32(16, 1 << 20),
            ),
            ("grain max", with_u32(16, u32::MAX)),
            ("directory over 32 Mi entries", with_u32(24, (32 << 20) + 1)),
            ("directory in the header", with_u32(20, 3)),
            ("directory past the end", with_u32(20, 40)),
            ("directory offset max", with_u32(20, u32::MAX)),
            ("truncated", image()[..2000].to_vec()),
        ];
        for (what, f) in cases {
            assert!(open(f).is_err(), "{what} accepted");
        }
        // A huge capacity with a small directory opens (qemu opens it too) and fails the
        // reads past the directory.
        let x = open(with_u32(12, u32::MAX)).unwrap();
        assert!(x.run_at(8 << 20, 512).is_err());
        assert!(x.run_at((8 << 20) - 512, 512).is_ok());
    }

    #[test]
    fn damaged_tables_and_entries_fail_the_reads_they_serve() {
        let t = 5 * 512;
        let cases = [
            ("table in the header", with_u32(4 * 512 + 4, 3)),
            ("table past the end", with_u32(4 * 512 + 4, 39)),
            ("table sector max", with_u32(4 * 512 + 4, u32::MAX)),
            ("grain at sector 2", with_u32(t, 2)),
            ("grain past the end", with_u32(t, 40)),
            ("grain sector max", with_u32(t, u32::MAX)),
        ];
        for (what, f) in cases {
            let x = open(f).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(x.run_at(2 << 20, 512).is_err(), "{what} read");
            assert!(x.run_at(0, 512).is_ok(), "{what}: slot 0");
        }
    }
}
