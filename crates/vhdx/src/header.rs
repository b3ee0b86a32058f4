//! The header section (the first megabyte): the file type identifier, the two headers and the
//! region table. Each structure is read in two steps: the on-disk fields as they are
//! ([`RawHeader`], [`RawRegionTable`]), then a validated value the rest of the crate uses.

use byteorder::{ByteOrder, LittleEndian as LE};
use vdisk_core::{Error, ErrorKind, Result};

use crate::crc32c::checksum_with_field_zeroed;
use crate::guid::Guid;

/// One mebibyte: the alignment of every object in a VHDX file.
pub const MIB: u64 = 1 << 20;
/// Size of each item of the header section (identifier, headers, region tables).
pub const HEADER_BLOCK: u64 = 64 << 10;
/// Where the first header lies.
pub const HEADER1_OFFSET: u64 = HEADER_BLOCK;
/// Where the second header lies.
pub const HEADER2_OFFSET: u64 = 2 * HEADER_BLOCK;
/// Where the first copy of the region table lies.
pub const REGION_TABLE1_OFFSET: u64 = 3 * HEADER_BLOCK;
/// Where the second copy of the region table lies.
pub const REGION_TABLE2_OFFSET: u64 = 4 * HEADER_BLOCK;
/// The header section's size: nothing else may start before it.
pub const HEADER_SECTION: u64 = MIB;
/// Bytes of a header the checksum covers.
pub const HEADER_SIZE: usize = 4096;
/// Bytes of a region table the checksum covers.
pub const REGION_TABLE_SIZE: usize = HEADER_BLOCK as usize;
/// The file type identifier's signature.
pub const FILE_SIGNATURE: &[u8; 8] = b"vhdxfile";
/// Most region table entries the specification allows.
pub const MAX_REGIONS: u32 = 2047;

/// The BAT region's GUID (2DC27766-F623-4200-9D64-115E9BFD4A08).
pub const BAT_GUID: Guid = Guid::from_fields(
    0x2dc2_7766,
    0xf623,
    0x4200,
    [0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08],
);
/// The metadata region's GUID (8B7CA206-4790-4B9A-B8FE-575F050F886E).
pub const METADATA_GUID: Guid = Guid::from_fields(
    0x8b7c_a206,
    0x4790,
    0x4b9a,
    [0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e],
);

/// A header's fields as stored (4 KiB at 64 KiB or 128 KiB), before any check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawHeader {
    /// "head" (offset 0).
    pub signature: [u8; 4],
    /// CRC-32C of the 4 KiB with this field zero (offset 4).
    pub checksum: u32,
    /// The newer valid header is current (offset 8).
    pub sequence_number: u64,
    /// Changed on every open for writing (offset 16).
    pub file_write_guid: Guid,
    /// Changed before the first change of visible data; a child's parent_linkage (offset 32).
    pub data_write_guid: Guid,
    /// Non-zero when the log holds entries to replay (offset 48).
    pub log_guid: Guid,
    /// Must be 0 (offset 64).
    pub log_version: u16,
    /// Must be 1 (offset 66).
    pub version: u16,
    /// Bytes of log, a multiple of 1 MiB (offset 68).
    pub log_length: u32,
    /// Where the log starts, a multiple of 1 MiB (offset 72).
    pub log_offset: u64,
}

impl RawHeader {
    /// The fields of the 4 KiB header in `b` (shorter input reads as zero-padded).
    pub fn parse(b: &[u8]) -> RawHeader {
        let mut buf = [0u8; 80];
        let n = b.len().min(80);
        buf[..n].copy_from_slice(&b[..n]);
        RawHeader {
            signature: [buf[0], buf[1], buf[2], buf[3]],
            checksum: LE::read_u32(&buf[4..]),
            sequence_number: LE::read_u64(&buf[8..]),
            file_write_guid: Guid::from_slice(&buf[16..32]),
            data_write_guid: Guid::from_slice(&buf[32..48]),
            log_guid: Guid::from_slice(&buf[48..64]),
            log_version: LE::read_u16(&buf[64..]),
            version: LE::read_u16(&buf[66..]),
            log_length: LE::read_u32(&buf[68..]),
            log_offset: LE::read_u64(&buf[72..]),
        }
    }

