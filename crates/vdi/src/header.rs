//! The VDI header: 512 little-endian bytes at offset 0 (version 1.1, as VirtualBox and qemu
//! write it). Field offsets as VirtualBox's `VDIHeader1Plus` lays them out after the
//! 64-byte text, the signature and the version.

use byteorder::{ByteOrder, LittleEndian as LE};
use vdisk_core::{Error, Result, SECTOR};

/// The signature at offset 0x40.
pub const VDI_SIGNATURE: u32 = 0xbeda_107f;
/// Version 1.1, the one VirtualBox has written since 2008 (and qemu writes).
pub const VDI_VERSION_1_1: u32 = 0x0001_0001;
/// Bytes in the header as read (the text, the pre-header and the version 1.1 header).
pub const HEADER_SIZE: usize = 512;
/// The block size VirtualBox and qemu write: 1 MiB.
pub const DEFAULT_BLOCK_SIZE: u32 = 1 << 20;
/// A block map entry for a block never written: it reads as zero.
pub const UNALLOCATED: u32 = 0xffff_ffff;
/// A block map entry for a block discarded (zeroed): it reads as zero.
pub const DISCARDED: u32 = 0xffff_fffe;
/// The most blocks qemu opens (its block map must fit an `int` when rounded to sectors).
pub const MAX_BLOCKS: u32 = ((i32::MAX as u32) + 1 - 512) / 4;
/// Offset of the signature.
const SIGNATURE_AT: usize = 0x40;

/// What a VDI is: the header's image type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageType {
    /// Blocks allocated as they are written.
    Dynamic,
    /// Every block allocated at creation (qemu's `static=on`).
    Static,
}

impl ImageType {
    /// The type's name (`dynamic`, `static`).
    pub fn name(self) -> &'static str {
        match self {
            ImageType::Dynamic => "dynamic",
            ImageType::Static => "static",
        }
    }
}

/// A VDI header as stored: [`RawVdiHeader::parse`] checks only the signature;
/// [`RawVdiHeader::validate`] checks the rest against the file.
///
/// ```
/// use vdisk_vdi::RawVdiHeader;
///
/// // The header qemu-img writes for a 3 MiB dynamic image: the block map at 0x200 (one
/// // sector), the data right after it.
/// let mut h = RawVdiHeader::new(3 << 20, 1 << 20, 1);
/// h.offset_data = 0x400;
/// let bytes = h.to_bytes();
/// assert_eq!(bytes[0x40..0x44], 0xbeda107fu32.to_le_bytes()); // signature
/// assert_eq!(bytes[0x170..0x178], (3u64 << 20).to_le_bytes()); // disk size
/// assert_eq!(RawVdiHeader::parse(&bytes)?, h);
/// let v = h.validate(0x400)?;
/// assert_eq!(v.size, 3 << 20);
/// assert_eq!(v.blocks, 3);
/// # Ok::<(), vdisk_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawVdiHeader {
    /// Free text ("<<< Oracle VM VirtualBox Disk Image >>>\n"), NUL-padded.
    pub text: [u8; 64],
    /// [`VDI_SIGNATURE`].
    pub signature: u32,
    /// Format version (major in the high half).
    pub version: u32,
    /// Bytes of the header after the version (0x180 in version 1.1).
    pub header_size: u32,
    /// 1 dynamic, 2 static, 3 undo, 4 differencing.
    pub image_type: u32,
    /// Image flags (unused by readers).
    pub image_flags: u32,
    /// Free description, NUL-padded.
    pub description: [u8; 256],
    /// File offset of the block map.
    pub offset_bmap: u32,
    /// File offset of the first data block.
    pub offset_data: u32,
    /// Legacy geometry: cylinders.
    pub cylinders: u32,
    /// Legacy geometry: heads.
    pub heads: u32,
    /// Legacy geometry: sectors per track.
    pub sectors: u32,
    /// Bytes in a sector (512).
    pub sector_size: u32,
    /// Unused.
    pub unused1: u32,
    /// Virtual size in bytes.
    pub disk_size: u64,
    /// Bytes of data in a block (1 MiB).
    pub block_size: u32,
    /// Bytes of extra data before each block's data (0).
    pub block_extra: u32,
    /// Entries in the block map.
    pub blocks_in_image: u32,
    /// Blocks allocated in the file.
    pub blocks_allocated: u32,
    /// The image's UUID.
    pub uuid_image: [u8; 16],
    /// The UUID of its last modification (snapshot).
    pub uuid_last_snap: [u8; 16],
    /// The parent's UUID (differencing images).
    pub uuid_link: [u8; 16],
    /// The parent's modification UUID (differencing images).
    pub uuid_parent: [u8; 16],
}

