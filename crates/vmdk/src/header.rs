//! The hosted sparse extent header: 512 bytes at the start of every sparse extent file
//! (and, for streamOptimized images as VMware writes them, again in the footer).

use byteorder::{ByteOrder, LittleEndian as LE};
use vdisk_core::{Error, Result, SECTOR};

/// `KDMV` read as a little-endian u32.
pub const SPARSE_MAGIC: u32 = 0x564d_444b;
/// `gdOffset` value meaning "the grain directory is at the end; read the footer".
pub const GD_AT_END: u64 = u64::MAX;

/// The header's flags word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeaderFlags(pub u32);

impl HeaderFlags {
    /// Bytes 73..77 hold `\n \r\n`, to detect text-mode transfers.
    pub const NEWLINE_TEST: u32 = 0x1;
    /// The redundant grain directory is kept up to date.
    pub const REDUNDANT_GD: u32 = 0x2;
    /// A grain table entry of 1 means a zeroed grain.
    pub const ZEROED_GRAINS: u32 = 0x4;
    /// Grains are compressed.
    pub const COMPRESSED: u32 = 0x1_0000;
    /// Grains (and tables) are preceded by markers.
    pub const MARKERS: u32 = 0x2_0000;

    fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }
    /// Whether the newline-test bytes are meaningful.
    pub fn newline_test(self) -> bool {
        self.has(Self::NEWLINE_TEST)
    }
    /// Whether the redundant directory is in use.
    pub fn redundant_gd(self) -> bool {
        self.has(Self::REDUNDANT_GD)
    }
    /// Whether table entries of 1 are zeroed grains.
    pub fn zeroed_grains(self) -> bool {
        self.has(Self::ZEROED_GRAINS)
    }
    /// Whether grains are compressed.
    pub fn compressed(self) -> bool {
        self.has(Self::COMPRESSED)
    }
    /// Whether markers precede grains.
    pub fn markers(self) -> bool {
        self.has(Self::MARKERS)
    }
}

/// Upper bound on the grain size, in sectors: 1 GiB, the bound qemu-img applies too.
pub const MAX_GRAIN_SECTORS: u64 = 0x20_0000;
/// Upper bound on the grain size of compressed extents, in sectors (128 MiB): a compressed
/// grain is inflated into a buffer, and a buffer per thread must stay far below our memory cap.
/// VMware and qemu-img write 64 KiB grains.
pub const MAX_COMPRESSED_GRAIN_SECTORS: u64 = 0x4_0000;
/// Upper bound on grain tables in one directory (qemu-img's bound: 32 Mi entries, 128 MiB).
pub const MAX_GD_ENTRIES: u64 = 32 << 20;
/// Upper bound on an embedded descriptor, in bytes. Real ones take 20 sectors.
pub const MAX_DESCRIPTOR_BYTES: u64 = 32 << 20;

/// A sparse extent header as stored on disk: fields are not checked against anything yet.
/// [`RawSparseHeader::validate`] turns it into a [`SparseHeader`], the only form readers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawSparseHeader {
    /// Format version: 1, 2 or 3.
    pub version: u32,
    /// Feature flags.
    pub flags: HeaderFlags,
    /// Extent capacity in sectors.
    pub capacity: u64,
    /// Grain size in sectors.
    pub grain_size: u64,
    /// Sector of the embedded descriptor, 0 when there is none.
    pub descriptor_offset: u64,
    /// Sectors reserved for the embedded descriptor.
    pub descriptor_size: u64,
    /// Grain table entries per grain table.
    pub gtes_per_gt: u32,
    /// Sector of the redundant grain directory.
    pub rgd_offset: u64,
    /// Sector of the grain directory, or [`GD_AT_END`].
    pub gd_offset: u64,
    /// Sectors of metadata before the first grain.
    pub overhead: u64,
    /// Set while a writer has the extent open; left set by a crash.
    pub unclean_shutdown: bool,
    /// The four newline-test bytes (`\n`, ` `, `\r`, `\n` when intact).
    pub newline_bytes: [u8; 4],
    /// 0 none, 1 deflate.
    pub compress_algorithm: u16,
}

