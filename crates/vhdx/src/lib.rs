//! vdisk-vhdx: Hyper-V's VHDX format ([MS-VHDX]), read and written natively.
//!
//! - [`VhdxImage`]: one VHDX file as a [`vdisk_io::Layer`]: fixed, dynamic and differencing
//!   disks; a log left by a crash is replayed in memory (the file is never written); a
//!   differencing disk names its parent through [`vdisk_io::Layer::backing`] and the registry
//!   opens it;
//! - [`VhdxSink`]: writes dynamic, fixed and differencing files ([`WriteOptions`]);
//! - [`VHDX`]: the format driver the registry holds.
//!
//! Every structure is parsed in two steps (the stored fields, then a validated value), with
//! offsets checked against the file and tables bounded by its size, so that any bytes open
//! cleanly or fail with one error naming the file and the field.

mod bat;
mod check;
mod crc32c;
mod format;
mod guid;
mod header;
mod image;
mod layer;
mod log;
mod metadata;
mod write;

#[doc(hidden)]
pub mod fuzzing;

pub use bat::{BlockAllocationTable, BlockState, Geometry};
pub use crc32c::{crc32c, Crc32c};
pub use format::{Vhdx, VHDX};
pub use guid::Guid;
pub use header::{Header, RawHeader, RawRegionTable, Region, RegionTable};
pub use image::{Subformat, VhdxImage, LINK_KIND};
pub use log::{FileView, ReplayInfo};
pub use metadata::{Metadata, ParentLocator};
pub use write::{ParentLink, VhdxSink, WriteOptions, DEFAULT_BLOCK_SIZE};
