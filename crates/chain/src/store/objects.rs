//! The storage of a layout-3 repository: immutable objects under names like `data/ab/ID`,
//! created once and never rewritten (but for a writer's own registration), listed by prefix,
//! read whole or by range. A folder ([`FolderObjects`]), an S3 prefix (`S3Objects`, with the
//! `s3` feature) or memory (`MemoryObjects`, for unit tests).
//!
//! A create is conditional: it fails, rather than replace anything, when the name exists (a
//! link of a complete, synced file in a folder; `If-None-Match: *` on S3). That is what makes
//! a commit safe without a lock: two writers can never both create the same point.
//!
//! An interrupted run (SIGINT, SIGTERM) leaves a folder as it found it: the packs and tables
//! it wrote for a point it did not commit, and its registration, are removed before it exits
//! (see [`FolderObjects`]). An object store keeps them: the next run takes over the
//! registration (its holder is proven gone) and a prune removes the rest, as after a run that
//! was killed.

use std::collections::HashSet;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use vdisk_core::{Error, ErrorKind, Result};
use vdisk_io::interrupt::{self, publishing, TempName};
use vdisk_io::sys;

/// An object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjectInfo {
    /// Its name under the root (`data/ab/0123…`).
    pub name: String,
    /// Bytes.
    pub len: u64,
    /// When it was last written, seconds since 1970 (0 when unknown).
    pub modified: u64,
}

/// Where a layout-3 repository's objects live.
pub(crate) trait Objects: Send + Sync + fmt::Debug {
    /// The repository as messages name it (a folder, or `s3://BUCKET/PREFIX`).
    fn location(&self) -> &Path;
    /// The folder, for a repository in one.
    fn folder(&self) -> Option<&Path> {
        None
    }
    /// The whole of `name`, refused when longer than `max` ([`ErrorKind::NotFound`] when it
    /// does not exist).
    fn read(&self, name: &str, max: u64) -> Result<Vec<u8>>;
    /// `len` bytes of `name` from `offset` (exactly, or an error).
    fn read_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>>;
    /// Create `name` with `bytes`, complete and durable before it appears; `Ok(false)` when
    /// something is at that name already (nothing is replaced, nothing followed).
    fn create(&self, name: &str, bytes: &[u8]) -> Result<bool>;
    /// Write `name` whole, replacing it (only a writer's own registration is rewritten).
    fn replace(&self, name: &str, bytes: &[u8]) -> Result<()>;
    /// Create `name` (a fresh random name nothing else uses) from bytes `fill` writes front
    /// to back, complete and durable before it appears: a large index table, in bounded
    /// memory.
    fn create_streamed(
        &self,
        name: &str,
        fill: &mut dyn FnMut(&mut dyn Write) -> Result<()>,
    ) -> Result<()>;
    /// The objects whose names start with `prefix` (a folder name ending in `/`), in no
    /// particular order. Anything that is not a plain object is left out.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// Remove `name` (gone already is fine).
    fn delete(&self, name: &str) -> Result<()>;
    /// Make the location ready for a new repository (create the folder).
    fn prepare(&self) -> Result<()>;
    /// Temporary files killed runs left (folders without `O_TMPFILE` only).
    fn leftovers(&self) -> Result<Vec<ObjectInfo>> {
        Ok(Vec::new())
    }
    /// Remove a temporary file [`Objects::leftovers`] listed.
    fn delete_leftover(&self, _name: &str) -> Result<()> {
        Ok(())
    }
    /// A local file holding the bytes of `name` to read by position (a folder's own file; an
    /// object store's local cached copy), or `None` to read it by range from the store.
    fn local_copy(&self, _name: &str) -> Result<Option<PathBuf>> {
        Ok(None)
    }
    /// Drop local cached copies of objects for which `keep` says no (tables a prune removed).
    fn forget_cached(&self, _keep: &dyn Fn(&str) -> bool) {}
    /// Read local files without read-ahead (reads paced by `--io-limit` read what they
    /// ask for), and drop from the page cache the pages a read brings in (`forget`).
    fn set_reading(&self, _read_ahead_off: bool, _forget: bool) {}
}