    /// The 4 KiB a header occupies, checksum included (reserved bytes zero).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&self.signature);
        LE::write_u64(&mut b[8..], self.sequence_number);
        b[16..32].copy_from_slice(&self.file_write_guid.0);
        b[32..48].copy_from_slice(&self.data_write_guid.0);
        b[48..64].copy_from_slice(&self.log_guid.0);
        LE::write_u16(&mut b[64..], self.log_version);
        LE::write_u16(&mut b[66..], self.version);
        LE::write_u32(&mut b[68..], self.log_length);
        LE::write_u64(&mut b[72..], self.log_offset);
        let crc = checksum_with_field_zeroed(&b, 4);
        LE::write_u32(&mut b[4..], crc);
        b
    }
}

/// Whether the 4 KiB in `b` is a valid header: signature and checksum (what the specification
/// calls valid; the current one is the valid one with the higher sequence number).
fn header_is_valid(b: &[u8]) -> bool {
    b.len() >= HEADER_SIZE
        && &b[0..4] == b"head"
        && LE::read_u32(&b[4..]) == checksum_with_field_zeroed(&b[..HEADER_SIZE], 4)
}

/// The current header, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Which of the two copies is current (0: at 64 KiB, 1: at 128 KiB).
    pub index: usize,
    /// Whether the other copy is valid too.
    pub other_valid: bool,
    /// The fields.
    pub raw: RawHeader,
}

impl Header {
    /// Pick the current header from the two 4 KiB copies `h1` (at 64 KiB) and `h2` (at
    /// 128 KiB).
    pub fn select(h1: &[u8], h2: &[u8]) -> Result<Header> {
        let v1 = header_is_valid(h1);
        let v2 = header_is_valid(h2);
        let (r1, r2) = (RawHeader::parse(h1), RawHeader::parse(h2));
        let (index, raw) = match (v1, v2) {
            (false, false) => {
                return Err(Error::corrupt(
                    "neither header (at 64 KiB and 128 KiB) has a valid signature and checksum",
                ))
            }
            (true, false) => (0, r1),
            (false, true) => (1, r2),
            (true, true) if r1.sequence_number > r2.sequence_number => (0, r1),
            (true, true) if r2.sequence_number > r1.sequence_number => (1, r2),
            // Equal sequence numbers: no header is current, unless the two are the same
            // header written twice (Disk2VHD does this).
            (true, true) if h1[..80] == h2[..80] => (0, r1),
            (true, true) => {
                return Err(Error::corrupt(format!(
                    "both headers have sequence number {} but differ: neither is current",
                    r1.sequence_number
                )))
            }
        };
        if raw.version != 1 {
            return Err(Error::unsupported(format!(
                "header version {} (only version 1 is defined)",
                raw.version
            ))
            .at(HEADER_BLOCK * (index as u64 + 1) + 66));
        }
        if !raw.log_guid.is_zero() && raw.log_version != 0 {
            return Err(Error::unsupported(format!(
                "log version {} with a log to replay (only version 0 is defined)",
                raw.log_version
            ))
            .at(HEADER_BLOCK * (index as u64 + 1) + 64));
        }
        Ok(Header {
            index,
            other_valid: v1 && v2,
            raw,
        })
    }

    /// Whether the log must be replayed before anything else is read.
    pub fn log_present(&self) -> bool {
        !self.raw.log_guid.is_zero() && self.raw.log_length != 0
    }
}

/// One region table entry as stored (32 bytes at 16 + 32 × i).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRegionEntry {
    /// What the region is (offset 0).
    pub guid: Guid,
    /// Where it starts in the file (offset 16).
    pub file_offset: u64,
    /// Its length in bytes (offset 24).
    pub length: u32,
    /// Bit 0: an implementation that does not know the region must refuse the file
    /// (offset 28).
    pub required: u32,
}

