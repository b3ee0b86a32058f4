//! vdisk-ova: the disks of an OVA appliance, read in place inside the archive.
//!
//! An OVA is a tar archive holding an OVF descriptor (`.ovf`), often a manifest and a
//! certificate, and the disks (usually streamOptimized VMDKs). [`Ova`] lists its members as
//! byte ranges of the mapped archive ([`list_members`]), tells which are disks
//! ([`find_disks`]: by content, with the probe the registry gives it, so a disk of any
//! registered format counts), and serves them as files of a [`FileStore`], so that a disk
//! inside is opened as if it had been extracted, without a copy. The registry opens them.

mod archive;
#[doc(hidden)]
pub mod fuzzing;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vdisk_core::{Error, ErrorKind, Result};
use vdisk_io::{Bytes, FileRange, FileStore, MappedFile, ReadAhead};

pub use archive::{is_tar, list_members, Member, MAX_MEMBERS};

/// How many first bytes of a member decide whether it is a disk (as detection reads them).
const PROBE_BYTES: usize = 4096;

/// What the registry tells an archive about its members: which are disks, and which files a
/// disk names as parts of itself.
pub trait DiskProbe {
    /// Whether a member is a disk image, from its first bytes (`head`), its last bytes
    /// (`tail`, 512 at most) and its length.
    fn is_disk(&self, head: &[u8], tail: &[u8], len: u64) -> bool;
    /// The files a disk's main file names as parts of itself (a VMDK descriptor's extents).
    fn parts(&self, main: &[u8]) -> Vec<PathBuf>;
}

/// The indexes of the members of `archive` that are disks: members `probe` recognises, less
/// those that a disk in the archive names as one of its parts (the pieces of a split or flat
/// VMDK are not disks of their own).
pub fn find_disks(archive: &[u8], members: &[Member], probe: &dyn DiskProbe) -> Vec<usize> {
    let bytes = |m: &Member| -> &[u8] {
        let start = usize::try_from(m.offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(usize::try_from(m.size).unwrap_or(usize::MAX));
        archive.get(start..end).unwrap_or(&[])
    };
    let disks: Vec<usize> = (0..members.len())
        .filter(|&i| {
            let b = bytes(&members[i]);
            probe.is_disk(
                &b[..b.len().min(PROBE_BYTES)],
                &b[b.len().saturating_sub(512)..],
                b.len() as u64,
            )
        })
        .collect();
    let mut parts: HashSet<PathBuf> = HashSet::new();
    for &i in &disks {
        let dir = members[i].name.parent().unwrap_or(Path::new(""));
        for name in probe.parts(bytes(&members[i])) {
            if let Some(p) = archive::normalise_lookup(&dir.join(&name)) {
                if p != members[i].name {
                    parts.insert(p);
                }
            }
        }
    }
    disks
        .into_iter()
        .filter(|&i| !parts.contains(&members[i].name))
        .collect()
}

/// Whether `name` is the first chunk of a disk ovftool split with `--chunkSize`
/// (`disk1.vmdk.000000000`, `.000000001`, …).
fn is_first_chunk(name: &Path) -> bool {
    name.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.len() == 9 && e.bytes().all(|b| b == b'0'))
}

/// An OVA archive, mapped, with its members listed.
#[derive(Debug)]
pub struct Ova {
    path: PathBuf,
    file: Arc<MappedFile>,
    members: Vec<Member>,
    disks: Vec<usize>,
}

