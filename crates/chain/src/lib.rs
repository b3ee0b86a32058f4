//! vdisk-chain: backup repositories.
//!
//! A repository is a folder holding the restore points of one disk: a full point and
//! incremental points, each a twoGbMaxExtentSparse VMDK (a small descriptor plus sparse
//! extents) linked to the one before by parentFileNameHint and parentCID, so qemu-img or
//! VMware opens any point directly. Beside them, vdisk keeps per point a hash manifest of the
//! disk (one xxh3-128 per grain), a bitmap of the grains the point stores, and checksums of
//! its files' metadata; and `vdisk-repo.json`, the list of points.
//!
//! Every run writes new files under names nothing refers to yet, syncs them, and only then
//! switches `vdisk-repo.json` atomically. A run killed at any instant leaves the repository as
//! it was; the files it left behind are removed by the next run.

mod lock;
mod meta;

#[doc(hidden)]
pub mod fuzzing;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;
use vdisk_bitmap::ChangeMap;
use vdisk_core::{DiskImage, Error, ErrorKind, Result, Throttle};
use vdisk_diff::{block_hash, diff_manifest_each, Manifest, ManifestWriter, ScanOptions};
use vdisk_vmdk::convert::{convert, copy_into, ConvertOptions, ConvertStats, Target};
use vdisk_vmdk::writer::{
    self, write_delta_link, write_delta_link_from, ImageSink, LinkStats, LinkTarget, Subformat,
    WriteOptions,
};
use vdisk_vmdk::{Descriptor, SparseHeader, VmdkImage};

pub use lock::{RepoLock, LOCK_FILE};
pub use meta::{
    now_rfc3339, DiskIdentity, FileCheck, PointKind, RepoMeta, RestorePoint, META_FILE,
};

/// Points are written as split sparse VMDKs: their descriptors are small separate files, which
/// prune can rewrite atomically when a link's parent becomes a synthetic full.
const POINT_FORMAT: Subformat = Subformat::TwoGbMaxExtentSparse;
/// Grain size of the points, and so the block size of hashes and bitmaps.
const GRAIN: u64 = writer::GRAIN_SECTORS * 512;

/// What the source of a backup is, as far as the repository cares.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    /// A name for the disk that stays the same across backups (its canonical path).
    pub identity: String,
    /// Whether its header says it was not closed cleanly (not quiesced).
    pub unclean: bool,
}

/// Options of a backup.
#[derive(Default)]
pub struct BackupOptions<'a> {
    /// Back up a source that looks unsafe (unclean, or another disk's).
    pub force: bool,
    /// Changed blocks from the hypervisor (CBT), trusted as a superset of the changes.
    pub changed: Option<ChangeMap>,
    /// Read-rate limit.
    pub throttle: Option<&'a Throttle>,
    /// Progress callback (bytes of disk done).
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
}

/// What a backup did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupSummary {
    /// The new point's number.
    pub point: u64,
    /// Full or incremental.
    pub kind: PointKind,
    /// Points in the repository now.
    pub points: usize,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Bytes written to the repository.
    pub bytes_written: u64,
}

/// What verify found about one point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointReport {
    /// The point.
    pub point: u64,
    /// Problems with the point's own files.
    pub problems: Vec<String>,
    /// The earliest damaged point this one depends on (itself excluded).
    pub depends_on_damaged: Option<u64>,
}

impl PointReport {
    /// Whether the point restores correctly.
    pub fn sound(&self) -> bool {
        self.problems.is_empty() && self.depends_on_damaged.is_none()
    }
}

/// What `prune` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneSummary {
    /// Points folded into the new base.
    pub folded: usize,
    /// Bytes of files removed.
    pub bytes_freed: u64,
}

/// An open, locked repository.
pub struct Repository {
    dir: PathBuf,
    meta: Option<RepoMeta>,
    _lock: RepoLock,
}

fn repo_err(dir: &Path, kind: ErrorKind, msg: impl Into<String>) -> Error {
    Error::new(kind, msg).with_path(dir)
}

