//! The metadata region: a 64 KiB table of items (file parameters, virtual disk size, sector
//! sizes, the disk's identity, and for a differencing disk the parent locator), and the
//! geometry derived from them.

use byteorder::{ByteOrder, LittleEndian as LE};
use vdisk_core::{Error, Result};

use crate::guid::Guid;
use crate::header::{Region, MIB};

/// File parameters: block size and flags.
pub const FILE_PARAMETERS_GUID: Guid = Guid::from_fields(
    0xcaa1_6737,
    0xfa36,
    0x4d43,
    [0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b],
);
/// Virtual disk size.
pub const VIRTUAL_DISK_SIZE_GUID: Guid = Guid::from_fields(
    0x2fa5_4224,
    0xcd1b,
    0x4876,
    [0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8],
);
/// Virtual disk ID (SCSI page 83 data).
pub const VIRTUAL_DISK_ID_GUID: Guid = Guid::from_fields(
    0xbeca_12ab,
    0xb2e6,
    0x4523,
    [0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46],
);
/// Logical sector size.
pub const LOGICAL_SECTOR_SIZE_GUID: Guid = Guid::from_fields(
    0x8141_bf1d,
    0xa96f,
    0x4709,
    [0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f],
);
/// Physical sector size.
pub const PHYSICAL_SECTOR_SIZE_GUID: Guid = Guid::from_fields(
    0xcda3_48c7,
    0x445d,
    0x4471,
    [0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56],
);
/// Parent locator (differencing disks).
pub const PARENT_LOCATOR_GUID: Guid = Guid::from_fields(
    0xa8d3_5f2d,
    0xb30b,
    0x454d,
    [0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c],
);
/// The locator type of a VHDX parent.
pub const VHDX_LOCATOR_TYPE: Guid = Guid::from_fields(
    0xb04a_efb7,
    0xd19e,
    0x4a81,
    [0xb7, 0x89, 0x25, 0xb8, 0xe9, 0x44, 0x59, 0x13],
);

/// Bytes of the metadata table at the start of the region.
pub const METADATA_TABLE_SIZE: u64 = 64 << 10;
/// Most entries the table may hold.
pub const MAX_METADATA_ENTRIES: u16 = 2047;
/// Largest metadata item.
pub const MAX_ITEM_SIZE: u32 = 1 << 20;
/// Smallest and largest payload block sizes.
pub const MIN_BLOCK_SIZE: u64 = MIB;
/// Largest payload block size.
pub const MAX_BLOCK_SIZE: u64 = 256 * MIB;
/// Sectors one sector bitmap block describes (2^23: one bit each in 1 MiB).
pub const SECTORS_PER_BITMAP: u64 = 1 << 23;

/// Entry flag: user metadata.
const IS_USER: u32 = 1;
/// Entry flag: virtual disk metadata (copied to children).
const IS_VIRTUAL_DISK: u32 = 2;
/// Entry flag: must be understood to open the file.
const IS_REQUIRED: u32 = 4;

/// File parameters flag: a fixed disk, every block allocated.
pub const LEAVE_BLOCKS_ALLOCATED: u32 = 1;
/// File parameters flag: a differencing disk.
pub const HAS_PARENT: u32 = 2;

/// One metadata table entry as stored (32 bytes at 32 + 32 × i).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawMetadataEntry {
    /// What the item is (offset 0).
    pub item_id: Guid,
    /// Where the item starts, from the start of the region (offset 16).
    pub offset: u32,
    /// Its length (offset 20).
    pub length: u32,
    /// IsUser, IsVirtualDisk, IsRequired in bits 0-2 (offset 24).
    pub flags: u32,
}

/// The parent locator of a differencing disk: its type and key/value pairs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParentLocator {
    /// The locator type (B04AEFB7-D19E-4A81-B789-25B8E9445913 for a VHDX parent).
    pub locator_type: Guid,
    /// Keys and values in the order stored.
    pub entries: Vec<(String, String)>,
}

