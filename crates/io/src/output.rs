//! The rules every output follows: what happens to an existing destination, which files an
//! output may never be (the run's inputs), and what kind of thing the destination is.

use std::collections::HashSet;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vdisk_core::{DiskImage, Error, ErrorKind, FileId, Result};

use crate::sys::{self, file_id};

/// What to do when an output's destination already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Existing {
    /// Refuse to write ([`ErrorKind::AlreadyExists`]); nothing is touched.
    #[default]
    Refuse,
    /// Replace it once the new output is complete (the CLI's `--force`). A device is written
    /// in place instead.
    Replace,
}

/// Files and folders an output must never replace or write into: the inputs of a run (every
/// file of every image it reads, a repository it reads). Compared by identity, so another
/// name for the same file (a hard link, `./x`, a path through a symbolic link) is caught.
#[derive(Debug, Clone, Default)]
pub struct Protected {
    files: HashSet<FileId>,
    folders: Vec<(FileId, PathBuf)>,
}

impl Protected {
    /// Nothing protected.
    pub fn new() -> Self {
        Self::default()
    }

    /// Protect every file `img` reads.
    pub fn add_image(&mut self, img: &dyn DiskImage) {
        self.files.extend(img.files());
    }

    /// Protect the file at `path` (following symbolic links); a missing file is skipped.
    pub fn add_path(&mut self, path: &Path) {
        if let Ok(m) = std::fs::metadata(path) {
            self.files.insert(file_id(&m));
        }
    }

    /// Protect a folder and everything in it: no output may be written inside it (a
    /// repository being read).
    pub fn add_folder(&mut self, dir: &Path) -> Result<()> {
        let m = std::fs::metadata(dir)
            .map_err(|e| Error::io("cannot read the folder", e).with_path(dir))?;
        self.folders.push((file_id(&m), dir.to_path_buf()));
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if let Ok(m) = e.metadata() {
                    self.files.insert(file_id(&m));
                }
            }
        }
        Ok(())
    }

    /// Whether the file `id` is protected.
    pub fn contains(&self, id: &FileId) -> bool {
        self.files.contains(id)
    }

    /// Whether nothing is protected.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.folders.is_empty()
    }

    /// Refuse `dst` ([`ErrorKind::Refused`]) when writing it would destroy an input: it is one
    /// of the protected files, a device holding one, or it lies inside a protected folder.
    pub fn check(&self, dst: &Path) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let refuse = |why: String| Err(Error::new(ErrorKind::Refused, why).with_path(dst));
        if let Ok(m) = std::fs::symlink_metadata(dst) {
            let id = file_id(&m);
            if self.files.contains(&id) {
                return refuse(
                    "is an input of this command; an output never replaces an input".into(),
                );
            }
            if id.ino == 0 && self.files.iter().any(|f| f.dev == id.dev && f.ino != 0) {
                return refuse(
                    "is the device that holds an input of this command; an output never overwrites an input"
                        .into(),
                );
            }
        }
        let dir = match dst.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if let Ok(m) = std::fs::metadata(dir) {
            let id = file_id(&m);
            if let Some((_, folder)) = self.folders.iter().find(|(f, _)| *f == id) {
                return refuse(format!(
                    "lies inside {}, which this command reads; write the output elsewhere",
                    folder.display()
                ));
            }
        }
        Ok(())
    }
}

/// How an output is written: what to do with an existing destination, and what it must never
/// be.
///
/// ```
/// use vdisk_core::ErrorKind;
/// use vdisk_io::{write_file, OutputPolicy, Protected};
///
/// let dir = tempfile::tempdir()?;
/// let out = dir.path().join("out.bin");
/// write_file(&out, b"first", &OutputPolicy::new())?;
///
/// // The default policy refuses an existing destination and leaves it alone …
/// let e = write_file(&out, b"second", &OutputPolicy::new()).unwrap_err();
/// assert_eq!(e.kind(), ErrorKind::AlreadyExists);
/// assert_eq!(std::fs::read(&out)?, b"first");
/// // … `replacing` replaces it once the new file is complete …
/// write_file(&out, b"second", &OutputPolicy::replacing())?;
/// assert_eq!(std::fs::read(&out)?, b"second");
///
/// // … and a protected input is never replaced, under any name and by any policy.
/// let mut inputs = Protected::new();
/// inputs.add_path(&out);
/// let policy = OutputPolicy::replacing().protecting(inputs);
/// let other_name = dir.path().join(".").join("out.bin");
/// let e = write_file(&other_name, b"third", &policy).unwrap_err();
/// assert_eq!(e.kind(), ErrorKind::Refused);
/// assert_eq!(std::fs::read(&out)?, b"second");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct OutputPolicy {
    /// An existing destination is refused or replaced.
    pub existing: Existing,
    /// The run's inputs.
    pub protected: Arc<Protected>,
}