impl Repository {
    /// Open an existing repository (locked while the value lives).
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(repo_err(
                dir,
                ErrorKind::NotFound,
                "no repository here (not a folder)",
            ));
        }
        if !dir.join(META_FILE).exists() {
            return Err(repo_err(
                dir,
                ErrorKind::InvalidFormat,
                format!("not a vdisk repository (no {META_FILE})"),
            ));
        }
        let lock = RepoLock::acquire(dir)?;
        let meta = Self::load(dir)?;
        Ok(Repository {
            dir: dir.to_path_buf(),
            meta: Some(meta),
            _lock: lock,
        })
    }

    /// Open a repository to back up into, creating the folder if needed. A folder that holds
    /// other files and no repository is refused.
    pub fn open_or_create(dir: &Path) -> Result<Self> {
        if dir.join(META_FILE).exists() {
            return Self::open(dir);
        }
        if dir.exists() {
            let foreign = std::fs::read_dir(dir)
                .map_err(|e| Error::io("cannot list", e).with_path(dir))?
                .filter_map(|e| e.ok())
                .any(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n != LOCK_FILE && !n.starts_with("point-") && !n.ends_with(".vdisk-partial")
                });
            if foreign {
                return Err(repo_err(
                    dir,
                    ErrorKind::Refused,
                    "is not a vdisk repository and holds other files; back up into a new or empty folder",
                ));
            }
        } else {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io("cannot create the repository", e).with_path(dir))?;
        }
        let lock = RepoLock::acquire(dir)?;
        let mut repo = Repository {
            dir: dir.to_path_buf(),
            meta: None,
            _lock: lock,
        };
        repo.clean_up()?;
        Ok(repo)
    }

    fn load(dir: &Path) -> Result<RepoMeta> {
        let path = dir.join(META_FILE);
        let bytes =
            std::fs::read(&path).map_err(|e| Error::io("cannot read", e).with_path(&path))?;
        RepoMeta::decode(&bytes).map_err(|e| e.with_path(&path))
    }

    /// The metadata (`None` before the first backup).
    pub fn meta(&self) -> Option<&RepoMeta> {
        self.meta.as_ref()
    }

    /// The repository folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The point numbered `n`, or the newest.
    pub fn point(&self, n: Option<u64>) -> Result<&RestorePoint> {
        let meta = self
            .meta
            .as_ref()
            .ok_or_else(|| repo_err(&self.dir, ErrorKind::NotFound, "repository has no points"))?;
        match n {
            Some(n) => meta.point(n).ok_or_else(|| {
                let have: Vec<String> = meta.points.iter().map(|p| p.point.to_string()).collect();
                repo_err(
                    &self.dir,
                    ErrorKind::NotFound,
                    format!("no point {n} (points: {})", have.join(", ")),
                )
            }),
            None => meta.points.last().ok_or_else(|| {
                repo_err(&self.dir, ErrorKind::NotFound, "repository has no points")
            }),
        }
    }

    /// Open a point's image (its chain included).
    pub fn open_point(&self, p: &RestorePoint) -> Result<VmdkImage> {
        VmdkImage::open(&self.path(&p.image))
    }

    /// After a point's image is written: open it, write the bitmap of the grains it stores
    /// as `stored_name`, and take the checksums of its files' metadata.
    fn record_point(
        &self,
        image: &str,
        stored_name: &str,
    ) -> Result<(VmdkImage, ChangeMap, Vec<FileCheck>)> {
        let img = VmdkImage::open(&self.path(image))?;
        let stored = stored_map(&img)?;
        replace_file(&self.path(stored_name), &stored.encode())?;
        let files = file_checks(&self.dir, image)?;
        Ok((img, stored, files))
    }

    /// Switch the metadata: written under a temporary name, synced, renamed.
    fn commit(&mut self, meta: RepoMeta) -> Result<()> {
        replace_file(&self.path(META_FILE), &meta.encode())?;
        self.meta = Some(meta);
        self.clean_up()
    }

    /// Remove what runs left behind: files with our names that the metadata does not list
    /// (written by a run killed before its switch, or replaced by a prune), and temporaries.
    fn clean_up(&mut self) -> Result<()> {
        let mut keep: HashSet<String> = HashSet::new();
        if let Some(meta) = &self.meta {
            for p in &meta.points {
                keep.extend([p.image.clone(), p.hashes.clone(), p.stored.clone()]);
                keep.extend(p.files.iter().map(|f| f.name.clone()));
            }
        }
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::io("cannot list", e).with_path(&self.dir))?;
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = name.starts_with("point-")
                || (name.starts_with('.') && name.ends_with(".vdisk-partial"));
            if ours && !keep.contains(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    /// Back up `src`: a full point the first time, an incremental point after.
    pub fn backup(
        &mut self,
        src: &dyn DiskImage,
        info: &SourceInfo,
        opts: &BackupOptions<'_>,
    ) -> Result<BackupSummary> {
        if info.unclean && !opts.force {
            return Err(Error::new(
                ErrorKind::Refused,
                "source was not closed cleanly (uncleanShutdown is set), so it was probably not quiesced; pass --force to back it up anyway",
            ));
        }
        if let Some(meta) = &self.meta {
            if meta.disk.source != info.identity && !opts.force {
                return Err(repo_err(
                    &self.dir,
                    ErrorKind::Refused,
                    format!(
                        "backs up {}, not {}; pass --force if this is the same disk",
                        meta.disk.source, info.identity
                    ),
                ));
            }
        }
        let mut meta = self.meta.clone().unwrap_or_else(|| {
            RepoMeta::new(
                DiskIdentity {
                    source: info.identity.clone(),
                    size: src.size(),
                },
                GRAIN,
            )
        });
        let n = meta.next_point;
        let image = format!("point-{n:06}.vmdk");
        let hashes_name = format!("point-{n:06}.hashes");
        let stored_name = format!("point-{n:06}.stored");
        let size = src.size();
        let wopts = WriteOptions::default();
        let (kind, parent, bytes_read, hashes) = match meta.points.last().cloned() {
            None => {
                let (stats, hashes) = self.write_full(src, &image, &wopts, opts)?;
                (PointKind::Full, None, stats.bytes_read, hashes)
            }
            Some(prev) => {
                let (read, hashes) = self.write_incremental(src, &prev, &image, opts)?;
                (PointKind::Incremental, Some(prev.point), read, hashes)
            }
        };
        let manifest = manifest_bytes(size, &hashes)?;
        replace_file(&self.path(&hashes_name), &manifest)?;
        let (point_img, stored, files) = self.record_point(&image, &stored_name)?;
        let cid = point_img.layers()[0].descriptor().cid.unwrap_or(0);
        let bytes_written = files
            .iter()
            .filter_map(|f| std::fs::metadata(self.path(&f.name)).ok())
            .map(|m| m.len())
            .sum::<u64>()
            + manifest.len() as u64;
        meta.points.push(RestorePoint {
            point: n,
            image,
            kind,
            created: now_rfc3339(),
            size,
            changed_bytes: stored.changed_bytes(),
            parent,
            cid,
            hashes: hashes_name,
            stored: stored_name,
            files,
        });
        meta.next_point = n + 1;
        let points = meta.points.len();
        self.commit(meta)?;
        Ok(BackupSummary {
            point: n,
            kind,
            points,
            bytes_read,
            bytes_written,
        })
    }

    fn write_full(
        &self,
        src: &dyn DiskImage,
        image: &str,
        wopts: &WriteOptions,
        opts: &BackupOptions<'_>,
    ) -> Result<(ConvertStats, Vec<u128>)> {
        let size = src.size();
        let inner = writer::create(&self.path(image), size, POINT_FORMAT, wopts)?;
        let hashes = Mutex::new(zero_hashes(size));
        let sink = HashingSink {
            inner,
            hashes: &hashes,
        };
        let copts = ConvertOptions {
            throttle: opts.throttle,
            progress: opts.progress,
            ..Default::default()
        };
        let stats = copy_into(src, Box::new(sink), &copts)?;
        Ok((
            stats,
            hashes.into_inner().unwrap_or_else(|e| e.into_inner()),
        ))
    }

    fn write_incremental(
        &self,
        src: &dyn DiskImage,
        prev: &RestorePoint,
        image: &str,
        opts: &BackupOptions<'_>,
    ) -> Result<(u64, Vec<u128>)> {
        let size = src.size();
        let manifest_file = vdisk_raw::MappedFile::open(&self.path(&prev.hashes))?;
        let bytes = manifest_file.bytes().ok_or_else(|| {
            Error::unsupported("cannot map the manifest").with_path(self.path(&prev.hashes))
        })?;
        let old = Manifest::decode(bytes).map_err(|e| e.with_path(self.path(&prev.hashes)))?;
        // The new point's hashes: the old ones, with every grain the link reads replaced.
        let mut hashes = zero_hashes(size);
        for (b, h) in hashes.iter_mut().enumerate() {
            let b = b as u64;
            if b < old.block_count() && (b + 1) * GRAIN <= prev.size.min(size) {
                if let Some(old_h) = old.hash(b) {
                    *h = old_h;
                }
            }
        }
        let fresh = Mutex::new(Vec::new());
        let throttle = opts.throttle;
        let on_grain = |g: u64, data: &[u8]| {
            if let Some(t) = throttle {
                t.take(data.len() as u64);
            }
            let h = block_hash(data);
            fresh.lock().unwrap_or_else(|e| e.into_inner()).push((g, h));
        };
        let parent_path = self.path(&prev.image);
        let parent = self.open_point(prev)?;
        let target = LinkTarget {
            parent_path: &parent_path,
            parent: &parent,
            subformat: POINT_FORMAT,
            opts: &WriteOptions::default(),
            on_grain: Some(&on_grain),
        };
        let dst = self.path(image);
        let (scanned, stats) = match &opts.changed {
            Some(cbt) => {
                // Trusted as a superset; blocks the old hashes cannot speak for are added: the
                // new area of a grown disk and the blocks across either end.
                let mut map = cbt.resample(GRAIN)?.resize(size)?;
                let edge = prev.size.min(size) / GRAIN;
                map.set_blocks(edge, size.div_ceil(GRAIN));
                let extents: Vec<(u64, u64)> = map.extents().collect();
                (0, write_delta_link(&target, src, &extents, &dst)?)
            }
            None => {
                let scan = ScanOptions {
                    granularity: GRAIN,
                    throttle: opts.throttle,
                    progress: opts.progress,
                };
                hash_and_link(&old, src, &scan, &target, &dst)?
            }
        };
        let read = scanned + stats.bytes_read;
        for (g, h) in fresh.into_inner().unwrap_or_else(|e| e.into_inner()) {
            if let Some(slot) = hashes.get_mut(g as usize) {
                *slot = h;
            }
        }
        Ok((read, hashes))
    }

    /// Write point `n` (the newest by default) as a disk image at `dst`.
    pub fn restore(
        &self,
        n: Option<u64>,
        dst: &Path,
        target: Target,
        opts: &ConvertOptions<'_>,
    ) -> Result<ConvertStats> {
        let p = self.point(n)?;
        let img = self.open_point(p)?;
        convert(&img, dst, target, opts)
    }

    /// Check point `n` and every point it depends on, or all points: stored grains against
    /// the hashes kept at backup time, file metadata against its checksums, the chain's links.
    /// Each stored grain is read once, from the file that stores it.
    pub fn verify(&self, n: Option<u64>) -> Result<Vec<PointReport>> {
        let Some(meta) = &self.meta else {
            return Ok(Vec::new());
        };
        let upto = match n {
            Some(n) => {
                self.point(Some(n))?;
                n
            }
            None => u64::MAX,
        };
        let mut reports = Vec::new();
        let mut first_damaged: Option<u64> = None;
        for p in meta.points.iter().filter(|p| p.point <= upto) {
            let problems = self.verify_point(p, meta);
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

    fn verify_point(&self, p: &RestorePoint, meta: &RepoMeta) -> Vec<String> {
        let mut problems = Vec::new();
        for f in &p.files {
            match std::fs::metadata(self.path(&f.name)) {
                Ok(m) if m.len() != f.length => problems.push(format!(
                    "{}: file is {} bytes, it was {} at backup",
                    f.name,
                    m.len(),
                    f.length
                )),
                _ => {}
            }
            match read_prefix(&self.path(&f.name), f.bytes) {
                Ok(bytes) if crc32fast::hash(&bytes) == f.crc32 => {}
                Ok(_) => problems.push(format!("{}: metadata does not match its checksum", f.name)),
                Err(e) => problems.push(e.to_string()),
            }
        }
        let manifest_bytes = std::fs::read(self.path(&p.hashes));
        let manifest = match &manifest_bytes {
            Ok(b) => Manifest::decode(b).map_err(|e| format!("{}: {}", p.hashes, e.message())),
            Err(e) => Err(format!("{}: {e}", p.hashes)),
        };
        let stored = std::fs::read(self.path(&p.stored))
            .map_err(|e| format!("{}: {e}", p.stored))
            .and_then(|b| {
                ChangeMap::decode(&b).map_err(|e| format!("{}: {}", p.stored, e.message()))
            });
        let img = self.open_point(p).map_err(|e| e.to_string());
        let (manifest, stored, img) = match (manifest, stored, img) {
            (Ok(m), Ok(s), Ok(i)) => (m, s, i),
            (m, s, i) => {
                problems.extend(m.err());
                problems.extend(s.err());
                problems.extend(i.err());
                return problems;
            }
        };
        // The link goes to the right parent.
        if let Some(parent) = p.parent.and_then(|n| meta.point(n)) {
            let linked = img.layers().get(1).map(|l| l.path().to_path_buf());
            if linked.as_deref() != Some(self.path(&parent.image).as_path()) {
                problems.push(format!(
                    "links to {:?} instead of point {}",
                    linked, parent.point
                ));
            }
        }
        // The point stores exactly the grains it stored at backup time...
        match stored_map(&img) {
            Ok(now) if now == stored => {}
            Ok(_) => problems
                .push("the grains the point stores differ from those recorded at backup".into()),
            Err(e) => problems.push(e.to_string()),
        }
        // ...and each holds what was hashed then.
        let blocks: Vec<u64> = stored
            .runs()
            .flat_map(|(first, n)| first..first + n)
            .collect();
        let size = img.layers()[0].size();
        let bad: Vec<String> = blocks
            .par_chunks(64)
            .flat_map_iter(|chunk| {
                let mut buf = vec![0u8; GRAIN as usize];
                let mut out = Vec::new();
                for &b in chunk {
                    let off = b * GRAIN;
                    let len = GRAIN.min(size.saturating_sub(off)) as usize;
                    let ok = img
                        .read_layer_only(0, &mut buf[..len], off)
                        .map(|_| manifest.hash(b) == Some(block_hash(&buf[..len])));
                    match ok {
                        Ok(true) => {}
                        Ok(false) => out.push(format!(
                            "grain {b} (bytes {off}..{}) does not match its hash",
                            off + len as u64
                        )),
                        Err(e) => out.push(format!("grain {b}: {e}")),
                    }
                }
                out
            })
            .collect();
        let n_bad = bad.len();
        problems.extend(bad.into_iter().take(10));
        if n_bad > 10 {
            problems.push(format!("… and {} more damaged grains", n_bad - 10));
        }
        problems
    }

    /// Fold the oldest points into the base (a synthetic full) so that `keep` remain. Kept
    /// points keep their numbers and restore to what they did before.
    pub fn prune(&mut self, keep: usize, opts: &ConvertOptions<'_>) -> Result<PruneSummary> {
        if keep == 0 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "--keep must be at least 1",
            ));
        }
        let Some(meta) = self.meta.clone() else {
            return Ok(PruneSummary {
                folded: 0,
                bytes_freed: 0,
            });
        };
        if meta.points.len() <= keep {
            return Ok(PruneSummary {
                folded: 0,
                bytes_freed: 0,
            });
        }
        let fold = meta.points.len() - keep;
        let base = meta.points[fold].clone();
        let generation = meta.generation;
        let before = self.usage();

        // The synthetic full: the base point's whole disk, with the base's CID so the link
        // above it stays valid.
        let full_name = format!("point-{:06}.g{generation}.vmdk", base.point);
        let img = self.open_point(&base)?;
        let wopts = WriteOptions {
            cid: Some(base.cid),
            ..Default::default()
        };
        let sink = writer::create(&self.path(&full_name), img.size(), POINT_FORMAT, &wopts)?;
        copy_into(&img, sink, opts)?;
        let stored_name = format!("point-{:06}.g{generation}.stored", base.point);
        let (_, stored, files) = self.record_point(&full_name, &stored_name)?;
        let mut new_base = base.clone();
        new_base.image = full_name.clone();
        new_base.kind = PointKind::Full;
        new_base.parent = None;
        new_base.stored = stored_name;
        new_base.changed_bytes = stored.changed_bytes();
        new_base.files = files;

        // Every kept point above the base gets a new descriptor naming its parent's new name
        // (the base is now the synthetic full). Their data files stay as they are; the old
        // descriptors stay valid until the metadata switch, so a run killed before it leaves
        // every old point whole.
        let mut parent_name = full_name.clone();
        let mut points = vec![new_base];
        for child in meta.points.iter().skip(fold + 1) {
            let old_path = self.path(&child.image);
            let old = std::fs::read(&old_path)
                .map_err(|e| Error::io("cannot read", e).with_path(&old_path))?;
            let mut d = Descriptor::parse(&old).map_err(|e| e.with_path(&old_path))?;
            d.parent_hint = Some(PathBuf::from(&parent_name));
            let name = format!("point-{:06}.g{generation}.vmdk", child.point);
            replace_file(&self.path(&name), d.render().as_bytes())?;
            let mut c = child.clone();
            c.files.retain(|f| f.name != child.image);
            c.files.insert(0, file_checks(&self.dir, &name)?.remove(0));
            c.image = name.clone();
            parent_name = name;
            points.push(c);
        }
        let mut next = meta.clone();
        next.points = points;
        next.generation = generation + 1;
        self.commit(next)?;
        let after = self.usage();
        Ok(PruneSummary {
            folded: fold,
            bytes_freed: before.saturating_sub(after),
        })
    }

    /// Bytes the repository's files take on disk.
    pub fn usage(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.blocks() * 512)
                    .sum()
            })
            .unwrap_or(0)
    }
}

