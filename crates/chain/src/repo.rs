//! Opening a repository: reading it (no lock, no write access needed), or writing it (the
//! exclusive lock, and a clean-up of whatever a killed run left behind).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use vdisk_core::{Error, ErrorKind, Result};
use vdisk_raw::{Cache, ReadAhead};
use vdisk_vmdk::{FsStore, OpenOptions, VmdkImage};

use crate::lock::{RepoLock, LOCK_FILE};
use crate::meta::{RepoMeta, RestorePoint, META_FILE};

/// A backup repository: read-only ([`Repository::open`]) or writable
/// ([`Repository::open_or_create`], [`Repository::open_writable`]).
#[derive(Debug)]
pub struct Repository {
    pub(crate) dir: PathBuf,
    pub(crate) meta: Option<RepoMeta>,
    /// Held by writable handles.
    lock: Option<RepoLock>,
    /// Read-ahead on the points' files (off when reads are paced).
    pub(crate) read_ahead: ReadAhead,
    /// The page-cache policy for the points' files.
    pub(crate) cache: Cache,
}

pub(crate) fn repo_err(dir: &Path, kind: ErrorKind, msg: impl Into<String>) -> Error {
    Error::new(kind, msg).with_path(dir)
}

/// Whether `name` is a file runs of vdisk write in a repository: point files, and the
/// temporary names of files being written.
fn is_ours(name: &str) -> bool {
    name.starts_with("point-")
        || (name.starts_with('.')
            && (name.ends_with(".vdisk-partial") || name.ends_with(".vdisk-extents")))
}

