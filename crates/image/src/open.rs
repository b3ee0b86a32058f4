//! Opening an image from where it is: a file (an archive's disk when the file is an OVA), a
//! disk named inside an archive, or an NBD export.

use std::path::Path;

#[cfg(feature = "nbd")]
use vdisk_core::ErrorKind;
use vdisk_core::{Error, Result};
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
            refuse_bad_uri(path)?;
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
        #[cfg(feature = "nbd")]
        ImageLocation::Nbd(uri) => open_nbd(uri, opts, location.clone()),
    }
}

/// A file name that is NBD URI text: the reason it is not an export, never a search for a
/// file of that name.
fn refuse_bad_uri(path: &Path) -> Result<()> {
    let Some(text) = path.to_str() else {
        return Ok(());
    };
    #[cfg(feature = "nbd")]
    if vdisk_nbd::NbdUri::looks_like(text) {
        return vdisk_nbd::NbdUri::parse(text).map(|_| ());
    }
    #[cfg(not(feature = "nbd"))]
    if text.contains("://") && text.to_ascii_lowercase().starts_with("nbd") {
        return Err(Error::unsupported(
            "is an NBD URI, and vdisk was built without NBD support (the nbd feature)",
        )
        .with_path(path));
    }
    Ok(())
}

/// An NBD export: one layer, no backing file, format `nbd`.
#[cfg(feature = "nbd")]
fn open_nbd(uri: &vdisk_nbd::NbdUri, opts: &OpenOptions, location: ImageLocation) -> Result<Image> {
    if let Some(f) = opts.format.as_deref() {
        if !f.eq_ignore_ascii_case("raw") && !f.eq_ignore_ascii_case("nbd") {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "an NBD export is read as the disk the server presents; -f {f} does not apply"
                ),
            )
            .with_path(uri.to_string()));
        }
    }
    let client = match opts.nbd_timeout {
        Some(t) => vdisk_nbd::ClientOptions::with_timeout(t),
        None => vdisk_nbd::ClientOptions::default(),
    };
    let export = vdisk_nbd::NbdExport::open(uri, &client)?;
    Ok(Image {
        layers: vec![Box::new(export)],
        formats: vec![&vdisk_nbd::NBD],
        location,
        #[cfg(feature = "ova")]
        archive: None,
    })
}
