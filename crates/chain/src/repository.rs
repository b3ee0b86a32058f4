//! Opening a layout-3 repository: its config, its key (a password for an encrypted one), its
//! points, its index; reading a blob by id, checked.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use vdisk_core::{Error, ErrorKind, Result};

use crate::config::{Config, KeyFile, CONFIG, DEFAULT_BLOCK, MAX_SMALL};
use crate::crypto::{BlockId, Keys, MasterKey};
use crate::index::{IndexSet, IndexTable, Location as BlobAt, TableBytes};
use crate::pack::pack_name;
use crate::point::{parse_key, PointRecord, MAX_POINT};
use crate::store::objects::Objects;
use crate::store::{self, Layout, Location};

/// Where the password of an encrypted repository comes from: called (with the repository's
/// location) only when one is opened.
pub type PasswordSource<'a> = &'a (dyn Fn(&Path) -> Result<String> + Sync);

/// How to open a repository.
#[derive(Default, Clone, Copy)]
pub struct Access<'a> {
    /// The password of an encrypted repository.
    pub password: Option<PasswordSource<'a>>,
}

/// How to make a repository.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Bytes a block: a power of two from 4 KiB to 1 MiB (64 KiB by default).
    pub block_size: u64,
    /// Encrypt it with a key this password wraps (unencrypted without one).
    pub password: Option<String>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            block_size: DEFAULT_BLOCK,
            password: None,
        }
    }
}

/// The index a reader shares: loaded once, loaded again when a blob is not where it said (a
/// prune moved it).
#[derive(Debug, Default)]
struct SharedIndex {
    generation: u64,
    set: Option<Arc<IndexSet>>,
}

/// What every handle of an open repository shares.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Objects>,
    pub(crate) root: PathBuf,
    pub(crate) config: Config,
    pub(crate) keys: Keys,
    pub(crate) master: MasterKey,
    /// The key file the password opened.
    unlocked_by: Option<String>,
    index: RwLock<SharedIndex>,
}

/// A layout-3 repository: content-addressed blocks in packs, points of many NAMEs, optionally
/// encrypted. Opening one reads its config (and unlocks its key); nothing is written by
/// reading commands, so a read-only repository reads the same.
#[derive(Debug, Clone)]
pub struct Repository {
    pub(crate) inner: Arc<Inner>,
}

/// A point and the name of its object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// Its object's name (`points/TAG-NNNNNNNNNN`).
    pub key: String,
    /// What it holds.
    pub record: PointRecord,
}

/// The points of a repository, and the point objects that could not be read.
#[derive(Debug, Clone, Default)]
pub struct PointList {
    /// Points, by NAME then number.
    pub points: Vec<Point>,
    /// Objects under `points/` that are not valid points: (name, why).
    pub unreadable: Vec<(String, String)>,
}

impl PointList {
    /// The NAMEs, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.points.iter().map(|p| p.record.name.as_str()).collect();
        v.dedup();
        v
    }

    /// The points of `name`, oldest first.
    pub fn of(&self, name: &str) -> Vec<&Point> {
        self.points
            .iter()
            .filter(|p| p.record.name == name)
            .collect()
    }
}

pub(crate) fn err_at(root: &Path, kind: ErrorKind, msg: impl Into<String>) -> Error {
    Error::new(kind, msg).with_path(root)
}

/// Names a repository folder may hold besides its objects' folders.
const OURS: [&str; 7] = [
    "config",
    "keys",
    "data",
    "index",
    "points",
    "locks",
    "condemned",
];

impl Repository {
    /// Make a new repository at `location` (a folder, created if missing, or
    /// `s3://BUCKET/PREFIX`): refused where a repository, or anything else, is already.
    ///
    /// ```
    /// use vdisk_chain::{Access, InitOptions, Repository};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let repo = Repository::init(dir.path().join("repo"), &InitOptions::default())?;
    /// assert_eq!(repo.block_size(), 64 << 10);
    /// assert!(!repo.encrypted());
    /// assert!(Repository::init(dir.path().join("repo"), &InitOptions::default()).is_err());
    /// let again = Repository::open(dir.path().join("repo"), &Access::default())?;
    /// assert_eq!(again.id(), repo.id());
    /// # Ok::<(), vdisk_core::Error>(())
    /// ```
    pub fn init(location: impl Into<Location>, opts: &InitOptions) -> Result<Repository> {
        let loc = location.into();
        let (objects, legacy) = store::open_both(&loc)?;
        Self::init_in(objects, &*legacy, opts)
    }

