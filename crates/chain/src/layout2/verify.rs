//! Verifying a repository: each point's files against the checksums of their metadata, the
//! grains each point stores against the bitmap recorded at backup, and every stored grain
//! (read once, from the file that holds it) against its hash.

use std::fmt;
use std::path::PathBuf;

use rayon::prelude::*;
use vdisk_bitmap::ChangeMap;
use vdisk_core::{Advice, DiskImage, ReadOnce, Result, Throttle};
use vdisk_diff::block_hash;

use crate::layout2::checksums::check_file;
use crate::layout2::hashes::{open_manifest, stored_map};
use crate::layout2::meta::{RepoMeta, RestorePoint};
use crate::layout2::repo::Repository;
use crate::layout2::GRAIN;

/// Damaged grains listed one by one per point; the rest are counted.
const MAX_LISTED_GRAINS: usize = 10;

/// Options of a verify.
#[derive(Default, Clone, Copy)]
pub struct VerifyOptions<'a> {
    /// Read-rate limit.
    pub throttle: Option<&'a Throttle>,
    /// Called with bytes of stored grains checked, from any thread.
    pub progress: Option<&'a dyn vdisk_core::Progress>,
}

/// One thing wrong with a point's own files.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PointProblem {
    /// A file's length differs from its length at backup (cut, or bytes appended).
    FileLength {
        /// The file.
        file: String,
        /// Its length now.
        now: u64,
        /// Its length at backup.
        then: u64,
    },
    /// A file's metadata (descriptor, header, directories, tables) differs from its checksum.
    MetadataChecksum {
        /// The file.
        file: String,
    },
    /// A file could not be read, opened or parsed.
    Unreadable {
        /// What went wrong, with the file.
        error: String,
    },
    /// The point's image links to another parent than the point before it.
    WrongParent {
        /// What it links to.
        linked: Option<PathBuf>,
        /// The point it should link to.
        parent: u64,
    },
    /// The set of grains the point stores differs from the one recorded at backup.
    StoredGrainsDiffer,
    /// A stored grain does not hash as it did at backup.
    GrainMismatch {
        /// The grain.
        grain: u64,
        /// Its first byte on the disk.
        start: u64,
        /// One past its last byte.
        end: u64,
    },
    /// A stored grain could not be read.
    GrainUnreadable {
        /// The grain.
        grain: u64,
        /// Why.
        error: String,
    },
    /// More damaged grains than are listed one by one.
    MoreDamagedGrains(u64),
}

impl fmt::Display for PointProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PointProblem::FileLength { file, now, then } => {
                write!(f, "{file}: file is {now} bytes, it was {then} at backup")
            }
            PointProblem::MetadataChecksum { file } => {
                write!(f, "{file}: metadata does not match its checksum")
            }
            PointProblem::Unreadable { error } => f.write_str(error),
            PointProblem::WrongParent { linked, parent } => write!(
                f,
                "links to {} instead of point {parent}",
                linked
                    .as_deref()
                    .map_or("nothing".to_string(), |p| format!("\"{}\"", p.display()))
            ),
            PointProblem::StoredGrainsDiffer => {
                f.write_str("the grains the point stores differ from those recorded at backup")
            }
            PointProblem::GrainMismatch { grain, start, end } => write!(
                f,
                "grain {grain} (bytes {start}..{end}) does not match its hash"
            ),
            PointProblem::GrainUnreadable { grain, error } => write!(f, "grain {grain}: {error}"),
            PointProblem::MoreDamagedGrains(n) => write!(f, "… and {n} more damaged grains"),
        }
    }
}

/// What verify found about one point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointReport {
    /// The point.
    pub point: u64,
    /// Problems with the point's own files.
    pub problems: Vec<PointProblem>,
    /// The earliest damaged point this one depends on (itself excluded).
    pub depends_on_damaged: Option<u64>,
}