impl Ova {
    /// Open and list the archive at `path`; `probe` tells its disks.
    pub fn open(path: &Path, read_ahead: ReadAhead, probe: &dyn DiskProbe) -> Result<Self> {
        let file = MappedFile::open_with(path, read_ahead)?;
        let bytes = file.bytes().ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                "cannot memory-map this archive (an OVA is read in place, so it must be a regular file)",
            )
            .with_path(path)
        })?;
        let members = list_members(bytes).map_err(|e| e.with_path(path))?;
        let disks = find_disks(bytes, &members, probe);
        Ok(Ova {
            path: path.to_path_buf(),
            members,
            disks,
            file: Arc::new(file),
        })
    }

    /// The archive's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every regular file in the archive, in archive order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The disks, in archive order (see [`find_disks`]).
    pub fn disks(&self) -> impl Iterator<Item = &Member> {
        self.disks.iter().map(|&i| &self.members[i])
    }

    /// The path a member is opened as: the archive's path joined with its name, so that
    /// messages read `appliance.ova/disk1.vmdk`, and names in its descriptor resolve beside it.
    pub fn member_path(&self, m: &Member) -> PathBuf {
        self.path.join(&m.name)
    }

    /// The disk called `name` (its name in the archive, or its file name when only one disk has
    /// it), or the only disk when `name` is `None`. Errors list the disks there are.
    pub fn pick(&self, name: Option<&str>) -> Result<&Member> {
        let disks: Vec<&Member> = self.disks().collect();
        let list = || {
            disks
                .iter()
                .map(|m| format!("\"{}\"", m.name.display()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let err = |kind, msg: String| Err(Error::new(kind, msg).with_path(&self.path));
        match name {
            None => match disks.as_slice() {
                [one] => self.whole(one),
                [] => err(ErrorKind::Unsupported, self.why_no_disk()),
                _ => err(
                    ErrorKind::Ambiguous,
                    format!(
                        "the archive holds {} disks ({}): name the one to read",
                        disks.len(),
                        list()
                    ),
                ),
            },
            Some(want) => {
                let want = Path::new(want);
                let exact = archive::normalise_lookup(want)
                    .and_then(|w| disks.iter().find(|m| m.name == w).copied());
                let by_file: Vec<&Member> = disks
                    .iter()
                    .filter(|m| m.name.file_name() == Some(want.as_os_str()))
                    .copied()
                    .collect();
                match (exact, by_file.as_slice()) {
                    (Some(m), _) => self.whole(m),
                    (None, [m]) => self.whole(m),
                    _ => err(
                        ErrorKind::InvalidArgument,
                        format!(
                            "the archive holds no disk \"{}\"; its disks: {}",
                            want.display(),
                            if disks.is_empty() {
                                "none".into()
                            } else {
                                list()
                            }
                        ),
                    ),
                }
            }
        }
    }

    /// `m`, unless it is the first piece of a disk split by ovftool (not a disk alone).
    fn whole<'a>(&self, m: &'a Member) -> Result<&'a Member> {
        if is_first_chunk(&m.name) {
            return Err(Error::unsupported(format!(
                "\"{}\" is the first piece of a disk split by ovftool --chunkSize; vdisk reads whole members in place: join the pieces (cat NAME.0*) first",
                m.name.display()
            ))
            .with_path(&self.path));
        }
        Ok(m)
    }

    /// Why no member is a disk, in the words of what ovftool makes: disks compressed with
    /// `--compress` (`NAME.vmdk.gz`, `ovf:compression="gzip"`) are not VMDKs until inflated.
    fn why_no_disk(&self) -> String {
        let gz: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.name.extension().is_some_and(|e| e == "gz"))
            .map(|m| format!("\"{}\"", m.name.display()))
            .collect();
        if gz.is_empty() {
            "the archive holds no disk (no member is a VMDK)".into()
        } else {
            format!(
                "the archive holds no disk that can be read in place: {} compressed with gzip (ovftool --compress); extract and gunzip it",
                gz.join(", ")
            )
        }
    }

    /// The member a path (as [`Ova::member_path`] makes them) names.
    fn member_at(&self, path: &Path) -> Option<&Member> {
        let rel = path.strip_prefix(&self.path).ok()?;
        let name = archive::normalise_lookup(rel)?;
        self.members.iter().find(|m| m.name == name)
    }
}

impl FileStore for Ova {
    fn load(&self, path: &Path) -> Result<Bytes> {
        let m = self.member_at(path).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                "no such member in the archive (a disk in an OVA reads only files of that archive)",
            )
            .with_path(path)
        })?;
        Ok(Bytes::Range(FileRange::new(
            Arc::clone(&self.file),
            m.offset,
            m.size,
            path.to_path_buf(),
        )?))
    }

    fn identity(&self, path: &Path) -> Result<PathBuf> {
        match self.member_at(path) {
            Some(m) => Ok(self.path.join(&m.name)),
            None => Err(
                Error::new(ErrorKind::NotFound, "no such member in the archive").with_path(path),
            ),
        }
    }
}
