//! What the source of a backup is, as far as the repository cares.

use std::path::Path;

use vdisk_core::{DiskImage, Error, Result};

/// The disk a backup reads: a name that stays the same across backups, and whether it was
/// closed cleanly. [`Source::of`] derives both from the image and its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// What identifies the disk across backups (its canonical path).
    pub identity: String,
    /// Whether the image says it was not closed cleanly (not quiesced).
    pub unclean: bool,
}

impl Source {
    /// The source behind `img`, opened from `path`.
    pub fn of(path: impl AsRef<Path>, img: &dyn DiskImage) -> Result<Self> {
        let path = path.as_ref();
        let identity = std::fs::canonicalize(path)
            .map_err(|e| Error::io("cannot resolve", e).with_path(path))?
            .display()
            .to_string();
        Ok(Source {
            identity,
            unclean: img.unclean_shutdown(),
        })
    }

    /// The source behind `img`, the member `member` of the archive at `archive` (a disk of an
    /// OVA): the archive's canonical path joined with the member's name.
    pub fn of_member(
        archive: impl AsRef<Path>,
        member: &Path,
        img: &dyn DiskImage,
    ) -> Result<Self> {
        let mut s = Self::of(archive, img)?;
        s.identity = Path::new(&s.identity).join(member).display().to_string();
        Ok(s)
    }
}
