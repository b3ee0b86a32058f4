//! vdisk-io: the file plumbing every format and repository shares.
//!
//! - [`MappedFile`]: a read-only file behind a memory map, with a plain positional-read
//!   fallback where mapping is not possible (empty files, pipes, some special files), and
//!   page-cache hygiene for data read once ([`Cache`], [`ReadAhead`]);
//! - [`Bytes`] and [`FileStore`]: the bytes of one file of an image (mapped, in memory, a range
//!   of an archive, an object read by range) and where they come from;
//! - [`SparseWriter`], [`write_file`], [`write_stream`]: outputs that leave holes where data is
//!   zero and appear under their name only when complete;
//! - [`DeviceWriter`]: a device written in place;
//! - [`ImageOutput`]: the files of an image published together (local or in a store);
//! - [`OutputPolicy`], [`Existing`], [`Protected`]: the rules every output follows (an
//!   existing destination is refused or replaced; an input is never written over);
//! - [`format`]: the traits a format crate implements for the registry ([`Format`],
//!   [`Layer`]);
//! - [`resolve_relative`]: names written inside an image, confined to its folder;
//! - [`sys`]: every Linux call vdisk makes, behind safe functions.
//!
//! vdisk runs on Linux (see [`sys`] for what it relies on).

mod bytes;
mod device;
mod files;
pub mod format;
mod holes;
pub mod interrupt;
mod mapped;
mod output;
mod paths;
pub mod sys;
mod writer;

pub use bytes::{Bytes, FileRange, FileStore, FsStore, MemStore, RangedFile};
pub use device::DeviceWriter;
pub use files::{ImageOutput, LocalFiles, OutputFile, SealedOutput, HEAD_REGION};
pub use format::{
    Backing, BitmapInfo, CreateOptions, DeltaParent, Format, Layer, LayerInfo, LinkId,
    MetadataRegion, OpenContext, ProbeBytes, PROBE_HEAD, PROBE_TAIL,
};
pub use holes::{data_ranges, next_data};
pub use mapped::{Cache, MappedFile, ReadAhead};
pub use output::{read_head, Destination, Existing, OutputPolicy, Protected};
pub use paths::resolve_relative;
pub use sys::{disk_usage, file_id};
pub use writer::{partial_path, write_file, write_stream, SealedFile, SparseWriter};
