//! Points: `points/TAG-NNNNNNNNNN`, one object per point, created once (the commit of a
//! backup is that conditional create) and removed only by prune.
//!
//! TAG is 16 hex digits naming the point's NAME (keyed: it says nothing of the name without
//! the key) and N the point's number in its NAME, counted from 1. Two backups of one NAME can
//! never both commit the same number: the second create fails. The object is sealed with its
//! own key as associated data, and holds its name and number again: an object copied or
//! replayed under another name does not open, and one that opens is checked against its key.
//! Every number in it is bounded before use.

use serde::{Deserialize, Serialize};
use vdisk_core::{Error, Result, MAX_DISK_SIZE};

use crate::crypto::{BlockId, Keys, Kind};

/// The highest point number (10 digits in the key; a NAME backed up every minute for 1,900
/// years).
pub const MAX_SEQ: u64 = 999_999_999;
/// Most disks in one point.
pub const MAX_DISKS: usize = 64;
/// Largest point object.
pub const MAX_POINT: u64 = 1 << 20;
/// Longest NAME.
pub const MAX_NAME: usize = 128;

/// One disk of a point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskRecord {
    /// What the disk is called in the point: its source's file name (`--disk` picks it).
    pub label: String,
    /// What identifies the source across backups (its canonical path).
    pub source: String,
    /// The disk's size in bytes.
    pub size: u64,
    /// The root of the disk's index (64 hex digits; zeros: the disk is all zero).
    pub root: String,
    /// Bytes of blocks that are not all zero.
    pub data_bytes: u64,
}

impl DiskRecord {
    /// The root's id.
    pub fn root_id(&self) -> BlockId {
        BlockId::parse_hex(&self.root).unwrap_or_default()
    }
}

/// What a backup did, kept with its point.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointStats {
    /// Bytes read from the sources.
    pub bytes_read: u64,
    /// Bytes of new objects the point added to the repository (blobs as stored).
    pub added_bytes: u64,
    /// Blobs it added.
    pub added_blobs: u64,
}

/// A point as stored (inside its seal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointRecord {
    /// Always `vdisk-point`.
    pub format: String,
    /// 3.
    pub version: u32,
    /// The NAME.
    pub name: String,
    /// Its number in the NAME.
    pub seq: u64,
    /// When the backup started, UTC, RFC 3339.
    pub time: String,
    /// The same, seconds since 1970.
    pub unix: u64,
    /// The point of the NAME it was made against (an incremental), if any.
    pub parent: Option<u64>,
    /// The repository's block size.
    pub block_size: u64,
    /// The host that made it.
    pub host: String,
    /// The disks, in the order they were given.
    pub disks: Vec<DiskRecord>,
    /// What the backup did.
    pub stats: PointStats,
}

/// Whether `name` may be a NAME: 1 to 128 characters, no control characters, no `/`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.chars().any(|c| c.is_control() || c == '/')
        && name.trim() == name
}

/// The object key of point `seq` of the NAME whose tag is `tag`.
pub fn point_key(tag: &str, seq: u64) -> String {
    format!("points/{tag}-{seq:010}")
}

/// The tag and number in a point's key, if it is one.
pub fn parse_key(key: &str) -> Option<(&str, u64)> {
    let rest = key.strip_prefix("points/")?;
    let (tag, n) = rest.split_once('-')?;
    let ok =
        crate::config::is_id(tag, 16) && n.len() == 10 && n.bytes().all(|c| c.is_ascii_digit());
    let seq: u64 = n.parse().ok()?;
    (ok && (1..=MAX_SEQ).contains(&seq)).then_some((tag, seq))
}

impl PointRecord {
    /// Check every field against the rules (a point is input like any other object).
    pub fn validate(&self, block_size: u64) -> Result<()> {
        let bad = |why: String| Err(Error::corrupt(format!("point is not valid: {why}")));
        if self.format != "vdisk-point" || self.version != 3 {
            return bad("not a layout-3 point".into());
        }
        if !valid_name(&self.name) {
            return bad("its name is empty, too long or holds control characters".into());
        }
        if !(1..=MAX_SEQ).contains(&self.seq) {
            return bad(format!("number {} is out of range", self.seq));
        }
        if self.parent.is_some_and(|p| p == 0 || p >= self.seq) {
            return bad("its parent is not an earlier point".into());
        }
        if self.block_size != block_size {
            return bad(format!(
                "block size {} is not the repository's {block_size}",
                self.block_size
            ));
        }
        if self.time.len() > 40 || self.host.len() > 256 {
            return bad("its time or host is too long".into());
        }
        if self.disks.is_empty() || self.disks.len() > MAX_DISKS {
            return bad(format!(
                "it has {} disks (1 to {MAX_DISKS})",
                self.disks.len()
            ));
        }
        for (i, d) in self.disks.iter().enumerate() {
            if d.size == 0 || d.size > MAX_DISK_SIZE {
                return bad(format!("disk {i} has a size of {} bytes", d.size));
            }
            if d.data_bytes > d.size {
                return bad(format!("disk {i} holds more data than its size"));
            }
            if d.label.is_empty()
                || d.label.len() > 255
                || d.label.contains('/')
                || d.label.chars().any(char::is_control)
                || d.source.len() > 4096
            {
                return bad(format!("disk {i}'s label or source is not valid"));
            }
            if BlockId::parse_hex(&d.root).is_none() {
                return bad(format!("disk {i}'s root is not an id"));
            }
            if self.disks[..i].iter().any(|o| o.label == d.label) {
                return bad(format!("two disks are labelled \"{}\"", d.label));
            }
        }
        Ok(())
    }

