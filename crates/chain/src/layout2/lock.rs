//! One writer at a time: the kernel's lock (`flock`) on a lock file that is never deleted.
//!
//! The kernel releases the lock when the process dies, whatever its state: a run killed with
//! `kill -9`, or one left a zombie by a PID 1 that never reaps, holds nothing. The file's
//! contents mean nothing (a leftover file of any content, or an empty one, is just the file to
//! lock). Each handle opens the file anew, so a second handle in the same process is refused
//! like another process would be, and dropping one handle never unlocks another.
//! Readers take no lock: the metadata is replaced atomically, so they always see a whole
//! state, and they need no write access to the repository.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use vdisk_core::{Error, ErrorKind, Result};
use vdisk_io::sys;

/// Name of the lock file inside a repository.
pub const LOCK_FILE: &str = ".vdisk-lock";

/// The exclusive lock of a repository, held while the value lives.
#[derive(Debug)]
pub struct RepoLock {
    /// The locked file; closing it releases the lock.
    _file: File,
}

impl RepoLock {
    /// Take the repository's lock at `dir`, or fail at once with [`ErrorKind::InUse`] when
    /// another run (or another handle of this process) holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        Self::acquire_file(&dir.join(LOCK_FILE), dir)
    }

    /// Take the lock on the file at `path` (created if needed) for the repository `repo`
    /// (named in the error when another run holds it).
    pub fn acquire_file(path: &Path, repo: &Path) -> Result<Self> {
        let dir = repo;
        let path = path.to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(sys::flags::O_NOFOLLOW | sys::flags::O_CLOEXEC)
            .mode(0o644)
            .open(&path)
            .map_err(|e| Error::io("cannot open the lock file", e).with_path(&path))?;
        match sys::try_lock_exclusive(&file) {
            Ok(true) => {}
            Ok(false) => {
                return Err(Error::new(
                    ErrorKind::InUse,
                    "repository is in use by another vdisk run (a backup or prune is writing it)",
                )
                .with_path(dir))
            }
            Err(err) => return Err(Error::io("cannot lock the repository", err).with_path(&path)),
        }
        Ok(RepoLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_handle_is_refused_and_the_first_keeps_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let first = RepoLock::acquire(dir.path()).unwrap();
        let e = RepoLock::acquire(dir.path()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InUse);
        // A failed attempt does not release the holder's lock.
        assert_eq!(
            RepoLock::acquire(dir.path()).unwrap_err().kind(),
            ErrorKind::InUse
        );
        drop(first);
        let _again = RepoLock::acquire(dir.path()).unwrap();
        assert!(dir.path().join(LOCK_FILE).exists());
    }

    #[test]
    fn leftover_lock_files_of_any_content_mean_nothing() {
        let dir = tempfile::tempdir().unwrap();
        for content in ["", "1\n", "999999999\n", "garbage"] {
            std::fs::write(dir.path().join(LOCK_FILE), content).unwrap();
            drop(RepoLock::acquire(dir.path()).unwrap());
        }
    }
}