/// Hash `src` against the previous point's manifest and write the link of what changed, at
/// the same time: the scan hands each window's changed grains (its granularity is the
/// link's grain) to a writer thread, so the link's writes and their writeback overlap the
/// hashing instead of following it. Returns the bytes the scan read and what the writer did.
fn hash_and_link(
    old: &Manifest<'_>,
    src: &dyn DiskImage,
    scan: &ScanOptions<'_>,
    target: &LinkTarget<'_>,
    dst: &Path,
) -> Result<(u64, LinkStats)> {
    // A few windows of changes in flight: the scan runs ahead of the writer by at most that.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<u64>>>(4);
    std::thread::scope(|s| {
        let writer = s.spawn(move || write_delta_link_from(target, src, rx, dst));
        let mut writer_gone = false;
        let scanned = diff_manifest_each(old, src, scan, &mut |grains| {
            tx.send(Ok(grains)).map_err(|_| {
                writer_gone = true;
                Error::new(ErrorKind::Io, "the link writer stopped")
            })
        });
        if scanned.is_err() && !writer_gone {
            // Tell the writer to drop its partial link rather than finish it.
            let _ = tx.send(Err(Error::new(ErrorKind::Io, "the scan failed")));
        }
        drop(tx);
        let written = writer
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        match (scanned, written) {
            (Ok(report), Ok(stats)) => Ok((report.bytes_read, stats)),
            // A scan stopped by the writer: the writer's error says why.
            (Err(_), Err(e)) if writer_gone => Err(e),
            (Err(e), _) | (Ok(_), Err(e)) => Err(e),
        }
    })
}