impl RawVdiHeader {
    /// A version 1.1 header for a dynamic (`image_type` 1) or static (2) image of `size`
    /// bytes in blocks of `block_size`, its block map at 0x200 (tests and examples).
    pub fn new(size: u64, block_size: u32, image_type: u32) -> Self {
        let mut text = [0u8; 64];
        let t = b"<<< QEMU VM Virtual Disk Image >>>\n";
        text[..t.len()].copy_from_slice(t);
        let blocks = size.div_ceil(u64::from(block_size)) as u32;
        RawVdiHeader {
            text,
            signature: VDI_SIGNATURE,
            version: VDI_VERSION_1_1,
            header_size: 0x180,
            image_type,
            image_flags: 0,
            description: [0; 256],
            offset_bmap: 0x200,
            offset_data: 0x200 + (blocks * 4).next_multiple_of(512),
            cylinders: 0,
            heads: 0,
            sectors: 0,
            sector_size: 512,
            unused1: 0,
            disk_size: size,
            block_size,
            block_extra: 0,
            blocks_in_image: blocks,
            blocks_allocated: if image_type == 2 { blocks } else { 0 },
            uuid_image: [1; 16],
            uuid_last_snap: [2; 16],
            uuid_link: [0; 16],
            uuid_parent: [0; 16],
        }
    }