    pub(crate) fn init_in(
        store: Arc<dyn Objects>,
        legacy: &dyn store::Store,
        opts: &InitOptions,
    ) -> Result<Repository> {
        let root = store.location().to_path_buf();
        match store::layout_of(&*store, legacy)? {
            Layout::None => {}
            Layout::Two => {
                return Err(err_at(
                    &root,
                    ErrorKind::AlreadyExists,
                    "holds a layout-2 repository; make the new one elsewhere and bring its points over with `vdisk sync OLD NEW`",
                ))
            }
            Layout::Three => {
                return Err(err_at(&root, ErrorKind::AlreadyExists, "is a repository already"))
            }
        }
        if let Some(dir) = store.folder() {
            if let Ok(rd) = std::fs::read_dir(dir) {
                let foreign = rd.flatten().any(|e| {
                    let n = e.file_name();
                    !OURS.iter().any(|o| n == *o)
                });
                if foreign {
                    return Err(err_at(
                        &root,
                        ErrorKind::Refused,
                        "is not a vdisk repository and holds other files; make one in a new or empty folder",
                    ));
                }
            }
        } else if store.list("")?.iter().any(|o| {
            !OURS
                .iter()
                .any(|t| o.name == *t || o.name.starts_with(&format!("{t}/")))
        }) {
            return Err(err_at(
                &root,
                ErrorKind::Refused,
                "is not a vdisk repository and holds other objects; make one under a new prefix",
            ));
        }
        store.prepare()?;
        let (config, master) = Config::new(opts.block_size, opts.password.is_some())?;
        let mut unlocked_by = None;
        if let Some(pw) = &opts.password {
            if pw.is_empty() {
                return Err(Error::invalid("an empty password is refused"));
            }
            let key = KeyFile::new(&master, pw.as_bytes(), &config.id)?;
            store.create(&KeyFile::name(&key.id), &key.encode())?;
            unlocked_by = Some(KeyFile::name(&key.id));
        }
        if !store.create(CONFIG, &config.encode())? {
            return Err(err_at(
                &root,
                ErrorKind::AlreadyExists,
                "is a repository already (made by another run just now)",
            ));
        }
        Self::from_parts(store, config, master, unlocked_by)
    }

    fn from_parts(
        store: Arc<dyn Objects>,
        config: Config,
        master: MasterKey,
        unlocked_by: Option<String>,
    ) -> Result<Repository> {
        let keys = Keys::derive(&master, config.encrypted);
        let root = store.location().to_path_buf();
        config
            .verify(&keys)
            .map_err(|e| e.with_path(root.join(CONFIG)))?;
        Ok(Repository {
            inner: Arc::new(Inner {
                store,
                root,
                config,
                keys,
                master,
                unlocked_by,
                index: RwLock::new(SharedIndex::default()),
            }),
        })
    }

    /// Open the repository at `location`. An encrypted one asks `access` for its password;
    /// a wrong password is refused. A location holding a layout-2 repository is refused
    /// ([`crate::open_reader`] reads either).
    pub fn open(location: impl Into<Location>, access: &Access<'_>) -> Result<Repository> {
        let loc = location.into();
        let (objects, legacy) = store::open_both(&loc)?;
        match store::layout_of(&*objects, &*legacy)? {
            Layout::Three => Self::open_in(objects, access),
            Layout::Two => Err(err_at(
                objects.location(),
                ErrorKind::Unsupported,
                "is a layout-2 repository (a VMDK chain): list, verify, restore and serve read it, and `vdisk sync OLD NEW` brings its points into a layout-3 repository",
            )),
            Layout::None => Err(not_a_repository(objects.location())),
        }
    }

    /// The error for a location holding no repository.
    pub(crate) fn none_here(root: &Path) -> Error {
        not_a_repository(root)
    }

    /// Open the repository at `location`, making an unencrypted one with the default block
    /// size if nothing is there yet (what a first backup does).
    pub fn open_or_init(location: impl Into<Location>, access: &Access<'_>) -> Result<Repository> {
        let loc = location.into();
        let (objects, legacy) = store::open_both(&loc)?;
        match store::layout_of(&*objects, &*legacy)? {
            Layout::None => match Self::init_in(objects.clone(), &*legacy, &InitOptions::default())
            {
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Self::open_in(objects, access),
                r => r,
            },
            _ => Self::open(loc, access),
        }
    }