impl RawSparseHeader {
    /// Size of the header on disk.
    pub const SIZE: usize = 512;

    /// Decode the 512-byte header at the start of `bytes` (field offsets from the VMware
    /// format description). Only the magic is checked here; [`RawSparseHeader::validate`]
    /// checks the rest against the file.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < Self::SIZE {
            return Err(Error::invalid(format!(
                "sparse header is truncated ({} of 512 bytes)",
                bytes.len()
            )));
        }
        let magic = LE::read_u32(&bytes[0..4]);
        if magic != SPARSE_MAGIC {
            return Err(Error::invalid("not a VMDK sparse extent (no KDMV magic)"));
        }
        Ok(RawSparseHeader {
            version: LE::read_u32(&bytes[4..8]),
            flags: HeaderFlags(LE::read_u32(&bytes[8..12])),
            capacity: LE::read_u64(&bytes[12..20]),
            grain_size: LE::read_u64(&bytes[20..28]),
            descriptor_offset: LE::read_u64(&bytes[28..36]),
            descriptor_size: LE::read_u64(&bytes[36..44]),
            gtes_per_gt: LE::read_u32(&bytes[44..48]),
            rgd_offset: LE::read_u64(&bytes[48..56]),
            gd_offset: LE::read_u64(&bytes[56..64]),
            overhead: LE::read_u64(&bytes[64..72]),
            unclean_shutdown: bytes[72] != 0,
            newline_bytes: [bytes[73], bytes[74], bytes[75], bytes[76]],
            compress_algorithm: LE::read_u16(&bytes[77..79]),
        })
    }

    /// Encode the header (the inverse of [`RawSparseHeader::parse`]).
    pub fn to_bytes(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        LE::write_u32(&mut b[0..4], SPARSE_MAGIC);
        LE::write_u32(&mut b[4..8], self.version);
        LE::write_u32(&mut b[8..12], self.flags.0);
        LE::write_u64(&mut b[12..20], self.capacity);
        LE::write_u64(&mut b[20..28], self.grain_size);
        LE::write_u64(&mut b[28..36], self.descriptor_offset);
        LE::write_u64(&mut b[36..44], self.descriptor_size);
        LE::write_u32(&mut b[44..48], self.gtes_per_gt);
        LE::write_u64(&mut b[48..56], self.rgd_offset);
        LE::write_u64(&mut b[56..64], self.gd_offset);
        LE::write_u64(&mut b[64..72], self.overhead);
        b[72] = u8::from(self.unclean_shutdown);
        b[73..77].copy_from_slice(&self.newline_bytes);
        LE::write_u16(&mut b[77..79], self.compress_algorithm);
        b
    }

    /// Grain size in bytes (meaningful once validated).
    pub fn grain_bytes(&self) -> u64 {
        self.grain_size * SECTOR
    }

    /// Bytes of virtual disk one grain table covers (valid after validation).
    pub fn table_span(&self) -> u64 {
        self.grain_bytes() * u64::from(self.gtes_per_gt)
    }

    /// Number of grain directory entries needed to cover the capacity.
    pub fn gd_entries(&self) -> u64 {
        let grains = self.capacity.div_ceil(self.grain_size.max(1));
        grains.div_ceil(u64::from(self.gtes_per_gt.max(1)))
    }

    /// Check every field that later code relies on, against a file of `file_len` bytes, and
    /// hand back the validated header. Does not look at `gd_offset` (which may be
    /// [`GD_AT_END`]) or the directories: the sparse extent does that once it knows where the
    /// directory is.
    pub fn validate(&self, file_len: u64) -> Result<SparseHeader> {
        if !(1..=3).contains(&self.version) {
            return Err(Error::unsupported(format!(
                "sparse header version {} (vdisk reads versions 1 to 3)",
                self.version
            )));
        }
        if self.flags.newline_test() && self.newline_bytes != *b"\n \r\n" {
            return Err(Error::corrupt(
                "newline-test bytes are mangled (the file went through a text-mode transfer)",
            ));
        }
        if self.grain_size == 0 || self.grain_size > MAX_GRAIN_SECTORS {
            return Err(Error::invalid(format!(
                "grain size of {} sectors is out of range (1 to {MAX_GRAIN_SECTORS})",
                self.grain_size
            )));
        }
        if !self.grain_size.is_power_of_two() {
            return Err(Error::unsupported(format!(
                "grain size of {} sectors is not a power of two",
                self.grain_size
            )));
        }
        if self.gtes_per_gt == 0 || self.gtes_per_gt > 512 {
            return Err(Error::invalid(format!(
                "{} grain table entries per table is out of range (1 to 512)",
                self.gtes_per_gt
            )));
        }
        if self.flags.compressed() {
            if self.compress_algorithm != 1 {
                return Err(Error::unsupported(format!(
                    "compression algorithm {} (only 1, deflate, exists)",
                    self.compress_algorithm
                )));
            }
            if self.grain_size > MAX_COMPRESSED_GRAIN_SECTORS {
                return Err(Error::unsupported(format!(
                    "compressed grains of {} sectors (vdisk inflates grains of at most {MAX_COMPRESSED_GRAIN_SECTORS})",
                    self.grain_size
                )));
            }
        }
        // capacity * 512 must fit in a u64 byte count, with room for extent arithmetic.
        if self.capacity > (u64::MAX >> 10) {
            return Err(Error::invalid(format!(
                "capacity of {} sectors is out of range",
                self.capacity
            )));
        }
        vdisk_core::check_disk_size(self.capacity * SECTOR)?;
        if self.gd_entries() > MAX_GD_ENTRIES {
            return Err(Error::unsupported(format!(
                "capacity of {} sectors needs {} grain tables (at most {MAX_GD_ENTRIES})",
                self.capacity,
                self.gd_entries()
            )));
        }
        let sectors = file_len / SECTOR;
        if self.overhead > sectors {
            return Err(Error::corrupt(format!(
                "file is shorter ({file_len} bytes) than the {} sectors of metadata its header declares",
                self.overhead
            )));
        }
        if self.descriptor_offset != 0 {
            let end = self.descriptor_offset.checked_add(self.descriptor_size);
            if self.descriptor_size.saturating_mul(SECTOR) > MAX_DESCRIPTOR_BYTES {
                return Err(Error::unsupported(format!(
                    "embedded descriptor of {} sectors is too large",
                    self.descriptor_size
                )));
            }
            if !matches!(end, Some(e) if e <= sectors) {
                return Err(Error::corrupt(format!(
                    "embedded descriptor (sectors {}+{}) lies past the end of the file",
                    self.descriptor_offset, self.descriptor_size
                )));
            }
        }
        Ok(SparseHeader(*self))
    }
}