    /// Decode the header from the first 512 bytes of a file.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < HEADER_SIZE {
            return Err(Error::invalid(format!(
                "VDI header is truncated ({} of 512 bytes)",
                bytes.len()
            )));
        }
        let signature = LE::read_u32(&bytes[SIGNATURE_AT..SIGNATURE_AT + 4]);
        if signature != VDI_SIGNATURE {
            return Err(Error::invalid(format!(
                "not a VDI image (signature {signature:#010x} at offset 0x40)"
            )));
        }
        let u32_at = |at: usize| LE::read_u32(&bytes[at..at + 4]);
        let uuid_at = |at: usize| -> [u8; 16] { bytes[at..at + 16].try_into().unwrap_or_default() };
        let mut text = [0u8; 64];
        text.copy_from_slice(&bytes[..64]);
        let mut description = [0u8; 256];
        description.copy_from_slice(&bytes[0x54..0x154]);
        Ok(RawVdiHeader {
            text,
            signature,
            version: u32_at(0x44),
            header_size: u32_at(0x48),
            image_type: u32_at(0x4c),
            image_flags: u32_at(0x50),
            description,
            offset_bmap: u32_at(0x154),
            offset_data: u32_at(0x158),
            cylinders: u32_at(0x15c),
            heads: u32_at(0x160),
            sectors: u32_at(0x164),
            sector_size: u32_at(0x168),
            unused1: u32_at(0x16c),
            disk_size: LE::read_u64(&bytes[0x170..0x178]),
            block_size: u32_at(0x178),
            block_extra: u32_at(0x17c),
            blocks_in_image: u32_at(0x180),
            blocks_allocated: u32_at(0x184),
            uuid_image: uuid_at(0x188),
            uuid_last_snap: uuid_at(0x198),
            uuid_link: uuid_at(0x1a8),
            uuid_parent: uuid_at(0x1b8),
        })
    }

    /// Encode the header (the inverse of [`RawVdiHeader::parse`]).
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[..64].copy_from_slice(&self.text);
        let mut put = |at: usize, v: u32| LE::write_u32(&mut b[at..at + 4], v);
        put(SIGNATURE_AT, self.signature);
        put(0x44, self.version);
        put(0x48, self.header_size);
        put(0x4c, self.image_type);
        put(0x50, self.image_flags);
        put(0x154, self.offset_bmap);
        put(0x158, self.offset_data);
        put(0x15c, self.cylinders);
        put(0x160, self.heads);
        put(0x164, self.sectors);
        put(0x168, self.sector_size);
        put(0x16c, self.unused1);
        put(0x178, self.block_size);
        put(0x17c, self.block_extra);
        put(0x180, self.blocks_in_image);
        put(0x184, self.blocks_allocated);
        b[0x54..0x154].copy_from_slice(&self.description);
        LE::write_u64(&mut b[0x170..0x178], self.disk_size);
        b[0x188..0x198].copy_from_slice(&self.uuid_image);
        b[0x198..0x1a8].copy_from_slice(&self.uuid_last_snap);
        b[0x1a8..0x1b8].copy_from_slice(&self.uuid_link);
        b[0x1b8..0x1c8].copy_from_slice(&self.uuid_parent);
        b
    }

    /// Check the header against a file of `file_len` bytes, with qemu's rules: version 1.1,
    /// sector-aligned map and data, 512-byte sectors, a block map that covers the disk and
    /// lies inside the file, no parent (differencing images are refused, as qemu refuses
    /// them). Odd disk sizes (from `VBoxManage convertfromraw`) are rounded up to a sector,
    /// as qemu does. Block sizes other than 1 MiB are taken when they are powers of two
    /// from 512 bytes to 256 MiB (qemu takes 1 MiB only), without per-block extra data.
    pub fn validate(&self, file_len: u64) -> Result<VdiHeader> {
        if self.version != VDI_VERSION_1_1 {
            return Err(Error::unsupported(format!(
                "VDI version {}.{} (vdisk reads version 1.1)",
                self.version >> 16,
                self.version & 0xffff
            )));
        }
        let image_type = match self.image_type {
            1 => ImageType::Dynamic,
            2 => ImageType::Static,
            3 => return Err(Error::unsupported("VDI undo images are not supported")),
            4 => {
                return Err(Error::unsupported(
                    "differencing VDI images are not supported",
                ))
            }
            t => return Err(Error::invalid(format!("VDI image type {t} is unknown"))),
        };
        if self.uuid_link != [0; 16] || self.uuid_parent != [0; 16] {
            return Err(Error::unsupported(
                "differencing VDI images (with a parent UUID) are not supported",
            ));
        }
        if u64::from(self.offset_bmap) % SECTOR != 0 || u64::from(self.offset_data) % SECTOR != 0 {
            return Err(Error::unsupported(format!(
                "VDI block map at {:#x} or data at {:#x} is not sector-aligned",
                self.offset_bmap, self.offset_data
            )));
        }
        if u64::from(self.sector_size) != SECTOR {
            return Err(Error::unsupported(format!(
                "VDI sector size {} is not 512",
                self.sector_size
            )));
        }
        let block = u64::from(self.block_size);
        if !block.is_power_of_two() || !(SECTOR..=256 << 20).contains(&block) {
            return Err(Error::unsupported(format!(
                "VDI block size {} is not a power of two from 512 bytes to 256 MiB",
                self.block_size
            )));
        }
        if self.block_extra != 0 {
            return Err(Error::unsupported(format!(
                "VDI blocks with {} bytes of extra data are not supported",
                self.block_extra
            )));
        }
        if self.blocks_in_image > MAX_BLOCKS {
            return Err(Error::unsupported(format!(
                "VDI of {} blocks has more than qemu's {MAX_BLOCKS}",
                self.blocks_in_image
            )));
        }
        let size = self
            .disk_size
            .checked_next_multiple_of(SECTOR)
            .ok_or_else(|| {
                Error::invalid(format!("VDI disk size {} is impossible", self.disk_size))
            })?;
        vdisk_core::check_disk_size(size)?;
        let room = u64::from(self.blocks_in_image) * block;
        if size > room {
            return Err(Error::corrupt(format!(
                "VDI disk of {size} bytes is larger than its {} blocks of {block} bytes",
                self.blocks_in_image
            )));
        }
        let blocks = size.div_ceil(block);
        let map_end = u64::from(self.offset_bmap) + u64::from(self.blocks_in_image) * 4;
        if map_end > file_len {
            return Err(Error::corrupt(format!(
                "VDI block map of {} entries at offset {:#x} runs past the end of the file ({file_len} \
                 bytes)",
                self.blocks_in_image, self.offset_bmap
            )));
        }
        Ok(VdiHeader {
            raw: *self,
            image_type,
            size,
            block_size: block,
            blocks,
        })
    }

    /// The header's text, up to its first NUL or newline.
    pub fn text(&self) -> String {
        nul_terminated(&self.text).trim_end().to_string()
    }

    /// The description, up to its first NUL.
    pub fn description(&self) -> String {
        nul_terminated(&self.description)
    }
}