impl ParentLocator {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Parse the locator item `b`.
    pub fn parse(b: &[u8]) -> Result<ParentLocator> {
        if b.len() < 20 {
            return Err(Error::corrupt(format!(
                "parent locator is {} bytes (its header alone is 20)",
                b.len()
            )));
        }
        let locator_type = Guid::from_slice(&b[0..16]);
        let count = LE::read_u16(&b[18..]) as usize;
        if 20 + 12 * count > b.len() {
            return Err(Error::corrupt(format!(
                "parent locator claims {count} entries but holds {} bytes",
                b.len()
            )));
        }
        let string = |off: u32, len: u16, what: &str| -> Result<String> {
            let (off, len) = (off as usize, len as usize);
            if off == 0 || len == 0 || len % 2 != 0 || off + len > b.len() {
                return Err(Error::corrupt(format!(
                    "parent locator {what} ({len} bytes at {off}) lies outside the item or is not UTF-16"
                )));
            }
            let units: Vec<u16> = b[off..off + len]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units)
                .map_err(|_| Error::corrupt(format!("parent locator {what} is not valid UTF-16")))
        };
        let mut entries: Vec<(String, String)> = Vec::with_capacity(count);
        for i in 0..count {
            let e = &b[20 + 12 * i..32 + 12 * i];
            let key = string(LE::read_u32(&e[0..]), LE::read_u16(&e[8..]), "key")?;
            let value = string(LE::read_u32(&e[4..]), LE::read_u16(&e[10..]), "value")?;
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(Error::corrupt(format!(
                    "parent locator has the key \"{key}\" twice"
                )));
            }
            entries.push((key, value));
        }
        Ok(ParentLocator {
            locator_type,
            entries,
        })
    }

    /// The item's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let count = self.entries.len();
        let mut b = vec![0u8; 20 + 12 * count];
        b[0..16].copy_from_slice(&self.locator_type.0);
        LE::write_u16(&mut b[18..], count as u16);
        let mut strings: Vec<u8> = Vec::new();
        let table_end = b.len();
        let push = |s: &str, strings: &mut Vec<u8>| -> (u32, u16) {
            let off = (table_end + strings.len()) as u32;
            for u in s.encode_utf16() {
                strings.extend_from_slice(&u.to_le_bytes());
            }
            (off, ((table_end + strings.len()) as u32 - off) as u16)
        };
        for (i, (k, v)) in self.entries.iter().enumerate() {
            let (ko, kl) = push(k, &mut strings);
            let (vo, vl) = push(v, &mut strings);
            let e = &mut b[20 + 12 * i..32 + 12 * i];
            LE::write_u32(&mut e[0..], ko);
            LE::write_u32(&mut e[4..], vo);
            LE::write_u16(&mut e[8..], kl);
            LE::write_u16(&mut e[10..], vl);
        }
        b.extend_from_slice(&strings);
        b
    }

    /// The parent file names, most preferred first, turned from Windows paths into plain
    /// names: `relative_path`, then `volume_path`, then `absolute_win32_path`; backslashes
    /// become `/`, the `\\?\` prefix, drive letters and volume GUIDs are dropped (what is left
    /// of an absolute path stays absolute, for the registry to confine).
    pub fn parent_names(&self) -> Vec<String> {
        ["relative_path", "volume_path", "absolute_win32_path"]
            .iter()
            .filter_map(|k| self.get(k))
            .map(plain_name)
            .filter(|n| !n.is_empty())
            .fold(Vec::new(), |mut v, n| {
                if !v.contains(&n) {
                    v.push(n);
                }
                v
            })
    }
}

/// A Windows path from a parent locator as a plain name (see [`ParentLocator::parent_names`]).
pub fn plain_name(path: &str) -> String {
    let mut p = path.replace('\\', "/");
    let mut absolute = false;
    for prefix in ["//?/UNC/", "//?/", "//./"] {
        if let Some(rest) = p.strip_prefix(prefix) {
            p = rest.to_string();
            absolute = true;
            break;
        }
    }
    // "Volume{GUID}/..." and "d:/..." name a volume: keep the path on it, absolute.
    if p.starts_with("Volume{") {
        if let Some(i) = p.find('}') {
            p = p[i + 1..].to_string();
            absolute = true;
        }
    }
    let b = p.as_bytes();
    if b.len() >= 2 && b[1] == b':' && b[0].is_ascii_alphabetic() {
        p = p[2..].to_string();
        absolute = true;
    }
    if absolute && !p.starts_with('/') {
        p.insert(0, '/');
    }
    p
}

/// The metadata items, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Bytes of each payload block.
    pub block_size: u64,
    /// A fixed disk (every block allocated).
    pub leave_blocks_allocated: bool,
    /// A differencing disk.
    pub has_parent: bool,
    /// The virtual disk's size in bytes.
    pub virtual_size: u64,
    /// Logical sector size (512 or 4096).
    pub logical_sector_size: u32,
    /// Physical sector size (512 or 4096).
    pub physical_sector_size: u32,
    /// The disk's identity (SCSI page 83).
    pub disk_id: Guid,
    /// For a differencing disk, where the parent is.
    pub parent: Option<ParentLocator>,
    /// The parent's DataWriteGuid the locator records (differencing disks).
    pub parent_linkage: Option<Guid>,
    /// Entries of the table (for `check` and `info`).
    pub entries: Vec<RawMetadataEntry>,
}