/// A region table's fields as stored (64 KiB at 192 KiB and 256 KiB), before any check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRegionTable {
    /// "regi" (offset 0).
    pub signature: [u8; 4],
    /// CRC-32C of the 64 KiB with this field zero (offset 4).
    pub checksum: u32,
    /// Number of entries (offset 8), at most 2047.
    pub entry_count: u32,
    /// Whether the checksum matches.
    pub checksum_ok: bool,
    /// The entries (at most 2047 are read, whatever the count says).
    pub entries: Vec<RawRegionEntry>,
}

impl RawRegionTable {
    /// The fields of the 64 KiB region table in `b`.
    pub fn parse(b: &[u8]) -> RawRegionTable {
        let mut head = [0u8; 16];
        let n = b.len().min(16);
        head[..n].copy_from_slice(&b[..n]);
        let entry_count = LE::read_u32(&head[8..]);
        let checksum = LE::read_u32(&head[4..]);
        let checksum_ok = b.len() >= REGION_TABLE_SIZE
            && checksum == checksum_with_field_zeroed(&b[..REGION_TABLE_SIZE], 4);
        let mut entries = Vec::new();
        for i in 0..entry_count.min(MAX_REGIONS) as usize {
            let at = 16 + 32 * i;
            let Some(e) = b.get(at..at + 32) else { break };
            entries.push(RawRegionEntry {
                guid: Guid::from_slice(&e[0..16]),
                file_offset: LE::read_u64(&e[16..]),
                length: LE::read_u32(&e[24..]),
                required: LE::read_u32(&e[28..]),
            });
        }
        RawRegionTable {
            signature: [head[0], head[1], head[2], head[3]],
            checksum,
            entry_count,
            checksum_ok,
            entries,
        }
    }

    /// The 64 KiB a region table with `entries` occupies, checksum included.
    pub fn build(entries: &[RawRegionEntry]) -> Vec<u8> {
        let mut b = vec![0u8; REGION_TABLE_SIZE];
        b[0..4].copy_from_slice(b"regi");
        LE::write_u32(&mut b[8..], entries.len() as u32);
        for (i, e) in entries.iter().enumerate() {
            let at = 16 + 32 * i;
            b[at..at + 16].copy_from_slice(&e.guid.0);
            LE::write_u64(&mut b[at + 16..], e.file_offset);
            LE::write_u32(&mut b[at + 24..], e.length);
            LE::write_u32(&mut b[at + 28..], e.required);
        }
        let crc = checksum_with_field_zeroed(&b, 4);
        LE::write_u32(&mut b[4..], crc);
        b
    }

    /// Why this table cannot be used, if it cannot.
    fn problem(&self) -> Option<String> {
        if &self.signature != b"regi" {
            return Some("has no \"regi\" signature".into());
        }
        if !self.checksum_ok {
            return Some("has a bad checksum".into());
        }
        if self.entry_count > MAX_REGIONS {
            return Some(format!(
                "claims {} entries (at most {MAX_REGIONS})",
                self.entry_count
            ));
        }
        None
    }
}

/// A byte range of the file holding one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

impl Region {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }

    /// Whether the two ranges share a byte.
    pub fn overlaps(&self, other: &Region) -> bool {
        self.offset < other.end() && other.offset < self.end()
    }
}

/// The region table, validated: where the BAT and the metadata region are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionTable {
    /// Which copy was used (0: at 192 KiB, 1: at 256 KiB).
    pub copy: usize,
    /// Why the other copy is unusable, if it is.
    pub other_problem: Option<String>,
    /// The block allocation table.
    pub bat: Region,
    /// The metadata region.
    pub metadata: Region,
    /// Regions this implementation does not know (not marked required).
    pub unknown: Vec<(Guid, Region)>,
}