impl PointReport {
    /// Whether the point restores correctly.
    pub fn sound(&self) -> bool {
        self.problems.is_empty() && self.depends_on_damaged.is_none()
    }
}

impl Repository {
    /// Bytes verify reads for point `n` and every point it depends on, or for all points:
    /// the total a progress bar counts up to.
    pub fn verify_bytes(&self, n: Option<u64>) -> u64 {
        let upto = n.unwrap_or(u64::MAX);
        self.points()
            .iter()
            .filter(|p| p.point <= upto)
            .map(|p| p.changed_bytes)
            .sum()
    }

    /// Check point `n` and every point it depends on, or all points: stored grains against
    /// the hashes kept at backup time, file metadata against its checksums, the chain's links.
    /// Each stored grain is read once, from the file that stores it.
    ///
    /// ```
    /// use std::os::unix::fs::FileExt;
    /// use vdisk_chain::layout2::{PointProblem, Repository, VerifyOptions};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # // Two points of a 256 KiB disk: all 1s, then all 2s.
    /// # vdisk_chain::layout2::doc_example_repository(dir.path());
    /// let repo = Repository::open(dir.path())?;
    /// let reports = repo.verify(None, &VerifyOptions::default())?;
    /// assert_eq!(reports.len(), 2);
    /// assert!(reports.iter().all(|r| r.sound()));
    ///
    /// // Damage the fourth grain point 1 stores (grains follow a 4 KiB header area, in
    /// // order): point 1 is damaged, and point 2, which reads through it, is affected.
    /// let extent = std::fs::OpenOptions::new()
    ///     .write(true)
    ///     .open(dir.path().join("point-000001-s001.vmdk"))
    ///     .unwrap();
    /// extent.write_all_at(&[0xee], 4096 + 3 * 65536 + 10).unwrap();
    /// let reports = repo.verify(None, &VerifyOptions::default())?;
    /// assert!(matches!(reports[0].problems[..], [PointProblem::GrainMismatch { grain: 3, .. }]));
    /// assert_eq!(reports[1].depends_on_damaged, Some(1));
    /// assert!(!reports[1].sound());
    /// # Ok::<(), vdisk_core::Error>(())
    /// ```
    pub fn verify(&self, n: Option<u64>, opts: &VerifyOptions<'_>) -> Result<Vec<PointReport>> {
        let Some(meta) = &self.meta else {
            return Ok(Vec::new());
        };
        let upto = match n {
            Some(n) => self.point(Some(n))?.point,
            None => u64::MAX,
        };
        let mut reports = Vec::new();
        let mut first_damaged: Option<u64> = None;
        for p in meta.points.iter().filter(|p| p.point <= upto) {
            let problems = self.verify_point(p, meta, opts);
            let report = PointReport {
                point: p.point,
                depends_on_damaged: first_damaged,
                problems,
            };
            if !report.problems.is_empty() && first_damaged.is_none() {
                first_damaged = Some(p.point);
            }
            reports.push(report);
        }
        Ok(reports)
    }