/// Whether `name` is a name objects may have: words of letters, digits, `-`, `_` and `.`
/// (not first) between single `/`, at most 3 deep.
pub(crate) fn valid_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    parts.len() <= 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.len() <= 100
                && p.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        })
}

fn check_name(root: &Path, name: &str) -> Result<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(Error::invalid(format!("\"{name}\" is not an object name")).with_path(root))
    }
}

/// A repository's objects in a folder: one file per object, in folders by prefix.
///
/// What this process creates is kept track of, so that an interrupt leaves the folder as it
/// was: packs and tables (`data/`, `index/`) are *provisional* until a point or a condemned
/// list is created (the commit they were written for) or the run deletes an object the
/// repository had (a prune deletes tables only once the tables replacing them exist); its
/// registrations (`locks/`) are until it deletes them. Every link into place is a
/// [publication](publishing): an interrupt waits for one in progress, so it finds a point
/// committed with its objects or not at all. Then it removes the registrations, and the
/// provisional objects when nobody can have used them (see [`remove_provisional`]).
#[derive(Debug)]
pub(crate) struct FolderObjects {
    dir: PathBuf,
    read_ahead_off: std::sync::atomic::AtomicBool,
    forget: std::sync::atomic::AtomicBool,
    provisional: Arc<Mutex<Provisional>>,
    /// The interrupt's clean-up, registered with the first provisional object.
    cleanup: Mutex<Option<interrupt::Cleanup>>,
}

/// What this process created that an interrupt removes.
#[derive(Debug, Default)]
struct Provisional {
    /// Packs and tables nothing committed needs yet.
    objects: HashSet<String>,
    /// This process's registrations.
    locks: HashSet<String>,
    /// The points and condemned lists there were before the first provisional object, and
    /// those this process created since (`None`: they could not be listed).
    commits: Option<HashSet<String>>,
}

/// What creating (or deleting) an object means for an interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A pack or a table: provisional until a commit.
    Data,
    /// A writer's registration.
    Registration,
    /// A point or a condemned list: what the run's data was written for.
    Commit,
    /// The config, a key file.
    Other,
}

fn role(name: &str) -> Role {
    match name.split('/').next() {
        Some("data" | "index") => Role::Data,
        Some("locks") => Role::Registration,
        Some("points" | "condemned") => Role::Commit,
        _ => Role::Other,
    }
}

fn lock(p: &Mutex<Provisional>) -> MutexGuard<'_, Provisional> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// The names of the plain objects under `root/top` (`None` when they cannot be listed).
fn names_under(root: &Path, top: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    walk(root, top, 0, false, &mut out).ok()?;
    Some(out.into_iter().map(|o| o.name).collect())
}

/// An interrupt's clean-up of the folder `dir`: remove this process's registrations, and its
/// provisional packs and tables when nobody can depend on them: another writer registers
/// before it reads the index, and a reader never commits, so only a writer registered now,
/// or one that committed a point or condemned list since this run began writing, can have
/// found a block in them (two backups of clones share blocks). Then they stay, as after a
/// killed run: a prune removes what no point needs. Tables go first, packs after.
fn remove_provisional(dir: &Path, p: &Mutex<Provisional>) {
    let mut p = lock(p);
    let untouched = p.commits.as_ref().is_some_and(|known| {
        ["points", "condemned"].iter().all(|top| {
            names_under(dir, top).is_some_and(|now| now.iter().all(|n| known.contains(n)))
        })
    });
    // Last, right before the removals: the window a writer could register and read the
    // index in is as short as it can be.
    let alone = untouched
        && names_under(dir, "locks").is_some_and(|now| now.iter().all(|n| p.locks.contains(n)));
    if alone {
        let mut objects: Vec<String> = p.objects.drain().collect();
        objects.sort_by_key(|n| !n.starts_with("index/"));
        for n in objects {
            let _ = std::fs::remove_file(dir.join(n));
        }
    }
    for n in p.locks.drain() {
        let _ = std::fs::remove_file(dir.join(n));
    }
}

/// The temporary name of an object being written where `O_TMPFILE` is missing.
const TEMP_PREFIX: &str = ".tmp-";

impl FolderObjects {
    pub(crate) fn new(dir: &Path) -> Self {
        FolderObjects {
            dir: dir.to_path_buf(),
            read_ahead_off: Default::default(),
            forget: Default::default(),
            provisional: Default::default(),
            cleanup: Mutex::new(None),
        }
    }

