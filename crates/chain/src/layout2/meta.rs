//! The repository's own metadata: `vdisk-repo.json`, a JSON document followed by a line with
//! its crc32, replaced atomically (temporary name, fsync, rename) at the end of every run.

use serde::{Deserialize, Serialize};
use vdisk_core::{Error, ErrorKind, Result};

/// File name of the metadata inside a repository.
pub const META_FILE: &str = "vdisk-repo.json";
const FORMAT: &str = "vdisk-repository";
/// Version written. Version 2 added [`Covers::SparseMetadata`] (points in the clustered
/// layout, whose tables and directory follow their grains); version 1 repositories are read
/// as they are and written as version 2 by the next run that changes them.
const VERSION: u32 = 2;
/// Oldest version read.
const OLDEST_VERSION: u32 = 1;
/// Metadata larger than this is not ours (a point costs well under 1 KiB of JSON).
const MAX_META_BYTES: usize = 64 << 20;

/// What a [`FileCheck`]'s checksum covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Covers {
    /// The file's first `bytes` bytes (a descriptor file whole; the metadata area of an
    /// extent whose tables come before its grains).
    #[default]
    Prefix,
    /// A sparse extent's metadata wherever it lies: everything before its first grain
    /// (header, embedded descriptor), its grain directory's sectors and every table the
    /// directory names, in that order.
    SparseMetadata,
}

/// A checksum of every byte of metadata a point's file holds (descriptor, header,
/// directories, tables), so any flipped byte there is found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheck {
    /// File name inside the repository.
    pub name: String,
    /// Bytes covered (for [`Covers::Prefix`], from the start of the file).
    pub bytes: u64,
    /// crc32 of those bytes.
    pub crc32: u32,
    /// The file's whole length (bytes appended to a file are damage too).
    pub length: u64,
    /// What the checksum covers.
    #[serde(default)]
    pub covers: Covers,
}

/// Whether a point holds a whole disk or only the changes since its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PointKind {
    /// A whole disk, no parent.
    Full,
    /// A delta link on the previous point.
    Incremental,
}

impl PointKind {
    /// `"full"` or `"incremental"`, as the metadata and `list` spell it.
    pub fn name(self) -> &'static str {
        match self {
            PointKind::Full => "full",
            PointKind::Incremental => "incremental",
        }
    }
}

/// One restore point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePoint {
    /// The point's number, kept for life.
    pub point: u64,
    /// The point's VMDK (a descriptor), relative to the repository.
    pub image: String,
    /// Full or incremental.
    pub kind: PointKind,
    /// Creation time, UTC, RFC 3339.
    pub created: String,
    /// Disk size at this point.
    pub size: u64,
    /// Bytes the point stores (changed data, or all data for a full point).
    pub changed_bytes: u64,
    /// The point this one links to.
    pub parent: Option<u64>,
    /// The CID of the point's image (its children's parentCID).
    pub cid: u32,
    /// Hash manifest of the disk at this point (vdisk-diff format, one block per grain).
    pub hashes: String,
    /// Bitmap of the grains this point's own files store (data or zeroed).
    pub stored: String,
    /// Metadata checksums of the point's files.
    pub files: Vec<FileCheck>,
}

/// The source disk a repository backs up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskIdentity {
    /// What identifies the source (its canonical path).
    pub source: String,
    /// Its size at the first backup.
    pub size: u64,
}

/// The whole metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoMeta {
    /// Always `vdisk-repository`.
    pub format: String,
    /// Metadata version.
    pub version: u32,
    /// The disk backed up.
    pub disk: DiskIdentity,
    /// Block size of hashes and bitmaps: the grain size of the points.
    pub granularity: u64,
    /// Number the next point gets.
    pub next_point: u64,
    /// Counter for names of rewritten files (prune).
    pub generation: u64,
    /// The points, oldest first.
    pub points: Vec<RestorePoint>,
}

impl RepoMeta {
    /// Metadata of a new, empty repository.
    pub fn new(disk: DiskIdentity, granularity: u64) -> Self {
        RepoMeta {
            format: FORMAT.into(),
            version: VERSION,
            disk,
            granularity,
            next_point: 1,
            generation: 1,
            points: Vec::new(),
        }
    }

    /// The metadata as stored (always the version this vdisk writes): pretty JSON, then
    /// `crc32 XXXXXXXX` on its own line.
    pub fn encode(&self) -> Vec<u8> {
        let current = RepoMeta {
            version: VERSION,
            ..self.clone()
        };
        let mut text = serde_json::to_string_pretty(&current).unwrap_or_default();
        text.push('\n');
        let crc = crc32fast::hash(text.as_bytes());
        text.push_str(&format!("crc32 {crc:08x}\n"));
        text.into_bytes()
    }