    /// Seal the point for its key.
    pub fn seal(&self, keys: &Keys, key: &str) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(self)
            .map_err(|e| Error::invalid(format!("cannot encode a point: {e}")))?;
        keys.seal(Kind::Point, key.as_bytes(), &json)
    }

    /// Open point object `key`: checked against its key and the rules.
    pub fn open(keys: &Keys, key: &str, sealed: &[u8], block_size: u64) -> Result<PointRecord> {
        let (tag, seq) = parse_key(key).ok_or_else(|| Error::corrupt("is not a point's name"))?;
        if sealed.len() as u64 > MAX_POINT {
            return Err(Error::corrupt("point is far too large"));
        }
        let json = keys.open(Kind::Point, key.as_bytes(), sealed)?;
        let p: PointRecord = serde_json::from_slice(&json)
            .map_err(|e| Error::corrupt(format!("point does not parse: {e}")))?;
        p.validate(block_size)?;
        if p.seq != seq || keys.name_tag(&p.name) != tag {
            return Err(Error::corrupt(
                "point's name or number is not the one its object is named for (replayed)",
            ));
        }
        Ok(p)
    }

    /// Bytes of the point's disks.
    pub fn logical_bytes(&self) -> u64 {
        self.disks.iter().map(|d| d.size).sum()
    }

    /// Bytes of its disks' blocks that are not all zero.
    pub fn data_bytes(&self) -> u64 {
        self.disks.iter().map(|d| d.data_bytes).sum()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    pub(crate) fn sample(name: &str, seq: u64) -> PointRecord {
        PointRecord {
            format: "vdisk-point".into(),
            version: 3,
            name: name.into(),
            seq,
            time: "2026-12-01T10:00:00Z".into(),
            unix: 1_796_119_200,
            parent: (seq > 1).then_some(seq - 1),
            block_size: 65536,
            host: "h".into(),
            disks: vec![DiskRecord {
                label: "d.raw".into(),
                source: "/d.raw".into(),
                size: 1 << 20,
                root: BlockId([1; 32]).hex(),
                data_bytes: 1 << 19,
            }],
            stats: PointStats::default(),
        }
    }

    #[test]
    fn points_open_under_their_own_key_only() {
        for enc in [false, true] {
            let keys = Keys::derive(&MasterKey::generate().unwrap(), enc);
            let p = sample("web01", 2);
            let key = point_key(&keys.name_tag("web01"), 2);
            let s = p.seal(&keys, &key).unwrap();
            assert_eq!(PointRecord::open(&keys, &key, &s, 65536).unwrap(), p);
            // Replayed under a higher number, or another name: refused.
            let k3 = point_key(&keys.name_tag("web01"), 3);
            assert!(PointRecord::open(&keys, &k3, &s, 65536).is_err());
            let other = point_key(&keys.name_tag("db"), 2);
            assert!(PointRecord::open(&keys, &other, &s, 65536).is_err());
            // A sealed point whose content names another number than its key: refused.
            let s3 = p.seal(&keys, &k3).unwrap();
            assert!(PointRecord::open(&keys, &k3, &s3, 65536).is_err());
            assert!(PointRecord::open(&keys, &key, &s, 4096).is_err());
        }
    }

    /// The crafted metadata of the attack 6, each refused.
    #[test]
    fn crafted_points_are_refused() {
        let ok = sample("a", 5);
        ok.validate(65536).unwrap();
        let mut cases: Vec<PointRecord> = Vec::new();
        let mut p = ok.clone();
        p.disks.clear(); // an empty file list
        cases.push(p);
        let mut p = ok.clone();
        p.seq = u64::MAX; // next_point = 2^64 - 1
        cases.push(p);
        let mut p = ok.clone();
        p.seq = 999_999_999_999; // an object numbered 999999999999
        cases.push(p);
        for size in [0, 1 << 63] {
            let mut p = ok.clone();
            p.disks[0].size = size;
            cases.push(p);
        }
        let mut p = ok.clone();
        p.disks = vec![ok.disks[0].clone(); 5000]; // a list repeated 5,000 times
        cases.push(p);
        let mut p = ok.clone();
        p.parent = Some(9);
        cases.push(p);
        let mut p = ok.clone();
        p.name = "a/b".into();
        cases.push(p);
        for c in cases {
            assert!(c.validate(65536).is_err(), "{c:?}");
        }
        assert_eq!(
            parse_key("points/0123456789abcdef-0000000007"),
            Some(("0123456789abcdef", 7))
        );
        for bad in [
            "points/0123456789abcdef-0000000000",
            "points/0123456789abcdef-999999999999",
            "points/0123456789abcdeg-0000000001",
            "points/x-0000000001",
        ] {
            assert!(parse_key(bad).is_none(), "{bad}");
        }
    }
}
