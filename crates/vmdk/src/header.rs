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
///
/// ```
/// use vdisk_core::ErrorKind;
/// use vdisk_vmdk::{HeaderFlags, RawSparseHeader};
///
/// // The header of a 1 GiB extent with 64 KiB grains, as qemu-img lays it out.
/// let header = RawSparseHeader {
///     version: 1,
///     flags: HeaderFlags(HeaderFlags::NEWLINE_TEST | HeaderFlags::REDUNDANT_GD),
///     capacity: 2 << 20, // sectors
///     grain_size: 128,   // sectors
///     descriptor_offset: 1,
///     descriptor_size: 20,
///     gtes_per_gt: 512,
///     rgd_offset: 21,
///     gd_offset: 0x105,
///     overhead: 0x200,
///     unclean_shutdown: false,
///     newline_bytes: *b"\n \r\n",
///     compress_algorithm: 0,
/// };
/// let bytes = header.to_bytes();
/// assert_eq!(&bytes[..4], b"KDMV");
/// assert_eq!(bytes[12..20], (2u64 << 20).to_le_bytes()); // capacity at byte 12
///
/// let parsed = RawSparseHeader::parse(&bytes)?;
/// assert_eq!(parsed, header);
/// // 1 GiB in 64 KiB grains is 16384 grains: 32 tables of 512 entries.
/// assert_eq!(parsed.gd_entries(), 32);
///
/// // Validation checks the fields against the file they came from: a file shorter
/// // than the metadata the header declares is damaged.
/// let valid = parsed.validate(0x200 * 512)?;
/// assert_eq!(valid.grain_bytes(), 64 << 10);
/// let short = parsed.validate(0x1ff * 512).unwrap_err();
/// assert_eq!(short.kind(), ErrorKind::Corrupt);
/// # Ok::<(), vdisk_core::Error>(())
/// ```
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

    /// What the writer makes, for a disk of `size` bytes with data in its first grain: the
    /// file's bytes.
    fn written(subformat: crate::writer::Subformat, size: u64) -> Vec<u8> {
        use vdisk_core::{copy_into, CopyOptions, MemImage};
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("w.vmdk");
        let opts = crate::writer::WriteOptions::default();
        let sink = crate::writer::create(&dst, size, subformat, &opts).unwrap();
        let mut disk = vec![0u8; size as usize];
        disk[..4096].fill(0x77);
        copy_into(&MemImage::new(disk), sink, &CopyOptions::default()).unwrap();
        std::fs::read(dst).unwrap()
    }

    #[test]
    fn what_the_writer_makes_parses_back_byte_for_byte_and_validates() {
        use crate::writer::Subformat;
        // 100 MiB and a sector: four grain tables of 512 grains of 64 KiB, the last partial.
        let size = (100 << 20) + 512;
        let sectors = size / 512;
        for (subformat, version) in [
            (Subformat::MonolithicSparse, 1),
            (Subformat::StreamOptimized, 3),
        ] {
            let bytes = written(subformat, size);
            let h = RawSparseHeader::parse(&bytes).unwrap();
            assert_eq!(h.to_bytes()[..], bytes[..512], "{}", subformat.name());
            let v = h.validate(bytes.len() as u64).unwrap();
            assert_eq!(v.version, version);
            assert_eq!(v.capacity, sectors);
            assert_eq!(v.grain_size, 128); // 64 KiB, as qemu-img and VMware write
            assert_eq!(v.gtes_per_gt, 512);
            assert_eq!(v.gd_entries(), 4);
            assert_eq!(v.newline_bytes, *b"\n \r\n");
            assert!(v.flags.newline_test());
            assert!(!v.unclean_shutdown);
            // The embedded descriptor starts right after the header.
            assert_eq!(v.descriptor_offset, 1);
            assert!(v.descriptor_size >= 1);
            let d = &bytes[512..512 + v.descriptor_size as usize * 512];
            assert!(d.starts_with(b"# Disk DescriptorFile"));
            if subformat == Subformat::StreamOptimized {
                // VMware's layout: the directory in the footer, compressed grains behind
                // markers.
                assert_eq!(v.gd_offset, GD_AT_END);
                assert!(v.flags.compressed() && v.flags.markers());
                assert_eq!(v.compress_algorithm, 1);
                // The footer (the second-last sector, before the end-of-stream marker) is
                // the header again, saying where the directory is.
                let at = bytes.len() - 1024;
                let footer = RawSparseHeader::parse(&bytes[at..at + 512]).unwrap();
                assert!(footer.gd_offset != GD_AT_END && footer.gd_offset < at as u64 / 512);
                assert_eq!(
                    RawSparseHeader {
                        gd_offset: GD_AT_END,
                        ..footer
                    },
                    h
                );
            } else {
                assert!(v.flags.redundant_gd());
                assert!(!v.flags.compressed() && !v.flags.zeroed_grains());
                // Metadata first (both directories below the overhead), then grains, and
                // the overhead is a whole number of grains.
                assert!(v.rgd_offset > v.descriptor_offset + v.descriptor_size - 1);
                assert!(v.rgd_offset < v.gd_offset && v.gd_offset < v.overhead);
                assert_eq!(v.overhead % v.grain_size, 0);
                // One stored grain after the metadata.
                assert_eq!(bytes.len() as u64, (v.overhead + v.grain_size) * 512);
            }
        }
    }

    #[test]
    fn a_written_delta_link_is_version_2_with_zeroed_grains() {
        use crate::writer::{Layout, LinkSink, ParentLink, Subformat, WriteOptions};
        use vdisk_core::ImageSink;
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base.vmdk");
        std::fs::write(&base, written(Subformat::MonolithicSparse, 1 << 20)).unwrap();
        let link = tmp.path().join("link.vmdk");
        let parent = ParentLink {
            cid: 0x1234_5678,
            hint: "base.vmdk".into(),
        };
        let mut sink = LinkSink::create(
            &link,
            parent,
            1 << 20,
            Layout::Monolithic,
            &WriteOptions::default(),
        )
        .unwrap();
        sink.put(&[(0, &[0u8; 64 << 10])]).unwrap();
        Box::new(sink).finish().unwrap();
        let bytes = std::fs::read(&link).unwrap();
        let h = RawSparseHeader::parse(&bytes).unwrap();
        assert_eq!(h.to_bytes()[..], bytes[..512]);
        let v = h.validate(bytes.len() as u64).unwrap();
        // Zeroed-grain entries need version 2 and flag 0x4 (qemu-img's zeroed_grain=on).
        assert_eq!(v.version, 2);
        assert!(v.flags.zeroed_grains() && v.flags.redundant_gd());
        assert_eq!(v.capacity, (1 << 20) / 512);
    }

    #[test]
    fn every_field_reads_at_its_offset_whatever_the_others_hold() {
        // Distinct values in every field, so a field read at a wrong offset shows.
        let h = RawSparseHeader {
            version: 0x0102_0304,
            flags: HeaderFlags(0x0506_0708),
            capacity: 0x1112_1314_1516_1718,
            grain_size: 0x2122_2324_2526_2728,
            descriptor_offset: 0x3132_3334_3536_3738,
            descriptor_size: 0x4142_4344_4546_4748,
            gtes_per_gt: 0x5152_5354,
            rgd_offset: 0x6162_6364_6566_6768,
            gd_offset: 0x7172_7374_7576_7778,
            overhead: 0x8182_8384_8586_8788,
            unclean_shutdown: true,
            newline_bytes: [0x91, 0x92, 0x93, 0x94],
            compress_algorithm: 0xa1a2,
        };
        let b = h.to_bytes();
        assert_eq!(b[4..8], [4, 3, 2, 1]);
        assert_eq!(b[44..48], [0x54, 0x53, 0x52, 0x51]);
        assert_eq!(b[72], 1);
        assert_eq!(b[73..79], [0x91, 0x92, 0x93, 0x94, 0xa2, 0xa1]);
        // Bytes 79..512 are padding: written as zero, ignored when read.
        assert!(b[79..].iter().all(|&x| x == 0));
        let mut padded = b;
        padded[79..].fill(0xee);
        assert_eq!(RawSparseHeader::parse(&padded).unwrap(), h);
        // Any non-zero uncleanShutdown byte means set.
        let mut unclean = b;
        unclean[72] = 0x80;
        assert!(RawSparseHeader::parse(&unclean).unwrap().unclean_shutdown);
        // Longer input: only the first 512 bytes are the header.
        let mut long = b.to_vec();
        long.extend_from_slice(&[0xff; 600]);
        assert_eq!(RawSparseHeader::parse(&long).unwrap(), h);
        assert!(RawSparseHeader::parse(&b[..511]).is_err());
        // The magic is checked: one bit off is not a sparse extent.
        let mut foreign = b;
        foreign[3] ^= 0x01;
        let e = RawSparseHeader::parse(&foreign).unwrap_err();
        assert_eq!(e.kind(), vdisk_core::ErrorKind::InvalidFormat);
    }

    #[test]
    fn validation_edges_and_error_kinds() {
        use vdisk_core::ErrorKind::{Corrupt, InvalidFormat, Unsupported};
        let base = RawSparseHeader::parse(&qemu_like()).unwrap();
        let len = 0x200 * 512;
        let ok = |h: RawSparseHeader| h.validate(len).map(|_| ());
        let kind = |h: RawSparseHeader| h.validate(len).unwrap_err().kind();

        // Versions 1 to 3 are read; others are a feature we do not know.
        for version in [1, 2, 3] {
            assert!(ok(RawSparseHeader { version, ..base }).is_ok());
        }
        assert_eq!(kind(RawSparseHeader { version: 4, ..base }), Unsupported);
        // Without the newline-test flag the bytes mean nothing and are not checked.
        let no_test = RawSparseHeader {
            flags: HeaderFlags(HeaderFlags::REDUNDANT_GD),
            newline_bytes: [0; 4],
            ..base
        };
        assert!(ok(no_test).is_ok());
        assert_eq!(
            kind(RawSparseHeader {
                newline_bytes: *b"\n \n\n",
                ..base
            }),
            Corrupt
        );
        // Grain sizes: powers of two up to 1 GiB; a larger power of two is out of range,
        // a non power of two in range is a feature we do not read.
        let grain = |grain_size| RawSparseHeader { grain_size, ..base };
        assert!(ok(grain(1)).is_ok());
        assert!(ok(grain(MAX_GRAIN_SECTORS)).is_ok());
        assert_eq!(kind(grain(MAX_GRAIN_SECTORS * 2)), InvalidFormat);
        assert_eq!(kind(grain(MAX_GRAIN_SECTORS + 1)), InvalidFormat);
        assert_eq!(kind(grain(96)), Unsupported);
        // Tables of 1 to 512 entries.
        assert!(ok(RawSparseHeader {
            gtes_per_gt: 1,
            ..base
        })
        .is_ok());
        assert_eq!(
            kind(RawSparseHeader {
                gtes_per_gt: 513,
                ..base
            }),
            InvalidFormat
        );
        // Compression: deflate only, and grains small enough to inflate.
        let compressed = RawSparseHeader {
            flags: HeaderFlags(HeaderFlags::NEWLINE_TEST | HeaderFlags::COMPRESSED),
            compress_algorithm: 1,
            ..base
        };
        assert!(ok(compressed).is_ok());
        assert_eq!(
            kind(RawSparseHeader {
                compress_algorithm: 2,
                ..compressed
            }),
            Unsupported
        );
        assert!(ok(RawSparseHeader {
            grain_size: MAX_COMPRESSED_GRAIN_SECTORS,
            ..compressed
        })
        .is_ok());
        assert_eq!(
            kind(RawSparseHeader {
                grain_size: MAX_COMPRESSED_GRAIN_SECTORS * 2,
                ..compressed
            }),
            Unsupported
        );
        // The algorithm field of an uncompressed extent is not looked at.
        assert!(ok(RawSparseHeader {
            compress_algorithm: 9,
            ..base
        })
        .is_ok());
        // Capacity: the largest disk vdisk opens (vdisk_core::MAX_DISK_SIZE), with large
        // grains so the directory stays within bounds; one more sector is refused, and a
        // capacity past what byte arithmetic can hold is malformed.
        let big = RawSparseHeader {
            capacity: vdisk_core::MAX_DISK_SIZE / SECTOR,
            grain_size: MAX_GRAIN_SECTORS,
            ..base
        };
        assert!(ok(big).is_ok());
        assert_eq!(
            kind(RawSparseHeader {
                capacity: vdisk_core::MAX_DISK_SIZE / SECTOR + 1,
                ..big
            }),
            Unsupported
        );
        assert_eq!(
            kind(RawSparseHeader {
                capacity: (u64::MAX >> 10) + 1,
                ..big
            }),
            InvalidFormat
        );
        // A capacity that needs more than MAX_GD_ENTRIES tables.
        let tables = |capacity| RawSparseHeader {
            capacity,
            grain_size: 1,
            gtes_per_gt: 1,
            ..base
        };
        assert!(ok(tables(MAX_GD_ENTRIES)).is_ok());
        assert_eq!(kind(tables(MAX_GD_ENTRIES + 1)), Unsupported);
        // Metadata that ends exactly at the end of the file is fine; a sector more is not.
        assert!(base.validate(0x200 * 512).is_ok());
        assert!(base.validate(0x200 * 512 + 511).is_ok());
        assert_eq!(base.validate(0x200 * 512 - 1).unwrap_err().kind(), Corrupt);
        let desc = |descriptor_offset, descriptor_size| RawSparseHeader {
            descriptor_offset,
            descriptor_size,
            ..base
        };
        assert!(ok(desc(0x1f0, 0x10)).is_ok());
        assert_eq!(kind(desc(0x1f0, 0x11)), Corrupt);
        assert_eq!(kind(desc(1, u64::MAX)), Unsupported);
        // No embedded descriptor: its size is not looked at.
        assert!(ok(desc(0, u64::MAX)).is_ok());
        // The directory offsets are checked later, against the directories themselves.
        assert!(ok(RawSparseHeader {
            gd_offset: GD_AT_END,
            rgd_offset: u64::MAX,
            ..base
        })
        .is_ok());
    }

    #[test]
    fn short_or_foreign_bytes_are_errors() {
        assert!(RawSparseHeader::parse(&[0u8; 100]).is_err());
        assert!(RawSparseHeader::parse(&[0u8; 512]).is_err());
    }
}
