//! Opening an image from where it is: a file (an archive's disk when the file is an OVA) or
//! a disk named inside an archive.

#[cfg(not(feature = "ova"))]
use vdisk_core::Error;
use vdisk_core::Result;
use vdisk_io::FileStore;

#[cfg(feature = "ova")]
use crate::chain::Probe;
use crate::chain::{open_chain_from, OpenOptions};
use crate::image::Image;
use crate::location::ImageLocation;

/// Open the image at `location` with default options: a file (its format detected from its
/// bytes), with its backing chain; or a disk of an archive.
///
/// ```
/// use vdisk_core::DiskImage;
/// let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/chain");
/// let img = vdisk_image::open(format!("{fixtures}/top.vmdk"))?;
/// assert_eq!(img.size(), 256 << 10);
/// assert_eq!(img.layers().len(), 3); // top.vmdk, mid.vmdk, base.vmdk
/// # Ok::<(), vdisk_core::Error>(())
/// ```
pub fn open(location: impl Into<ImageLocation>) -> Result<Image> {
    open_with(location, &OpenOptions::default())
}

/// Open the image at `location` with `opts`: a file (its format detected from its bytes, or
/// forced), with its backing chain; or a disk of an archive.
pub fn open_with(location: impl Into<ImageLocation>, opts: &OpenOptions) -> Result<Image> {
    let location = location.into();
    let store = opts.store();
    match &location {
        ImageLocation::File(path) => {
            let bytes = store.load(path)?;
            #[cfg(feature = "ova")]
            if opts
                .format
                .as_deref()
                .is_none_or(|f| f.eq_ignore_ascii_case("ova"))
            {
                let probe = Probe::of(&bytes)?;
                if vdisk_ova::is_tar(probe.bytes().head) || opts.format.is_some() {
                    drop(bytes);
                    return crate::archive::open_member(path, opts.disk.as_deref(), opts);
                }
            }
            open_chain_from(&store, path, bytes, opts, location.clone())
        }
        ImageLocation::Member { archive, disk } => {
            #[cfg(feature = "ova")]
            {
                crate::archive::open_member(archive, Some(disk), opts)
            }
            #[cfg(not(feature = "ova"))]
            {
                let _ = disk;
                Err(
                    Error::unsupported("vdisk was built without archive (OVA) support")
                        .with_path(archive),
                )
            }
        }
    }
}
