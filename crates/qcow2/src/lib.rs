//! vdisk-qcow2: QEMU's qcow2 images, read and written natively.
//!
//! - [`Qcow2Image`]: one qcow2 file as a [`vdisk_io::Layer`] (versions 2 and 3; cluster
//!   sizes from 512 bytes to 2 MiB; zero, compressed (zlib or zstd) and extended-L2
//!   clusters; an external data file; its backing file named, never opened): positional
//!   reads from any number of threads, allocation maps from the L2 tables, a refcount
//!   `check`, `info` with snapshots and bitmaps, and QEMU's persistent dirty bitmaps
//!   ([`vdisk_io::Layer::read_bitmap`]);
//! - [`Qcow2Sink`]: a version 3 writer (sparse, zstd-compressed in parallel, or a delta over
//!   a backing file), crash-safe: nothing is visible until it is finished;
//! - [`QCOW2`]: the format driver the registry holds.
//!
//! Encrypted images (AES, LUKS) are refused by name.

mod bitmap;
mod check;
mod compress;
mod format;
#[doc(hidden)]
pub mod fuzzing;
mod header;
mod image;
mod layer;
mod read;
mod snapshot;
mod tables;
mod write;

pub use bitmap::BitmapEntry;
pub use format::{Qcow2, QCOW2};
pub use header::{Compression, Header};
pub use image::{probe, Qcow2Image};
pub use snapshot::Snapshot;
pub use write::{Qcow2Sink, DEFAULT_CLUSTER_SIZE};
