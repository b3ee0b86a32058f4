//! Copying points between repositories (folders and object stores, either way), and bringing
//! a layout-2 repository's points into layout 3.
//!
//! Only what the destination lacks moves: the blobs it has (by id) are never sent. Between
//! two repositories that share their key (a destination made by `sync` itself), sealed blobs
//! move as they are; between repositories with different keys, blocks are opened, checked,
//! and hashed and sealed again with the destination's keys. Every pack written is read back
//! from the destination and checked before anything refers to it, and its table is written
//! at once: a sync killed at any instant resumes where it was (what it copied counts), and
//! the destination's points appear only once whole, each a conditional create.

use vdisk_core::{ErrorKind, Result};

use crate::backup::{AsPoint, BackupOptions, BlobWriter, DiskSource};
use crate::config::{Config, KeyFile, CONFIG};
use crate::crypto::BlockId;
use crate::locks::Registration;
use crate::point::point_key;
use crate::repository::{err_at, Access, Point, Repository};
use crate::source::Source;
use crate::store::{self, Layout, Location};
use crate::tree::{decode_leaf, Shape, TreeReader};
use crate::verify::VerifyOptions;

/// What a sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncSummary {
    /// Points of the source looked at.
    pub points: usize,
    /// Points copied now.
    pub points_copied: usize,
    /// Points the destination had already.
    pub points_present: usize,
    /// Blobs copied.
    pub blobs_copied: u64,
    /// Bytes of blobs copied (as stored in the destination).
    pub bytes_copied: u64,
}

impl Repository {
    /// Open the repository at `location` to copy `src` into, making it if nothing is there:
    /// then it shares `src`'s block size and key (so sealed blobs move as they are), and, if
    /// `src` is encrypted, opens with the same password (`password`).
    pub fn open_or_init_copy(
        location: impl Into<Location>,
        src: &Repository,
        access: &Access<'_>,
        password: Option<String>,
    ) -> Result<Repository> {
        let loc = location.into();
        let (objects, legacy) = store::open_both(&loc)?;
        match store::layout_of(&*objects, &*legacy)? {
            Layout::None => {}
            Layout::Three => return Repository::open_in(objects, access),
            Layout::Two => {
                return Err(err_at(
                    objects.location(),
                    ErrorKind::Refused,
                    "holds a layout-2 repository; sync into a new location",
                ))
            }
        }
        // A new repository with the source's key.
        let root = objects.location().to_path_buf();
        if let Some(dir) = objects.folder() {
            if std::fs::read_dir(dir).is_ok_and(|mut rd| rd.next().is_some()) {
                return Err(err_at(&root, ErrorKind::Refused, "is not a vdisk repository and holds other files; sync into a new or empty folder"));
            }
        } else if !objects.list("")?.is_empty() {
            return Err(err_at(
                &root,
                ErrorKind::Refused,
                "is not a vdisk repository and holds other objects; sync under a new prefix",
            ));
        }
        objects.prepare()?;
        let config = Config::copy_of(&src.inner.config, &src.inner.master)?;
        if config.encrypted {
            let pw = password.ok_or_else(|| {
                err_at(
                    &root,
                    ErrorKind::Refused,
                    "the copy of an encrypted repository needs a password",
                )
            })?;
            let key = KeyFile::new(&src.inner.master, pw.as_bytes(), &config.id)?;
            objects.create(&KeyFile::name(&key.id), &key.encode())?;
        }
        if !objects.create(CONFIG, &config.encode())? {
            return Repository::open_in(objects, access);
        }
        Repository::open_in(objects, access)
    }

