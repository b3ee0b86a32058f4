use std::path::Path;

use vdisk_core::{DiskImage, Error, ErrorKind, Extent, FileId, Result};
use vdisk_ova::OvaImage;
use vdisk_raw::{Cache, RawImage, ReadAhead};
use vdisk_vmdk::{FsStore, VmdkImage};

/// An image format vdisk reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A raw image: the file is the disk.
    Raw,
    /// A VMDK: a descriptor or a sparse extent, with its chain.
    Vmdk,
    /// An OVA appliance: a tar archive whose disk (a VMDK) is read in place.
    Ova,
}

impl std::str::FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "raw" => Ok(Format::Raw),
            "vmdk" => Ok(Format::Vmdk),
            "ova" => Ok(Format::Ova),
            _ => Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("unknown format \"{s}\" (raw, vmdk or ova)"),
            )),
        }
    }
}

/// How [`open_with`] opens an image.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Force a format instead of detecting it (`-f`).
    pub format: Option<Format>,
    /// VMDK options: outside paths, chain depth, CID checks.
    pub vmdk: vdisk_vmdk::OpenOptions,
    /// Read-ahead on the image's files: off when its reads will be paced (`--io-limit`),
    /// from the first read on.
    pub read_ahead: ReadAhead,
    /// What becomes of the page cache behind data read once ([`Cache::Forget`]: dropped).
    pub cache: Cache,
    /// The disk of an OVA to read, by its name in the archive (`--disk`); needed when the
    /// archive holds several. Images that are not archives ignore it.
    pub disk: Option<String>,
}

impl OpenOptions {
    /// The file store VMDK files are opened through.
    pub fn store(&self) -> FsStore {
        FsStore {
            read_ahead: self.read_ahead,
            cache: self.cache,
        }
    }
}

/// An open image of any format.
#[derive(Debug)]
pub enum Image {
    /// A raw image.
    Raw(RawImage),
    /// A VMDK image with its chain.
    Vmdk(VmdkImage),
    /// A disk of an OVA appliance (a VMDK inside a tar archive), read in place.
    Ova(OvaImage),
}

/// Each method forwarded to the image inside, whatever its format.
macro_rules! each_format {
    ($self:ident, $i:ident => $e:expr) => {
        match $self {
            Image::Raw($i) => $e,
            Image::Vmdk($i) => $e,
            Image::Ova($i) => $e,
        }
    };
}

impl DiskImage for Image {
    fn size(&self) -> u64 {
        each_format!(self, i => i.size())
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        each_format!(self, i => i.read_at(buf, offset))
    }
    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        each_format!(self, i => i.allocation(offset, length))
    }
    fn format_name(&self) -> &'static str {
        each_format!(self, i => i.format_name())
    }
    fn mapped(&self, offset: u64, len: u64) -> Option<&[u8]> {
        each_format!(self, i => i.mapped(offset, len))
    }
    fn release(&self, offset: u64, len: u64) {
        each_format!(self, i => i.release(offset, len))
    }
    fn populate(&self, offset: u64, len: u64) {
        each_format!(self, i => i.populate(offset, len))
    }
    fn files(&self) -> Vec<FileId> {
        each_format!(self, i => i.files())
    }
    fn unclean_shutdown(&self) -> bool {
        each_format!(self, i => i.unclean_shutdown())
    }
    fn read_as_asked(&self) {
        each_format!(self, i => i.read_as_asked())
    }
    fn read_once(&self, offset: u64, len: u64) {
        each_format!(self, i => i.read_once(offset, len))
    }
    fn next_data(&self, offset: u64) -> Result<Option<u64>> {
        each_format!(self, i => i.next_data(offset))
    }
    fn forget(&self, offset: u64, len: u64) {
        each_format!(self, i => i.forget(offset, len))
    }
}

/// Detect the format of the file at `path` from its first bytes: a VMDK sparse magic or
/// descriptor text makes a VMDK; a tar header (ustar magic, correct checksum) an OVA;
/// anything else is raw.
pub fn detect(path: impl AsRef<Path>) -> Result<Format> {
    let head = vdisk_raw::read_head(path.as_ref(), 4096)?;
    Ok(if vdisk_vmdk::probe(&head) {
        Format::Vmdk
    } else if vdisk_ova::is_tar(&head) {
        Format::Ova
    } else {
        Format::Raw
    })
}

/// Open the image at `path`, detecting its format, with default options.
///
/// ```
/// use vdisk::DiskImage;
/// let img = vdisk::open("fixtures/chain/top.vmdk")?;
/// let mut first = [0u8; 512];
/// img.read_at(&mut first, 0)?;
/// assert_eq!(img.size(), 256 << 10);
/// # Ok::<(), vdisk::Error>(())
/// ```
pub fn open(path: impl AsRef<Path>) -> Result<Image> {
    open_with(path, &OpenOptions::default())
}

/// Open the image at `path` with `opts`.
pub fn open_with(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Image> {
    let path = path.as_ref();
    let format = match opts.format {
        Some(f) => f,
        None => detect(path)?,
    };
    Ok(match format {
        Format::Raw => Image::Raw(RawImage::open_with_cache(
            path,
            opts.read_ahead,
            opts.cache,
        )?),
        Format::Vmdk => Image::Vmdk(VmdkImage::open_with(&opts.store(), path, &opts.vmdk)?),
        Format::Ova => Image::Ova(OvaImage::open(
            path,
            opts.disk.as_deref(),
            &opts.vmdk,
            opts.read_ahead,
        )?),
    })
}