impl Metadata {
    /// Parse the metadata region `region` (its bytes `b`, at most the region's length).
    pub fn parse(b: &[u8], region: Region) -> Result<Metadata> {
        let at = |o: u64| region.offset + o;
        if (b.len() as u64) < METADATA_TABLE_SIZE || region.length < METADATA_TABLE_SIZE {
            return Err(Error::corrupt(format!(
                "metadata region is {} bytes (its table alone is 64 KiB)",
                region.length
            ))
            .at(region.offset));
        }
        if &b[0..8] != b"metadata" {
            return Err(
                Error::corrupt("metadata table has no \"metadata\" signature").at(region.offset),
            );
        }
        let count = LE::read_u16(&b[10..]);
        if count > MAX_METADATA_ENTRIES {
            return Err(Error::corrupt(format!(
                "metadata table claims {count} entries (at most {MAX_METADATA_ENTRIES})"
            ))
            .at(at(10)));
        }
        let mut entries = Vec::with_capacity(count as usize);
        let mut items: [Option<&[u8]>; 6] = [None; 6];
        let known = [
            FILE_PARAMETERS_GUID,
            VIRTUAL_DISK_SIZE_GUID,
            VIRTUAL_DISK_ID_GUID,
            LOGICAL_SECTOR_SIZE_GUID,
            PHYSICAL_SECTOR_SIZE_GUID,
            PARENT_LOCATOR_GUID,
        ];
        let names = [
            "file parameters",
            "virtual disk size",
            "virtual disk ID",
            "logical sector size",
            "physical sector size",
            "parent locator",
        ];
        for i in 0..count as usize {
            let e = &b[32 + 32 * i..64 + 32 * i];
            let entry = RawMetadataEntry {
                item_id: Guid::from_slice(&e[0..16]),
                offset: LE::read_u32(&e[16..]),
                length: LE::read_u32(&e[20..]),
                flags: LE::read_u32(&e[24..]),
            };
            let entry_at = at(32 + 32 * i as u64);
            entries.push(entry);
            let (off, len) = (u64::from(entry.offset), u64::from(entry.length));
            if len > 0
                && (off < METADATA_TABLE_SIZE
                    || len > u64::from(MAX_ITEM_SIZE)
                    || off + len > region.length
                    || off + len > b.len() as u64)
            {
                return Err(Error::corrupt(format!(
                    "metadata item {{{}}} ({len} bytes at {off}) lies outside the metadata region",
                    entry.item_id
                ))
                .at(entry_at));
            }
            // An empty item is present but holds nothing, wherever its offset points.
            let bytes = if len == 0 {
                &b[..0]
            } else {
                &b[off as usize..(off + len) as usize]
            };
            let slot = if entry.flags & IS_USER != 0 {
                None
            } else {
                known.iter().position(|g| *g == entry.item_id)
            };
            match slot {
                Some(k) if items[k].replace(bytes).is_some() => {
                    return Err(Error::corrupt(format!(
                        "metadata table lists the {} item twice",
                        names[k]
                    ))
                    .at(entry_at));
                }
                Some(_) => {}
                None if entry.flags & IS_REQUIRED != 0 => {
                    return Err(Error::unsupported(format!(
                        "metadata item {{{}}} is marked required but vdisk does not know it",
                        entry.item_id
                    ))
                    .at(entry_at))
                }
                None => {}
            }
        }
        let item =
            |k: usize, min: usize| -> Result<&[u8]> {
                match items[k] {
                    Some(b) if b.len() >= min => Ok(b),
                    Some(b) => Err(Error::corrupt(format!(
                        "metadata item {} is {} bytes (needs {min})",
                        names[k],
                        b.len()
                    ))
                    .at(region.offset)),
                    None => Err(Error::corrupt(format!("metadata has no {} item", names[k]))
                        .at(region.offset)),
                }
            };
        let params = item(0, 8)?;
        let block_size = u64::from(LE::read_u32(params));
        let flags = LE::read_u32(&params[4..]);
        let virtual_size = LE::read_u64(item(1, 8)?);
        let disk_id = Guid::from_slice(item(2, 16)?);
        let logical_sector_size = LE::read_u32(item(3, 4)?);
        let physical_sector_size = LE::read_u32(item(4, 4)?);
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) || !block_size.is_power_of_two()
        {
            return Err(Error::corrupt(format!(
                "block size {block_size} is not a power of two from 1 MiB to 256 MiB"
            ))
            .at(region.offset));
        }
        for (what, v) in [
            ("logical", logical_sector_size),
            ("physical", physical_sector_size),
        ] {
            if v != 512 && v != 4096 {
                return Err(Error::corrupt(format!(
                    "{what} sector size {v} (only 512 and 4096 are defined)"
                ))
                .at(region.offset));
            }
        }
        if virtual_size % u64::from(logical_sector_size) != 0 {
            return Err(Error::corrupt(format!(
                "virtual disk size {virtual_size} is not a multiple of the {logical_sector_size}-byte sector"
            ))
            .at(region.offset));
        }
        vdisk_core::check_disk_size(virtual_size)?;
        let has_parent = flags & HAS_PARENT != 0;
        let (parent, parent_linkage) = if has_parent {
            let loc = ParentLocator::parse(item(5, 20)?).map_err(|e| e.at(region.offset))?;
            if loc.locator_type != VHDX_LOCATOR_TYPE {
                return Err(Error::unsupported(format!(
                    "parent locator of type {{{}}} (only VHDX parents are defined)",
                    loc.locator_type
                ))
                .at(region.offset));
            }
            let linkage = loc.get("parent_linkage").ok_or_else(|| {
                Error::corrupt("parent locator has no parent_linkage").at(region.offset)
            })?;
            let linkage = Guid::parse(linkage).ok_or_else(|| {
                Error::corrupt(format!(
                    "parent locator's parent_linkage \"{linkage}\" is not a GUID"
                ))
                .at(region.offset)
            })?;
            if loc.parent_names().is_empty() {
                return Err(Error::corrupt(
                    "parent locator names no parent file (no relative_path, volume_path or absolute_win32_path)",
                )
                .at(region.offset));
            }
            (Some(loc), Some(linkage))
        } else {
            (None, None)
        };
        Ok(Metadata {
            block_size,
            leave_blocks_allocated: flags & LEAVE_BLOCKS_ALLOCATED != 0,
            has_parent,
            virtual_size,
            logical_sector_size,
            physical_sector_size,
            disk_id,
            parent,
            parent_linkage,
            entries,
        })
    }

    /// The metadata region's used bytes (table, then the items from 64 KiB) for a new file.
    pub fn build(&self) -> Vec<u8> {
        let mut items: Vec<(Guid, u32, Vec<u8>)> = Vec::new();
        let mut params = vec![0u8; 8];
        LE::write_u32(&mut params, self.block_size as u32);
        let mut flags = 0;
        if self.leave_blocks_allocated {
            flags |= LEAVE_BLOCKS_ALLOCATED;
        }
        if self.has_parent {
            flags |= HAS_PARENT;
        }
        LE::write_u32(&mut params[4..], flags);
        items.push((FILE_PARAMETERS_GUID, IS_REQUIRED, params));
        items.push((
            VIRTUAL_DISK_SIZE_GUID,
            IS_REQUIRED | IS_VIRTUAL_DISK,
            self.virtual_size.to_le_bytes().to_vec(),
        ));
        items.push((
            VIRTUAL_DISK_ID_GUID,
            IS_REQUIRED | IS_VIRTUAL_DISK,
            self.disk_id.0.to_vec(),
        ));
        items.push((
            LOGICAL_SECTOR_SIZE_GUID,
            IS_REQUIRED | IS_VIRTUAL_DISK,
            self.logical_sector_size.to_le_bytes().to_vec(),
        ));
        items.push((
            PHYSICAL_SECTOR_SIZE_GUID,
            IS_REQUIRED | IS_VIRTUAL_DISK,
            self.physical_sector_size.to_le_bytes().to_vec(),
        ));
        if let Some(p) = &self.parent {
            items.push((PARENT_LOCATOR_GUID, IS_REQUIRED, p.to_bytes()));
        }
        let mut b = vec![0u8; METADATA_TABLE_SIZE as usize];
        b[0..8].copy_from_slice(b"metadata");
        LE::write_u16(&mut b[10..], items.len() as u16);
        for (i, (guid, flags, data)) in items.iter().enumerate() {
            let off = b.len() as u32;
            let e = &mut b[32 + 32 * i..64 + 32 * i];
            e[0..16].copy_from_slice(&guid.0);
            LE::write_u32(&mut e[16..], off);
            LE::write_u32(&mut e[20..], data.len() as u32);
            LE::write_u32(&mut e[24..], *flags);
            b.extend_from_slice(data);
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(parent: Option<ParentLocator>) -> Metadata {
        Metadata {
            block_size: 32 * MIB,
            leave_blocks_allocated: false,
            has_parent: parent.is_some(),
            virtual_size: 10 << 30,
            logical_sector_size: 512,
            physical_sector_size: 4096,
            disk_id: Guid([5; 16]),
            parent_linkage: None,
            parent,
            entries: Vec::new(),
        }
    }

    fn region(len: u64) -> Region {
        Region {
            offset: 3 * MIB,
            length: len,
        }
    }

    #[test]
    fn table_fields_byte_by_byte() {
        let b = sample(None).build();
        assert_eq!(&b[0..8], b"metadata");
        assert_eq!(&b[10..12], &[5, 0]); // entry count
                                         // First entry: file parameters at 64 KiB, 8 bytes, IsRequired.
        assert_eq!(&b[32..48], &FILE_PARAMETERS_GUID.0);
        assert_eq!(&b[48..52], &[0, 0, 1, 0]);
        assert_eq!(&b[52..56], &[8, 0, 0, 0]);
        assert_eq!(&b[56..60], &[4, 0, 0, 0]);
        // Its item: 32 MiB blocks, no flags.
        assert_eq!(&b[65536..65544], &[0, 0, 0, 2, 0, 0, 0, 0]);
        // Virtual size, 10 GiB.
        assert_eq!(&b[65544..65552], &(10u64 << 30).to_le_bytes());
    }

    #[test]
    fn round_trip_with_a_parent_locator() {
        let linkage = Guid::random();
        let loc = ParentLocator {
            locator_type: VHDX_LOCATOR_TYPE,
            entries: vec![
                ("parent_linkage".into(), linkage.braced()),
                ("relative_path".into(), "..\\base\\parent.vhdx".into()),
                (
                    "absolute_win32_path".into(),
                    "\\\\?\\d:\\vms\\parent.vhdx".into(),
                ),
            ],
        };
        let mut m = sample(Some(loc.clone()));
        let mut b = m.build();
        b.resize(MIB as usize, 0);
        let parsed = Metadata::parse(&b, region(MIB)).unwrap();
        m.parent_linkage = Some(linkage);
        m.entries = parsed.entries.clone();
        assert_eq!(parsed, m);
        assert_eq!(
            loc.parent_names(),
            ["../base/parent.vhdx", "/vms/parent.vhdx"]
        );
    }

    #[test]
    fn plain_names_from_windows_paths() {
        assert_eq!(plain_name("parent.vhdx"), "parent.vhdx");
        assert_eq!(plain_name("..\\a\\b.vhdx"), "../a/b.vhdx");
        assert_eq!(plain_name("\\\\?\\C:\\x\\y.vhdx"), "/x/y.vhdx");
        assert_eq!(
            plain_name("\\\\?\\Volume{26A21BDA-A627-11D7-9931-806E6F6E6963}\\p\\q.vhdx"),
            "/p/q.vhdx"
        );
        assert_eq!(
            plain_name("\\\\?\\UNC\\srv\\share\\q.vhdx"),
            "/srv/share/q.vhdx"
        );
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        let mut m = sample(None);
        m.block_size = 3 * MIB;
        let mut b = m.build();
        b.resize(MIB as usize, 0);
        let e = Metadata::parse(&b, region(MIB)).unwrap_err();
        assert!(e.message().contains("block size"), "{e}");
        let mut m = sample(None);
        m.logical_sector_size = 1024;
        let mut b = m.build();
        b.resize(MIB as usize, 0);
        assert!(Metadata::parse(&b, region(MIB))
            .unwrap_err()
            .message()
            .contains("logical sector size"));
        // An item past the region's end.
        let mut b = sample(None).build();
        b.resize(MIB as usize, 0);
        b[52..56].copy_from_slice(&(MIB as u32).to_le_bytes());
        assert!(Metadata::parse(&b, region(MIB)).is_err());
        // Differencing without a locator.
        let mut m = sample(None);
        m.has_parent = true;
        let mut b = m.build();
        b.resize(MIB as usize, 0);
        assert!(Metadata::parse(&b, region(MIB))
            .unwrap_err()
            .message()
            .contains("parent locator"));
    }
}