    fn provisional(&self) -> MutexGuard<'_, Provisional> {
        lock(&self.provisional)
    }

    /// Put a complete file under `name` with `link` (a link or a rename), and keep track of
    /// it for an interrupt (which cannot fall in between).
    fn publish(
        &self,
        name: &str,
        link: impl FnOnce() -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let role = role(name);
        if matches!(role, Role::Data | Role::Registration) {
            self.watch();
        }
        // Never taken while the lock on `provisional` is held: after an interrupt, this
        // does not return.
        let _publishing = publishing();
        link()?;
        let mut p = self.provisional();
        match role {
            Role::Data => {
                p.objects.insert(name.to_string());
            }
            Role::Registration => {
                p.locks.insert(name.to_string());
            }
            Role::Commit => {
                p.objects.clear();
                if let Some(known) = &mut p.commits {
                    known.insert(name.to_string());
                }
            }
            Role::Other => {}
        }
        Ok(())
    }

    /// Before the first provisional object: note the commits there are, and have an
    /// interrupt clean up.
    fn watch(&self) {
        let mut slot = self.cleanup.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return;
        }
        let known = names_under(&self.dir, "points").and_then(|mut n| {
            n.extend(names_under(&self.dir, "condemned")?);
            Some(n.into_iter().collect())
        });
        self.provisional().commits = known;
        let (dir, p) = (self.dir.clone(), Arc::clone(&self.provisional));
        *slot = Some(interrupt::on_cleanup(move || remove_provisional(&dir, &p)));
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn io(&self, what: &str, name: &str, e: std::io::Error) -> Error {
        let p = self.path(name);
        match e.kind() {
            std::io::ErrorKind::NotFound => Error::new(
                ErrorKind::NotFound,
                format!("cannot {what}: no such object"),
            )
            .with_path(p),
            _ => Error::io(format!("cannot {what}"), e).with_path(p),
        }
    }

    /// Open `name` to read, never through a symbolic link, and only a regular file.
    fn open_read(&self, name: &str) -> Result<(File, u64)> {
        check_name(&self.dir, name)?;
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(sys::flags::O_NOFOLLOW | sys::flags::O_CLOEXEC)
            .open(self.path(name))
            .map_err(|e| self.io("read", name, e))?;
        let m = f.metadata().map_err(|e| self.io("read", name, e))?;
        if !m.is_file() {
            return Err(Error::corrupt("is not a plain file").with_path(self.path(name)));
        }
        if self
            .read_ahead_off
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            sys::fadvise(&f, 0, 0, sys::FileAdvice::Random);
        }
        Ok((f, m.len()))
    }

    /// The folder `name` goes in, made if missing (and its making synced), refused when
    /// something else than a folder is in the way (a symbolic link is never followed).
    fn parent_dir(&self, name: &str) -> Result<PathBuf> {
        let mut dir = self.dir.clone();
        let parts: Vec<&str> = name.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            let next = dir.join(part);
            match std::fs::symlink_metadata(&next) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(Error::new(
                        ErrorKind::Refused,
                        "a foreign file is where a folder of the repository goes",
                    )
                    .with_path(&next))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    match std::fs::create_dir(&next) {
                        Ok(()) => sync_dir(&dir)?,
                        // Made by another writer meanwhile.
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                        Err(e) => {
                            return Err(Error::io("cannot create the folder", e).with_path(&next))
                        }
                    }
                    if !std::fs::symlink_metadata(&next).is_ok_and(|m| m.is_dir()) {
                        return Err(Error::new(
                            ErrorKind::Refused,
                            "a foreign file is where a folder of the repository goes",
                        )
                        .with_path(&next));
                    }
                }
                Err(e) => return Err(Error::io("cannot look at", e).with_path(&next)),
            }
            dir = next;
        }
        Ok(dir)
    }

    /// A complete, synced file in `dir` holding `bytes`, not yet under its name: unnamed
    /// (`O_TMPFILE`) where the file system can, else under a temporary name.
    fn write_temp(&self, dir: &Path, bytes: &[u8]) -> Result<(File, Option<TempName>)> {
        let unnamed = OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o644)
            .custom_flags(sys::flags::O_TMPFILE | sys::flags::O_CLOEXEC)
            .open(dir);
        let (f, temp) = match unnamed {
            Ok(f) => (f, None),
            Err(_) => {
                let name = format!("{TEMP_PREFIX}{}", crate::crypto::random_id()?);
                let p = TempName::new(dir.join(name));
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .custom_flags(sys::flags::O_NOFOLLOW | sys::flags::O_CLOEXEC)
                    .open(p.path())
                    .map_err(|e| Error::io("cannot write", e).with_path(p.path()))?;
                (f, Some(p))
            }
        };
        f.write_all_at(bytes, 0)
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io("cannot write", e).with_path(dir))?;
        Ok((f, temp))
    }
}