/// Wraps a point's sink: hashes every grain on its way in (in parallel), for the manifest.
struct HashingSink<'a> {
    inner: Box<dyn ImageSink>,
    hashes: &'a Mutex<Vec<u128>>,
}

impl ImageSink for HashingSink<'_> {
    fn block_size(&self) -> u64 {
        self.inner.block_size()
    }
    fn put(&mut self, blocks: &[(u64, &[u8])]) -> Result<()> {
        let bs = self.inner.block_size();
        let hashed: Vec<(u64, u128)> = blocks
            .par_iter()
            .map(|&(off, data)| (off / bs, block_hash(data)))
            .collect();
        {
            let mut h = self.hashes.lock().unwrap_or_else(|e| e.into_inner());
            for (b, v) in hashed {
                if let Some(slot) = h.get_mut(b as usize) {
                    *slot = v;
                }
            }
        }
        self.inner.put(blocks)
    }
    fn finish(self: Box<Self>) -> Result<()> {
        self.inner.finish()
    }
}

/// Hashes of an all-zero disk of `size` bytes, one per grain.
fn zero_hashes(size: u64) -> Vec<u128> {
    let full = block_hash(&vec![0u8; GRAIN as usize]);
    let blocks = size.div_ceil(GRAIN);
    let mut v = vec![full; blocks as usize];
    let tail = size % GRAIN;
    if tail != 0 {
        if let Some(last) = v.last_mut() {
            *last = block_hash(&vec![0u8; tail as usize]);
        }
    }
    v
}

