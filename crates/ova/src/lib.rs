//! vdisk-ova: the disks of an OVA appliance, read in place inside the archive.
//!
//! An OVA is a tar archive holding an OVF descriptor (`.ovf`), often a manifest and a
//! certificate, and the disks (usually streamOptimized VMDKs). [`Ova`] lists its members as
//! byte ranges of the mapped archive ([`list_members`]), tells which are disks
//! ([`find_disks`]: by content, as vdisk detects any image), and serves them as files of a
//! [`FileStore`], so that a VMDK inside is opened as if it had been extracted, without a copy.
//! [`OvaImage`] is one disk of an archive as a [`DiskImage`].

mod archive;
#[doc(hidden)]
pub mod fuzzing;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vdisk_core::{DiskImage, Error, ErrorKind, Extent, FileId, Result};
use vdisk_raw::{MappedFile, ReadAhead};
use vdisk_vmdk::{Bytes, Descriptor, FileRange, FileStore, OpenOptions, VmdkImage};

pub use archive::{is_tar, list_members, Member, MAX_MEMBERS};

/// How many first bytes of a member decide whether it is a disk (as `vdisk::detect` reads).
const PROBE_BYTES: usize = 4096;

/// The indexes of the members of `archive` that are disks: members whose first bytes are a
/// VMDK (a sparse header or descriptor text), less those that a descriptor in the archive
/// names as one of its extents (the pieces of a split or flat disk are not disks of their own).
pub fn find_disks(archive: &[u8], members: &[Member]) -> Vec<usize> {
    let bytes = |m: &Member| -> &[u8] {
        let start = usize::try_from(m.offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(usize::try_from(m.size).unwrap_or(usize::MAX));
        archive.get(start..end).unwrap_or(&[])
    };
    let vmdk: Vec<usize> = (0..members.len())
        .filter(|&i| {
            let b = bytes(&members[i]);
            vdisk_vmdk::probe(&b[..b.len().min(PROBE_BYTES)])
        })
        .collect();
    let mut extents: HashSet<PathBuf> = HashSet::new();
    for &i in &vmdk {
        let b = bytes(&members[i]);
        if b.starts_with(b"KDMV") || b.starts_with(b"COWD") {
            continue; // an embedded descriptor names the file itself
        }
        let Ok(d) = Descriptor::parse(b) else {
            continue;
        };
        let dir = members[i].name.parent().unwrap_or(Path::new(""));
        for e in &d.extents {
            for name in e.file.iter().flat_map(|f| d.name_candidates(f)) {
                if let Some(p) = archive::normalise_lookup(&dir.join(&name)) {
                    if p != members[i].name {
                        extents.insert(p);
                    }
                }
            }
        }
    }
    vmdk.into_iter()
        .filter(|&i| !extents.contains(&members[i].name))
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
    /// Open and list the archive at `path`.
    pub fn open(path: &Path, read_ahead: ReadAhead) -> Result<Self> {
        let file = MappedFile::open_with(path, read_ahead)?;
        let bytes = file.bytes().ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                "cannot memory-map this archive (an OVA is read in place, so it must be a regular file)",
            )
            .with_path(path)
        })?;
        let members = list_members(bytes).map_err(|e| e.with_path(path))?;
        let disks = find_disks(bytes, &members);
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
                [one] => Ok(one),
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
                    (Some(m), _) => Ok(m),
                    (None, [m]) => Ok(*m),
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

/// One disk of an OVA, opened in place.
#[derive(Debug)]
pub struct OvaImage {
    ova: Ova,
    disk: Member,
    image: VmdkImage,
}

impl OvaImage {
    /// Open the disk `disk` (see [`Ova::pick`]) of the archive at `path`.
    pub fn open(
        path: &Path,
        disk: Option<&str>,
        opts: &OpenOptions,
        read_ahead: ReadAhead,
    ) -> Result<Self> {
        let ova = Ova::open(path, read_ahead)?;
        let disk = ova.pick(disk)?.clone();
        if is_first_chunk(&disk.name) {
            return Err(Error::unsupported(format!(
                "\"{}\" is the first piece of a disk split by ovftool --chunkSize; vdisk reads whole members in place: join the pieces (cat NAME.0*) first",
                disk.name.display()
            ))
            .with_path(path));
        }
        let image = VmdkImage::open_with(&ova, &ova.member_path(&disk), opts)?;
        Ok(OvaImage { ova, disk, image })
    }

    /// The archive.
    pub fn ova(&self) -> &Ova {
        &self.ova
    }

    /// The member that was opened.
    pub fn disk(&self) -> &Member {
        &self.disk
    }

    /// The VMDK inside.
    pub fn vmdk(&self) -> &VmdkImage {
        &self.image
    }
}

impl DiskImage for OvaImage {
    fn size(&self) -> u64 {
        self.image.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.image.read_at(buf, offset)
    }
    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        self.image.allocation(offset, length)
    }
    fn format_name(&self) -> &'static str {
        self.image.format_name()
    }
    fn mapped(&self, offset: u64, len: u64) -> Option<&[u8]> {
        self.image.mapped(offset, len)
    }
    fn populate(&self, offset: u64, len: u64) {
        self.image.populate(offset, len)
    }
    fn release(&self, offset: u64, len: u64) {
        self.image.release(offset, len)
    }
    fn read_as_asked(&self) {
        self.image.read_as_asked()
    }
    fn read_once(&self, offset: u64, len: u64) {
        self.image.read_once(offset, len)
    }
    fn forget(&self, offset: u64, len: u64) {
        self.image.forget(offset, len)
    }
    fn files(&self) -> Vec<FileId> {
        self.image.files()
    }
    fn unclean_shutdown(&self) -> bool {
        self.image.unclean_shutdown()
    }
}