    pub(crate) fn open_in(store: Arc<dyn Objects>, access: &Access<'_>) -> Result<Repository> {
        let root = store.location().to_path_buf();
        let bytes = store.read(CONFIG, MAX_SMALL).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                not_a_repository(&root)
            } else {
                e
            }
        })?;
        let config = Config::decode(&bytes).map_err(|e| e.with_path(root.join(CONFIG)))?;
        let (master, unlocked_by) = match config.plain_keys() {
            Some((m, _)) => (m, None),
            None => {
                let (m, k) = unlock(&*store, &config, access)?;
                (m, Some(k))
            }
        };
        Self::from_parts(store, config, master, unlocked_by)
    }

    /// Read the repository's files with read-ahead as `read_ahead` says (off when reads are
    /// paced: `--io-limit`), and drop what a read brings into the page cache, or keep it.
    pub fn with_reading(self, read_ahead: vdisk_io::ReadAhead, cache: vdisk_io::Cache) -> Self {
        self.inner.store.set_reading(
            read_ahead == vdisk_io::ReadAhead::Off,
            cache == vdisk_io::Cache::Forget,
        );
        self
    }

    /// The repository's location as messages name it.
    pub fn location(&self) -> &Path {
        &self.inner.root
    }

    /// The folder of a repository in one.
    pub fn local_dir(&self) -> Option<&Path> {
        self.inner.store.folder()
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.inner.config.id
    }

    /// Bytes a block.
    pub fn block_size(&self) -> u64 {
        self.inner.config.block_size
    }

    /// Whether it is encrypted.
    pub fn encrypted(&self) -> bool {
        self.inner.config.encrypted
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    pub(crate) fn store(&self) -> &dyn Objects {
        &*self.inner.store
    }

    /// Every point, by NAME and number, and what under `points/` is not a valid point.
    pub fn points(&self) -> Result<PointList> {
        let mut list = PointList::default();
        let mut objs = self.store().list("points/")?;
        objs.sort_by(|a, b| a.name.cmp(&b.name));
        for o in objs {
            if parse_key(&o.name).is_none() {
                list.unreadable
                    .push((o.name.clone(), "is not named like a point".into()));
                continue;
            }
            match self.read_point(&o.name) {
                Ok(record) => list.points.push(Point {
                    key: o.name,
                    record,
                }),
                // Removed by a prune since the listing.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => list.unreadable.push((o.name, e.message().to_string())),
            }
        }
        list.points.sort_by(|a, b| {
            (a.record.name.as_str(), a.record.seq).cmp(&(b.record.name.as_str(), b.record.seq))
        });
        Ok(list)
    }

    /// Read point object `key`.
    pub(crate) fn read_point(&self, key: &str) -> Result<PointRecord> {
        let sealed = self.store().read(key, MAX_POINT)?;
        PointRecord::open(self.keys(), key, &sealed, self.block_size())
            .map_err(|e| e.with_path(self.location().join(key)))
    }

    /// The point numbered `seq` of `name` (the newest when `None`); `name` may be left out
    /// when the repository holds one NAME.
    pub fn select(&self, name: Option<&str>, seq: Option<u64>) -> Result<Point> {
        let list = self.points()?;
        let name = match name {
            Some(n) => n.to_string(),
            None => {
                let names = list.names();
                match names.as_slice() {
                    [] => {
                        return Err(err_at(
                            self.location(),
                            ErrorKind::NotFound,
                            "repository has no points",
                        ))
                    }
                    [one] => one.to_string(),
                    many => {
                        return Err(err_at(
                            self.location(),
                            ErrorKind::Ambiguous,
                            format!("holds points of {} names ({})", many.len(), many.join(", ")),
                        ))
                    }
                }
            }
        };
        let of = list.of(&name);
        if of.is_empty() {
            let names = list.names().join(", ");
            return Err(err_at(
                self.location(),
                ErrorKind::NotFound,
                format!("has no points of \"{name}\" (names: {names})"),
            ));
        }
        let p = match seq {
            None => of.last().copied(),
            Some(n) => of.iter().copied().find(|p| p.record.seq == n),
        };
        p.cloned().ok_or_else(|| {
            let have: Vec<String> = of.iter().map(|p| p.record.seq.to_string()).collect();
            err_at(
                self.location(),
                ErrorKind::NotFound,
                format!(
                    "no point {} of \"{name}\" (points: {})",
                    seq.unwrap_or(0),
                    have.join(", ")
                ),
            )
        })
    }

    /// Load every index table afresh: the set, and the tables that could not be opened.
    pub(crate) fn load_index(&self) -> Result<(IndexSet, Vec<(String, Error)>)> {
        let mut objs = self.store().list("index/")?;
        // Newest last: lookups ask the newest first.
        objs.sort_by_key(|o| (o.modified, o.name.clone()));
        let mut tables = Vec::new();
        let mut damaged = Vec::new();
        for o in &objs {
            let Some(id) = o
                .name
                .strip_prefix("index/")
                .filter(|i| crate::config::is_id(i, 32))
            else {
                continue;
            };
            match self.open_table(&o.name, id) {
                Ok(t) => tables.push(t),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => damaged.push((o.name.clone(), e)),
            }
        }
        let names: std::collections::HashSet<String> = objs.into_iter().map(|o| o.name).collect();
        self.store().forget_cached(&|n| names.contains(n));
        Ok((IndexSet::new(tables), damaged))
    }

    pub(crate) fn open_table(&self, name: &str, id: &str) -> Result<IndexTable> {
        let bytes = match self.store().local_copy(name)? {
            Some(path) => {
                use std::os::unix::fs::OpenOptionsExt;
                TableBytes::File(
                    std::fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(vdisk_io::sys::flags::O_NOFOLLOW)
                        .open(&path)
                        .map_err(|e| {
                            if e.kind() == std::io::ErrorKind::NotFound {
                                Error::new(ErrorKind::NotFound, "gone").with_path(&path)
                            } else {
                                Error::io("cannot open", e).with_path(&path)
                            }
                        })?,
                )
            }
            None => TableBytes::Memory(self.store().read(name, 1 << 34)?),
        };
        IndexTable::open(self.keys(), id, bytes)
            .map_err(|e| e.with_path(self.location().join(name)))
    }

    /// The index readers share, and its generation.
    fn shared_index(&self) -> Result<(u64, Arc<IndexSet>)> {
        {
            let s = self.inner.index.read().unwrap_or_else(|e| e.into_inner());
            if let Some(set) = &s.set {
                return Ok((s.generation, Arc::clone(set)));
            }
        }
        self.reload_index(0)
    }

    /// Load the index again unless another thread did since generation `seen`.
    fn reload_index(&self, seen: u64) -> Result<(u64, Arc<IndexSet>)> {
        let mut s = self.inner.index.write().unwrap_or_else(|e| e.into_inner());
        if s.set.is_some() && s.generation != seen {
            return Ok((
                s.generation,
                Arc::clone(s.set.as_ref().ok_or_else(|| Error::invalid("no index"))?),
            ));
        }
        let (set, _) = self.load_index()?;
        let set = Arc::new(set);
        s.generation += 1;
        s.set = Some(Arc::clone(&set));
        Ok((s.generation, set))
    }

    /// Where blob `id` is, by the shared index (loaded again once if it is not there).
    pub(crate) fn locate(&self, id: &BlockId) -> Result<(u64, Option<BlobAt>)> {
        let (generation, set) = self.shared_index()?;
        match set.lookup(id)? {
            Some(at) => Ok((generation, Some(at))),
            None => {
                let (g, set) = self.reload_index(generation)?;
                Ok((g, set.lookup(id)?))
            }
        }
    }

    /// The sealed bytes at `at`.
    pub(crate) fn read_sealed(&self, at: &BlobAt) -> Result<Vec<u8>> {
        self.store().read_range(
            &pack_name(&at.pack.hex()),
            u64::from(at.offset),
            u64::from(at.len),
        )
    }

    /// Blob `id`, opened and checked (its seal, and its bytes against its id), at most `max`
    /// bytes. A blob that a prune moved is found again.
    pub(crate) fn read_blob(&self, id: &BlockId, max: usize) -> Result<Vec<u8>> {
        let (at, sealed) = self.sealed_blob(id)?;
        crate::pack::open_blob(self.keys(), id, &sealed, max)
            .map_err(|e| self.blob_error(id, &at, &e))
    }

    /// Blob `id` opened into `out`, which its bytes must fill exactly; checked as
    /// [`Repository::read_blob`] checks. On an error `out` holds no meaning.
    pub(crate) fn read_blob_into(&self, id: &BlockId, out: &mut [u8]) -> Result<()> {
        let (at, mut sealed) = self.sealed_blob(id)?;
        crate::pack::open_blob_into(self.keys(), id, &mut sealed, out)
            .map_err(|e| self.blob_error(id, &at, &e))
    }

    /// Where blob `id` lies and its sealed bytes. A blob that a prune moved is found again.
    pub(crate) fn sealed_blob(&self, id: &BlockId) -> Result<(BlobAt, Vec<u8>)> {
        let missing = || {
            err_at(
                self.location(),
                ErrorKind::Corrupt,
                format!(
                    "block {} is in no pack the index lists (missing data)",
                    &id.hex()[..16]
                ),
            )
        };
        let (generation, at) = self.locate(id)?;
        let at = at.ok_or_else(missing)?;
        match self.read_sealed(&at) {
            Ok(s) => Ok((at, s)),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // Moved by a prune that repacked it: the index says where now.
                let (_, set) = self.reload_index(generation)?;
                let at = set.lookup(id)?.ok_or_else(missing)?;
                let s = self.read_sealed(&at)?;
                Ok((at, s))
            }
            Err(e) => Err(e),
        }
    }

    /// A blob that does not open, as an error naming it and its pack.
    pub(crate) fn blob_error(&self, id: &BlockId, at: &BlobAt, e: &Error) -> Error {
        Error::new(
            ErrorKind::Corrupt,
            format!(
                "block {} in pack {}: {}",
                &id.hex()[..16],
                at.pack.hex(),
                e.message()
            ),
        )
        .with_path(self.location())
    }

    /// The largest blob: a block, or a chunk of a disk's index.
    pub(crate) fn max_blob(&self) -> usize {
        (self.block_size() as usize).max(crate::tree::MAX_CHUNK)
    }

    /// Wrap the master key with `new_password` in a new key file, check that it opens, then
    /// remove the key file the repository was opened with: a run killed at any instant
    /// leaves the old key or the new one (or both) working. Returns the new key's name.
    pub fn change_password(&self, new_password: &str) -> Result<String> {
        if !self.encrypted() {
            return Err(err_at(
                self.location(),
                ErrorKind::Unsupported,
                "is not encrypted: it has no password (make an encrypted one with `vdisk init --encrypt` and sync into it)",
            ));
        }
        if new_password.is_empty() {
            return Err(Error::invalid("an empty password is refused"));
        }
        let key = KeyFile::new(&self.inner.master, new_password.as_bytes(), self.id())?;
        let name = KeyFile::name(&key.id);
        if !self.store().create(&name, &key.encode())? {
            return Err(err_at(
                self.location(),
                ErrorKind::AlreadyExists,
                format!("{name} exists already"),
            ));
        }
        // Read back: the new key must open before the old one goes.
        let back = KeyFile::decode(&self.store().read(&name, MAX_SMALL)?, &key.id)?;
        let opened = back.unlock(new_password.as_bytes(), self.id())?;
        if opened.map(|m| m.0) != Some(self.inner.master.0) {
            let _ = self.store().delete(&name);
            return Err(err_at(
                self.location(),
                ErrorKind::Io,
                "the new key did not read back whole; the old password still works",
            ));
        }
        if let Some(old) = &self.inner.unlocked_by {
            if *old != name {
                self.store().delete(old)?;
            }
        }
        Ok(name)
    }

    /// Bytes the repository's packs take.
    pub fn stored_bytes(&self) -> Result<u64> {
        Ok(self.store().list("data/")?.iter().map(|o| o.len).sum())
    }
}