impl RegionTable {
    /// Validate the two copies `t1` and `t2` (64 KiB each) and take the first usable one.
    /// `file_len` bounds where regions may lie; `log` is the log's range, which no region
    /// may overlap.
    pub fn parse(t1: &[u8], t2: &[u8], file_len: u64, log: Option<Region>) -> Result<RegionTable> {
        let raws = [RawRegionTable::parse(t1), RawRegionTable::parse(t2)];
        let problems = [raws[0].problem(), raws[1].problem()];
        let copy = match (&problems[0], &problems[1]) {
            (None, _) => 0,
            (Some(_), None) => 1,
            (Some(p), Some(_)) => {
                return Err(Error::corrupt(format!("region table {p}")).at(REGION_TABLE1_OFFSET))
            }
        };
        let at = if copy == 0 {
            REGION_TABLE1_OFFSET
        } else {
            REGION_TABLE2_OFFSET
        };
        let raw = &raws[copy];
        let mut bat = None;
        let mut metadata = None;
        let mut unknown = Vec::new();
        let mut seen: Vec<Region> = log.into_iter().collect();
        for (i, e) in raw.entries.iter().enumerate() {
            let entry_at = at + 16 + 32 * i as u64;
            let r = Region {
                offset: e.file_offset,
                length: u64::from(e.length),
            };
            let name = if e.guid == BAT_GUID {
                "BAT".to_string()
            } else if e.guid == METADATA_GUID {
                "metadata".to_string()
            } else {
                format!("{{{}}}", e.guid)
            };
            if r.offset < HEADER_SECTION {
                return Err(Error::corrupt(format!(
                    "{name} region starts at {} inside the header section",
                    r.offset
                ))
                .at(entry_at));
            }
            match r.offset.checked_add(r.length) {
                Some(end) if end <= file_len.max(HEADER_SECTION) => {}
                _ => {
                    return Err(Error::corrupt(format!(
                        "{name} region ({} bytes at {}) runs past the end of the file ({file_len} bytes)",
                        r.length, r.offset
                    ))
                    .at(entry_at))
                }
            }
            if let Some(o) = seen.iter().find(|o| o.overlaps(&r)) {
                return Err(Error::corrupt(format!(
                    "{name} region ({} bytes at {}) overlaps another region or the log ({} bytes at {})",
                    r.length, r.offset, o.length, o.offset
                ))
                .at(entry_at));
            }
            seen.push(r);
            let slot = if e.guid == BAT_GUID {
                &mut bat
            } else if e.guid == METADATA_GUID {
                &mut metadata
            } else {
                if e.required & 1 != 0 {
                    return Err(Error::unsupported(format!(
                        "region {name} is marked required but vdisk does not know it"
                    ))
                    .at(entry_at));
                }
                unknown.push((e.guid, r));
                continue;
            };
            if slot.replace(r).is_some() {
                return Err(Error::corrupt(format!(
                    "the region table lists the {name} region twice"
                ))
                .at(entry_at));
            }
        }
        let bat = bat.ok_or_else(|| Error::corrupt("the region table has no BAT region").at(at))?;
        let metadata = metadata
            .ok_or_else(|| Error::corrupt("the region table has no metadata region").at(at))?;
        Ok(RegionTable {
            copy,
            other_problem: problems[1 - copy].clone(),
            bat,
            metadata,
            unknown,
        })
    }
}

/// Check the file type identifier at the start of `head`.
pub fn check_identifier(head: &[u8]) -> Result<()> {
    if head.len() < 8 || &head[..8] != FILE_SIGNATURE {
        return Err(Error::new(
            ErrorKind::InvalidFormat,
            "not a VHDX file (no \"vhdxfile\" signature)",
        ));
    }
    Ok(())
}

