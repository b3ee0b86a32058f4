//! Backing up: one point of a NAME, holding one or more disks taken together.
//!
//! Each disk is read a leaf at a time (the [`FANOUT`] blocks one chunk of its index covers:
//! 64 MiB with 64 KiB blocks). In a leaf, the blocks that hold data are read in parallel
//! and fingerprinted with xxh3; a block whose fingerprint is the one the NAME's previous
//! point has for it keeps that point's entry, untouched. Only the others are hashed with
//! keyed BLAKE3, looked up in the index, and, when the repository lacks them, compressed,
//! sealed and added to a pack. With a changed-block map (`--changed`), only the blocks it
//! marks are read at all, and a leaf it does not touch keeps its chunk without being read.
//!
//! Packs are written by a thread of their own while the next leaf is read; the run's index
//! entries go into a table once its packs are written; the point's object is created last,
//! conditionally: the commit. A run killed at any instant leaves only objects nothing refers
//! to, which a later prune removes.

use std::sync::mpsc;

use rayon::prelude::*;
use vdisk_bitmap::ChangeMap;
use vdisk_core::{is_zero, Advice, DiskImage, Error, ErrorKind, ReadOnce, Result, Throttle};
use vdisk_io::Protected;

use crate::clock::{now_secs, rfc3339};
use crate::crypto::BlockId;
use crate::index::{IndexSet, Location as BlobAt, PackId, MAX_TABLE_ENTRIES};
use crate::locks::Registration;
use crate::pack::{pack_name, seal_blob, PackBuilder};
use crate::point::{point_key, valid_name, DiskRecord, PointRecord, PointStats, MAX_DISKS};
use crate::repository::{err_at, Repository};
use crate::source::Source;
use crate::tree::{encode_leaf, LeafEntry, Shape, TreeBuilder, TreeReader, FANOUT};

/// Entries of the run kept in memory before they are written as a table.
const PENDING_ENTRIES: usize = 1 << 18;
/// Blocks read by one task.
const TASK_BLOCKS: u64 = 32;

/// One disk of a backup.
pub struct DiskSource<'a> {
    /// Its bytes.
    pub image: &'a dyn DiskImage,
    /// What identifies it across backups.
    pub source: Source,
    /// What it is called in the point (`--disk` picks it): its file name.
    pub label: String,
}

/// Options of a backup.
#[derive(Default)]
pub struct BackupOptions<'a> {
    /// Back up a source that looks unsafe: one that was not closed cleanly, or one that is
    /// not the disk the NAME's points hold (the CLI's `--force`).
    pub force: bool,
    /// Changed blocks from the hypervisor (CBT) per disk, by position, trusted as a superset
    /// of the changes since the NAME's newest point. Their sizes must be the disks'.
    pub changed: Vec<Option<ChangeMap>>,
    /// Read-rate limit.
    pub throttle: Option<&'a Throttle>,
    /// Progress callback (bytes of disk done).
    pub progress: Option<&'a dyn vdisk_core::Progress>,
}

/// Whether a point was made against an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointKind {
    /// The NAME's first point (or one whose disks all changed identity).
    Full,
    /// Made against the NAME's previous point.
    Incremental,
}

impl PointKind {
    /// `"full"` or `"incremental"`.
    pub fn name(self) -> &'static str {
        match self {
            PointKind::Full => "full",
            PointKind::Incremental => "incremental",
        }
    }
}

/// What a backup did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// The NAME.
    pub name: String,
    /// The new point's number in its NAME.
    pub point: u64,
    /// Full or incremental.
    pub kind: PointKind,
    /// Points of the NAME now.
    pub points: usize,
    /// Disks in the point.
    pub disks: usize,
    /// Bytes of the disks.
    pub logical_bytes: u64,
    /// Bytes read from the sources.
    pub bytes_read: u64,
    /// Bytes of new blobs stored (compressed and sealed).
    pub bytes_added: u64,
    /// New blobs stored.
    pub blobs_added: u64,
}

/// How a point is made when it is a copy (sync): its number and its time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AsPoint {
    pub seq: u64,
    pub unix: u64,
    pub host: Option<&'static str>,
}

/// Writes packs on a thread of its own; packs go out in order.
struct Packer {
    repo: Repository,
    current: Option<PackBuilder>,
    tx: Option<mpsc::SyncSender<PackBuilder>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
    /// Packs written (and, with `check`, read back and checked).
    pub written: Vec<String>,
    written_rx: Option<mpsc::Receiver<String>>,
    check: bool,
}

