//! The hard disk footer: 512 big-endian bytes at the end of every VHD, and a copy of them at
//! offset 0 of dynamic and differencing disks. Field offsets from Microsoft's "Virtual Hard
//! Disk Image Format Specification".

use byteorder::{BigEndian as BE, ByteOrder};
use vdisk_core::{Error, Result, SECTOR};

use crate::uuid::Uuid;

/// The footer's cookie ("conectix", spelled with one n).
pub const FOOTER_COOKIE: &[u8; 8] = b"conectix";
/// Bytes in a footer.
pub const FOOTER_SIZE: usize = 512;
/// Bytes in the footer of images made by Virtual PC before 2004 (the last reserved byte is
/// missing).
pub const OLD_FOOTER_SIZE: usize = 511;
/// Seconds from the Unix epoch to the VHD epoch, 2000-01-01 00:00:00 UTC.
pub const VHD_EPOCH: u64 = 946_684_800;
/// The footer's `data_offset` in a fixed disk: no structure follows.
pub const NO_DATA_OFFSET: u64 = u64::MAX;
/// The feature bit every footer sets ("reserved, must be set").
pub const FEATURE_RESERVED: u32 = 0x2;
/// The feature bit of a temporary disk (a candidate for deletion on shutdown).
pub const FEATURE_TEMPORARY: u32 = 0x1;
/// The footer's format version, 1.0.
pub const FORMAT_VERSION: u32 = 0x0001_0000;
/// The largest disk qemu opens, in sectors: 2040 GiB. Larger disks cannot be VHDs anyway: a
/// dynamic disk's blocks are addressed by 32-bit sector numbers (2 TiB of file), and
/// Hyper-V stops at the same 2040 GiB.
pub const MAX_SECTORS: u64 = 0xff00_0000;

/// What a VHD is: the footer's disk type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiskType {
    /// Raw data followed by the footer.
    Fixed,
    /// Blocks allocated on first write, through a block allocation table.
    Dynamic,
    /// A dynamic disk whose unallocated sectors read from a parent disk.
    Differencing,
}

impl DiskType {
    /// The type's code in the footer.
    pub fn code(self) -> u32 {
        match self {
            DiskType::Fixed => 2,
            DiskType::Dynamic => 3,
            DiskType::Differencing => 4,
        }
    }

    /// The type a footer code stands for (`None` for the reserved and unknown codes).
    pub fn from_code(code: u32) -> Option<DiskType> {
        match code {
            2 => Some(DiskType::Fixed),
            3 => Some(DiskType::Dynamic),
            4 => Some(DiskType::Differencing),
            _ => None,
        }
    }

    /// The subformat's name (`fixed`, `dynamic`, `differencing`).
    pub fn name(self) -> &'static str {
        match self {
            DiskType::Fixed => "fixed",
            DiskType::Dynamic => "dynamic",
            DiskType::Differencing => "differencing",
        }
    }

    /// Whether the disk has a dynamic header and a block allocation table.
    pub fn is_sparse(self) -> bool {
        self != DiskType::Fixed
    }
}

/// The disk's cylinder/head/sector geometry, as the footer records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Geometry {
    /// Cylinders.
    pub cylinders: u16,
    /// Heads.
    pub heads: u8,
    /// Sectors per track.
    pub sectors: u8,
}

impl Geometry {
    /// The largest geometry, 65535/16/255: it says "the size is the footer's current size"
    /// (qemu writes it with `force_size=on`, and then reads the current size back).
    pub const MAX: Geometry = Geometry {
        cylinders: 65535,
        heads: 16,
        sectors: 255,
    };

    /// Sectors the geometry addresses.
    pub fn total_sectors(&self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors)
    }
}

/// Where a disk's virtual size comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeSource {
    /// Cylinders × heads × sectors (Virtual PC's way, and qemu's for images it does not
    /// know to be otherwise).
    Geometry,
    /// The footer's current size (Hyper-V's way).
    CurrentSize,
}

