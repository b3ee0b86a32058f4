//! What the source of a backup is, as far as the repository cares.

use std::path::Path;

use vdisk_core::{DiskImage, Error, Result};
use vdisk_image::{Image, ImageLocation};

/// The disk a backup reads: a name that stays the same across backups, and whether it was
/// closed cleanly. [`Source::of`] derives both from an opened image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// What identifies the disk across backups (its canonical path; for a disk of an archive,
    /// the archive's canonical path joined with the disk's name in it; for an NBD export,
    /// its URI without the Unix socket's path: `nbd+unix:///vda`, `nbd://host:10809/vda`).
    pub identity: String,
    /// Whether the image says it was not closed cleanly (not quiesced).
    pub unclean: bool,
}

/// The canonical path of `path`, as text.
fn canonical(path: &Path) -> Result<String> {
    Ok(std::fs::canonicalize(path)
        .map_err(|e| Error::io("cannot resolve", e).with_path(path))?
        .display()
        .to_string())
}

impl Source {
    /// The source behind `img`, from where it was opened.
    pub fn of(img: &Image) -> Result<Self> {
        let identity = match img.location() {
            ImageLocation::File(path) => canonical(path)?,
            ImageLocation::Member { archive, .. } => {
                let member = img.path().strip_prefix(archive).unwrap_or(img.path());
                Path::new(&canonical(archive)?)
                    .join(member)
                    .display()
                    .to_string()
            }
            // A live source (an NBD export): files at rest have no say.
            live => live.live_identity().unwrap_or_else(|| live.to_string()),
        };
        Ok(Source {
            identity,
            unclean: img.unclean_shutdown(),
        })
    }

    /// The source behind `img`, a disk read from the file at `path`.
    pub fn of_path(path: impl AsRef<Path>, img: &dyn DiskImage) -> Result<Self> {
        Ok(Source {
            identity: canonical(path.as_ref())?,
            unclean: img.unclean_shutdown(),
        })
    }
}
