//! Where a repository's files live: a local folder ([`local`]) or an object store
//! ([`s3`]), behind one small trait, so that backup, verify, prune, restore and sync are
//! written once.
//!
//! A store holds flat names (`point-000001.vmdk`, …) under its root. It reads and writes whole
//! small files, streams large ones in (written front to back: a point's extents, its
//! manifest), reads them back by range, and keeps the metadata, the writer's lock and the
//! clean-up of what killed runs left: the parts whose mechanics differ between a file system
//! and an object store.

pub(crate) mod local;
#[cfg(test)]
pub(crate) mod memory;
pub(crate) mod objects;
#[cfg(feature = "s3")]
pub(crate) mod s3;

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vdisk_core::{Error, ErrorKind, FileId, Result};
use vdisk_diff::ManifestBytes;
use vdisk_io::{Bytes, FileStore, ImageOutput, OutputPolicy, RangedFile};

use crate::layout2::meta::RepoMeta;

/// Where a repository is: a folder, or a prefix of an S3 (or S3-compatible) bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A folder on the local file system.
    Folder(PathBuf),
    /// `s3://BUCKET/PREFIX`: every object's key starts with `PREFIX/`. Credentials, region
    /// and endpoint come from the standard `AWS_*` environment variables.
    S3 {
        /// The bucket (it must exist: vdisk never creates buckets).
        bucket: String,
        /// The key prefix, without leading or trailing `/` (empty: the whole bucket).
        prefix: String,
    },
}

