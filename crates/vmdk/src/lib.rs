//! vdisk-vmdk: reading and writing VMDK images.
//!
//! - [`RawSparseHeader`] and [`SparseHeader`]: the hosted sparse extent header (`KDMV`) as
//!   stored, and validated against its file;
//! - [`Descriptor`]: the text descriptor (extent lines, CIDs, ddb keys);
//! - [`Marker`]: streamOptimized markers (grain, GT, GD, footer, end of stream);
//! - [`SparseExtent`]: grain directory and tables of one sparse extent, with the redundant
//!   directory as a fallback and compressed grains;
//! - [`SeSparseExtent`] and [`CowdExtent`]: the data files of ESXi snapshots (SEsparse on
//!   VMFS6, COWD/vmfsSparse on VMFS5 and older), read through their descriptors;
//! - [`VmdkLayer`]: one VMDK file set (descriptor + extents) as a [`vdisk_io::Layer`]; its
//!   parent is named ([`vdisk_io::Layer::backing`]) and opened by the registry;
//! - [`VMDK`]: the format's driver;
//! - [`check`]: metadata consistency checks;
//! - [`writer`]: writing every subformat (as [`vdisk_core::ImageSink`]s), and delta links.
//!
//! Everything read from a file is checked before use: offsets against the file length, counts
//! against what the file could hold, arithmetic with overflow checks.

pub mod check;
mod cowd;
mod descriptor;
mod esx_check;
mod findings;
mod format;
#[doc(hidden)]
pub mod fuzzing;
mod header;
mod info;
mod layer;
mod marker;
mod read;
mod sesparse;
mod sparse;
mod stream_reader;
#[doc(hidden)]
pub mod testing;
#[cfg(test)]
mod testutil;
pub mod writer;

pub use cowd::{
    CowdExtent, CowdGrain, CowdHeader, CowdTable, COWD_GTES_PER_GT, COWD_HEADER_BYTES, COWD_MAGIC,
};
pub use descriptor::CID_LINK;
pub use descriptor::{Access, Descriptor, ExtentLine, ExtentType, NO_PARENT_CID};
pub use format::{probe, Vmdk, VMDK};
pub use header::{HeaderFlags, RawSparseHeader, SparseHeader, GD_AT_END, SPARSE_MAGIC};
pub use layer::{LayerExtent, VmdkLayer};
pub use marker::{Marker, MarkerType};
pub use sesparse::{
    SeSparseConstHeader, SeSparseExtent, SeSparseGrain, SeSparseTable, SeSparseVolatileHeader,
    SESPARSE_CONST_MAGIC, SESPARSE_VERSION, SESPARSE_VOLATILE_MAGIC,
};
pub use sparse::{GrainEntry, SparseExtent};
pub use stream_reader::StreamReader;
