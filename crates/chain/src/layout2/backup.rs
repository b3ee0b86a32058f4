//! Backing up: a full point the first time, then incremental points, found by hashing the
//! source against the previous point's manifest or taken from a changed-block bitmap.

use std::sync::Mutex;

use rayon::prelude::*;
use vdisk_bitmap::ChangeMap;
use vdisk_core::{
    copy_into, write_delta_from, Advice, CopyOptions, DeltaStats, DeltaTarget, DiskImage, Error,
    ErrorKind, ImageSink, Result, Throttle,
};
use vdisk_diff::{
    block_hash, diff_manifest_each, Manifest, ManifestBytes, ManifestWriter, ScanOptions,
};
use vdisk_image::Image;
use vdisk_io::{CreateOptions, ImageOutput, OutputPolicy, Protected};

use crate::layout2::hashes::{merge_manifest, open_manifest, stored_map, write_manifest};
use crate::layout2::meta::{
    now_rfc3339, DiskIdentity, FileCheck, PointKind, RepoMeta, RestorePoint,
};
use crate::layout2::repo::{repo_err, Repository};
use crate::layout2::{point_format, GRAIN};
use crate::source::Source;

/// Options of a backup.
#[derive(Default)]
pub struct BackupOptions<'a> {
    /// Back up a source that looks unsafe: one whose image says it was not closed cleanly,
    /// or one that is not the disk the repository backs up (the CLI's `--force`).
    pub force: bool,
    /// Changed blocks from the hypervisor (CBT), trusted as a superset of the changes since
    /// the newest point. Its disk size must be the source's.
    pub changed: Option<ChangeMap>,
    /// Read-rate limit.
    pub throttle: Option<&'a Throttle>,
    /// Progress callback (bytes of disk done).
    pub progress: Option<&'a dyn vdisk_core::Progress>,
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

/// Policy for the files of a point: fresh names under the repository's lock (anything a
/// killed run left was removed when the lock was taken), and never one of the source's files.
fn point_policy(src: &dyn DiskImage) -> OutputPolicy {
    let mut protected = Protected::new();
    protected.add_image(src);
    OutputPolicy::replacing().protecting(protected)
}

impl Repository {
    /// Back up the image at `src` (a file of any format with its backing chain, a disk of an
    /// archive: anything an image location converts from), opened with default options: a
    /// full point the first time, an incremental point after.
    ///
    /// ```
    /// use vdisk_chain::layout2::Repository;
    /// # let dir = tempfile::tempdir().unwrap();
    /// let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/chain");
    /// let mut repo = Repository::open_or_create(dir.path().join("repo"))?;
    /// let s = repo.backup(format!("{fixtures}/top.vmdk"), &Default::default())?;
    /// assert_eq!((s.point, s.kind.name()), (1, "full"));
    /// # Ok::<(), vdisk_core::Error>(())
    /// ```
    pub fn backup(
        &mut self,
        src: impl Into<vdisk_image::ImageLocation>,
        opts: &BackupOptions<'_>,
    ) -> Result<BackupSummary> {
        let img = vdisk_image::open(src)?;
        let source = Source::of(&img)?;
        self.backup_image(&img, &source, opts)
    }

