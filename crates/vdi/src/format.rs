//! The VDI format's driver: detection and opening (vdisk reads VDI, it does not write it).

use vdisk_core::Result;
use vdisk_io::{Bytes, Format, Layer, OpenContext, ProbeBytes};

use crate::header::VDI_SIGNATURE;
use crate::image::VdiImage;

/// The VDI format (VirtualBox).
#[derive(Debug, Clone, Copy, Default)]
pub struct Vdi;

/// The VDI format's driver.
pub static VDI: Vdi = Vdi;

/// Whether `bytes` look like a VDI: the signature at offset 0x40 (qemu's test).
///
/// ```
/// use vdisk_io::ProbeBytes;
/// let mut head = vec![0u8; 512];
/// head[0x40..0x44].copy_from_slice(&0xbeda107fu32.to_le_bytes());
/// assert!(vdisk_vdi::probe(&ProbeBytes { head: &head, tail: &[], len: 512 }));
/// assert!(!vdisk_vdi::probe(&ProbeBytes { head: &head[..0x43], tail: &[], len: 0x43 }));
/// ```
pub fn probe(bytes: &ProbeBytes<'_>) -> bool {
    bytes
        .head
        .get(0x40..0x44)
        .is_some_and(|s| s == VDI_SIGNATURE.to_le_bytes())
}

impl Format for Vdi {
    fn name(&self) -> &'static str {
        "vdi"
    }

    fn extensions(&self) -> &'static [&'static str] {
        &["vdi"]
    }

    fn probe(&self, bytes: &ProbeBytes<'_>) -> bool {
        probe(bytes)
    }

    fn open(&self, bytes: Bytes, _cx: &OpenContext<'_>) -> Result<Box<dyn Layer>> {
        Ok(Box::new(VdiImage::from_bytes(bytes)?))
    }
}
