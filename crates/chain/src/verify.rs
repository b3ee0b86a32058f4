//! Verifying: every block and every chunk of the index of the chosen points, opened and
//! checked (seal, and bytes against id), each distinct block read once per run.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;

use rayon::prelude::*;
use vdisk_core::{ErrorKind, Result, Throttle};

use crate::crypto::BlockId;
use crate::repository::{Point, Repository};
use crate::tree::{Shape, TreeReader, FANOUT};

/// Damaged blocks listed one by one per point; the rest are counted.
const MAX_LISTED: usize = 10;
/// Ids of blocks found sound kept, so a block many points share is read once (past this,
/// the set starts again: memory stays bounded).
const MAX_REMEMBERED: usize = 1 << 20;

/// Options of a verify.
#[derive(Default, Clone, Copy)]
pub struct VerifyOptions<'a> {
    /// Read-rate limit.
    pub throttle: Option<&'a Throttle>,
    /// Called with bytes of blocks checked, from any thread.
    pub progress: Option<&'a dyn vdisk_core::Progress>,
}

/// One thing wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// An object (a point, an index table) cannot be read or is not valid.
    Object {
        /// The object.
        name: String,
        /// Why.
        error: String,
    },
    /// A chunk of a disk's index cannot be read.
    Index {
        /// The disk.
        disk: String,
        /// Where the chunk's blocks start on the disk.
        offset: u64,
        /// Why.
        error: String,
    },
    /// A block cannot be read, or is not what its id says.
    Block {
        /// The disk.
        disk: String,
        /// Its first byte on the disk.
        offset: u64,
        /// Its length.
        len: u64,
        /// Why.
        error: String,
    },
    /// More damaged blocks than are listed.
    More(u64),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Object { name, error } => write!(f, "{name}: {error}"),
            Problem::Index {
                disk,
                offset,
                error,
            } => {
                write!(f, "disk {disk}: the index of the blocks from byte {offset} cannot be read: {error}")
            }
            Problem::Block {
                disk,
                offset,
                len,
                error,
            } => write!(
                f,
                "disk {disk}: the block at bytes {offset}..{}: {error}",
                offset + len
            ),
            Problem::More(n) => write!(f, "… and {n} more damaged blocks"),
        }
    }
}

/// What verify found about one point (or one object that is not a point).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The NAME (empty for an object that is not a valid point).
    pub name: String,
    /// The point's number (0 for an object that is not a valid point).
    pub point: u64,
    /// The object.
    pub key: String,
    /// What is wrong.
    pub problems: Vec<Problem>,
    /// The point was removed (by a prune) while it was being verified: not damage.
    pub removed: bool,
}