    /// Check and parse stored metadata. A damaged file is an error, never wrong metadata.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_META_BYTES {
            return Err(Error::corrupt("repository metadata is far too large"));
        }
        let body_end = bytes
            .strip_suffix(b"\n")
            .and_then(|b| b.iter().rposition(|&c| c == b'\n'))
            .map(|i| i + 1)
            .ok_or_else(|| Error::corrupt("repository metadata has no checksum line"))?;
        let (body, tail) = bytes.split_at(body_end);
        let tail = std::str::from_utf8(tail)
            .map_err(|_| Error::corrupt("repository metadata checksum line is not text"))?;
        // Compared as text, exactly as written: any changed byte of the line is damage.
        if tail != format!("crc32 {:08x}\n", crc32fast::hash(body)) {
            if !tail.starts_with("crc32 ") {
                return Err(Error::corrupt("repository metadata has no checksum line"));
            }
            return Err(Error::corrupt(
                "repository metadata checksum does not match (damaged)",
            ));
        }
        let meta: RepoMeta = serde_json::from_slice(body)
            .map_err(|e| Error::corrupt(format!("repository metadata does not parse: {e}")))?;
        if meta.format != FORMAT {
            return Err(Error::invalid("not a vdisk repository"));
        }
        if !(OLDEST_VERSION..=VERSION).contains(&meta.version) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "repository version {} (vdisk reads versions {OLDEST_VERSION} to {VERSION})",
                    meta.version
                ),
            ));
        }
        meta.validate()?;
        // Held in memory as the current version (what the next write stores).
        Ok(RepoMeta {
            version: VERSION,
            ..meta
        })
    }

    /// Cross-checks no JSON schema can express: numbering, parents, names that stay inside the
    /// repository.
    fn validate(&self) -> Result<()> {
        if let Err(e) = vdisk_core::Granularity::new(self.granularity) {
            return Err(Error::corrupt(format!("repository: {}", e.message())));
        }
        let mut prev: Option<&RestorePoint> = None;
        for p in &self.points {
            if prev.is_some_and(|q| q.point >= p.point) || p.point >= self.next_point {
                return Err(Error::corrupt(format!("point {} is out of order", p.point)));
            }
            match (p.kind, p.parent, prev) {
                (PointKind::Full, None, None) => {}
                (PointKind::Incremental, Some(parent), Some(q)) if parent == q.point => {}
                _ => {
                    return Err(Error::corrupt(format!(
                        "point {} does not link to the point before it",
                        p.point
                    )))
                }
            }
            let names = [&p.image, &p.hashes, &p.stored]
                .into_iter()
                .chain(p.files.iter().map(|f| &f.name));
            for n in names {
                if n.is_empty() || n.contains('/') || n.starts_with('.') {
                    return Err(Error::corrupt(format!(
                        "point {} names a file outside the repository: \"{n}\"",
                        p.point
                    )));
                }
            }
            prev = Some(p);
        }
        Ok(())
    }

    /// The point numbered `n`.
    pub fn point(&self, n: u64) -> Option<&RestorePoint> {
        self.points.iter().find(|p| p.point == n)
    }
}

/// The current time as RFC 3339 UTC (`2026-11-26T11:40:00Z`).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RepoMeta {
        let mut m = RepoMeta::new(
            DiskIdentity {
                source: "/vm/disk.vmdk".into(),
                size: 1 << 20,
            },
            65536,
        );
        for n in 1..=2 {
            m.points.push(RestorePoint {
                point: n,
                image: format!("point-{n:06}.vmdk"),
                kind: if n == 1 {
                    PointKind::Full
                } else {
                    PointKind::Incremental
                },
                created: now_rfc3339(),
                size: 1 << 20,
                changed_bytes: 4096,
                parent: (n > 1).then_some(n - 1),
                cid: 7,
                hashes: format!("point-{n:06}.hashes"),
                stored: format!("point-{n:06}.stored"),
                files: vec![FileCheck {
                    name: format!("point-{n:06}.vmdk"),
                    bytes: 512,
                    crc32: 9,
                    length: 512,
                    covers: Covers::Prefix,
                }],
            });
        }
        m.next_point = 3;
        m
    }

    #[test]
    fn round_trips_and_any_flipped_byte_is_found() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(RepoMeta::decode(&bytes).unwrap(), m);
        for i in (0..bytes.len()).step_by(7) {
            let mut b = bytes.clone();
            b[i] ^= 0x20;
            assert!(RepoMeta::decode(&b).is_err(), "flip at {i} undetected");
        }
    }

    #[test]
    fn names_outside_the_repository_are_refused() {
        let mut m = sample();
        m.points[1].hashes = "../../etc/passwd".into();
        assert!(RepoMeta::decode(&m.encode()).is_err());
        let mut m = sample();
        m.points[1].parent = Some(5);
        assert!(RepoMeta::decode(&m.encode()).is_err());
    }

    #[test]
    fn time_is_rfc3339() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20);
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
