//! vdisk-vdi: VirtualBox disk images (VDI), read.
//!
//! - [`VDI`]: the format driver the registry holds (name `vdi`; read only);
//! - [`VdiImage`]: a static or dynamic image as a [`vdisk_io::Layer`]. Differencing (and
//!   undo) images are refused by name, as qemu refuses them: VirtualBox names their parent by
//!   UUID only, through its media registry, not by file name;
//! - [`RawVdiHeader`]: the on-disk header, parsed and validated with qemu's rules.

mod format;
mod header;
mod image;
mod layer;

#[doc(hidden)]
pub mod fuzzing;

pub use format::{probe, Vdi, VDI};
pub use header::{
    ImageType, RawVdiHeader, VdiHeader, DEFAULT_BLOCK_SIZE, DISCARDED, HEADER_SIZE, MAX_BLOCKS,
    UNALLOCATED, VDI_SIGNATURE, VDI_VERSION_1_1,
};
pub use image::VdiImage;
pub use layer::{uuid_text, LINK_KIND};