/// Writes a file front to back with positional writes (`pwrite`), as every file vdisk
/// writes is written.
struct PositionalWriter<'a> {
    file: &'a File,
    at: u64,
}

impl Write for PositionalWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Make a folder's entries durable (after a link, rename, unlink or mkdir in it).
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("cannot sync the folder", e).with_path(dir))
}

impl Objects for FolderObjects {
    fn location(&self) -> &Path {
        &self.dir
    }

    fn folder(&self) -> Option<&Path> {
        Some(&self.dir)
    }

    fn read(&self, name: &str, max: u64) -> Result<Vec<u8>> {
        let (f, len) = self.open_read(name)?;
        if len > max {
            return Err(Error::corrupt(format!(
                "object is {len} bytes, more than the {max} it may have"
            ))
            .with_path(self.path(name)));
        }
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, 0)
            .map_err(|e| self.io("read", name, e))?;
        Ok(buf)
    }

    fn read_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let (f, size) = self.open_read(name)?;
        if offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(Error::corrupt(format!(
                "a read of {len} bytes at {offset} lies past the object's end ({size} bytes)"
            ))
            .with_path(self.path(name)));
        }
        let forget = self.forget.load(std::sync::atomic::Ordering::Relaxed);
        // Pages cached before are kept; those this read brings in leave with it.
        let cached_before = if forget {
            sys::cached_pages(&f, offset, len)
        } else {
            None
        };
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, offset)
            .map_err(|e| self.io("read", name, e))?;
        if forget && cached_before.is_none_or(|n| n == 0) {
            sys::fadvise(&f, offset, len, sys::FileAdvice::DontNeed);
        }
        Ok(buf)
    }

    fn set_reading(&self, read_ahead_off: bool, forget: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        self.read_ahead_off.store(read_ahead_off, Relaxed);
        self.forget.store(forget, Relaxed);
    }

    fn create(&self, name: &str, bytes: &[u8]) -> Result<bool> {
        check_name(&self.dir, name)?;
        let dir = self.parent_dir(name)?;
        let path = self.path(name);
        let (f, temp) = self.write_temp(&dir, bytes)?;
        let linked = self.publish(name, || match &temp {
            None => sys::link_unnamed(&f, &path),
            Some(t) => std::fs::hard_link(t.path(), &path),
        });
        if let Some(t) = &temp {
            let _ = std::fs::remove_file(t.path());
        }
        match linked {
            Ok(()) => {
                sync_dir(&dir)?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io("cannot create", e).with_path(&path)),
        }
    }

    fn replace(&self, name: &str, bytes: &[u8]) -> Result<()> {
        check_name(&self.dir, name)?;
        let dir = self.parent_dir(name)?;
        let path = self.path(name);
        let temp = TempName::new(dir.join(format!("{TEMP_PREFIX}{}", crate::crypto::random_id()?)));
        let temp = temp.path();
        let written = (|| {
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(sys::flags::O_NOFOLLOW | sys::flags::O_CLOEXEC)
                .open(temp)?;
            f.write_all_at(bytes, 0)?;
            f.sync_all()?;
            self.publish(name, || std::fs::rename(temp, &path))
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(temp);
            return Err(Error::io("cannot write", e).with_path(&path));
        }
        sync_dir(&dir)
    }

    fn create_streamed(
        &self,
        name: &str,
        fill: &mut dyn FnMut(&mut dyn Write) -> Result<()>,
    ) -> Result<()> {
        check_name(&self.dir, name)?;
        let dir = self.parent_dir(name)?;
        let path = self.path(name);
        let (f, temp) = self.write_temp(&dir, &[])?;
        let written = (|| -> Result<()> {
            let mut w =
                std::io::BufWriter::with_capacity(1 << 20, PositionalWriter { file: &f, at: 0 });
            fill(&mut w)?;
            w.flush()
                .map_err(|e| Error::io("cannot write", e).with_path(&path))?;
            drop(w);
            f.sync_all()
                .map_err(|e| Error::io("cannot write", e).with_path(&path))?;
            self.publish(name, || match &temp {
                None => sys::link_unnamed(&f, &path),
                Some(t) => std::fs::hard_link(t.path(), &path),
            })
            .map_err(|e| Error::io("cannot create", e).with_path(&path))
        })();
        if let Some(t) = &temp {
            let _ = std::fs::remove_file(t.path());
        }
        written?;
        sync_dir(&dir)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        walk(&self.dir, prefix.trim_end_matches('/'), 0, false, &mut out)?;
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<()> {
        check_name(&self.dir, name)?;
        // Deleting a pack, table, point or list this run did not write means what it wrote
        // is needed now (a prune's new tables, once it deletes those they replace): that stays,
        // as after a commit, and an interrupt cannot fall in between.
        let theirs = matches!(role(name), Role::Data | Role::Commit)
            && !self.provisional().objects.contains(name);
        let _publishing = theirs.then(publishing);
        if theirs {
            self.provisional().objects.clear();
        }
        let p = self.path(name);
        let removed = match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("cannot remove", e).with_path(&p))
            }
            _ => Ok(()),
        };
        if removed.is_ok() {
            let mut prov = self.provisional();
            prov.objects.remove(name);
            prov.locks.remove(name);
        }
        removed
    }

    fn prepare(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::io("cannot create the repository", e).with_path(&self.dir))
    }

    fn leftovers(&self) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        for top in ["data", "index", "points", "locks", "keys", "condemned"] {
            walk(&self.dir, top, 0, true, &mut out)?;
        }
        walk(&self.dir, "", 0, true, &mut out)?;
        out.retain(|o| {
            o.name
                .rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with(TEMP_PREFIX))
        });
        Ok(out)
    }

    fn delete_leftover(&self, name: &str) -> Result<()> {
        let leaf = name.rsplit('/').next().unwrap_or("");
        if !leaf.starts_with(TEMP_PREFIX) || name.contains("..") {
            return Err(Error::invalid("not a temporary file").with_path(self.path(name)));
        }
        let p = self.path(name);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("cannot remove", e).with_path(&p))
            }
            _ => Ok(()),
        }
    }

    fn local_copy(&self, name: &str) -> Result<Option<PathBuf>> {
        check_name(&self.dir, name)?;
        Ok(Some(self.path(name)))
    }
}