fn not_a_repository(root: &Path) -> Error {
    let local = !root.to_string_lossy().starts_with("s3://");
    if local && !root.is_dir() {
        return err_at(
            root,
            ErrorKind::NotFound,
            "no repository here (not a folder)",
        );
    }
    err_at(
        root,
        ErrorKind::InvalidFormat,
        "not a vdisk repository (no config; make one with `vdisk init`)",
    )
}

/// The master key of an encrypted repository, from any key file the password opens, and
/// that key file's name.
fn unlock(
    store: &dyn Objects,
    config: &Config,
    access: &Access<'_>,
) -> Result<(MasterKey, String)> {
    let root = store.location();
    let ask = access.password.ok_or_else(|| {
        err_at(
            root,
            ErrorKind::Refused,
            "is encrypted: give its password (VDISK_PASSWORD, --password-file, or at the prompt)",
        )
    })?;
    let password = ask(root)?;
    let mut keys = store.list("keys/")?;
    keys.sort_by_key(|k| std::cmp::Reverse(k.modified));
    let mut errors = Vec::new();
    for k in &keys {
        let Some(id) = k.name.strip_prefix("keys/") else {
            continue;
        };
        let file = match store
            .read(&k.name, MAX_SMALL)
            .and_then(|b| KeyFile::decode(&b, id))
        {
            Ok(f) => f,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        if let Some(m) = file.unlock(password.as_bytes(), &config.id)? {
            return Ok((m, k.name.clone()));
        }
    }
    if keys.is_empty() || errors.len() == keys.len() {
        return Err(err_at(
            root,
            ErrorKind::Corrupt,
            "is encrypted but holds no readable key file (keys/ damaged or missing)",
        ));
    }
    Err(err_at(
        root,
        ErrorKind::Refused,
        "wrong password: no key of this repository opens with it",
    ))
}
