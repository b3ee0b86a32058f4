//! The driver value an NBD export's layer is registered under: named `nbd`, claiming no
//! file (exports are opened by URI, never probed from bytes) and writing nothing.

use vdisk_core::{Error, ErrorKind, Result};
use vdisk_io::{Bytes, Format, Layer, OpenContext, ProbeBytes};

/// The format of an NBD export: what `vdisk info` names the layer of an `nbd://` or
/// `nbd+unix://` image. It is not a file format: the registry does not probe with it, and
/// it opens nothing from bytes (an export is opened by its URI with
/// [`crate::NbdExport::open`]).
#[derive(Debug)]
pub struct NbdFormat;

/// The `nbd` driver value.
pub static NBD: NbdFormat = NbdFormat;

impl Format for NbdFormat {
    fn name(&self) -> &'static str {
        "nbd"
    }

    fn probe(&self, _: &ProbeBytes<'_>) -> bool {
        false
    }

    fn open(&self, _: Bytes, cx: &OpenContext<'_>) -> Result<Box<dyn Layer>> {
        Err(Error::new(
            ErrorKind::InvalidArgument,
            "an NBD export is opened by its URI (nbd://HOST/EXPORT or nbd+unix:///EXPORT?socket=PATH), not as a file",
        )
        .with_path(cx.path))
    }
}