impl Location {
    /// A repository location as users type it: `s3://BUCKET/PREFIX`, or a folder.
    ///
    /// ```
    /// use vdisk_chain::Location;
    /// let l = Location::parse("s3://backups/vm1/disk0".as_ref())?;
    /// assert_eq!(l, Location::S3 { bucket: "backups".into(), prefix: "vm1/disk0".into() });
    /// assert_eq!(l.to_string(), "s3://backups/vm1/disk0");
    /// assert!(matches!(Location::parse("repo".as_ref())?, Location::Folder(_)));
    /// assert!(Location::parse("s3://backups/../x".as_ref()).is_err());
    /// // Paths and text convert as the command line reads them.
    /// assert_eq!(Location::from("s3://backups/vm1"), Location::S3 { bucket: "backups".into(), prefix: "vm1".into() });
    /// assert!(matches!(Location::from("/srv/backups/vm1"), Location::Folder(_)));
    /// // Text that looks like an object store but is not a valid one is refused, never a
    /// // folder named "s3:".
    /// let e = vdisk_chain::Repository::open_or_init("s3://No_Such/x", &Default::default()).unwrap_err();
    /// assert!(e.to_string().contains("bucket name"), "{e}");
    /// # Ok::<(), vdisk_core::Error>(())
    /// ```
    pub fn parse(s: &OsStr) -> Result<Location> {
        let Some(text) = s.to_str().and_then(|t| t.strip_prefix("s3://")) else {
            return Ok(Location::Folder(PathBuf::from(s)));
        };
        let bad = |why: &str| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("{}: not a repository location ({why})", s.to_string_lossy()),
            )
        };
        let (bucket, prefix) = text.split_once('/').unwrap_or((text, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-');
        if !bucket_ok {
            return Err(bad(
                "the bucket name must be 3 to 63 lowercase letters, digits, '.' or '-'",
            ));
        }
        let prefix = prefix.trim_matches('/');
        for part in prefix.split('/').filter(|_| !prefix.is_empty()) {
            let ok = !part.is_empty()
                && part != "."
                && part != ".."
                && part.bytes().all(|c| {
                    c.is_ascii_alphanumeric()
                        || matches!(c, b'-' | b'_' | b'.' | b'=' | b'+' | b'@')
                });
            if !ok {
                return Err(bad(
                    "the prefix is words of letters, digits and - _ . = + @ between single '/'",
                ));
            }
        }
        Ok(Location::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// The path messages name the repository by (`s3://BUCKET/PREFIX` for an object store).
    pub fn root(&self) -> PathBuf {
        match self {
            Location::Folder(p) => p.clone(),
            Location::S3 { .. } => PathBuf::from(self.to_string()),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Folder(p) => write!(f, "{}", p.display()),
            Location::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// A path as the command line reads it: `s3://BUCKET/PREFIX` text is an object store (a
/// folder of that name would be `./s3:/…`), anything else a folder. Text that starts with
/// `s3://` but is not a valid location stays a folder path, which opening refuses with the
/// reason ([`Location::parse`] gives it directly).
impl<P: AsRef<Path>> From<P> for Location {
    fn from(p: P) -> Self {
        let p = p.as_ref();
        Location::parse(p.as_os_str()).unwrap_or_else(|_| Location::Folder(p.to_path_buf()))
    }
}

/// The exclusive right to write a repository, held while the value lives.
pub(crate) trait WriterLock: Send + Sync + fmt::Debug {
    /// Fail unless the lock is still held (a lease can be lost; a kernel lock cannot).
    fn check(&self) -> Result<()> {
        Ok(())
    }
}

/// A file being written front to back (a manifest): appears under its name only once
/// [`StreamOutput::finish`] returns.
pub(crate) trait StreamOutput: Send {
    /// Where the bytes go.
    fn writer(&mut self) -> &mut (dyn std::io::Write + Send);
    /// Make the file complete and visible; returns its length.
    fn finish(self: Box<Self>) -> Result<u64>;
}

/// Bytes of a manifest: a local file read with positional reads, or an object read by range.
#[derive(Debug)]
pub(crate) enum ManifestSource {
    File {
        file: std::fs::File,
        len: u64,
        id: FileId,
    },
    // Read by range from an object store (and the tests' memory store).
    #[cfg_attr(not(any(feature = "s3", test)), allow(dead_code))]
    Ranged(Arc<dyn RangedFile>),
}

impl ManifestSource {
    /// The local file's identity.
    pub(crate) fn id(&self) -> Option<FileId> {
        match self {
            ManifestSource::File { id, .. } => Some(*id),
            ManifestSource::Ranged(_) => None,
        }
    }
}

impl ManifestBytes for ManifestSource {
    fn len(&self) -> u64 {
        match self {
            ManifestSource::File { len, .. } => *len,
            ManifestSource::Ranged(r) => r.len(),
        }
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match self {
            ManifestSource::File { file, .. } => {
                use std::os::unix::fs::FileExt;
                file.read_exact_at(buf, offset)
                    .map_err(|e| Error::io("cannot read the manifest", e).at(offset))
            }
            ManifestSource::Ranged(r) => {
                if offset.saturating_add(buf.len() as u64) > r.len() {
                    return Err(Error::corrupt("manifest is truncated"));
                }
                r.read_at(buf, offset)
            }
        }
    }
}

/// A file of a repository as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredFile {
    pub name: String,
    pub len: u64,
}

/// The storage under a repository.
pub(crate) trait Store: Send + Sync + fmt::Debug {
    /// The repository's path as messages name it (a folder, or `s3://BUCKET/PREFIX`).
    fn root(&self) -> &Path;
    /// The path of `name` as messages and image readers name it.
    fn path(&self, name: &str) -> PathBuf {
        self.root().join(name)
    }
    /// The folder, for a local repository.
    fn local_dir(&self) -> Option<&Path> {
        None
    }
    /// Read the points' files with read-ahead as `ra` says (local files only).
    fn set_read_ahead(&self, _ra: vdisk_io::ReadAhead) {}
    /// Drop the points' data from the page cache behind reads of it, or keep it (local
    /// files only).
    fn set_cache(&self, _cache: vdisk_io::Cache) {}

    /// The current metadata (`None` when there is none: not a repository yet). A location
    /// that cannot hold a repository (a file, a missing bucket) is an error.
    fn load_meta(&self) -> Result<Option<RepoMeta>>;
    /// Make `meta` the current metadata, atomically; never over a newer state.
    fn commit_meta(&self, meta: &RepoMeta) -> Result<()>;
    /// Take the writer's lock, or fail with [`ErrorKind::InUse`].
    fn lock(&self) -> Result<Box<dyn WriterLock>>;
    /// Make the location ready for a first backup (create the folder).
    fn prepare(&self) -> Result<()>;
    /// Whether `name` is a name runs of vdisk write here (anything else is foreign).
    fn is_ours(&self, name: &str) -> bool;

    /// Every file under the root (names relative to it).
    fn list(&self) -> Result<Vec<StoredFile>>;
    /// The length of `name`.
    fn len(&self, name: &str) -> Result<u64>;
    /// The whole of `name`, at most `max` bytes long.
    fn read(&self, name: &str, max: u64) -> Result<Vec<u8>>;
    /// Write `name` whole, atomically.
    fn put(&self, name: &str, bytes: &[u8]) -> Result<()>;
    /// Start writing `name` front to back.
    fn create_stream(&self, name: &str) -> Result<Box<dyn StreamOutput>>;
    /// Remove `name` (gone already is fine).
    // Only an object store's clean-up removes files one by one.
    #[cfg_attr(not(feature = "s3"), allow(dead_code))]
    fn remove(&self, name: &str) -> Result<()>;
    /// The files of a new image whose descriptor is `name`.
    fn image_output(&self, name: &str, policy: &OutputPolicy) -> Result<Box<dyn ImageOutput>>;
    /// The bytes of the file at `path` (a path under [`Store::root`]), for image readers.
    fn load(&self, path: &Path) -> Result<Bytes>;
    /// The bytes of manifest `name`.
    fn manifest_bytes(&self, name: &str) -> Result<ManifestSource>;
    /// Remove what runs left behind: files with our names not in `keep`, temporaries,
    /// pending uploads, older metadata.
    fn clean_up(&self, keep: &HashSet<String>) -> Result<()>;
    /// Bytes the repository's files take.
    fn usage(&self) -> u64;
}

/// Open the store at `loc`.
pub(crate) fn open(loc: &Location) -> Result<Arc<dyn Store>> {
    Ok(match loc {
        Location::Folder(p) if p.as_os_str().as_encoded_bytes().starts_with(b"s3://") => {
            // Not a valid object-store location: say why rather than make a folder "s3:".
            return Err(Location::parse(p.as_os_str())
                .err()
                .unwrap_or_else(|| Error::invalid("not a repository location")));
        }
        Location::Folder(p) => Arc::new(local::FolderStore::new(p)),
        #[cfg(feature = "s3")]
        Location::S3 { bucket, prefix } => Arc::new(s3::S3Store::open(bucket, prefix)?),
        #[cfg(not(feature = "s3"))]
        Location::S3 { .. } => {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "this vdisk was built without object-store support (the s3 feature)",
            )
            .with_path(loc.root()))
        }
    })
}

/// A store as the image readers' [`FileStore`].
pub(crate) struct StoreFiles<'a>(pub &'a dyn Store);

impl FileStore for StoreFiles<'_> {
    fn load(&self, path: &Path) -> Result<Bytes> {
        self.0.load(path)
    }
    fn identity(&self, path: &Path) -> Result<PathBuf> {
        match self.0.local_dir() {
            Some(_) => {
                std::fs::canonicalize(path).map_err(|e| Error::io("cannot open", e).with_path(path))
            }
            None => Ok(path.to_path_buf()),
        }
    }
}