fn nul_terminated(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// A validated header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VdiHeader {
    /// The fields as stored.
    pub raw: RawVdiHeader,
    /// Dynamic or static.
    pub image_type: ImageType,
    /// Virtual size in bytes (a whole number of sectors).
    pub size: u64,
    /// Bytes in a block.
    pub block_size: u64,
    /// Blocks covering the disk (block map entries read).
    pub blocks: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdisk_core::ErrorKind;

    #[test]
    fn header_fields_sit_where_virtualbox_puts_them() {
        let mut h = RawVdiHeader::new(5 << 20, DEFAULT_BLOCK_SIZE, 2);
        h.description[..4].copy_from_slice(b"desc");
        h.uuid_image = [0xaa; 16];
        let b = h.to_bytes();
        assert_eq!(&b[..10], b"<<< QEMU V");
        assert_eq!(b[0x44..0x48], [1, 0, 1, 0]); // version 1.1
        assert_eq!(b[0x48..0x4c], 0x180u32.to_le_bytes());
        assert_eq!(b[0x4c..0x50], 2u32.to_le_bytes()); // static
        assert_eq!(&b[0x54..0x58], b"desc");
        assert_eq!(b[0x154..0x158], 0x200u32.to_le_bytes());
        assert_eq!(b[0x158..0x15c], 0x400u32.to_le_bytes());
        assert_eq!(b[0x168..0x16c], 512u32.to_le_bytes());
        assert_eq!(b[0x178..0x17c], (1u32 << 20).to_le_bytes());
        assert_eq!(b[0x180..0x184], 5u32.to_le_bytes());
        assert_eq!(b[0x184..0x188], 5u32.to_le_bytes());
        assert_eq!(b[0x188..0x198], [0xaa; 16]);
        let back = RawVdiHeader::parse(&b).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.text(), "<<< QEMU VM Virtual Disk Image >>>");
        assert_eq!(back.description(), "desc");
    }

    #[test]
    fn validation_follows_qemu() {
        let good = RawVdiHeader::new(3 << 20, DEFAULT_BLOCK_SIZE, 1);
        let v = good.validate(0x400).unwrap();
        assert_eq!(
            (v.size, v.blocks, v.image_type),
            (3 << 20, 3, ImageType::Dynamic)
        );
        let kind = |h: RawVdiHeader| h.validate(1 << 30).unwrap_err().kind();
        let mut h = good;
        h.version = 0x0001_0000;
        assert_eq!(kind(h), ErrorKind::Unsupported);
        for t in [3, 4] {
            h = good;
            h.image_type = t;
            assert_eq!(kind(h), ErrorKind::Unsupported);
        }
        h = good;
        h.image_type = 9;
        assert_eq!(kind(h), ErrorKind::InvalidFormat);
        h = good;
        h.uuid_link[3] = 1;
        assert_eq!(kind(h), ErrorKind::Unsupported);
        h = good;
        h.offset_data = 0x401;
        assert_eq!(kind(h), ErrorKind::Unsupported);
        h = good;
        h.block_size = 3 << 20;
        assert_eq!(kind(h), ErrorKind::Unsupported);
        h = good;
        h.block_extra = 512;
        assert_eq!(kind(h), ErrorKind::Unsupported);
        h = good;
        h.disk_size = (3 << 20) + 1;
        assert_eq!(kind(h), ErrorKind::Corrupt);
        h.blocks_in_image = 4;
        assert_eq!(h.validate(1 << 30).unwrap().size, (3 << 20) + 512);
        h = good;
        h.disk_size = u64::MAX;
        assert!(h.validate(1 << 30).is_err());
        // The block map must lie inside the file.
        assert_eq!(good.validate(0x20b).unwrap_err().kind(), ErrorKind::Corrupt);
        assert!(RawVdiHeader::parse(&[0u8; 512]).is_err());
        assert!(RawVdiHeader::parse(&good.to_bytes()[..511]).is_err());
    }
}