    /// Make this repository hold the points of `src` (of `name`, or all) it lacks.
    pub fn sync_from(
        &self,
        src: &Repository,
        name: Option<&str>,
        opts: &VerifyOptions<'_>,
    ) -> Result<SyncSummary> {
        if self.id() == src.id() {
            return Err(err_at(
                self.location(),
                ErrorKind::Refused,
                "source and destination are the same repository",
            ));
        }
        let reg = Registration::register(self, "sync", None)?;
        let want: Vec<Point> = src
            .points()?
            .points
            .into_iter()
            .filter(|p| name.is_none_or(|n| p.record.name == n))
            .collect();
        if want.is_empty() {
            return Err(err_at(
                src.location(),
                ErrorKind::NotFound,
                match name {
                    Some(n) => format!("has no points of \"{n}\""),
                    None => "repository has no points".into(),
                },
            ));
        }
        let mut sum = SyncSummary {
            points: want.len(),
            ..Default::default()
        };
        let same_ids = self.keys().same_ids(src.keys()) && self.block_size() == src.block_size();
        let same_seal = same_ids && self.keys().same_seal(src.keys());
        for p in &want {
            let key = point_key(&self.keys().name_tag(&p.record.name), p.record.seq);
            match self.read_point(&key) {
                Ok(have) if have.unix == p.record.unix && have.disks == p.record.disks => {
                    sum.points_present += 1;
                    continue;
                }
                Ok(have) if have.unix == p.record.unix && !same_ids => {
                    sum.points_present += 1;
                    continue;
                }
                Ok(_) => {
                    return Err(err_at(
                        self.location(),
                        ErrorKind::Refused,
                        format!(
                            "its point {} of \"{}\" was made by another backup than {}'s; it is not a copy of it (sync into an empty location)",
                            p.record.seq,
                            p.record.name,
                            src.location().display()
                        ),
                    ))
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            if same_ids {
                let mut w = BlobWriter::new(self, true)?;
                w.table_per_pack = true;
                for d in &p.record.disks {
                    copy_tree(src, &mut w, d.size, d.root_id(), same_seal, opts)?;
                }
                w.write_table()?;
                sum.blobs_copied += w.blobs_added;
                sum.bytes_copied += w.bytes_added;
                reg.check_fresh()?;
                let sealed = p.record.seal(self.keys(), &key)?;
                if !self.store().create(&key, &sealed)? {
                    return Err(err_at(
                        self.location(),
                        ErrorKind::InUse,
                        format!("{key} appeared while it was copied; nothing was replaced"),
                    ));
                }
            } else {
                // Other keys: the blocks are read (checked), hashed and sealed anew, as a
                // backup of the point with its number and time.
                let images: Vec<_> = (0..p.record.disks.len())
                    .map(|i| src.point_image(p, Some(&i.to_string())))
                    .collect::<Result<_>>()?;
                let disks: Vec<DiskSource<'_>> = images
                    .iter()
                    .zip(&p.record.disks)
                    .map(|(img, d)| DiskSource {
                        image: img,
                        source: Source {
                            identity: d.source.clone(),
                            unclean: false,
                        },
                        label: d.label.clone(),
                    })
                    .collect();
                let bopts = BackupOptions {
                    force: true,
                    throttle: opts.throttle,
                    progress: opts.progress,
                    ..Default::default()
                };
                let s = self.backup_as(
                    &p.record.name,
                    &disks,
                    &bopts,
                    Some(AsPoint {
                        seq: p.record.seq,
                        unix: p.record.unix,
                        host: None,
                    }),
                )?;
                sum.blobs_copied += s.blobs_added;
                sum.bytes_copied += s.bytes_added;
            }
            sum.points_copied += 1;
        }
        Ok(sum)
    }

    /// Bring the points of `old`, a layout-2 repository, into this one as points of `name`
    /// (with their numbers and times), each read with every grain checked. Points already
    /// brought over are passed.
    pub fn import_layout2(
        &self,
        old: &crate::layout2::Repository,
        name: &str,
        opts: &VerifyOptions<'_>,
    ) -> Result<SyncSummary> {
        let meta = old
            .meta()
            .ok_or_else(|| err_at(old.dir(), ErrorKind::NotFound, "repository has no points"))?;
        let label = std::path::Path::new(&meta.disk.source)
            .file_name()
            .map_or_else(|| "disk".to_string(), |n| n.to_string_lossy().into_owned());
        let tag = self.keys().name_tag(name);
        let mut sum = SyncSummary {
            points: meta.points.len(),
            ..Default::default()
        };
        for p in &meta.points {
            match self.read_point(&point_key(&tag, p.point)) {
                Ok(_) => {
                    sum.points_present += 1;
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let img = old.checked_point(Some(p.point))?;
            let disks = [DiskSource {
                image: &img,
                source: Source {
                    identity: meta.disk.source.clone(),
                    unclean: false,
                },
                label: label.clone(),
            }];
            let unix =
                crate::clock::parse_rfc3339(&p.created).unwrap_or_else(crate::clock::now_secs);
            let bopts = BackupOptions {
                force: true,
                throttle: opts.throttle,
                progress: opts.progress,
                ..Default::default()
            };
            let s = self.backup_as(
                name,
                &disks,
                &bopts,
                Some(AsPoint {
                    seq: p.point,
                    unix,
                    host: None,
                }),
            )?;
            sum.points_copied += 1;
            sum.blobs_copied += s.blobs_added;
            sum.bytes_copied += s.bytes_added;
        }
        Ok(sum)
    }
}

/// Copy into `w` every blob of the disk index under `root` (a disk of `size` bytes) and every
/// block it names that the destination lacks.
fn copy_tree(
    src: &Repository,
    w: &mut BlobWriter,
    size: u64,
    root: BlockId,
    same_seal: bool,
    opts: &VerifyOptions<'_>,
) -> Result<()> {
    let shape = Shape::new(size, src.block_size())?;
    let max = src.max_blob();
    let mut t = TreeReader::new(shape.clone(), root, |id: &BlockId| src.read_blob(id, max));
    let copy = |id: &BlockId, w: &mut BlobWriter| -> Result<()> {
        if id.is_zero() || w.index.lookup(id)?.is_some() {
            return Ok(());
        }
        let sealed = if same_seal {
            let (at, sealed) = src.sealed_blob(id)?;
            // Its seal checked before it leaves (damage is named at the source); inflated
            // and hashed on arrival, where the destination's pack is read back whole.
            crate::pack::check_seal(src.keys(), id, &sealed)
                .map_err(|e| src.blob_error(id, &at, &e))?;
            sealed
        } else {
            let data = src.read_blob(id, max)?;
            crate::pack::seal_blob(w.repo.keys(), id, &data)?
        };
        if let Some(t) = opts.throttle {
            t.take(sealed.len() as u64);
        }
        if let Some(p) = opts.progress {
            p.read(sealed.len() as u64);
        }
        w.put_sealed(*id, &sealed)
    };
    for j in 0..shape.leaves() {
        let id = t.chunk_id(0, j)?;
        if id.is_zero() || w.index.lookup(&id)?.is_some() {
            continue;
        }
        for e in decode_leaf(&src.read_blob(&id, max)?, shape.items(0, j))? {
            copy(&e.id, w)?;
        }
        copy(&id, w)?;
    }
    for k in 1..shape.levels.len() {
        for j in 0..shape.levels[k] {
            let id = t.chunk_id(k, j)?;
            copy(&id, w)?;
        }
    }
    Ok(())
}
