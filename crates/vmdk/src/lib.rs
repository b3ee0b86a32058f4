//! vdisk-vmdk: reading VMDK images.
//!
//! - [`RawSparseHeader`] and [`SparseHeader`]: the hosted sparse extent header (`KDMV`) as
//!   stored, and validated against its file;
//! - [`Descriptor`]: the text descriptor (extent lines, CIDs, ddb keys);
//! - [`Marker`]: streamOptimized markers (grain, GT, GD, footer, end of stream);
//! - [`SparseExtent`]: grain directory and tables of one sparse extent, with the redundant
//!   directory as a fallback and compressed grains;
//! - [`SeSparseExtent`] and [`CowdExtent`]: the data files of ESXi snapshots (SEsparse on
//!   VMFS6, COWD/vmfsSparse on VMFS5 and older), read through their descriptors;
//! - [`VmdkImage`]: a whole image (descriptor + extents) and its chain of parents, as a
//!   [`vdisk_core::DiskImage`];
//! - [`check`]: metadata consistency checks;
//! - [`writer`]: writing every subformat (as [`vdisk_core::ImageSink`]s), and delta links.
//!
//! Everything read from a file is checked before use: offsets against the file length, counts
//! against what the file could hold, arithmetic with overflow checks.

mod bytes;
mod chain;
pub mod check;
mod cowd;
mod descriptor;
mod esx_check;
#[doc(hidden)]
pub mod fuzzing;
mod header;
mod layer;
mod marker;
mod paths;
mod read;
mod sesparse;
mod sparse;
mod stream_reader;
#[doc(hidden)]
pub mod testing;
#[cfg(test)]
mod testutil;
pub mod writer;

pub use bytes::{Bytes, FileRange, FileStore, FsStore, MemStore, RangedFile};
pub use chain::{OpenOptions, VmdkImage, MAX_CHAIN_DEPTH};
pub use cowd::{
    CowdExtent, CowdGrain, CowdHeader, CowdTable, COWD_GTES_PER_GT, COWD_HEADER_BYTES, COWD_MAGIC,
};
pub use descriptor::{Access, Descriptor, ExtentLine, ExtentType, NO_PARENT_CID};
pub use header::{HeaderFlags, RawSparseHeader, SparseHeader, GD_AT_END, SPARSE_MAGIC};
pub use layer::{Layer, LayerExtent};
pub use marker::{Marker, MarkerType};
pub use paths::resolve_relative;
pub use sesparse::{
    SeSparseConstHeader, SeSparseExtent, SeSparseGrain, SeSparseTable, SeSparseVolatileHeader,
    SESPARSE_CONST_MAGIC, SESPARSE_VERSION, SESPARSE_VOLATILE_MAGIC,
};
pub use sparse::{GrainEntry, SparseExtent};
pub use stream_reader::StreamReader;

/// Whether `head` (the first bytes of a file) looks like a VMDK: a sparse header magic, the
/// older COWD magic, an SEsparse constant header, or a text descriptor. (An ESX snapshot's
/// data file is recognised so that it is refused with a useful message, not read as a raw
/// disk.)
pub fn probe(head: &[u8]) -> bool {
    head.starts_with(b"KDMV")
        || head.starts_with(b"COWD")
        || layer::is_sesparse(head)
        || descriptor::looks_like_descriptor(head)
}