    pub(crate) fn verify_point(
        &self,
        p: &RestorePoint,
        meta: &RepoMeta,
        opts: &VerifyOptions<'_>,
    ) -> Vec<PointProblem> {
        let unreadable = |e: vdisk_core::Error| PointProblem::Unreadable {
            error: e.to_string(),
        };
        let mut problems = Vec::new();
        let store = &*self.store;
        // Where the point's metadata lies now, as its files say. A point that does not open
        // is reported below, when its image is opened; its files' own checksums still are.
        let regions: Option<std::collections::HashMap<String, Vec<(u64, u64)>>> =
            crate::layout2::checksums::regions(store, &p.image)
                .ok()
                .map(|r| r.into_iter().collect());
        let empty = std::collections::HashMap::new();
        for f in &p.files {
            match store.len(&f.name) {
                Ok(len) if len != f.length => problems.push(PointProblem::FileLength {
                    file: f.name.clone(),
                    now: len,
                    then: f.length,
                }),
                _ => {}
            }
            let Some(regions) = regions.as_ref().or_else(|| {
                // Without the point's own view of its metadata, only whole files are checked.
                (f.covers == crate::layout2::meta::Covers::Prefix).then_some(&empty)
            }) else {
                continue;
            };
            match check_file(store, f, regions) {
                Ok(true) => {}
                Ok(false) => problems.push(PointProblem::MetadataChecksum {
                    file: f.name.clone(),
                }),
                Err(e) => problems.push(unreadable(e)),
            }
        }
        let manifest = open_manifest(store, &p.hashes).map_err(unreadable);
        let stored = store
            .read(&p.stored, 1 << 30)
            .and_then(|b| ChangeMap::decode(&b).map_err(|e| e.with_path(self.path(&p.stored))))
            .map_err(unreadable);
        let img = self.open_point(p).map_err(unreadable);
        let (manifest, stored, img) = match (manifest, stored, img) {
            (Ok(m), Ok(s), Ok(i)) => (m, s, i),
            (m, s, i) => {
                problems.extend(m.err());
                problems.extend(s.err());
                problems.extend(i.err());
                return problems;
            }
        };
        if opts.throttle.is_some_and(|t| t.rate().is_some()) {
            img.advise(0, img.size(), Advice::Paced);
        }
        // The link goes to the right parent.
        if let Some(parent) = p.parent.and_then(|n| meta.point(n)) {
            let linked = img.layers().get(1).map(|l| l.path().to_path_buf());
            if linked.as_deref() != Some(self.path(&parent.image).as_path()) {
                problems.push(PointProblem::WrongParent {
                    linked,
                    parent: parent.point,
                });
            }
        }
        // The point stores exactly the grains it stored at backup time...
        match stored_map(&img) {
            Ok(now) if now == stored => {}
            Ok(_) => problems.push(PointProblem::StoredGrainsDiffer),
            Err(e) => problems.push(unreadable(e)),
        }
        // ...and each holds what was hashed then. The last grain ends at the disk's exact size
        // (the image counts whole sectors).
        let size = p.size;
        let blocks: Vec<u64> = stored
            .runs()
            .flat_map(|(first, n)| first..first + n)
            .filter(|&b| b * GRAIN < size)
            .collect();
        let bad: Vec<PointProblem> = blocks
            .par_chunks(64)
            .flat_map_iter(|chunk| {
                let mut buf = vec![0u8; GRAIN as usize];
                let mut out = Vec::new();
                for &b in chunk {
                    let off = b * GRAIN;
                    let len = GRAIN.min(size - off);
                    if let Some(t) = opts.throttle {
                        t.take(len);
                    }
                    let data = &mut buf[..len as usize];
                    // The point's own file, read once (its parents' grains are theirs).
                    let once = ReadOnce::new(img.top(), off, len);
                    let ok = img
                        .top()
                        .read_at(data, off)
                        .and_then(|_| Ok(manifest.hash(b)? == Some(block_hash(data))));
                    drop(once);
                    if let Some(pr) = opts.progress {
                        pr.read(len);
                    }
                    match ok {
                        Ok(true) => {}
                        Ok(false) => out.push(PointProblem::GrainMismatch {
                            grain: b,
                            start: off,
                            end: off + len,
                        }),
                        Err(e) => out.push(PointProblem::GrainUnreadable {
                            grain: b,
                            error: e.to_string(),
                        }),
                    }
                }
                out
            })
            .collect();
        let n_bad = bad.len();
        problems.extend(bad.into_iter().take(MAX_LISTED_GRAINS));
        if n_bad > MAX_LISTED_GRAINS {
            problems.push(PointProblem::MoreDamagedGrains(
                (n_bad - MAX_LISTED_GRAINS) as u64,
            ));
        }
        problems
    }
}