impl Report {
    /// Whether the point restores correctly.
    pub fn sound(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Repository {
    /// Bytes verify reads for the chosen points (a progress bar's total).
    pub fn verify_bytes(&self, name: Option<&str>, seq: Option<u64>) -> u64 {
        self.chosen(name, seq)
            .map(|v| v.iter().map(|p| p.record.data_bytes()).sum())
            .unwrap_or(0)
    }

    fn chosen(&self, name: Option<&str>, seq: Option<u64>) -> Result<Vec<Point>> {
        if seq.is_some() {
            return Ok(vec![self.select(name, seq)?]);
        }
        let list = self.points()?;
        Ok(list
            .points
            .into_iter()
            .filter(|p| name.is_none_or(|n| p.record.name == n))
            .collect())
    }

    /// Check the chosen points (all, those of `name`, or one): every chunk of their disks'
    /// indexes and every block, each distinct block once. Objects under `points/` that are
    /// not valid points, and index tables that cannot be read, are reported too.
    ///
    /// ```
    /// use vdisk_chain::{BackupOptions, DiskSource, InitOptions, Repository, Source, VerifyOptions};
    /// use vdisk_core::MemImage;
    /// # let dir = tempfile::tempdir().unwrap();
    /// let repo = Repository::init(dir.path().join("repo"), &InitOptions::default())?;
    /// let img = MemImage::new((0..1u32 << 20).map(|i| (i / 3) as u8).collect());
    /// let src = DiskSource { image: &img, source: Source { identity: "/a".into(), unclean: false }, label: "a".into() };
    /// repo.backup("vm", &[src], &BackupOptions::default())?;
    /// let reports = repo.verify(None, None, &VerifyOptions::default())?;
    /// assert!(reports.iter().all(|r| r.sound()));
    /// # Ok::<(), vdisk_core::Error>(())
    /// ```
    pub fn verify(
        &self,
        name: Option<&str>,
        seq: Option<u64>,
        opts: &VerifyOptions<'_>,
    ) -> Result<Vec<Report>> {
        let mut reports = Vec::new();
        if name.is_none() && seq.is_none() {
            let (index, mut damaged) = self.load_index()?;
            // Every table whole (each page, and its filter), every pack's header.
            for t in index.tables() {
                let name = format!("index/{}", t.id);
                match t.filter_matches() {
                    Ok(true) => {}
                    Ok(false) => damaged.push((
                        name,
                        vdisk_core::Error::corrupt("its filter does not match its entries"),
                    )),
                    Err(e) => damaged.push((name, e)),
                }
            }
            for o in self.store().list("data/")? {
                let Some(id) = crate::pack::pack_id_of(&o.name) else {
                    continue;
                };
                if let Err(e) = self.pack_entries(id) {
                    if e.kind() != ErrorKind::NotFound {
                        damaged.push((o.name.clone(), e));
                    }
                }
            }
            for (table, e) in damaged {
                reports.push(Report {
                    name: String::new(),
                    point: 0,
                    key: table.clone(),
                    problems: vec![Problem::Object {
                        name: table,
                        error: e.message().to_string(),
                    }],
                    removed: false,
                });
            }
            for (key, error) in self.points()?.unreadable {
                reports.push(Report {
                    name: String::new(),
                    point: 0,
                    key: key.clone(),
                    problems: vec![Problem::Object { name: key, error }],
                    removed: false,
                });
            }
        }
        let sound: Mutex<HashSet<BlockId>> = Mutex::new(HashSet::new());
        let bad: Mutex<HashMap<BlockId, String>> = Mutex::new(HashMap::new());
        for p in self.chosen(name, seq)? {
            let mut problems = self.verify_point(&p, opts, &sound, &bad);
            let mut removed = false;
            if !problems.is_empty() {
                // Removed by a prune meanwhile: its blocks may be gone, that is no damage.
                if let Err(e) = self.store().read(&p.key, crate::point::MAX_POINT) {
                    if e.kind() == ErrorKind::NotFound {
                        problems.clear();
                        removed = true;
                    }
                }
            }
            let n = problems.len();
            if n > MAX_LISTED {
                problems.truncate(MAX_LISTED);
                problems.push(Problem::More((n - MAX_LISTED) as u64));
            }
            reports.push(Report {
                name: p.record.name.clone(),
                point: p.record.seq,
                key: p.key.clone(),
                problems,
                removed,
            });
        }
        Ok(reports)
    }

    fn verify_point(
        &self,
        p: &Point,
        opts: &VerifyOptions<'_>,
        sound: &Mutex<HashSet<BlockId>>,
        bad: &Mutex<HashMap<BlockId, String>>,
    ) -> Vec<Problem> {
        let bs = self.block_size();
        let max = self.max_blob();
        let mut problems = Vec::new();
        for d in &p.record.disks {
            let shape = match Shape::new(d.size, bs) {
                Ok(s) => s,
                Err(e) => {
                    problems.push(Problem::Index {
                        disk: d.label.clone(),
                        offset: 0,
                        error: e.message().to_string(),
                    });
                    continue;
                }
            };
            let mut tree = TreeReader::new(shape.clone(), d.root_id(), |id: &BlockId| {
                self.read_blob(id, max)
            });
            for j in 0..shape.leaves() {
                if tree.chunk_id(0, j).is_ok_and(|id| id.is_zero()) {
                    continue;
                }
                let leaf = match tree.leaf(j) {
                    Ok(l) => l,
                    Err(e) => {
                        problems.push(Problem::Index {
                            disk: d.label.clone(),
                            offset: j * FANOUT * bs,
                            error: e.message().to_string(),
                        });
                        // The rest of the path may be fine: go on with the next leaf.
                        tree = TreeReader::new(shape.clone(), d.root_id(), |id: &BlockId| {
                            self.read_blob(id, max)
                        });
                        continue;
                    }
                };
                let found: Vec<Problem> = leaf
                    .par_iter()
                    .enumerate()
                    .filter(|(_, e)| !e.is_zero())
                    .filter_map(|(i, e)| {
                        let b = j * FANOUT + i as u64;
                        let len = bs.min(d.size - b * bs);
                        let known_bad = bad
                            .lock()
                            .unwrap_or_else(|x| x.into_inner())
                            .get(&e.id)
                            .cloned();
                        let error = if let Some(err) = known_bad {
                            Some(err)
                        } else if sound
                            .lock()
                            .unwrap_or_else(|x| x.into_inner())
                            .contains(&e.id)
                        {
                            None
                        } else {
                            if let Some(t) = opts.throttle {
                                t.take(len);
                            }
                            let r = self.read_blob(&e.id, bs as usize).and_then(|data| {
                                if data.len() as u64 == len {
                                    Ok(())
                                } else {
                                    Err(vdisk_core::Error::corrupt(format!(
                                        "is {} bytes, not {len}",
                                        data.len()
                                    )))
                                }
                            });
                            if let Some(pr) = opts.progress {
                                pr.read(len);
                            }
                            match r {
                                Ok(()) => {
                                    let mut s = sound.lock().unwrap_or_else(|x| x.into_inner());
                                    if s.len() >= MAX_REMEMBERED {
                                        s.clear();
                                    }
                                    s.insert(e.id);
                                    None
                                }
                                Err(err) => {
                                    let msg = err.message().to_string();
                                    bad.lock()
                                        .unwrap_or_else(|x| x.into_inner())
                                        .insert(e.id, msg.clone());
                                    Some(msg)
                                }
                            }
                        };
                        error.map(|error| Problem::Block {
                            disk: d.label.clone(),
                            offset: b * bs,
                            len,
                            error,
                        })
                    })
                    .collect();
                problems.extend(found);
            }
        }
        problems
    }
}