/// The creator string of the file type identifier (UTF-16, up to 512 bytes, NUL-terminated).
pub fn creator(head: &[u8]) -> String {
    let bytes = head.get(8..520).unwrap_or(&[]);
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(seq: u64) -> RawHeader {
        RawHeader {
            signature: *b"head",
            checksum: 0,
            sequence_number: seq,
            file_write_guid: Guid([1; 16]),
            data_write_guid: Guid([2; 16]),
            log_guid: Guid::ZERO,
            log_version: 0,
            version: 1,
            log_length: MIB as u32,
            log_offset: MIB,
        }
    }

    #[test]
    fn header_fields_byte_by_byte() {
        let b = header(0x0102_0304_0506_0708).to_bytes();
        assert_eq!(b.len(), 4096);
        assert_eq!(&b[0..4], b"head");
        assert_eq!(&b[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[16..32], &[1; 16]);
        assert_eq!(&b[32..48], &[2; 16]);
        assert_eq!(&b[48..64], &[0; 16]);
        assert_eq!(&b[64..66], &[0, 0]); // log version
        assert_eq!(&b[66..68], &[1, 0]); // version
        assert_eq!(&b[68..72], &[0, 0, 0x10, 0]); // log length 1 MiB
        assert_eq!(&b[72..80], &[0, 0, 0x10, 0, 0, 0, 0, 0]); // log offset 1 MiB
        assert!(b[80..].iter().all(|&x| x == 0));
        assert!(header_is_valid(&b));
        let parsed = RawHeader::parse(&b);
        assert_eq!(parsed.sequence_number, 0x0102_0304_0506_0708);
        assert_eq!(parsed.to_bytes(), b);
    }

    #[test]
    fn the_valid_header_with_the_higher_sequence_wins() {
        let h1 = header(5).to_bytes();
        let h2 = header(6).to_bytes();
        assert_eq!(Header::select(&h1, &h2).unwrap().index, 1);
        assert_eq!(Header::select(&h2, &h1).unwrap().index, 0);
        let mut bad = h2.clone();
        bad[100] ^= 1; // reserved byte: the checksum covers it
        let h = Header::select(&h1, &bad).unwrap();
        assert_eq!((h.index, h.other_valid), (0, false));
        assert!(Header::select(&bad, &bad).is_err());
        // Same sequence, same bytes: accepted; same sequence, different: refused.
        assert_eq!(Header::select(&h1, &h1).unwrap().index, 0);
        let mut other = header(5);
        other.data_write_guid = Guid([9; 16]);
        assert!(Header::select(&h1, &other.to_bytes()).is_err());
        let mut v2 = header(7);
        v2.version = 2;
        assert_eq!(
            Header::select(&v2.to_bytes(), &h1).unwrap_err().kind(),
            ErrorKind::Unsupported
        );
    }

    #[test]
    fn region_table_round_trip_and_checks() {
        let bat = RawRegionEntry {
            guid: BAT_GUID,
            file_offset: 2 * MIB,
            length: MIB as u32,
            required: 1,
        };
        let meta = RawRegionEntry {
            guid: METADATA_GUID,
            file_offset: 3 * MIB,
            length: MIB as u32,
            required: 1,
        };
        let t = RawRegionTable::build(&[bat, meta]);
        assert_eq!(&t[0..4], b"regi");
        assert_eq!(&t[8..12], &[2, 0, 0, 0]);
        assert_eq!(&t[16..32], &BAT_GUID.0);
        assert_eq!(&t[32..40], &[0, 0, 0x20, 0, 0, 0, 0, 0]);
        let log = Some(Region {
            offset: MIB,
            length: MIB,
        });
        let rt = RegionTable::parse(&t, &t, 4 * MIB, log).unwrap();
        assert_eq!(rt.bat.offset, 2 * MIB);
        assert_eq!(rt.metadata.offset, 3 * MIB);
        // Past the end of the file.
        assert!(RegionTable::parse(&t, &t, 3 * MIB, log).is_err());
        // Overlapping the log.
        let clash = RawRegionTable::build(&[
            RawRegionEntry {
                file_offset: MIB,
                ..bat
            },
            meta,
        ]);
        assert!(RegionTable::parse(&clash, &clash, 4 * MIB, log).is_err());
        // An unknown required region is refused by name.
        let odd = RawRegionEntry {
            guid: Guid([7; 16]),
            file_offset: 10 * MIB,
            length: MIB as u32,
            required: 1,
        };
        let t3 = RawRegionTable::build(&[bat, meta, odd]);
        let e = RegionTable::parse(&t3, &t3, 16 * MIB, log).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.message().contains("07070707-0707"), "{e}");
        // A damaged first copy falls back to the second.
        let mut bad = t.clone();
        bad[40] ^= 1;
        let rt = RegionTable::parse(&bad, &t, 4 * MIB, log).unwrap();
        assert_eq!(rt.copy, 1);
        assert!(rt.other_problem.is_some());
    }
}