/// Creator applications whose images qemu sizes by the footer's current size rather than by
/// the geometry (qemu 10's `vpc_ignore_current_size`): Hyper-V, qemu with `force_size`,
/// Disk2vhd, XenServer's tapdisk (NUL-padded), XenConverter.
const SIZED_BY_CURRENT_SIZE: [&[u8; 4]; 5] = [b"win ", b"qem2", b"d2v ", b"tap\0", b"CTXS"];

/// One's complement of the sum of `bytes`, with the four checksum bytes at `at` counted as
/// zero: the checksum of footers and dynamic headers.
pub fn checksum(bytes: &[u8], at: usize) -> u32 {
    let sum = bytes.iter().enumerate().fold(0u32, |acc, (i, &b)| {
        if (at..at + 4).contains(&i) {
            acc
        } else {
            acc.wrapping_add(u32::from(b))
        }
    });
    !sum
}

/// A footer as stored: fields are not checked against anything yet. [`RawFooter::validate`]
/// turns it into a [`Footer`].
///
/// ```
/// use vdisk_vhd::{Geometry, RawFooter, Uuid};
///
/// // The footer qemu-img writes for a 10 MiB fixed disk with force_size=on.
/// let raw = RawFooter {
///     features: 2,
///     format_version: 0x0001_0000,
///     data_offset: u64::MAX,
///     timestamp: 0x32a7_d95c,
///     creator_app: *b"qem2",
///     creator_version: 0x0005_0003,
///     creator_os: *b"Wi2k",
///     original_size: 10 << 20,
///     current_size: 10 << 20,
///     geometry: Geometry::MAX,
///     disk_type: 2,
///     checksum: 0,
///     unique_id: Uuid([7; 16]),
///     saved_state: 0,
/// }
/// .sealed();
/// let bytes = raw.to_bytes();
/// assert_eq!(&bytes[..8], b"conectix");
/// assert_eq!(bytes[48..56], (10u64 << 20).to_be_bytes()); // current size at byte 48
/// assert_eq!(bytes[56..60], [0xff, 0xff, 0x10, 0xff]); // 65535 cylinders, 16 heads, 255
/// assert_eq!(RawFooter::parse(&bytes)?, raw);
///
/// let footer = raw.validate()?;
/// // qem2 with the largest geometry: sized by the current size, not by the geometry.
/// assert_eq!(footer.size, 10 << 20);
/// # Ok::<(), vdisk_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFooter {
    /// Feature bits (0x2 always set, 0x1 a temporary disk).
    pub features: u32,
    /// Format version (1.0: `0x00010000`).
    pub format_version: u32,
    /// Offset of the dynamic header, [`NO_DATA_OFFSET`] in a fixed disk.
    pub data_offset: u64,
    /// Creation time, seconds since 2000-01-01 UTC.
    pub timestamp: u32,
    /// The program that made the disk (`vpc `, `win `, `qemu`, `qem2`, `d2v `, ...).
    pub creator_app: [u8; 4],
    /// That program's version (major in the high half).
    pub creator_version: u32,
    /// The host it ran on (`Wi2k`, `Mac `).
    pub creator_os: [u8; 4],
    /// Size at creation, bytes.
    pub original_size: u64,
    /// Current size, bytes.
    pub current_size: u64,
    /// The disk's geometry.
    pub geometry: Geometry,
    /// Disk type code (2 fixed, 3 dynamic, 4 differencing).
    pub disk_type: u32,
    /// The stored checksum.
    pub checksum: u32,
    /// The disk's identity; a differencing child records its parent's.
    pub unique_id: Uuid,
    /// Set while the disk belongs to a saved (suspended) virtual machine.
    pub saved_state: u8,
}

/// Offset of the checksum in the footer.
const FOOTER_CHECKSUM_AT: usize = 64;