/// The name of `path` if it lies directly in `root` (stores hold flat names).
pub(crate) fn name_in<'a>(root: &Path, path: &'a Path) -> Result<&'a str> {
    match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(p), Some(n)) if p == root => Ok(n),
        _ => Err(Error::new(
            ErrorKind::PathRefused,
            "names a file outside the repository",
        )
        .with_path(path)),
    }
}

/// Which layout a location holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Nothing of a repository (an empty or missing folder, an empty prefix).
    None,
    /// The earlier layout: a VMDK chain per folder (`vdisk-repo.json`).
    Two,
    /// Content-addressed blocks in packs (`config`).
    Three,
}

/// The stores of a location: layout 3's objects, and layout 2's store to read an older
/// repository.
pub(crate) fn open_both(loc: &Location) -> Result<(Arc<dyn objects::Objects>, Arc<dyn Store>)> {
    match loc {
        Location::Folder(p) => {
            let legacy = open(loc)?;
            Ok((Arc::new(objects::FolderObjects::new(p)), legacy))
        }
        #[cfg(feature = "s3")]
        Location::S3 { bucket, prefix } => {
            let s = s3::S3Store::open(bucket, prefix)?;
            Ok((Arc::new(s3::S3Objects::new(s.clone())), Arc::new(s)))
        }
        #[cfg(not(feature = "s3"))]
        Location::S3 { .. } => Err(open(loc).err().unwrap_or_else(|| Error::invalid("no s3"))),
    }
}

/// The layout at `loc`, whose stores are `objects` and `legacy`.
pub(crate) fn layout_of(objects: &dyn objects::Objects, legacy: &dyn Store) -> Result<Layout> {
    // A missing bucket is an error to say, not an empty repository.
    let no_bucket = |e: &Error| e.message().contains("no such bucket");
    match objects.read(crate::config::CONFIG, crate::config::MAX_SMALL) {
        Ok(_) => return Ok(Layout::Three),
        Err(e) if e.kind() == ErrorKind::NotFound && !no_bucket(&e) => {}
        // Something is there but cannot be read as a config: opening will say what.
        Err(e) if e.kind() == ErrorKind::Corrupt => return Ok(Layout::Three),
        Err(e) => return Err(e),
    }
    match legacy.load_meta() {
        Ok(Some(_)) => Ok(Layout::Two),
        Ok(None) => Ok(Layout::None),
        Err(e) if e.kind() == ErrorKind::NotFound && !no_bucket(&e) => Ok(Layout::None),
        // Damaged layout-2 metadata is still layout 2: its readers say what is wrong.
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::Corrupt | ErrorKind::InvalidFormat | ErrorKind::Unsupported
            ) =>
        {
            Ok(Layout::Two)
        }
        Err(e) => Err(e),
    }
}
