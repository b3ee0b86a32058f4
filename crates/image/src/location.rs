//! Where an image is: a file (with its backing chain), a disk inside an archive, or a live
//! NBD export.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where an image is. Paths and text convert into it (a path is a file, or an archive whose
/// only disk is meant; text with an NBD scheme is an NBD export), so everything that opens
/// images takes `impl Into<ImageLocation>`.
///
/// ```
/// use vdisk_image::ImageLocation;
/// let file = ImageLocation::from("disks/web01.vmdk");
/// assert_eq!(file.path(), std::path::Path::new("disks/web01.vmdk"));
/// let member = ImageLocation::member("app.ova", "disk1.vmdk");
/// assert_eq!(member.to_string(), "app.ova/disk1.vmdk");
/// let live = ImageLocation::from("nbd+unix:///vda?socket=/run/backup.sock");
/// assert!(live.is_live());
/// assert_eq!(live.to_string(), "nbd+unix:///vda?socket=/run/backup.sock");
/// assert_eq!(live.live_identity().as_deref(), Some("nbd+unix:///vda"));
/// ```
///
/// Text that names an NBD scheme but is not a valid NBD URI (or an NBD URI in a build
/// without the `nbd` feature) stays a [`ImageLocation::File`]: opening it reports why,
/// naming the text, rather than looking for a file of that name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
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
    /// An NBD export (`nbd://HOST[:PORT]/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`): one
    /// layer, read over the network, whose format is `nbd`.
    #[cfg(feature = "nbd")]
    Nbd(vdisk_nbd::NbdUri),
}

impl ImageLocation {
    /// The disk `disk` of the archive at `archive`.
    pub fn member(archive: impl Into<PathBuf>, disk: impl Into<String>) -> Self {
        ImageLocation::Member {
            archive: archive.into(),
            disk: disk.into(),
        }
    }

    /// The text `s` as a location: an NBD export when it parses as an NBD URI, a file
    /// otherwise.
    pub fn parse(s: &str) -> Self {
        #[cfg(feature = "nbd")]
        if vdisk_nbd::NbdUri::looks_like(s) {
            if let Ok(uri) = vdisk_nbd::NbdUri::parse(s) {
                return ImageLocation::Nbd(uri);
            }
        }
        ImageLocation::File(PathBuf::from(s))
    }

    /// The local file that is opened (the archive, for a member; for an NBD export, its
    /// Unix socket, or an empty path over TCP).
    pub fn path(&self) -> &Path {
        match self {
            ImageLocation::File(p) => p,
            ImageLocation::Member { archive, .. } => archive,
            #[cfg(feature = "nbd")]
            ImageLocation::Nbd(uri) => match &uri.transport {
                vdisk_nbd::NbdTransport::Unix { socket } => socket,
                vdisk_nbd::NbdTransport::Tcp { .. } => Path::new(""),
            },
        }
    }

    /// Whether this is a live source (an NBD export) rather than files at rest.
    pub fn is_live(&self) -> bool {
        !matches!(self, ImageLocation::File(_) | ImageLocation::Member { .. })
    }

    /// For a live source, what identifies its disk across backups (an NBD export: its URI
    /// without the Unix socket's path, which a pull-mode backup job makes anew each time);
    /// `None` for files, whose identity is their canonical path.
    pub fn live_identity(&self) -> Option<String> {
        match self {
            #[cfg(feature = "nbd")]
            ImageLocation::Nbd(uri) => Some(uri.identity()),
            _ => None,
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
            #[cfg(feature = "nbd")]
            ImageLocation::Nbd(uri) => write!(f, "{uri}"),
        }
    }
}

impl From<&Path> for ImageLocation {
    fn from(p: &Path) -> Self {
        match p.to_str() {
            Some(s) => ImageLocation::parse(s),
            None => ImageLocation::File(p.to_path_buf()),
        }
    }
}

impl From<PathBuf> for ImageLocation {
    fn from(p: PathBuf) -> Self {
        ImageLocation::from(p.as_path())
    }
}

impl From<&PathBuf> for ImageLocation {
    fn from(p: &PathBuf) -> Self {
        ImageLocation::from(p.as_path())
    }
}

impl From<&str> for ImageLocation {
    fn from(s: &str) -> Self {
        ImageLocation::parse(s)
    }
}

impl From<String> for ImageLocation {
    fn from(s: String) -> Self {
        ImageLocation::parse(&s)
    }
}

#[cfg(feature = "nbd")]
impl From<vdisk_nbd::NbdUri> for ImageLocation {
    fn from(uri: vdisk_nbd::NbdUri) -> Self {
        ImageLocation::Nbd(uri)
    }
}

impl From<&ImageLocation> for ImageLocation {
    fn from(l: &ImageLocation) -> Self {
        l.clone()
    }
}