impl RawFooter {
    /// Decode a footer: 512 bytes, or 511 for the footers of Virtual PC before 2004. Only
    /// the cookie is checked here.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < OLD_FOOTER_SIZE {
            return Err(Error::invalid(format!(
                "VHD footer is truncated ({} of 512 bytes)",
                bytes.len()
            )));
        }
        if &bytes[..8] != FOOTER_COOKIE {
            return Err(Error::invalid("not a VHD footer (no \"conectix\" cookie)"));
        }
        Ok(RawFooter {
            features: BE::read_u32(&bytes[8..12]),
            format_version: BE::read_u32(&bytes[12..16]),
            data_offset: BE::read_u64(&bytes[16..24]),
            timestamp: BE::read_u32(&bytes[24..28]),
            creator_app: [bytes[28], bytes[29], bytes[30], bytes[31]],
            creator_version: BE::read_u32(&bytes[32..36]),
            creator_os: [bytes[36], bytes[37], bytes[38], bytes[39]],
            original_size: BE::read_u64(&bytes[40..48]),
            current_size: BE::read_u64(&bytes[48..56]),
            geometry: Geometry {
                cylinders: BE::read_u16(&bytes[56..58]),
                heads: bytes[58],
                sectors: bytes[59],
            },
            disk_type: BE::read_u32(&bytes[60..64]),
            checksum: BE::read_u32(&bytes[64..68]),
            unique_id: Uuid(bytes[68..84].try_into().unwrap_or_default()),
            saved_state: bytes[84],
        })
    }

    /// Encode the footer with its stored checksum (the inverse of [`RawFooter::parse`]).
    pub fn to_bytes(&self) -> [u8; FOOTER_SIZE] {
        let mut b = [0u8; FOOTER_SIZE];
        b[..8].copy_from_slice(FOOTER_COOKIE);
        BE::write_u32(&mut b[8..12], self.features);
        BE::write_u32(&mut b[12..16], self.format_version);
        BE::write_u64(&mut b[16..24], self.data_offset);
        BE::write_u32(&mut b[24..28], self.timestamp);
        b[28..32].copy_from_slice(&self.creator_app);
        BE::write_u32(&mut b[32..36], self.creator_version);
        b[36..40].copy_from_slice(&self.creator_os);
        BE::write_u64(&mut b[40..48], self.original_size);
        BE::write_u64(&mut b[48..56], self.current_size);
        BE::write_u16(&mut b[56..58], self.geometry.cylinders);
        b[58] = self.geometry.heads;
        b[59] = self.geometry.sectors;
        BE::write_u32(&mut b[60..64], self.disk_type);
        BE::write_u32(&mut b[64..68], self.checksum);
        b[68..84].copy_from_slice(&self.unique_id.0);
        b[84] = self.saved_state;
        b
    }

    /// The checksum the fields call for.
    pub fn computed_checksum(&self) -> u32 {
        checksum(&self.to_bytes(), FOOTER_CHECKSUM_AT)
    }

    /// The same footer with its checksum set to match its fields.
    pub fn sealed(mut self) -> Self {
        self.checksum = self.computed_checksum();
        self
    }

    /// Whether the stored checksum matches the fields. The reserved bytes a parsed footer
    /// does not keep are zero in every footer this crate opens (it checks all 512 bytes).
    pub fn checksum_ok(&self) -> bool {
        self.checksum == self.computed_checksum()
    }

    /// The disk's virtual size in sectors, and where it comes from, exactly as qemu 10 reads
    /// it: by the geometry, unless the creator is one of those known to size disks by the
    /// current size (Hyper-V, qemu's `force_size`, Disk2vhd, XenServer, XenConverter), or
    /// the geometry is the largest one (which cannot describe a larger disk, so the
    /// current size is meant). Virtual PC's disks are a little larger than their geometry;
    /// sizing them by the current size would show sectors Virtual PC never exposes, and
    /// images qemu-img writes without `force_size` round the size to the geometry the
    /// same way.
    pub fn virtual_sectors(&self) -> (u64, SizeSource) {
        let by_current =
            SIZED_BY_CURRENT_SIZE.contains(&&self.creator_app) || self.geometry == Geometry::MAX;
        if by_current {
            (self.current_size / SECTOR, SizeSource::CurrentSize)
        } else {
            (self.geometry.total_sectors(), SizeSource::Geometry)
        }
    }

    /// Check the fields: a known disk type, a size vdisk and qemu handle. The checksum is
    /// the caller's to check (a damaged copy may be replaced by the other one).
    pub fn validate(&self) -> Result<Footer> {
        let disk_type = DiskType::from_code(self.disk_type).ok_or_else(|| {
            Error::invalid(format!(
                "VHD footer has unknown disk type {}",
                self.disk_type
            ))
        })?;
        let (sectors, size_source) = self.virtual_sectors();
        if sectors > MAX_SECTORS {
            return Err(Error::unsupported(format!(
                "VHD of {sectors} sectors is larger than the format's 2040 GiB"
            )));
        }
        let size = sectors * SECTOR;
        vdisk_core::check_disk_size(size)?;
        Ok(Footer {
            raw: *self,
            disk_type,
            size,
            size_source,
        })
    }
}

