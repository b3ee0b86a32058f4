//! Where an image is: a file (with its backing chain), or a disk inside an archive. Live
//! sources (NBD exports) join them here.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where an image is. Paths convert into it (a path is a file, or an archive whose only disk
/// is meant), so everything that opens images takes `impl Into<ImageLocation>`.
///
/// ```
/// use vdisk_image::ImageLocation;
/// let file = ImageLocation::from("disks/web01.vmdk");
/// assert_eq!(file.path(), std::path::Path::new("disks/web01.vmdk"));
/// let member = ImageLocation::member("app.ova", "disk1.vmdk");
/// assert_eq!(member.to_string(), "app.ova/disk1.vmdk");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageLocation {
    /// A file: an image of any format (its backing chain followed), or an archive holding
    /// one disk.
    File(PathBuf),
    /// A disk inside an archive (an OVA), by its name in it.
    Member {
        /// The archive.
        archive: PathBuf,
        /// The disk's name in the archive (or its file name, when only one disk has it).
        disk: String,
    },
}

impl ImageLocation {
    /// The disk `disk` of the archive at `archive`.
    pub fn member(archive: impl Into<PathBuf>, disk: impl Into<String>) -> Self {
        ImageLocation::Member {
            archive: archive.into(),
            disk: disk.into(),
        }
    }

    /// The file that is opened (the archive, for a member).
    pub fn path(&self) -> &Path {
        match self {
            ImageLocation::File(p) => p,
            ImageLocation::Member { archive, .. } => archive,
        }
    }
}

impl fmt::Display for ImageLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageLocation::File(p) => write!(f, "{}", p.display()),
            ImageLocation::Member { archive, disk } => {
                write!(f, "{}/{disk}", archive.display())
            }
        }
    }
}

impl From<&Path> for ImageLocation {
    fn from(p: &Path) -> Self {
        ImageLocation::File(p.to_path_buf())
    }
}

impl From<PathBuf> for ImageLocation {
    fn from(p: PathBuf) -> Self {
        ImageLocation::File(p)
    }
}

impl From<&PathBuf> for ImageLocation {
    fn from(p: &PathBuf) -> Self {
        ImageLocation::File(p.clone())
    }
}

impl From<&str> for ImageLocation {
    fn from(s: &str) -> Self {
        ImageLocation::File(PathBuf::from(s))
    }
}

impl From<String> for ImageLocation {
    fn from(s: String) -> Self {
        ImageLocation::File(PathBuf::from(s))
    }
}

impl From<&ImageLocation> for ImageLocation {
    fn from(l: &ImageLocation) -> Self {
        l.clone()
    }
}