impl Packer {
    fn new(repo: &Repository, check: bool) -> Self {
        Packer {
            repo: repo.clone(),
            current: None,
            tx: None,
            thread: None,
            written: Vec::new(),
            written_rx: None,
            check,
        }
    }

    /// A fresh pack, whose folder is not taken by something foreign.
    fn fresh(&self) -> Result<PackBuilder> {
        for _ in 0..64 {
            let p = PackBuilder::new()?;
            let ok = match self.repo.local_dir() {
                Some(dir) => std::fs::symlink_metadata(dir.join("data").join(&p.id[..2]))
                    .map_or(true, |m| m.is_dir()),
                None => true,
            };
            if ok {
                return Ok(p);
            }
        }
        Err(err_at(
            self.repo.location(),
            ErrorKind::Refused,
            "foreign files take the place of the repository's data folders",
        ))
    }

    /// Add a blob; also whether a full pack was sent off first.
    fn add(&mut self, id: BlockId, sealed: &[u8]) -> Result<(BlobAt, bool)> {
        let mut sent = false;
        if self.current.as_ref().is_some_and(PackBuilder::full) {
            self.send()?;
            sent = true;
        }
        if self.current.is_none() {
            self.current = Some(self.fresh()?);
        }
        let p = self
            .current
            .as_mut()
            .ok_or_else(|| Error::invalid("no pack"))?;
        let e = p.add(id, sealed);
        Ok((
            BlobAt {
                pack: PackId::parse(&p.id).unwrap_or_default(),
                offset: e.offset,
                len: e.len,
            },
            sent,
        ))
    }

    fn send(&mut self) -> Result<()> {
        let Some(p) = self.current.take() else {
            return Ok(());
        };
        if self.tx.is_none() {
            let (tx, rx) = mpsc::sync_channel::<PackBuilder>(1);
            let (wtx, wrx) = mpsc::channel::<String>();
            let repo = self.repo.clone();
            let check = self.check;
            self.thread = Some(
                std::thread::Builder::new()
                    .name("vdisk-packs".into())
                    .spawn(move || -> Result<()> {
                        for p in rx {
                            let (id, bytes, entries) = p.finish(repo.keys())?;
                            let name = pack_name(&id);
                            if !repo.store().create(&name, &bytes)? {
                                return Err(err_at(
                                    repo.location(),
                                    ErrorKind::AlreadyExists,
                                    format!("{name} exists already"),
                                ));
                            }
                            if check {
                                check_arrived(&repo, &id, &entries)?;
                            }
                            let _ = wtx.send(name);
                        }
                        Ok(())
                    })
                    .map_err(|e| Error::io("cannot start the pack writer", e))?,
            );
            self.tx = Some(tx);
            self.written_rx = Some(wrx);
        }
        let sent = self.tx.as_ref().map(|t| t.send(p).is_ok()).unwrap_or(false);
        if !sent {
            // The writer stopped: its error says why.
            return self.join();
        }
        Ok(())
    }

    /// Write every pack, and wait until they are all created.
    fn flush(&mut self) -> Result<()> {
        self.send()?;
        self.join()
    }

    fn join(&mut self) -> Result<()> {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?;
        }
        if let Some(rx) = self.written_rx.take() {
            self.written.extend(rx.try_iter());
        }
        Ok(())
    }
}

/// Read pack `id` back from the store and check its header and every blob (sync's check on
/// arrival).
fn check_arrived(repo: &Repository, id: &str, entries: &[crate::pack::PackEntry]) -> Result<()> {
    let name = pack_name(id);
    let bytes = repo.store().read(&name, crate::pack::MAX_PACK)?;
    let listed = crate::pack::parse_pack(repo.keys(), id, &bytes)
        .map_err(|e| e.with_path(repo.location().join(&name)))?;
    if listed != entries {
        return Err(err_at(
            repo.location(),
            ErrorKind::Corrupt,
            format!("{name} did not arrive as sent"),
        ));
    }
    // Blobs checked on all cores: this thread would otherwise be the whole sync's pace.
    entries.par_iter().try_for_each(|e| {
        let blob = &bytes[e.offset as usize..(e.offset + e.len) as usize];
        crate::pack::check_blob(repo.keys(), &e.id, blob, repo.max_blob()).map_err(|err| {
            err_at(
                repo.location(),
                ErrorKind::Corrupt,
                format!("{name} did not arrive whole: {}", err.message()),
            )
        })
    })
}