impl Repository {
    /// Open an existing repository to read it (list, verify, restore). No lock is taken and
    /// nothing is written: a repository on a read-only mount, another user's, or on immutable
    /// storage reads the same. The metadata is replaced atomically by writers, so what is read
    /// is always one whole state.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # vdisk_chain::doc_example_repository(dir.path());
    /// let repo = vdisk_chain::Repository::open(dir.path())?;
    /// for p in repo.points() {
    ///     println!("point {} ({}), {} bytes", p.point, p.kind.name(), p.size);
    /// }
    /// # Ok::<(), vdisk_core::Error>(())
    /// ```
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        Self::check_is_repository(dir)?;
        Ok(Repository {
            dir: dir.to_path_buf(),
            meta: Some(Self::load(dir)?),
            lock: None,
            read_ahead: ReadAhead::On,
            cache: Cache::Keep,
        })
    }

    /// Open an existing repository to write it (prune): takes the exclusive lock
    /// ([`ErrorKind::InUse`] if another run holds it) and removes what killed runs left.
    pub fn open_writable(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        Self::check_is_repository(dir)?;
        let lock = RepoLock::acquire(dir)?;
        // Loaded under the lock: no writer can switch it now.
        let meta = Self::load(dir)?;
        let repo = Repository {
            dir: dir.to_path_buf(),
            meta: Some(meta),
            lock: Some(lock),
            read_ahead: ReadAhead::On,
            cache: Cache::Keep,
        };
        repo.clean_up()?;
        Ok(repo)
    }

    /// Open a repository to back up into, creating the folder if needed (writable, as
    /// [`Repository::open_writable`]). A folder that holds other files and no repository is
    /// refused.
    pub fn open_or_create(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if dir.join(META_FILE).exists() {
            return Self::open_writable(dir);
        }
        if dir.exists() {
            let foreign = std::fs::read_dir(dir)
                .map_err(|e| Error::io("cannot list", e).with_path(dir))?
                .filter_map(|e| e.ok())
                .any(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n != LOCK_FILE && !is_ours(&n)
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
        // Another run may have made the first backup while we waited for nothing: look again
        // under the lock.
        let meta = if dir.join(META_FILE).exists() {
            Some(Self::load(dir)?)
        } else {
            None
        };
        let repo = Repository {
            dir: dir.to_path_buf(),
            meta,
            lock: Some(lock),
            read_ahead: ReadAhead::On,
            cache: Cache::Keep,
        };
        repo.clean_up()?;
        Ok(repo)
    }

    fn check_is_repository(dir: &Path) -> Result<()> {
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
        Ok(())
    }

    fn load(dir: &Path) -> Result<RepoMeta> {
        let path = dir.join(META_FILE);
        let bytes =
            std::fs::read(&path).map_err(|e| Error::io("cannot read", e).with_path(&path))?;
        RepoMeta::decode(&bytes).map_err(|e| e.with_path(&path))
    }

    /// Fail unless this handle holds the lock.
    pub(crate) fn writable(&self) -> Result<()> {
        if self.lock.is_none() {
            return Err(repo_err(
                &self.dir,
                ErrorKind::InvalidArgument,
                "repository was opened for reading; open it writable to change it",
            ));
        }
        Ok(())
    }

    /// Read the points' files with read-ahead as `read_ahead` says (off when reads are paced:
    /// `--io-limit`).
    pub fn with_read_ahead(mut self, read_ahead: ReadAhead) -> Self {
        self.read_ahead = read_ahead;
        self
    }

    /// Drop the points' data from the page cache behind reads of it (verify, restore), or
    /// keep it ([`Cache::Keep`], the default).
    pub fn with_cache(mut self, cache: Cache) -> Self {
        self.cache = cache;
        self
    }

    /// The metadata (`None` before the first backup).
    pub fn meta(&self) -> Option<&RepoMeta> {
        self.meta.as_ref()
    }

    /// The points, oldest first (none before the first backup).
    pub fn points(&self) -> &[RestorePoint] {
        self.meta.as_ref().map_or(&[], |m| &m.points)
    }

    /// The repository folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
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

    /// Open a point's image (its chain included), unchecked: reads return what the files hold
    /// now. [`Repository::checked_point`] checks every grain against the hashes kept at backup.
    pub fn open_point(&self, p: &RestorePoint) -> Result<VmdkImage> {
        let store = FsStore {
            read_ahead: self.read_ahead,
            cache: self.cache,
        };
        VmdkImage::open_with(&store, &self.path(&p.image), &OpenOptions::default()).map_err(|e| {
            if e.kind() == ErrorKind::PathRefused {
                // A point only ever names files inside the repository.
                Error::new(
                    ErrorKind::Corrupt,
                    format!(
                        "point {} names a file outside the repository (damaged or altered files): {}",
                        p.point,
                        e.message()
                    ),
                )
                .with_path(&self.dir)
            } else {
                e
            }
        })
    }

    /// Switch the metadata (complete and synced before it replaces the old one), then remove
    /// the files nothing refers to any more.
    pub(crate) fn commit(&mut self, meta: RepoMeta) -> Result<()> {
        self.writable()?;
        vdisk_raw::write_file(
            &self.path(META_FILE),
            &meta.encode(),
            &vdisk_raw::OutputPolicy::replacing(),
        )?;
        self.meta = Some(meta);
        self.clean_up()
    }

    /// Remove what runs left behind: files with our names that the metadata does not list
    /// (written by a run killed before its switch, or replaced by a prune), and temporaries.
    /// Runs only under the lock, so no other run's files in the making are touched.
    pub(crate) fn clean_up(&self) -> Result<()> {
        self.writable()?;
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
            if is_ours(&name) && !keep.contains(&name) && e.file_type().is_ok_and(|t| t.is_file()) {
                std::fs::remove_file(e.path()).map_err(|err| {
                    Error::io("cannot remove a leftover of an earlier run", err).with_path(e.path())
                })?;
            }
        }
        Ok(())
    }

    /// Bytes the repository's files take on disk.
    pub fn usage(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| vdisk_raw::disk_usage(&m))
                    .sum()
            })
            .unwrap_or(0)
    }
}