impl OutputPolicy {
    /// Refuse existing destinations; protect nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replace existing destinations.
    pub fn replacing() -> Self {
        OutputPolicy {
            existing: Existing::Replace,
            ..Self::default()
        }
    }

    /// The same policy, protecting `protected`.
    pub fn protecting(mut self, protected: Protected) -> Self {
        self.protected = Arc::new(protected);
        self
    }
}

/// What a destination path is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Nothing there yet.
    Missing,
    /// A regular file, a symbolic link or anything else that is replaced by a new file.
    File,
    /// A block device of this many bytes: written in place.
    BlockDevice(u64),
    /// A character device: written in place, front to back.
    CharDevice,
}

impl Destination {
    /// Look at `dst` without following a symbolic link there (a link is replaced, never
    /// followed) — except that a link to a device counts as the device, since operators name
    /// volumes through `/dev/disk/by-id/…` and `/dev/VG/LV` links.
    pub fn of(dst: &Path) -> Result<Destination> {
        let m = match std::fs::symlink_metadata(dst) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Destination::Missing),
            Err(e) => return Err(Error::io("cannot look at", e).with_path(dst)),
        };
        let m = if m.file_type().is_symlink() {
            match std::fs::metadata(dst) {
                Ok(t) if t.file_type().is_block_device() || t.file_type().is_char_device() => t,
                _ => return Ok(Destination::File),
            }
        } else {
            m
        };
        let t = m.file_type();
        if t.is_block_device() {
            Ok(Destination::BlockDevice(block_device_size(dst)?))
        } else if t.is_char_device() {
            Ok(Destination::CharDevice)
        } else if t.is_dir() {
            Err(Error::new(ErrorKind::InvalidArgument, "is a folder, not a file").with_path(dst))
        } else {
            Ok(Destination::File)
        }
    }

    /// Whether the destination is a device, written in place.
    pub fn is_device(self) -> bool {
        matches!(self, Destination::BlockDevice(_) | Destination::CharDevice)
    }
}

/// The size of the block device at `path` in bytes.
pub(crate) fn block_device_size(path: &Path) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f =
        std::fs::File::open(path).map_err(|e| Error::io("cannot open", e).with_path(path))?;
    f.seek(SeekFrom::End(0))
        .map_err(|e| Error::io("cannot find the size of", e).with_path(path))
}

/// The first `n` bytes of the file at `path` (fewer if it is shorter): enough to tell what
/// kind of file it is. The one reader of first bytes for format and manifest detection.
pub fn read_head(path: &Path, n: usize) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| Error::io("cannot open", e).with_path(path))?;
    // A look at the first bytes needs no read-ahead, and must not leave read-ahead marks in
    // the page cache that a paced reader would trip over later.
    sys::fadvise(&f, 0, 0, sys::FileAdvice::Random);
    // Grown as bytes arrive: a caller asking for a huge prefix of a short file allocates
    // what the file holds, not what was asked.
    let mut head = Vec::with_capacity(n.min(64 << 10));
    f.take(n as u64)
        .read_to_end(&mut head)
        .map_err(|e| Error::io("cannot read", e).with_path(path))?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_under_another_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.raw");
        std::fs::write(&a, b"data").unwrap();
        std::fs::hard_link(&a, dir.path().join("b.raw")).unwrap();
        std::os::unix::fs::symlink("a.raw", dir.path().join("c.raw")).unwrap();
        let mut p = Protected::new();
        p.add_path(&a);
        assert_eq!(
            p.check(&dir.path().join("b.raw")).unwrap_err().kind(),
            ErrorKind::Refused
        );
        assert_eq!(
            p.check(&dir.path().join("./a.raw")).unwrap_err().kind(),
            ErrorKind::Refused
        );
        // A symbolic link at the destination is replaced, not followed: allowed.
        p.check(&dir.path().join("c.raw")).unwrap();
        p.check(&dir.path().join("new.raw")).unwrap();
    }

    #[test]
    fn nothing_is_written_inside_a_protected_folder() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        std::fs::write(repo.join("meta"), b"x").unwrap();
        let mut p = Protected::new();
        p.add_folder(&repo).unwrap();
        assert!(p.check(&repo.join("meta")).is_err());
        assert!(p.check(&repo.join("fresh.raw")).is_err());
        p.check(&dir.path().join("out.raw")).unwrap();
    }
}