/// A run writing blobs into a repository: its packs, its index entries, what it added.
pub(crate) struct BlobWriter {
    pub repo: Repository,
    pub index: IndexSet,
    packer: Packer,
    pub bytes_added: u64,
    pub blobs_added: u64,
    pub tables_written: u64,
    /// Write a table as soon as each pack is written (sync: a killed run's packs count).
    pub table_per_pack: bool,
}

impl BlobWriter {
    /// A writer that knows no blob of the repository (repacking: every blob it is given is
    /// written again).
    pub fn fresh(repo: &Repository) -> Result<Self> {
        Ok(BlobWriter {
            repo: repo.clone(),
            index: IndexSet::default(),
            packer: Packer::new(repo, false),
            bytes_added: 0,
            blobs_added: 0,
            tables_written: 0,
            table_per_pack: false,
        })
    }

    /// A writer with the repository's index loaded; `check` reads every pack back.
    pub fn new(repo: &Repository, check: bool) -> Result<Self> {
        let (index, _) = repo.load_index()?;
        Ok(BlobWriter {
            repo: repo.clone(),
            index,
            packer: Packer::new(repo, check),
            bytes_added: 0,
            blobs_added: 0,
            tables_written: 0,
            table_per_pack: false,
        })
    }

    /// Store a sealed blob unless the run or the index has it already.
    pub fn put_sealed(&mut self, id: BlockId, sealed: &[u8]) -> Result<()> {
        if self.index.lookup(&id)?.is_some() {
            return Ok(());
        }
        if self.table_per_pack && self.packer.current.as_ref().is_some_and(PackBuilder::full) {
            // The full pack, with its table, before the next blob starts a new one.
            self.write_table()?;
        }
        let (at, _) = self.packer.add(id, sealed)?;
        self.index.add_pending(id, at);
        self.bytes_added += sealed.len() as u64;
        self.blobs_added += 1;
        if self.index.pending_len() >= PENDING_ENTRIES {
            self.write_table()?;
        }
        Ok(())
    }

    /// Store a chunk (or any blob) by its bytes: its id.
    pub fn put_chunk(&mut self, bytes: &[u8]) -> Result<BlockId> {
        let id = self.repo.keys().block_id(bytes);
        if self.index.lookup(&id)?.is_none() {
            let sealed = seal_blob(self.repo.keys(), &id, bytes)?;
            self.put_sealed(id, &sealed)?;
        }
        Ok(id)
    }

    /// Write every pack, then the table of the run's entries not yet in one.
    pub fn write_table(&mut self) -> Result<()> {
        self.packer.flush()?;
        let entries = self.index.take_pending();
        if entries.is_empty() {
            return Ok(());
        }
        for chunk in entries.chunks(MAX_TABLE_ENTRIES as usize) {
            let id = crate::crypto::random_id()?;
            let name = format!("index/{id}");
            let bytes = crate::index::encode_table(self.repo.keys(), &id, chunk)?;
            if !self.repo.store().create(&name, &bytes)? {
                return Err(err_at(
                    self.repo.location(),
                    ErrorKind::AlreadyExists,
                    format!("{name} exists already"),
                ));
            }
            let t = self.repo.open_table(&name, &id)?;
            self.index.add_table(t);
            self.tables_written += 1;
        }
        Ok(())
    }
}

