//! Opening a repository: reading it (no lock, no write access needed), or writing it (the
//! exclusive lock, and a clean-up of whatever a killed run left behind).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vdisk_core::{Error, ErrorKind, Result};
use vdisk_image::{Image, OpenOptions};
use vdisk_io::{Cache, ReadAhead};

use crate::layout2::meta::{RepoMeta, RestorePoint, META_FILE};
use crate::store::{self, Location, Store, StoreFiles, WriterLock};

/// A backup repository: read-only ([`Repository::open`]) or writable
/// ([`Repository::open_or_create`], [`Repository::open_writable`]), in a folder or on an
/// object store ([`Location`]).
#[derive(Debug)]
pub struct Repository {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) dir: PathBuf,
    pub(crate) meta: Option<RepoMeta>,
    /// Held by writable handles.
    lock: Option<Box<dyn WriterLock>>,
}

pub(crate) fn repo_err(dir: &Path, kind: ErrorKind, msg: impl Into<String>) -> Error {
    Error::new(kind, msg).with_path(dir)
}

impl Repository {
    /// Open an existing repository to read it (list, verify, restore). No lock is taken and
    /// nothing is written: a repository on a read-only mount, another user's, or on immutable
    /// storage reads the same. The metadata is replaced atomically by writers, so what is read
    /// is always one whole state.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # vdisk_chain::layout2::doc_example_repository(dir.path());
    /// let repo = vdisk_chain::layout2::Repository::open(dir.path())?;
    /// for p in repo.points() {
    ///     println!("point {} ({}), {} bytes", p.point, p.kind.name(), p.size);
    /// }
    /// # Ok::<(), vdisk_core::Error>(())
    /// ```
    pub fn open(location: impl Into<Location>) -> Result<Self> {
        Self::open_in(store::open(&location.into())?)
    }

    /// [`Repository::open`] on `store`.
    pub(crate) fn open_in(store: Arc<dyn Store>) -> Result<Self> {
        let meta = store
            .load_meta()?
            .ok_or_else(|| not_a_repository(&*store))?;
        Ok(Repository {
            dir: store.root().to_path_buf(),
            store,
            meta: Some(meta),
            lock: None,
        })
    }

    /// Open an existing repository to write it (prune): takes the exclusive lock
    /// ([`ErrorKind::InUse`] if another run holds it) and removes what killed runs left.
    pub fn open_writable(location: impl Into<Location>) -> Result<Self> {
        Self::open_writable_in(store::open(&location.into())?)
    }

    /// [`Repository::open_writable`] on `store`.
    pub(crate) fn open_writable_in(store: Arc<dyn Store>) -> Result<Self> {
        store
            .load_meta()?
            .ok_or_else(|| not_a_repository(&*store))?;
        let lock = store.lock()?;
        // Loaded under the lock: no writer can switch it now.
        let meta = store
            .load_meta()?
            .ok_or_else(|| not_a_repository(&*store))?;
        let repo = Repository {
            dir: store.root().to_path_buf(),
            store,
            meta: Some(meta),
            lock: Some(lock),
        };
        repo.clean_up()?;
        Ok(repo)
    }

    /// Open a repository to back up into, creating the folder if needed (writable, as
    /// [`Repository::open_writable`]). A location that holds other files and no repository
    /// is refused.
    pub fn open_or_create(location: impl Into<Location>) -> Result<Self> {
        Self::open_or_create_in(store::open(&location.into())?)
    }

    /// [`Repository::open_or_create`] on `store`.
    pub(crate) fn open_or_create_in(store: Arc<dyn Store>) -> Result<Self> {
        let exists = match store.load_meta() {
            Ok(m) => m.is_some(),
            // A folder that does not exist yet is made below.
            Err(e) if e.kind() == ErrorKind::NotFound && store.local_dir().is_some() => false,
            Err(e) => return Err(e),
        };
        if exists {
            return Self::writable_from(store);
        }
        let foreign = store.list()?.iter().any(|f| !store.is_ours(&f.name));
        if foreign {
            return Err(repo_err(
                store.root(),
                ErrorKind::Refused,
                "is not a vdisk repository and holds other files; back up into a new or empty folder",
            ));
        }
        store.prepare()?;
        Self::writable_from(store)
    }

    /// Take the lock on `store`, load its metadata (if any) under it, and clean up.
    fn writable_from(store: Arc<dyn Store>) -> Result<Self> {
        let lock = store.lock()?;
        // Another run may have made the first backup before we took the lock: look again.
        let meta = store.load_meta()?;
        let repo = Repository {
            dir: store.root().to_path_buf(),
            store,
            meta,
            lock: Some(lock),
        };
        repo.clean_up()?;
        Ok(repo)
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
    pub fn with_read_ahead(self, read_ahead: ReadAhead) -> Self {
        self.store.set_read_ahead(read_ahead);
        self
    }

    /// Drop the points' data from the page cache behind reads of it (verify, restore), or
    /// keep it ([`Cache::Keep`], the default).
    pub fn with_cache(self, cache: Cache) -> Self {
        self.store.set_cache(cache);
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

    /// The repository's path: its folder, or `s3://BUCKET/PREFIX` for a repository on an
    /// object store (a name for messages, not a path to open).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The folder of a local repository (`None` on an object store).
    pub fn local_dir(&self) -> Option<&Path> {
        self.store.local_dir()
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.store.path(name)
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
    pub fn open_point(&self, p: &RestorePoint) -> Result<Image> {
        self.open_image(&p.image).map_err(|e| {
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

    /// Open the image whose descriptor is `name`, through the store.
    pub(crate) fn open_image(&self, name: &str) -> Result<Image> {
        vdisk_image::open_chain(
            &StoreFiles(&*self.store),
            &self.path(name),
            &OpenOptions::default(),
        )
    }

    /// Switch the metadata (complete before it replaces the old one; on an object store, a
    /// new numbered object that cannot replace a newer one), then remove the files nothing
    /// refers to any more.
    pub(crate) fn commit(&mut self, meta: RepoMeta) -> Result<()> {
        self.writable()?;
        if let Some(lock) = &self.lock {
            lock.check()?;
        }
        self.store.commit_meta(&meta)?;
        self.meta = Some(meta);
        self.clean_up()
    }

    /// Remove what runs left behind: files with our names that the metadata does not list
    /// (written by a run killed before its switch, or replaced by a prune), temporaries and
    /// pending uploads. Runs only under the lock, so no other run's files in the making are
    /// touched.
    pub(crate) fn clean_up(&self) -> Result<()> {
        self.writable()?;
        let mut keep: HashSet<String> = HashSet::new();
        if let Some(meta) = &self.meta {
            for p in &meta.points {
                keep.extend([p.image.clone(), p.hashes.clone(), p.stored.clone()]);
                keep.extend(p.files.iter().map(|f| f.name.clone()));
            }
        }
        self.store.clean_up(&keep)
    }

    /// Bytes the repository's files take (on disk, or in the store).
    pub fn usage(&self) -> u64 {
        self.store.usage()
    }
}

fn not_a_repository(store: &dyn Store) -> Error {
    let what = if store.local_dir().is_some() {
        format!("not a vdisk repository (no {META_FILE})")
    } else {
        "not a vdisk repository (no vdisk-repo.*.json under this prefix)".to_string()
    };
    repo_err(store.root(), ErrorKind::InvalidFormat, what)
}