/// A validated footer: the disk's type and virtual size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// The fields as stored.
    pub raw: RawFooter,
    /// The disk type.
    pub disk_type: DiskType,
    /// Virtual size in bytes (a whole number of sectors).
    pub size: u64,
    /// Whether the size came from the geometry or from the current size.
    pub size_source: SizeSource,
}

/// The footer at the end of `bytes` (the last 512 bytes, or the last 511 of an old Virtual
/// PC image), with its length, when it has the cookie and a good checksum.
pub fn footer_at_end(tail: &[u8]) -> Option<(RawFooter, usize)> {
    if tail.len() >= FOOTER_SIZE {
        if let Some(f) = footer_at(&tail[tail.len() - FOOTER_SIZE..]) {
            return Some((f, FOOTER_SIZE));
        }
    }
    if tail.len() >= OLD_FOOTER_SIZE {
        if let Some(f) = footer_at(&tail[tail.len() - OLD_FOOTER_SIZE..]) {
            return Some((f, OLD_FOOTER_SIZE));
        }
    }
    None
}

/// The footer in `bytes` (511 or 512 of them) when it has the cookie and a good checksum
/// over every byte (reserved ones included).
pub fn footer_at(bytes: &[u8]) -> Option<RawFooter> {
    let f = RawFooter::parse(bytes).ok()?;
    let sum = checksum(bytes, FOOTER_CHECKSUM_AT);
    (sum == f.checksum).then_some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu_footer() -> [u8; 512] {
        // The footer qemu-img 10 wrote for `create -f vpc d1.vhd 10M`, bytes 0..0x58.
        let head: [u8; 0x58] = [
            0x63, 0x6f, 0x6e, 0x65, 0x63, 0x74, 0x69, 0x78, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x32, 0xa7, 0xd9, 0x5c,
            0x71, 0x65, 0x6d, 0x75, 0x00, 0x05, 0x00, 0x03, 0x57, 0x69, 0x32, 0x6b, 0x00, 0x00,
            0x00, 0x00, 0x00, 0xa0, 0x70, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x70, 0x00,
            0x01, 0x2e, 0x04, 0x11, 0x00, 0x00, 0x00, 0x03, 0xff, 0xff, 0xee, 0xa3, 0x0a, 0xc4,
            0x44, 0x44, 0x13, 0x3f, 0x4f, 0x38, 0xbe, 0x9a, 0xc4, 0x88, 0x73, 0x38, 0xd0, 0x1a,
            0x00, 0x00, 0x00, 0x00,
        ];
        let mut b = [0u8; 512];
        b[..0x58].copy_from_slice(&head);
        b
    }

    #[test]
    fn qemu_dynamic_footer_fields() {
        let bytes = qemu_footer();
        let f = footer_at(&bytes).expect("valid checksum");
        assert_eq!(f.features, FEATURE_RESERVED);
        assert_eq!(f.format_version, FORMAT_VERSION);
        assert_eq!(f.data_offset, 512);
        assert_eq!(&f.creator_app, b"qemu");
        assert_eq!(f.creator_version, 0x0005_0003);
        assert_eq!(&f.creator_os, b"Wi2k");
        assert_eq!(f.current_size, 0xa0_7000);
        assert_eq!(
            f.geometry,
            Geometry {
                cylinders: 302,
                heads: 4,
                sectors: 17
            }
        );
        assert_eq!(f.disk_type, 3);
        assert_eq!(f.checksum, 0xffff_eea3);
        assert!(f.checksum_ok());
        assert_eq!(f.to_bytes(), bytes);
        // "qemu" sizes by geometry: 302 * 4 * 17 sectors, which qemu rounded the
        // requested 10 MiB up to, and recorded as the current size too.
        let v = f.validate().unwrap();
        assert_eq!(v.size_source, SizeSource::Geometry);
        assert_eq!(v.size, 302 * 4 * 17 * 512);
        assert_eq!(v.size, 10_514_432);
        assert_eq!(v.disk_type, DiskType::Dynamic);
    }

    #[test]
    fn size_source_follows_the_creator_and_the_largest_geometry() {
        let mut f = RawFooter::parse(&qemu_footer()).unwrap();
        f.current_size = 1 << 30;
        for app in [b"win ", b"qem2", b"d2v ", b"tap\0", b"CTXS"] {
            f.creator_app = *app;
            assert_eq!(f.virtual_sectors(), (1 << 21, SizeSource::CurrentSize));
        }
        for app in [b"vpc ", b"qemu", b"vbox", b"tap "] {
            f.creator_app = *app;
            assert_eq!(f.virtual_sectors(), (302 * 4 * 17, SizeSource::Geometry));
        }
        f.geometry = Geometry::MAX;
        assert_eq!(f.virtual_sectors(), (1 << 21, SizeSource::CurrentSize));
        // The current size is cut to whole sectors, as qemu does.
        f.current_size = (1 << 30) + 511;
        assert_eq!(f.virtual_sectors().0, 1 << 21);
    }

    #[test]
    fn oversized_and_unknown_disks_are_refused() {
        let mut f = RawFooter::parse(&qemu_footer()).unwrap();
        f.creator_app = *b"win ";
        f.current_size = (MAX_SECTORS + 1) * 512;
        assert_eq!(
            f.validate().unwrap_err().kind(),
            vdisk_core::ErrorKind::Unsupported
        );
        f.current_size = MAX_SECTORS * 512;
        assert!(f.validate().is_ok());
        for code in [0, 1, 5, 6, u32::MAX] {
            f.disk_type = code;
            assert_eq!(
                f.validate().unwrap_err().kind(),
                vdisk_core::ErrorKind::InvalidFormat
            );
        }
    }

    #[test]
    fn checksum_damage_and_old_511_byte_footers() {
        let mut bytes = qemu_footer();
        bytes[100] = 1; // a reserved byte: counted by the checksum
        assert!(footer_at(&bytes).is_none());
        let good = qemu_footer();
        // A file ending in a 511-byte footer: the byte before it is disk data.
        let mut tail = vec![0xaau8; 1024];
        tail[1024 - 511..].copy_from_slice(&good[..511]);
        let (f, len) = footer_at_end(&tail).unwrap();
        assert_eq!(len, 511);
        assert_eq!(f.disk_type, 3);
        tail[1023] = 0; // harmless: still the old footer
        let mut full = vec![0u8; 1024];
        full[512..].copy_from_slice(&good);
        assert_eq!(footer_at_end(&full).unwrap().1, 512);
        assert!(footer_at_end(&[0u8; 100]).is_none());
        assert!(RawFooter::parse(&good[..510]).is_err());
    }
}
