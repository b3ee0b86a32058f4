//! The dynamic disk header: 1024 big-endian bytes that dynamic and differencing disks keep
//! where the footer's `data_offset` points (right after the footer copy at offset 0). It
//! locates the block allocation table, gives the block size, and in a differencing disk
//! names the parent. Field offsets from the VHD specification.

use byteorder::{BigEndian as BE, ByteOrder};
use vdisk_core::{Error, Result, SECTOR};

use crate::footer::checksum;
use crate::uuid::Uuid;

/// The dynamic header's cookie.
pub const HEADER_COOKIE: &[u8; 8] = b"cxsparse";
/// Bytes in a dynamic header.
pub const HEADER_SIZE: usize = 1024;
/// The header's version, 1.0.
pub const HEADER_VERSION: u32 = 0x0001_0000;
/// The block size qemu, Virtual PC and Hyper-V write by default: 2 MiB.
pub const DEFAULT_BLOCK_SIZE: u32 = 2 << 20;
/// Parent locator entries in a header.
pub const LOCATORS: usize = 8;
/// A block allocation table entry for a block that is not allocated.
pub const UNALLOCATED: u32 = u32::MAX;

/// Offset of the checksum in the header.
const HEADER_CHECKSUM_AT: usize = 36;
/// Offset of the parent's name (UTF-16 big-endian, 512 bytes).
const PARENT_NAME_AT: usize = 64;
/// Offset of the first parent locator entry (24 bytes each).
const LOCATORS_AT: usize = 576;

/// How a parent locator's data names the parent (its platform code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    /// An empty entry.
    None,
    /// Relative Windows path, in the host's code page (deprecated).
    Wi2r,
    /// Absolute Windows path, in the host's code page (deprecated).
    Wi2k,
    /// Relative Windows path, UTF-16 little-endian.
    W2ru,
    /// Absolute Windows path, UTF-16 little-endian.
    W2ku,
    /// A Mac OS alias record.
    Mac,
    /// A Mac OS X file URL, UTF-8.
    MacX,
    /// A code the specification does not define.
    Unknown(u32),
}

impl Platform {
    /// The platform of a locator's code.
    pub fn from_code(code: u32) -> Platform {
        match code {
            0 => Platform::None,
            0x5769_3272 => Platform::Wi2r,
            0x5769_326b => Platform::Wi2k,
            0x5732_7275 => Platform::W2ru,
            0x5732_6b75 => Platform::W2ku,
            0x4d61_6320 => Platform::Mac,
            0x4d61_6358 => Platform::MacX,
            other => Platform::Unknown(other),
        }
    }

    /// The code stored for the platform.
    pub fn code(self) -> u32 {
        match self {
            Platform::None => 0,
            Platform::Wi2r => 0x5769_3272,
            Platform::Wi2k => 0x5769_326b,
            Platform::W2ru => 0x5732_7275,
            Platform::W2ku => 0x5732_6b75,
            Platform::Mac => 0x4d61_6320,
            Platform::MacX => 0x4d61_6358,
            Platform::Unknown(c) => c,
        }
    }

    /// The four letters of the code, as tools print it (`W2ru`).
    pub fn name(self) -> String {
        self.code()
            .to_be_bytes()
            .iter()
            .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
            .collect()
    }
}

/// One parent locator entry: where in the file a name of the parent is kept, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParentLocator {
    /// The platform code.
    pub platform_code: u32,
    /// Space reserved for the data. The specification says sectors; Virtual PC and Hyper-V
    /// store bytes. Only the length is used for reading.
    pub data_space: u32,
    /// Bytes of data.
    pub data_length: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// Absolute file offset of the data.
    pub data_offset: u64,
}

impl ParentLocator {
    /// The entry's platform.
    pub fn platform(&self) -> Platform {
        Platform::from_code(self.platform_code)
    }

    fn parse(b: &[u8]) -> Self {
        ParentLocator {
            platform_code: BE::read_u32(&b[0..4]),
            data_space: BE::read_u32(&b[4..8]),
            data_length: BE::read_u32(&b[8..12]),
            reserved: BE::read_u32(&b[12..16]),
            data_offset: BE::read_u64(&b[16..24]),
        }
    }

    fn write(&self, b: &mut [u8]) {
        BE::write_u32(&mut b[0..4], self.platform_code);
        BE::write_u32(&mut b[4..8], self.data_space);
        BE::write_u32(&mut b[8..12], self.data_length);
        BE::write_u32(&mut b[12..16], self.reserved);
        BE::write_u64(&mut b[16..24], self.data_offset);
    }
}