/// List the plain files under `root/rel` (and its folders, two deep) into `out`; with
/// `temps`, temporary files too (and only the top folder's files when `rel` is empty).
fn walk(
    root: &Path,
    rel: &str,
    depth: usize,
    temps: bool,
    out: &mut Vec<ObjectInfo>,
) -> Result<()> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => return Ok(()),
        Err(e) => return Err(Error::io("cannot list", e).with_path(&dir)),
    };
    for e in entries {
        let e = e.map_err(|e| Error::io("cannot list", e).with_path(&dir))?;
        let Some(n) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let Ok(t) = e.file_type() else { continue };
        let name = if rel.is_empty() {
            n.clone()
        } else {
            format!("{rel}/{n}")
        };
        if t.is_dir() && depth < 1 && !rel.is_empty() {
            walk(root, &name, depth + 1, temps, out)?;
        } else if t.is_file() && (temps || !n.starts_with('.')) {
            let m = e.metadata().ok();
            out.push(ObjectInfo {
                name,
                len: m.as_ref().map_or(0, |m| m.len()),
                modified: m
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs()),
            });
        }
    }
    Ok(())
}

/// Each object's bytes and when it was written.
#[cfg(test)]
type MemoryMap = std::collections::BTreeMap<String, (Vec<u8>, u64)>;