impl Repository {
    /// Back up `disks` as the next point of `name`: the first point of a NAME stores every
    /// block the repository lacks; later points are made against the NAME's newest point.
    ///
    /// ```
    /// use vdisk_chain::{BackupOptions, DiskSource, InitOptions, PointKind, Repository, Source};
    /// use vdisk_core::MemImage;
    /// # let dir = tempfile::tempdir().unwrap();
    /// let repo = Repository::init(dir.path().join("repo"), &InitOptions::default())?;
    /// let mut bytes = vec![1u8; 1 << 20];
    /// let disk = |b: &Vec<u8>| MemImage::new(b.clone());
    /// let src = |img| DiskSource { image: img, source: Source { identity: "/vm/a.raw".into(), unclean: false }, label: "a.raw".into() };
    /// let d = disk(&bytes);
    /// let first = repo.backup("vm1", &[src(&d)], &BackupOptions::default())?;
    /// assert_eq!((first.point, first.kind), (1, PointKind::Full));
    /// // Sixteen equal blocks: stored once.
    /// assert_eq!(first.blobs_added, 1 + 1);
    /// bytes[70_000] = 9;
    /// let d = disk(&bytes);
    /// let second = repo.backup("vm1", &[src(&d)], &BackupOptions::default())?;
    /// assert_eq!((second.point, second.kind), (2, PointKind::Incremental));
    /// // The changed block, and the new leaf of the disk's index.
    /// assert_eq!(second.blobs_added, 2);
    /// # Ok::<(), vdisk_core::Error>(())
    /// ```
    pub fn backup(
        &self,
        name: &str,
        disks: &[DiskSource<'_>],
        opts: &BackupOptions<'_>,
    ) -> Result<BackupSummary> {
        self.backup_as(name, disks, opts, None)
    }

    pub(crate) fn backup_as(
        &self,
        name: &str,
        disks: &[DiskSource<'_>],
        opts: &BackupOptions<'_>,
        as_point: Option<AsPoint>,
    ) -> Result<BackupSummary> {
        self.check_sources(name, disks, opts)?;
        let reg = Registration::register(self, "backup", Some(name))?;
        let started = now_secs();
        let tag = self.keys().name_tag(name);
        // The NAME's points: the newest valid one is the parent; numbers go on from the
        // highest number any object of the NAME has, valid or not.
        let prefix = format!("points/{tag}-");
        let mut seqs: Vec<u64> = self
            .store()
            .list("points/")?
            .iter()
            .filter(|o| o.name.starts_with(&prefix))
            .filter_map(|o| crate::point::parse_key(&o.name).map(|k| k.1))
            .collect();
        seqs.sort_unstable();
        let mut parent: Option<PointRecord> = None;
        for &s in seqs.iter().rev() {
            if let Ok(p) = self.read_point(&point_key(&tag, s)) {
                if as_point.is_none_or(|a| p.seq < a.seq) {
                    parent = Some(p);
                    break;
                }
            }
        }
        let mut seq = match as_point {
            Some(a) => a.seq,
            None => seqs.last().map_or(1, |s| s + 1),
        };
        if let Some(p) = &parent {
            self.check_identity(name, p, disks, opts.force)?;
        }
        let mut w = BlobWriter::new(self, false)?;
        let mut records = Vec::new();
        let mut bytes_read = 0;
        let mut used_parent = false;
        for (i, d) in disks.iter().enumerate() {
            let old = parent.as_ref().and_then(|p| p.disks.get(i));
            used_parent |= old.is_some();
            let changed = opts.changed.get(i).and_then(Option::as_ref);
            let (root, data_bytes, read) = self.backup_disk(&mut w, d, old, changed, opts)?;
            bytes_read += read;
            records.push(DiskRecord {
                label: d.label.clone(),
                source: d.source.identity.clone(),
                size: d.image.size(),
                root: root.hex(),
                data_bytes,
            });
        }
        w.write_table()?;
        let unix = as_point.map_or(started, |a| a.unix);
        let mut record = PointRecord {
            format: "vdisk-point".into(),
            version: 3,
            name: name.to_string(),
            seq,
            time: rfc3339(unix),
            unix,
            parent: parent.as_ref().map(|p| p.seq),
            block_size: self.block_size(),
            host: as_point
                .and_then(|a| a.host)
                .map(str::to_string)
                .unwrap_or_else(|| {
                    std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .map(|s| s.trim().to_string())
                        .unwrap_or_default()
                }),
            disks: records,
            stats: PointStats {
                bytes_read,
                added_bytes: w.bytes_added,
                added_blobs: w.blobs_added,
            },
        };
        reg.check_fresh()?;
        // The commit: a conditional create. Something foreign at the point's name (a folder,
        // a link, garbage) is stepped over, never replaced or followed.
        loop {
            record.seq = seq;
            record.validate(self.block_size())?;
            let key = point_key(&tag, seq);
            let sealed = record.seal(self.keys(), &key)?;
            if self.store().create(&key, &sealed)? {
                break;
            }
            match self.read_point(&key) {
                Ok(_) => {
                    return Err(err_at(
                        self.location(),
                        ErrorKind::InUse,
                        format!("another backup of \"{name}\" committed point {seq} first; nothing was committed by this run"),
                    ))
                }
                Err(_) if as_point.is_none() && seq < crate::point::MAX_SEQ => seq += 1,
                Err(e) => return Err(e),
            }
        }
        let points = seqs.iter().filter(|&&s| s != seq).count() + 1;
        drop(reg);
        Ok(BackupSummary {
            name: name.to_string(),
            point: seq,
            kind: if used_parent {
                PointKind::Incremental
            } else {
                PointKind::Full
            },
            points,
            disks: disks.len(),
            logical_bytes: disks.iter().map(|d| d.image.size()).sum(),
            bytes_read,
            bytes_added: w.bytes_added,
            blobs_added: w.blobs_added,
        })
    }

    fn check_sources(
        &self,
        name: &str,
        disks: &[DiskSource<'_>],
        opts: &BackupOptions<'_>,
    ) -> Result<()> {
        if !valid_name(name) {
            return Err(Error::invalid(format!(
                "\"{name}\" is not a name for points (1 to 128 characters, no '/' or control characters, no spaces around)"
            )));
        }
        if disks.is_empty() || disks.len() > MAX_DISKS {
            return Err(Error::invalid(format!(
                "a point holds 1 to {MAX_DISKS} disks"
            )));
        }
        for (i, d) in disks.iter().enumerate() {
            if d.image.size() == 0 {
                return Err(Error::invalid(format!(
                    "disk {} is empty (0 bytes): nothing to back up",
                    d.label
                )));
            }
            vdisk_core::check_disk_size(d.image.size())?;
            if disks[..i].iter().any(|o| o.label == d.label) {
                return Err(Error::invalid(format!(
                    "two disks are called \"{}\"; give disks of one point different file names",
                    d.label
                )));
            }
            if d.source.unclean && !opts.force {
                return Err(Error::new(
                    ErrorKind::Unsafe,
                    format!("{}: source was not closed cleanly (uncleanShutdown is set), so it was probably not quiesced", d.label),
                ));
            }
            if let Some(Some(c)) = opts.changed.get(i) {
                if c.size() != d.image.size() {
                    return Err(Error::new(
                        ErrorKind::InvalidArgument,
                        format!(
                            "the changed-block bitmap describes a disk of {} bytes, but the source has {} bytes; it belongs to another disk or another size of this one",
                            c.size(),
                            d.image.size()
                        ),
                    ));
                }
            }
        }
        if let Some(dir) = self.local_dir() {
            let mut p = Protected::new();
            p.add_folder(dir)?;
            if disks
                .iter()
                .any(|d| d.image.files().iter().any(|f| p.contains(f)))
            {
                return Err(err_at(
                    self.location(),
                    ErrorKind::Refused,
                    "the source is a file of this repository; back up a disk, not a point",
                ));
            }
        }
        Ok(())
    }

    /// Refuse disks that are not the ones the NAME's points hold (unless forced).
    fn check_identity(
        &self,
        name: &str,
        parent: &PointRecord,
        disks: &[DiskSource<'_>],
        force: bool,
    ) -> Result<()> {
        if force {
            return Ok(());
        }
        if parent.disks.len() != disks.len() {
            return Err(err_at(
                self.location(),
                ErrorKind::Unsafe,
                format!(
                    "the points of \"{name}\" hold {} disk(s), this backup gives {}",
                    parent.disks.len(),
                    disks.len()
                ),
            ));
        }
        for (old, new) in parent.disks.iter().zip(disks) {
            if old.source != new.source.identity {
                return Err(err_at(
                    self.location(),
                    ErrorKind::Unsafe,
                    format!(
                        "\"{name}\" backs up {}, not {}",
                        old.source, new.source.identity
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Back up one disk against `old` (its entry in the parent point): the root of its
    /// index, its bytes of data and the bytes read.
    fn backup_disk(
        &self,
        w: &mut BlobWriter,
        d: &DiskSource<'_>,
        old: Option<&DiskRecord>,
        changed: Option<&ChangeMap>,
        opts: &BackupOptions<'_>,
    ) -> Result<(BlockId, u64, u64)> {
        let bs = self.block_size();
        let img = d.image;
        let size = img.size();
        let shape = Shape::new(size, bs)?;
        let max = self.max_blob();
        let mut old_tree = match old {
            Some(o) => Some(TreeReader::new(
                Shape::new(o.size, bs)?,
                o.root_id(),
                move |id: &BlockId| self.read_blob(id, max),
            )),
            None => None,
        };
        let old_size = old.map_or(0, |o| o.size);
        // Blocks whose old entries describe the same bytes' extent.
        let usable = |b: u64| {
            old.is_some()
                && if old_size == size {
                    true
                } else {
                    (b + 1) * bs <= old_size.min(size)
                }
        };
        let cbt = match (changed, old) {
            (Some(c), Some(_)) => Some(c.resample(bs)?),
            _ => None,
        };
        if opts.throttle.is_some_and(|t| t.rate().is_some()) {
            img.advise(0, size, Advice::Paced);
        }
        let mut builder = TreeBuilder::new(shape.clone());
        let mut data_bytes = 0u64;
        let mut bytes_read = 0u64;
        let mut next_data: Option<u64> = None;
        for j in 0..shape.leaves() {
            let first = j * FANOUT;
            let n = shape.items(0, j);
            let start = first * bs;
            let end = ((first + n) * bs).min(size);
            let old_leaf_id = match &mut old_tree {
                Some(t) if j < t.shape().leaves() => Some(t.chunk_id(0, j)?),
                _ => None,
            };
            // Which blocks of the leaf to read.
            // Marked blocks the source maps as zero, recorded as zero without a read.
            let mut zeroed: Vec<u64> = Vec::new();
            let to_read: Vec<(u64, u64)> = if let Some(map) = &cbt {
                let all_usable = (first..first + n).all(usable);
                let marked = (first..first + n).any(|b| map.test(b));
                if all_usable && !marked {
                    // Untouched by the changes: the leaf stays as it was, unread.
                    let id = old_leaf_id.unwrap_or(BlockId::ZERO);
                    data_bytes += self.leaf_data_bytes(&mut old_tree, j, id, size)?;
                    builder.push_leaf(id, &mut |c| w.put_chunk(c))?;
                    skipped(opts, end - start);
                    continue;
                }
                let wanted = runs((first..first + n).filter(|&b| map.test(b) || !usable(b)));
                // A marked block the source reads as zero (a hole, a discarded range: QEMU
                // marks those dirty) is not read.
                data_runs(img, wanted, bs, size, &mut zeroed)?
            } else {
                if next_data.is_none_or(|nd| nd < start) {
                    next_data = Some(img.next_data(start)?.unwrap_or(size));
                }
                if next_data.is_some_and(|nd| nd >= end) {
                    builder.push_leaf(BlockId::ZERO, &mut |c| w.put_chunk(c))?;
                    skipped(opts, end - start);
                    continue;
                }
                let mut v: Vec<(u64, u64)> = Vec::new();
                for e in img.allocation(start, end - start)? {
                    if e.allocation == vdisk_core::Allocation::Data {
                        let a = e.start / bs;
                        let b = e.end().div_ceil(bs);
                        match v.last_mut() {
                            Some((_, last_end)) if *last_end >= a => *last_end = (*last_end).max(b),
                            _ => v.push((a, b)),
                        }
                    }
                }
                v
            };
            let old_entries: Option<Vec<LeafEntry>> = match (&mut old_tree, old_leaf_id) {
                (Some(t), Some(_)) => Some(t.leaf(j)?),
                _ => None,
            };
            let mut entries: Vec<LeafEntry> = if cbt.is_some() {
                // Blocks not read keep their old entries.
                (first..first + n)
                    .map(|b| {
                        old_entries
                            .as_ref()
                            .and_then(|o| o.get((b - first) as usize).copied())
                            .unwrap_or(LeafEntry::ZERO)
                    })
                    .collect()
            } else {
                vec![LeafEntry::ZERO; n as usize]
            };
            for &b in &zeroed {
                entries[(b - first) as usize] = LeafEntry::ZERO;
            }
            let tasks: Vec<(u64, u64)> = to_read
                .iter()
                .flat_map(|&(a, b)| {
                    let mut t = Vec::new();
                    let mut s = a;
                    while s < b {
                        let e = (s + TASK_BLOCKS).min(b);
                        t.push((s, e));
                        s = e;
                    }
                    t
                })
                .collect();
            let keys = self.keys();
            let index = &w.index;
            let old_ref = &old_entries;
            let results: Vec<Vec<ReadBlock>> = tasks
                .par_iter()
                .map_init(Vec::new, |buf, &(a, b)| -> Result<Vec<ReadBlock>> {
                    let off = a * bs;
                    let len = (b * bs).min(size) - off;
                    let _once = ReadOnce::new(img, off, len);
                    let data = read_bytes(img, off, len, buf, opts.throttle)?;
                    if let Some(p) = opts.progress {
                        p.read(len);
                    }
                    let mut out = Vec::with_capacity((b - a) as usize);
                    for blk in a..b {
                        let s = ((blk - a) * bs) as usize;
                        let e = (s + bs as usize).min(data.len());
                        let block = &data[s..e];
                        let fp = vdisk_diff::block_hash(block);
                        let prev = old_ref
                            .as_ref()
                            .filter(|_| usable(blk))
                            .and_then(|o| o.get((blk - first) as usize));
                        if let Some(p) = prev.filter(|p| !p.is_zero() && p.fp == fp) {
                            out.push((blk, *p, None));
                            continue;
                        }
                        if is_zero(block) {
                            out.push((blk, LeafEntry::ZERO, None));
                            continue;
                        }
                        let id = keys.block_id(block);
                        let sealed = if index.lookup(&id)?.is_some() {
                            None
                        } else {
                            Some(seal_blob(keys, &id, block)?)
                        };
                        out.push((blk, LeafEntry { id, fp }, sealed));
                    }
                    img.advise(off, len, Advice::Release);
                    Ok(out)
                })
                .collect::<Result<_>>()?;
            for (blk, entry, sealed) in results.into_iter().flatten() {
                bytes_read += (bs).min(size - blk * bs);
                if let Some(s) = sealed {
                    w.put_sealed(entry.id, &s)?;
                }
                entries[(blk - first) as usize] = entry;
            }
            data_bytes += entries
                .iter()
                .enumerate()
                .filter(|(_, e)| !e.is_zero())
                .map(|(i, _)| bs.min(size - (first + i as u64) * bs))
                .sum::<u64>();
            let id = if entries.iter().all(LeafEntry::is_zero) {
                BlockId::ZERO
            } else if old_entries.as_ref() == Some(&entries) {
                old_leaf_id.unwrap_or(BlockId::ZERO)
            } else {
                w.put_chunk(&encode_leaf(&entries))?
            };
            builder.push_leaf(id, &mut |c| w.put_chunk(c))?;
            let leaf_read: u64 = tasks
                .iter()
                .map(|&(a, b)| (b * bs).min(size) - a * bs)
                .sum();
            skipped(opts, (end - start).saturating_sub(leaf_read));
        }
        Ok((builder.finish()?, data_bytes, bytes_read))
    }

    /// Bytes of data of leaf `j` of the old tree (kept as it was).
    fn leaf_data_bytes(
        &self,
        old: &mut Option<TreeReader<'_>>,
        j: u64,
        id: BlockId,
        size: u64,
    ) -> Result<u64> {
        if id.is_zero() {
            return Ok(0);
        }
        let Some(t) = old.as_mut() else { return Ok(0) };
        let bs = self.block_size();
        let first = j * FANOUT;
        Ok(t.leaf(j)?
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.is_zero())
            .map(|(i, _)| bs.min(size.saturating_sub((first + i as u64) * bs)))
            .sum())
    }
}

/// A block read by a backup: its number, its entry, and its sealed blob when the repository
/// lacks it.
type ReadBlock = (u64, LeafEntry, Option<Vec<u8>>);

/// `n` bytes of the disk passed over without a read (unallocated, or unchanged).
fn skipped(opts: &BackupOptions<'_>, n: u64) {
    if let Some(p) = opts.progress {
        p.skipped(n);
    }
}

/// The parts of the block runs `runs` (sorted, of `bs`-byte blocks of a disk of `size` bytes)
/// that `img` maps as data; the blocks it maps as zero (holes, zero ranges) are added to
/// `zeroed`.
///
/// The map is asked for once, over the span of all the runs: a raw file's map costs a
/// `SEEK_DATA`/`SEEK_HOLE` pair per call, and the kernel walks the file's pages to the next
/// hole each time, so a call per run of a scattered bitmap cost more than reading the blocks.
fn data_runs(
    img: &dyn DiskImage,
    runs: Vec<(u64, u64)>,
    bs: u64,
    size: u64,
    zeroed: &mut Vec<u64>,
) -> Result<Vec<(u64, u64)>> {
    let (Some(&(first, _)), Some(&(_, last))) = (runs.first(), runs.last()) else {
        return Ok(Vec::new());
    };
    let span_start = first * bs;
    let span_end = (last * bs).min(size);
    // The data of the span as block runs, in order.
    let mut data: Vec<(u64, u64)> = Vec::new();
    if span_start < span_end {
        for e in img.allocation(span_start, span_end - span_start)? {
            if e.allocation != vdisk_core::Allocation::Data {
                continue;
            }
            let x = e.start / bs;
            let y = e.end().div_ceil(bs);
            if x >= y {
                continue;
            }
            match data.last_mut() {
                Some((_, end)) if *end >= x => *end = (*end).max(y),
                _ => data.push((x, y)),
            }
        }
    }
    let mut out = Vec::new();
    let mut k = 0;
    for (a, b) in runs {
        if a * bs >= size {
            continue;
        }
        let mut at = a;
        while k < data.len() && data[k].1 <= a {
            k += 1;
        }
        let mut i = k;
        while i < data.len() && data[i].0 < b {
            let x = data[i].0.max(a);
            let y = data[i].1.min(b);
            zeroed.extend(at..x);
            out.push((x, y));
            at = y;
            i += 1;
        }
        zeroed.extend(at..b);
    }
    Ok(out)
}

/// Consecutive numbers as `(first, end)` runs.
fn runs(it: impl Iterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = Vec::new();
    for b in it {
        match v.last_mut() {
            Some((_, e)) if *e == b => *e += 1,
            _ => v.push((b, b + 1)),
        }
    }
    v
}

/// `len` bytes of `img` at `off`: from its memory map when it has one and reads are not
/// paced, otherwise read into `buf` (paced).
fn read_bytes<'a>(
    img: &'a dyn DiskImage,
    off: u64,
    len: u64,
    buf: &'a mut Vec<u8>,
    throttle: Option<&Throttle>,
) -> Result<&'a [u8]> {
    let paced = throttle.is_some_and(|t| t.rate().is_some());
    if !paced {
        if let Some(s) = img.mapped(off, len) {
            img.advise(off, len, Advice::Populate);
            return Ok(s);
        }
    }
    buf.clear();
    buf.resize(len as usize, 0);
    match throttle {
        Some(t) if paced => t.paced(len, |o, n| {
            img.read_at(&mut buf[o as usize..(o + n) as usize], off + o)
        })?,
        _ => img.read_at(buf, off)?,
    }
    Ok(&buf[..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdisk_core::MemImage;

    /// `data_runs` against the disk's bytes, block by block: many layouts of data and holes,
    /// runs of every shape, a last block shorter than the others.
    #[test]
    fn data_runs_splits_marked_runs_by_the_map() {
        let bs = 8192u64;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let blocks = 1 + next() % 40;
            let size = blocks * bs - (next() % 2) * 4096;
            let mut bytes = vec![0u8; size as usize];
            for b in 0..blocks {
                if next() % 3 == 0 {
                    // One byte in the block's first or second half (a 4 KiB piece of it).
                    let at = (b * bs + (next() % bs)).min(size - 1);
                    bytes[at as usize] = 1;
                }
            }
            let marked: Vec<u64> = (0..blocks).filter(|_| next() % 2 == 0).collect();
            let img = MemImage::new(bytes.clone());
            let mut zeroed = Vec::new();
            let got = data_runs(&img, runs(marked.iter().copied()), bs, size, &mut zeroed).unwrap();
            let has_data = |b: u64| {
                let s = (b * bs) as usize;
                let e = ((b + 1) * bs).min(size) as usize;
                bytes[s..e].iter().any(|&x| x != 0)
            };
            let want: Vec<u64> = marked.iter().copied().filter(|&b| has_data(b)).collect();
            let want_zero: Vec<u64> = marked.iter().copied().filter(|&b| !has_data(b)).collect();
            let got_blocks: Vec<u64> = got.iter().flat_map(|&(a, b)| a..b).collect();
            assert_eq!(got_blocks, want, "data blocks, marked {marked:?}");
            assert_eq!(runs(got_blocks.iter().copied()).len(), got.len(), "{got:?}");
            zeroed.sort_unstable();
            assert_eq!(zeroed, want_zero, "zeroed blocks, marked {marked:?}");
        }
    }
}