/// A dynamic header as stored: fields are not checked yet. [`RawDynamicHeader::validate`]
/// checks them against the disk and the file.
///
/// ```
/// use vdisk_vhd::{RawDynamicHeader, Uuid};
///
/// // The header qemu-img writes for a 10 MiB dynamic disk: the table right after it.
/// let header = RawDynamicHeader {
///     data_offset: u64::MAX,
///     table_offset: 1536,
///     header_version: 0x0001_0000,
///     max_table_entries: 6,
///     block_size: 2 << 20,
///     checksum: 0,
///     parent_unique_id: Uuid::NIL,
///     parent_timestamp: 0,
///     parent_name: [0; 512],
///     locators: Default::default(),
/// }
/// .sealed();
/// let bytes = header.to_bytes();
/// assert_eq!(&bytes[..8], b"cxsparse");
/// assert_eq!(bytes[16..24], 1536u64.to_be_bytes()); // table offset at byte 16
/// assert_eq!(bytes[36..40], 0xffff_f471u32.to_be_bytes()); // qemu-img's checksum
/// assert_eq!(RawDynamicHeader::parse(&bytes)?, header);
///
/// let valid = header.validate(10_514_432, 2560)?;
/// assert_eq!(valid.bitmap_size, 512);
/// assert_eq!(valid.blocks, 6);
/// # Ok::<(), vdisk_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawDynamicHeader {
    /// Offset of the next structure: unused, all ones.
    pub data_offset: u64,
    /// Absolute offset of the block allocation table.
    pub table_offset: u64,
    /// Header version (1.0).
    pub header_version: u32,
    /// Entries in the block allocation table.
    pub max_table_entries: u32,
    /// Bytes of data in a block (a power of two; 2 MiB by default).
    pub block_size: u32,
    /// The stored checksum.
    pub checksum: u32,
    /// The parent's unique id (differencing disks).
    pub parent_unique_id: Uuid,
    /// The parent's modification time, seconds since 2000-01-01 UTC (differencing disks).
    pub parent_timestamp: u32,
    /// The parent's file name, UTF-16 big-endian, NUL-padded (differencing disks).
    pub parent_name: [u8; 512],
    /// Where names of the parent are kept (differencing disks).
    pub locators: [ParentLocator; LOCATORS],
}

impl RawDynamicHeader {
    /// Decode a dynamic header. Only the cookie is checked here.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < HEADER_SIZE {
            return Err(Error::corrupt(format!(
                "VHD dynamic header is truncated ({} of 1024 bytes)",
                bytes.len()
            )));
        }
        if &bytes[..8] != HEADER_COOKIE {
            return Err(Error::corrupt(
                "VHD dynamic header has no \"cxsparse\" cookie",
            ));
        }
        let mut locators = [ParentLocator::default(); LOCATORS];
        for (i, l) in locators.iter_mut().enumerate() {
            let at = LOCATORS_AT + 24 * i;
            *l = ParentLocator::parse(&bytes[at..at + 24]);
        }
        let mut parent_name = [0u8; 512];
        parent_name.copy_from_slice(&bytes[PARENT_NAME_AT..PARENT_NAME_AT + 512]);
        Ok(RawDynamicHeader {
            data_offset: BE::read_u64(&bytes[8..16]),
            table_offset: BE::read_u64(&bytes[16..24]),
            header_version: BE::read_u32(&bytes[24..28]),
            max_table_entries: BE::read_u32(&bytes[28..32]),
            block_size: BE::read_u32(&bytes[32..36]),
            checksum: BE::read_u32(&bytes[36..40]),
            parent_unique_id: Uuid(bytes[40..56].try_into().unwrap_or_default()),
            parent_timestamp: BE::read_u32(&bytes[56..60]),
            parent_name,
            locators,
        })
    }

    /// Encode the header with its stored checksum.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[..8].copy_from_slice(HEADER_COOKIE);
        BE::write_u64(&mut b[8..16], self.data_offset);
        BE::write_u64(&mut b[16..24], self.table_offset);
        BE::write_u32(&mut b[24..28], self.header_version);
        BE::write_u32(&mut b[28..32], self.max_table_entries);
        BE::write_u32(&mut b[32..36], self.block_size);
        BE::write_u32(&mut b[36..40], self.checksum);
        b[40..56].copy_from_slice(&self.parent_unique_id.0);
        BE::write_u32(&mut b[56..60], self.parent_timestamp);
        b[PARENT_NAME_AT..PARENT_NAME_AT + 512].copy_from_slice(&self.parent_name);
        for (i, l) in self.locators.iter().enumerate() {
            let at = LOCATORS_AT + 24 * i;
            l.write(&mut b[at..at + 24]);
        }
        b
    }

    /// The checksum the fields call for.
    pub fn computed_checksum(&self) -> u32 {
        checksum(&self.to_bytes(), HEADER_CHECKSUM_AT)
    }

    /// The same header with its checksum set to match its fields.
    pub fn sealed(mut self) -> Self {
        self.checksum = self.computed_checksum();
        self
    }

    /// The parent's name, decoded (trailing NULs dropped); empty when none is recorded.
    pub fn parent_name(&self) -> String {
        let units: Vec<u16> = self
            .parent_name
            .chunks_exact(2)
            .map(BE::read_u16)
            .take_while(|&u| u != 0)
            .collect();
        String::from_utf16_lossy(&units)
    }

    /// Check the fields against a disk of `disk_size` bytes in a file of `file_len` bytes:
    /// the block size is a power of two of at least a sector (as qemu requires), the table
    /// covers the disk (qemu: "page table too small"), and the entries covering the disk lie
    /// inside the file. Table entries past the disk are never read.
    pub fn validate(&self, disk_size: u64, file_len: u64) -> Result<DynamicHeader> {
        let block = u64::from(self.block_size);
        if !block.is_power_of_two() || block < SECTOR {
            return Err(Error::corrupt(format!(
                "VHD block size {} is not a power of two of at least 512 bytes",
                self.block_size
            )));
        }
        let blocks = disk_size.div_ceil(block);
        if u64::from(self.max_table_entries) < blocks {
            return Err(Error::corrupt(format!(
                "VHD block allocation table has {} entries, too few for the disk's {blocks} blocks",
                self.max_table_entries
            )));
        }
        let table_end = self
            .table_offset
            .checked_add(blocks * 4)
            .filter(|&end| end <= file_len)
            .ok_or_else(|| {
                Error::corrupt(format!(
                    "VHD block allocation table of {blocks} entries at offset {} runs past the \
                     end of the file ({file_len} bytes)",
                    self.table_offset
                ))
            })?;
        // One bit per sector, padded to whole sectors.
        let bitmap_size = (block / SECTOR).div_ceil(8).next_multiple_of(SECTOR);
        Ok(DynamicHeader {
            raw: *self,
            block_size: block,
            bitmap_size,
            blocks,
            table_end,
        })
    }
}