/// Objects in memory, for unit tests: a map of names to bytes, with hooks to damage them.
#[cfg(test)]
#[derive(Debug, Default, Clone)]
pub(crate) struct MemoryObjects {
    root: PathBuf,
    objects: Arc<Mutex<MemoryMap>>,
}

#[cfg(test)]
impl MemoryObjects {
    pub(crate) fn new(name: &str) -> Self {
        MemoryObjects {
            root: PathBuf::from(format!("mem:/{name}")),
            ..Default::default()
        }
    }

    fn map(&self) -> MutexGuard<'_, MemoryMap> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bytes of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<Vec<u8>> {
        self.map().get(name).map(|o| o.0.clone())
    }

    /// Replace `name` as damage or a foreign writer would.
    pub(crate) fn set(&self, name: &str, bytes: Vec<u8>) {
        let t = self.map().get(name).map_or(0, |o| o.1);
        self.map().insert(name.to_string(), (bytes, t));
    }

    /// Every name.
    pub(crate) fn names(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }

    /// Make every object look `secs` older (for grace periods).
    pub(crate) fn age(&self, secs: u64) {
        for o in self.map().values_mut() {
            o.1 = o.1.saturating_sub(secs);
        }
    }
}

#[cfg(test)]
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
impl Objects for MemoryObjects {
    fn location(&self) -> &Path {
        &self.root
    }
    fn read(&self, name: &str, max: u64) -> Result<Vec<u8>> {
        let m = self.map();
        let o = m.get(name).ok_or_else(|| {
            Error::new(ErrorKind::NotFound, "no such object").with_path(self.root.join(name))
        })?;
        if o.0.len() as u64 > max {
            return Err(Error::corrupt("object too large").with_path(self.root.join(name)));
        }
        Ok(o.0.clone())
    }
    fn read_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let m = self.map();
        let o = m.get(name).ok_or_else(|| {
            Error::new(ErrorKind::NotFound, "no such object").with_path(self.root.join(name))
        })?;
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= o.0.len() as u64)
            .ok_or_else(|| Error::corrupt("range past the end").with_path(self.root.join(name)))?;
        Ok(o.0[offset as usize..end as usize].to_vec())
    }
    fn create(&self, name: &str, bytes: &[u8]) -> Result<bool> {
        check_name(&self.root, name)?;
        let mut m = self.map();
        if m.contains_key(name) {
            return Ok(false);
        }
        m.insert(name.to_string(), (bytes.to_vec(), now_secs()));
        Ok(true)
    }
    fn replace(&self, name: &str, bytes: &[u8]) -> Result<()> {
        check_name(&self.root, name)?;
        self.map()
            .insert(name.to_string(), (bytes.to_vec(), now_secs()));
        Ok(())
    }
    fn create_streamed(
        &self,
        name: &str,
        fill: &mut dyn FnMut(&mut dyn Write) -> Result<()>,
    ) -> Result<()> {
        let mut v = Vec::new();
        fill(&mut v)?;
        if !self.create(name, &v)? {
            return Err(Error::invalid("streamed object exists"));
        }
        Ok(())
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        Ok(self
            .map()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectInfo {
                name: k.clone(),
                len: v.0.len() as u64,
                modified: v.1,
            })
            .collect())
    }
    fn delete(&self, name: &str) -> Result<()> {
        self.map().remove(name);
        Ok(())
    }
    fn prepare(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["config", "data/ab/0123abcd", "points/x-0000000001"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "/x", "x//y", "../x", "a/.b", "a/b/c/d", "a b", "x/"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_folder_creates_once_never_follows_and_lists_plain_files() {
        let dir = tempfile::tempdir().unwrap();
        let o = FolderObjects::new(dir.path());
        assert!(o.create("data/ab/one", b"1").unwrap());
        assert!(!o.create("data/ab/one", b"2").unwrap());
        assert_eq!(o.read("data/ab/one", 10).unwrap(), b"1");
        assert!(o.read("data/ab/one", 0).is_err());
        assert_eq!(o.read_range("data/ab/one", 0, 1).unwrap(), b"1");
        assert!(o.read_range("data/ab/one", 1, 1).is_err());
        // A symbolic link or a folder where an object goes: not replaced, not followed.
        std::fs::create_dir_all(dir.path().join("points")).unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("points/p1")).unwrap();
        std::fs::create_dir(dir.path().join("points/p2")).unwrap();
        assert!(!o.create("points/p1", b"x").unwrap());
        assert!(!o.create("points/p2", b"x").unwrap());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert!(o.read("points/p1", 10).is_err());
        assert!(o.read("points/p2", 10).is_err());
        // A foreign file where a folder goes is refused, not followed.
        std::os::unix::fs::symlink(dir.path(), dir.path().join("data/cd")).unwrap();
        assert_eq!(
            o.create("data/cd/x", b"x").unwrap_err().kind(),
            ErrorKind::Refused
        );
        let names: Vec<String> = o
            .list("data/")
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(names, ["data/ab/one"]);
        assert!(o.list("points/").unwrap().is_empty());
        o.replace("locks/l", b"a").unwrap();
        o.replace("locks/l", b"b").unwrap();
        assert_eq!(o.read("locks/l", 10).unwrap(), b"b");
        o.delete("locks/l").unwrap();
        o.delete("locks/l").unwrap();
        assert!(o.leftovers().unwrap().is_empty());
    }

    /// Every file under `dir`, by its name there.
    fn files(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for top in ["data", "index", "points", "locks", "condemned"] {
            out.extend(names_under(dir, top).unwrap());
        }
        out.sort();
        out
    }

    #[test]
    fn an_interrupt_removes_what_no_commit_needs_and_nobody_can_use() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let interrupt = |o: &FolderObjects| remove_provisional(d, &o.provisional);
        FolderObjects::new(d).create("points/a-1", b"p").unwrap();
        let before = files(d);

        // A run interrupted before its commit: as if it never ran.
        let o = FolderObjects::new(d);
        o.create("locks/r1", b"l").unwrap();
        o.replace("locks/r1", b"refreshed").unwrap();
        o.create("data/ab/p1", b"x").unwrap();
        o.create_streamed("index/t1", &mut |w| {
            w.write_all(b"t").map_err(|e| Error::io("write", e))
        })
        .unwrap();
        interrupt(&o);
        assert_eq!(files(d), before);

        // After its commit: the point and what it needs stay; what it wrote for the next one
        // (a sync's next point) and its registration go.
        let o = FolderObjects::new(d);
        o.create("locks/r2", b"l").unwrap();
        o.create("data/ab/p2", b"x").unwrap();
        o.create("points/a-2", b"p").unwrap();
        o.create("data/ab/p3", b"x").unwrap();
        interrupt(&o);
        assert_eq!(files(d), ["data/ab/p2", "points/a-1", "points/a-2"]);

        // Another writer registered, or one that committed meanwhile, may have found blocks in
        // them: they stay (a prune removes them).
        let o = FolderObjects::new(d);
        o.create("locks/r3", b"l").unwrap();
        o.create("data/cd/p4", b"x").unwrap();
        std::fs::write(d.join("locks/other"), b"l").unwrap();
        interrupt(&o);
        std::fs::remove_file(d.join("locks/other")).unwrap();
        let o = FolderObjects::new(d);
        o.create("locks/r4", b"l").unwrap();
        o.create("data/cd/p5", b"x").unwrap();
        FolderObjects::new(d).create("points/b-1", b"p").unwrap();
        interrupt(&o);
        assert_eq!(
            files(d),
            [
                "data/ab/p2",
                "data/cd/p4",
                "data/cd/p5",
                "points/a-1",
                "points/a-2",
                "points/b-1"
            ]
        );

        // A prune that deleted a table its new one replaces keeps the new one.
        let o = FolderObjects::new(d);
        o.create("locks/r5", b"l").unwrap();
        o.create("index/t2", b"t").unwrap();
        o.create("index/t3", b"t").unwrap();
        o.delete("index/t3").unwrap();
        o.delete("data/cd/p5").unwrap();
        o.delete("locks/r5").unwrap();
        o.create("data/ef/p6", b"x").unwrap();
        interrupt(&o);
        assert_eq!(
            files(d),
            [
                "data/ab/p2",
                "data/cd/p4",
                "index/t2",
                "points/a-1",
                "points/a-2",
                "points/b-1"
            ]
        );
    }
}