    /// Back up `src`, an image already open (or in memory), known to the repository as
    /// `source`: a full point the first time, an incremental point after.
    ///
    /// Nothing changes in the repository unless the whole point was written and synced: a
    /// failure (or a kill) at any instant leaves it as it was.
    ///
    /// ```
    /// use vdisk_bitmap::ChangeMap;
    /// use vdisk_chain::layout2::{BackupOptions, PointKind, Repository};
    /// use vdisk_chain::Source;
    /// use vdisk_core::MemImage;
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// let mut repo = Repository::open_or_create(dir.path().join("repo"))?;
    /// let source = Source { identity: "vm1/disk0".into(), unclean: false };
    /// let mut disk = vec![1u8; 1 << 20];
    ///
    /// let full = repo.backup_image(&MemImage::new(disk.clone()), &source, &BackupOptions::default())?;
    /// assert_eq!((full.point, full.kind), (1, PointKind::Full));
    ///
    /// // Changes are found by hashing the source against the previous point …
    /// disk[300_000] = 2; // grain 4
    /// let second = repo.backup_image(&MemImage::new(disk.clone()), &source, &BackupOptions::default())?;
    /// assert_eq!((second.point, second.kind), (2, PointKind::Incremental));
    /// assert_eq!(repo.points()[1].changed_bytes, 64 << 10);
    ///
    /// // … or taken from the hypervisor's changed-block tracking: only they are read.
    /// disk[900_000] = 3; // grain 13
    /// let mut cbt = ChangeMap::new(1 << 20, 64 << 10)?;
    /// cbt.mark_bytes(900_000, 1)?;
    /// let opts = BackupOptions { changed: Some(cbt), ..Default::default() };
    /// let third = repo.backup_image(&MemImage::new(disk), &source, &opts)?;
    /// assert_eq!((third.point, third.points, third.bytes_read), (3, 3, 64 << 10));
    ///
    /// // Another disk is refused unless insisted on.
    /// let other = Source { identity: "vm2/disk0".into(), unclean: false };
    /// let e = repo.backup_image(&MemImage::new(vec![0; 1 << 20]), &other, &BackupOptions::default());
    /// assert_eq!(e.unwrap_err().kind(), vdisk_core::ErrorKind::Unsafe);
    /// # Ok::<(), vdisk_core::Error>(())
    /// ```
    pub fn backup_image(
        &mut self,
        src: &dyn DiskImage,
        source: &Source,
        opts: &BackupOptions<'_>,
    ) -> Result<BackupSummary> {
        self.writable()?;
        if source.unclean && !opts.force {
            return Err(Error::new(
                ErrorKind::Unsafe,
                "source was not closed cleanly (uncleanShutdown is set), so it was probably not quiesced",
            ));
        }
        if let Some(meta) = &self.meta {
            if meta.disk.source != source.identity && !opts.force {
                return Err(repo_err(
                    &self.dir,
                    ErrorKind::Unsafe,
                    format!("backs up {}, not {}", meta.disk.source, source.identity),
                ));
            }
        }
        if let Some(changed) = &opts.changed {
            if changed.size() != src.size() {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "the changed-block bitmap describes a disk of {} bytes, but the source has {} bytes; it belongs to another disk or another size of this one",
                        changed.size(),
                        src.size()
                    ),
                ));
            }
        }
        let repo_files = {
            let mut p = Protected::new();
            if let Some(dir) = self.store.local_dir() {
                p.add_folder(dir)?;
            }
            p
        };
        if src.files().iter().any(|id| repo_files.contains(id)) {
            return Err(repo_err(
                &self.dir,
                ErrorKind::Refused,
                "the source is a file of this repository; back up a disk, not a point",
            ));
        }
        let mut meta = self.meta.clone().unwrap_or_else(|| {
            RepoMeta::new(
                DiskIdentity {
                    source: source.identity.clone(),
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
        let (kind, parent, bytes_read, manifest_len) = match meta.points.last().cloned() {
            None => {
                let (read, len) = self.write_full(src, &image, &hashes_name, opts)?;
                (PointKind::Full, None, read, len)
            }
            Some(prev) => {
                let (read, len) = self.write_incremental(src, &prev, &image, &hashes_name, opts)?;
                (PointKind::Incremental, Some(prev.point), read, len)
            }
        };
        let (point_img, stored, files) = self.record_point(&image, &stored_name)?;
        let cid = point_img
            .top()
            .link_id()
            .and_then(|l| u32::from_str_radix(&l.value, 16).ok())
            .unwrap_or(0);
        let bytes_written = files.iter().map(|f| f.length).sum::<u64>() + manifest_len;
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

    /// After a point's image is written: open it, write the bitmap of the grains it stores
    /// as `stored_name`, and take the checksums of its files' metadata.
    pub(crate) fn record_point(
        &self,
        image: &str,
        stored_name: &str,
    ) -> Result<(Image, ChangeMap, Vec<FileCheck>)> {
        let img = self.open_image(image)?;
        let stored = stored_map(&img)?;
        self.store.put(stored_name, &stored.encode())?;
        let files = crate::layout2::checksums::file_checks(&*self.store, image)?;
        Ok((img, stored, files))
    }

    /// The first point: the whole disk, hashed on its way into the point. Returns the bytes
    /// read and the manifest's length.
    fn write_full(
        &self,
        src: &dyn DiskImage,
        image: &str,
        hashes_name: &str,
        opts: &BackupOptions<'_>,
    ) -> Result<(u64, u64)> {
        let size = src.size();
        let copts = CreateOptions {
            policy: point_policy(src),
            ..Default::default()
        };
        let out = self.store.image_output(image, &copts.policy)?;
        let inner = vdisk_image::create_in(out, point_format()?, size, &copts)?;
        let copts = CopyOptions {
            throttle: opts.throttle,
            progress: opts.progress,
        };
        write_manifest(&*self.store, hashes_name, size, |manifest| {
            let sink = HashingSink {
                inner,
                manifest,
                src,
            };
            Ok(copy_into(src, Box::new(sink), &copts)?.bytes_read)
        })
    }

    /// A delta link on `prev`: the grains the changed-block bitmap lists, or those whose
    /// hashes differ from `prev`'s manifest. The new manifest is `prev`'s with the changed
    /// grains' hashes (by bitmap), or the scan's hashes of the new disk (by hashing).
    fn write_incremental(
        &self,
        src: &dyn DiskImage,
        prev: &RestorePoint,
        image: &str,
        hashes_name: &str,
        opts: &BackupOptions<'_>,
    ) -> Result<(u64, u64)> {
        let size = src.size();
        let store = &*self.store;
        let old = open_manifest(store, &prev.hashes)?;
        let parent = self.open_point(prev)?;
        let copts = CreateOptions {
            policy: point_policy(src),
            ..Default::default()
        };
        let hint = std::path::PathBuf::from(&prev.image);
        let throttle = opts.throttle;
        if throttle.is_some_and(|t| t.rate().is_some()) {
            src.advise(0, src.size(), Advice::Paced);
        }
        let link = |out: Box<dyn ImageOutput>| {
            vdisk_image::create_delta_in(out, point_format()?, &parent, &hint, size, &copts)
        };
        match &opts.changed {
            Some(cbt) => {
                // Trusted as a superset; blocks the old hashes cannot speak for are added: the
                // new area of a grown disk and the blocks across either end.
                let mut map = cbt.resample(GRAIN)?;
                let edge = prev.size.min(size) / GRAIN;
                map.set_blocks(edge, size.div_ceil(GRAIN));
                let fresh = Mutex::new(Vec::new());
                if let Some(p) = opts.progress {
                    p.skipped(
                        size.saturating_sub(map.count().saturating_mul(GRAIN))
                            .min(size),
                    );
                }
                let on_grain = |g: u64, data: &[u8]| {
                    if let Some(t) = throttle {
                        t.take(data.len() as u64);
                    }
                    if let Some(p) = opts.progress {
                        p.read(data.len() as u64);
                    }
                    let h = block_hash(data);
                    fresh.lock().unwrap_or_else(|e| e.into_inner()).push((g, h));
                };
                let sink = link(store.image_output(image, &copts.policy)?)?;
                let target = DeltaTarget {
                    parent: &parent,
                    new: src,
                    sink,
                    on_block: Some(&on_grain),
                };
                let groups = grain_groups(map.extents(), size);
                let stats = write_delta_from(target, groups)?;
                let mut fresh = fresh.into_inner().unwrap_or_else(|e| e.into_inner());
                fresh.sort_unstable_by_key(|e| e.0);
                let ((), len) = write_manifest(store, hashes_name, size, |m| {
                    merge_manifest(&old, size, &fresh, m)
                })?;
                Ok((stats.bytes_read, len))
            }
            None => {
                let scan = ScanOptions {
                    granularity: GRAIN,
                    throttle: opts.throttle,
                    progress: opts.progress,
                };
                let target = DeltaTarget {
                    parent: &parent,
                    new: src,
                    sink: link(store.image_output(image, &copts.policy)?)?,
                    on_block: None,
                };
                let ((scanned, _), len) = write_manifest(store, hashes_name, size, |m| {
                    hash_and_link(&old, &scan, target, m)
                })?;
                Ok((scanned, len))
            }
        }
    }
}

/// The grains touching `extents` (`(start, length)` in bytes, sorted), in groups.
fn grain_groups(
    extents: impl IntoIterator<Item = (u64, u64)>,
    size: u64,
) -> impl Iterator<Item = Result<Vec<u64>>> {
    let mut grains = extents.into_iter().flat_map(move |(start, len)| {
        let first = start / GRAIN;
        let end = start.saturating_add(len).min(size).div_ceil(GRAIN);
        first..end.max(first)
    });
    std::iter::from_fn(move || {
        let group: Vec<u64> = grains.by_ref().take(256).collect();
        (!group.is_empty()).then_some(Ok(group))
    })
}

/// Hash `src` against the previous point's manifest and write the link of what changed, at
/// the same time: the scan hands each window's changed grains (its granularity is the
/// link's grain) to a writer thread, so the link's writes and their writeback overlap the
/// hashing instead of following it, and pushes the window's hashes into the new manifest.
/// Returns the bytes the scan read and what the writer did.
fn hash_and_link<B: ManifestBytes, W: std::io::Write>(
    old: &Manifest<B>,
    scan: &ScanOptions<'_>,
    target: DeltaTarget<'_>,
    manifest: &mut ManifestWriter<W>,
) -> Result<(u64, DeltaStats)> {
    let src = target.new;
    // A few windows of changes in flight: the scan runs ahead of the writer by at most that.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<u64>>>(4);
    std::thread::scope(|s| {
        let writer = s.spawn(move || write_delta_from(target, rx));
        let mut writer_gone = false;
        let scanned = diff_manifest_each(old, src, scan, &mut |window| {
            for &(b, h) in &window.hashes {
                manifest.push(b, h)?;
            }
            if window.changed.is_empty() {
                return Ok(());
            }
            tx.send(Ok(window.changed)).map_err(|_| {
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

/// Wraps a point's sink: hashes every grain on its way in (in parallel) into the manifest,
/// then lets the source drop its pages of what was stored (a mapped source would otherwise
/// stay resident, and a backup's memory grow with the disk).
struct HashingSink<'a, W: std::io::Write> {
    inner: Box<dyn ImageSink>,
    manifest: &'a mut ManifestWriter<W>,
    src: &'a dyn DiskImage,
}

impl<W: std::io::Write + Send> ImageSink for HashingSink<'_, W> {
    fn block_size(&self) -> u64 {
        self.inner.block_size()
    }
    fn put(&mut self, blocks: &[(u64, &[u8])]) -> Result<()> {
        let bs = self.inner.block_size();
        let hashed: Vec<(u64, u128)> = blocks
            .par_iter()
            .map(|&(off, data)| (off / bs, block_hash(data)))
            .collect();
        for (b, h) in hashed {
            self.manifest.push(b, h)?;
        }
        self.inner.put(blocks)?;
        if let (Some(first), Some(last)) = (blocks.first(), blocks.last()) {
            let end = last.0 + last.1.len() as u64;
            self.src
                .advise(first.0, end.saturating_sub(first.0), Advice::Release);
        }
        Ok(())
    }
    fn finish(self: Box<Self>) -> Result<()> {
        self.inner.finish()
    }
}