/// A validated dynamic header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DynamicHeader {
    /// The fields as stored.
    pub raw: RawDynamicHeader,
    /// Bytes of data in a block.
    pub block_size: u64,
    /// Bytes of the sector bitmap before each block's data.
    pub bitmap_size: u64,
    /// Blocks covering the disk (table entries read).
    pub blocks: u64,
    /// End of the table entries covering the disk.
    pub table_end: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header qemu-img 10 wrote for `create -f vpc d1.vhd 10M` (its non-zero bytes).
    fn qemu_header() -> [u8; 1024] {
        let mut b = [0u8; 1024];
        b[..0x28].copy_from_slice(&[
            0x63, 0x78, 0x73, 0x70, 0x61, 0x72, 0x73, 0x65, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x01, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x06, 0x00, 0x20, 0x00, 0x00, 0xff, 0xff, 0xf4, 0x71,
        ]);
        b
    }

    #[test]
    fn qemu_header_fields() {
        let h = RawDynamicHeader::parse(&qemu_header()).unwrap();
        assert_eq!(h.data_offset, u64::MAX);
        assert_eq!(h.table_offset, 0x600);
        assert_eq!(h.header_version, HEADER_VERSION);
        assert_eq!(h.max_table_entries, 6);
        assert_eq!(h.block_size, DEFAULT_BLOCK_SIZE);
        assert_eq!(h.checksum, h.computed_checksum());
        assert!(h.parent_unique_id.is_nil());
        assert_eq!(h.parent_name(), "");
        assert!(h.locators.iter().all(|l| l.platform() == Platform::None));
        assert_eq!(h.to_bytes(), qemu_header());
    }

    #[test]
    fn validation_bounds_the_table_by_the_file() {
        let h = RawDynamicHeader::parse(&qemu_header()).unwrap();
        let v = h.validate(10 << 20, 2048).unwrap();
        assert_eq!(v.blocks, 5);
        assert_eq!(v.table_end, 1536 + 20);
        // Entries past the end of the file.
        assert!(h.validate(10 << 20, 1550).is_err());
        // A table too small for the disk.
        assert!(h.validate(13 << 20, 1 << 30).is_err());
        let mut bad = h;
        for size in [0, 1, 511, 513, 3 << 20] {
            bad.block_size = size;
            assert!(bad.validate(10 << 20, 1 << 30).is_err(), "{size}");
        }
        bad.block_size = 1 << 31;
        bad.max_table_entries = 1;
        assert_eq!(bad.validate(1 << 31, 4096).unwrap().bitmap_size, 512 << 10);
        bad.table_offset = u64::MAX - 1;
        assert!(bad.validate(1 << 31, u64::MAX).is_err());
    }

    #[test]
    fn locators_and_parent_name_round_trip() {
        let mut h = RawDynamicHeader::parse(&qemu_header()).unwrap();
        h.locators[1] = ParentLocator {
            platform_code: Platform::W2ru.code(),
            data_space: 1024,
            data_length: 20,
            reserved: 0,
            data_offset: 0x1000,
        };
        for (i, u) in "base.vhd".encode_utf16().enumerate() {
            BE::write_u16(&mut h.parent_name[2 * i..], u);
        }
        let h = h.sealed();
        let bytes = h.to_bytes();
        assert_eq!(&bytes[600..604], b"W2ru");
        assert_eq!(&bytes[64..68], &[0, b'b', 0, b'a']);
        let back = RawDynamicHeader::parse(&bytes).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.parent_name(), "base.vhd");
        assert_eq!(back.locators[1].platform(), Platform::W2ru);
        assert_eq!(Platform::from_code(0x1234).name(), "???4");
        assert_eq!(Platform::W2ku.name(), "W2ku");
    }
}