fn manifest_bytes(size: u64, hashes: &[u128]) -> Result<Vec<u8>> {
    let mut w = ManifestWriter::new(Vec::new(), size, GRAIN)?;
    w.push(hashes)?;
    w.finish()
}

/// The grains a point's own files store (data or zeroed).
fn stored_map(img: &VmdkImage) -> Result<ChangeMap> {
    let mut map = ChangeMap::new(img.layers()[0].size(), GRAIN)?;
    img.for_each_stored(0, |e| map.mark_bytes(e.start, e.length))?;
    Ok(map)
}

/// Checksums of the metadata of a point's files: the whole descriptor, and each sparse
/// extent's header, descriptor area, directories and tables (all before its first grain).
fn file_checks(dir: &Path, image: &str) -> Result<Vec<FileCheck>> {
    let dpath = dir.join(image);
    let text = std::fs::read(&dpath).map_err(|e| Error::io("cannot read", e).with_path(&dpath))?;
    let len = text.len() as u64;
    let mut out = vec![FileCheck {
        name: image.to_string(),
        bytes: len,
        crc32: crc32fast::hash(&text),
        length: len,
    }];
    let d = Descriptor::parse(&text).map_err(|e| e.with_path(&dpath))?;
    for e in &d.extents {
        let Some(file) = &e.file else { continue };
        let name = file.to_string_lossy().into_owned();
        let head = read_prefix(&dir.join(&name), 512)?;
        let h = SparseHeader::parse(&head).map_err(|e| e.with_path(dir.join(&name)))?;
        let bytes = h.overhead * 512;
        let data = read_prefix(&dir.join(&name), bytes)?;
        let length = std::fs::metadata(dir.join(&name))
            .map_err(|e| Error::io("cannot stat", e).with_path(dir.join(&name)))?
            .len();
        out.push(FileCheck {
            name,
            bytes,
            crc32: crc32fast::hash(&data),
            length,
        });
    }
    Ok(out)
}

/// The first `n` bytes of a file (an error if it is shorter).
fn read_prefix(path: &Path, n: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| Error::io("cannot open", e).with_path(path))?;
    let mut buf = Vec::new();
    f.take(n)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("cannot read", e).with_path(path))?;
    if (buf.len() as u64) < n {
        return Err(Error::corrupt("file is shorter than its recorded metadata").with_path(path));
    }
    Ok(buf)
}

/// Names are fresh per run, so an existing file is a leftover of a killed run: replace it.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    vdisk_raw::write_file(path, bytes, true)
}