/// A validated sparse extent header: made only by [`RawSparseHeader::validate`], so every
/// field (read through `Deref`) has been checked against the file it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseHeader(RawSparseHeader);

impl SparseHeader {
    /// The header's fields as stored.
    pub fn raw(&self) -> &RawSparseHeader {
        &self.0
    }
}

impl std::ops::Deref for SparseHeader {
    type Target = RawSparseHeader;
    fn deref(&self) -> &RawSparseHeader {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header as qemu-img 10 writes it for a 1 GiB monolithicSparse image, spelled out
    /// field by field.
    fn qemu_like() -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..4].copy_from_slice(b"KDMV");
        b[4..8].copy_from_slice(&1u32.to_le_bytes()); // version
        b[8..12].copy_from_slice(&3u32.to_le_bytes()); // flags: newline test + redundant GD
        b[12..20].copy_from_slice(&0x20_0000u64.to_le_bytes()); // capacity: 1 GiB in sectors
        b[20..28].copy_from_slice(&128u64.to_le_bytes()); // grain: 64 KiB
        b[28..36].copy_from_slice(&1u64.to_le_bytes()); // descriptor at sector 1
        b[36..44].copy_from_slice(&20u64.to_le_bytes()); // 20 sectors long
        b[44..48].copy_from_slice(&512u32.to_le_bytes());
        b[48..56].copy_from_slice(&21u64.to_le_bytes()); // redundant GD
        b[56..64].copy_from_slice(&0x105u64.to_le_bytes()); // GD
        b[64..72].copy_from_slice(&0x200u64.to_le_bytes()); // overhead
        b[73..77].copy_from_slice(b"\n \r\n");
        b
    }

    #[test]
    fn parses_fields_at_their_offsets() {
        let h = RawSparseHeader::parse(&qemu_like()).unwrap();
        assert_eq!(h.version, 1);
        assert!(h.flags.newline_test() && h.flags.redundant_gd());
        assert!(!h.flags.compressed());
        assert_eq!(h.capacity, 0x20_0000);
        assert_eq!(h.grain_bytes(), 65536);
        assert_eq!(h.descriptor_offset, 1);
        assert_eq!(h.descriptor_size, 20);
        assert_eq!(h.gtes_per_gt, 512);
        assert_eq!(h.rgd_offset, 21);
        assert_eq!(h.gd_offset, 0x105);
        assert_eq!(h.overhead, 0x200);
        assert_eq!(h.gd_entries(), 32);
        assert_eq!(*h.validate(0x200 * 512).unwrap().raw(), h);
        assert_eq!(h.to_bytes(), qemu_like());
    }

    #[test]
    fn rejects_bad_fields() {
        let base = RawSparseHeader::parse(&qemu_like()).unwrap();
        let len = 0x200 * 512;
        let cases: Vec<(&str, RawSparseHeader)> = vec![
            ("version 0", RawSparseHeader { version: 0, ..base }),
            ("version 4", RawSparseHeader { version: 4, ..base }),
            (
                "grain 0",
                RawSparseHeader {
                    grain_size: 0,
                    ..base
                },
            ),
            (
                "grain 3",
                RawSparseHeader {
                    grain_size: 3,
                    ..base
                },
            ),
            (
                "grain max",
                RawSparseHeader {
                    grain_size: u64::MAX,
                    ..base
                },
            ),
            (
                "gtes 0",
                RawSparseHeader {
                    gtes_per_gt: 0,
                    ..base
                },
            ),
            (
                "gtes 513",
                RawSparseHeader {
                    gtes_per_gt: 513,
                    ..base
                },
            ),
            (
                "capacity max",
                RawSparseHeader {
                    capacity: u64::MAX,
                    ..base
                },
            ),
            (
                "overhead past end",
                RawSparseHeader {
                    overhead: 0x201,
                    ..base
                },
            ),
            (
                "descriptor past end",
                RawSparseHeader {
                    descriptor_offset: u64::MAX,
                    ..base
                },
            ),
            (
                "mangled newlines",
                RawSparseHeader {
                    newline_bytes: *b"\n \n\n",
                    ..base
                },
            ),
            (
                "compressed, no algorithm",
                RawSparseHeader {
                    flags: HeaderFlags(0x1_0000),
                    ..base
                },
            ),
        ];
        for (name, h) in cases {
            assert!(h.validate(len).is_err(), "{name} accepted");
        }
    }

    #[test]
    fn short_or_foreign_bytes_are_errors() {
        assert!(RawSparseHeader::parse(&[0u8; 100]).is_err());
        assert!(RawSparseHeader::parse(&[0u8; 512]).is_err());
    }
}
