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
//!
//! Written and read back:
//!
//! ```
//! use vdisk_core::{copy_into, Allocation, CopyOptions, DiskImage, MemImage};
//! use vdisk_io::{CreateOptions, Format, Layer};
//! use vdisk_qcow2::{Qcow2Image, QCOW2};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("disk.qcow2");
//! // 1 MiB with text in its second 64 KiB cluster.
//! let mut disk = vec![0u8; 1 << 20];
//! disk[65536..65536 + 11].copy_from_slice(b"hello qcow2");
//! let opts = CreateOptions { compress: true, ..CreateOptions::default() };
//! let sink = QCOW2.create(&path, disk.len() as u64, &opts)?;
//! copy_into(&MemImage::new(disk.clone()), sink, &CopyOptions::default())?;
//!
//! let img = Qcow2Image::open(&path)?;
//! let mut buf = vec![0u8; 1 << 20];
//! img.read_at(&mut buf, 0)?;
//! assert_eq!(buf, disk);
//! // Only the cluster with data is stored (compressed); the rest is unallocated.
//! let map = img.allocation(0, img.size())?;
//! assert_eq!(map[1].allocation, Allocation::Data);
//! assert_eq!((map[1].start, map[1].length), (65536, 65536));
//! assert!(img.check().is_empty());
//! assert_eq!(img.info().fields["compression_type"], "zstd");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

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

pub use format::{Qcow2, QCOW2};
pub use header::{Compression, Header};
pub use image::{probe, Qcow2Image};
pub use snapshot::Snapshot;
pub use write::{Qcow2Sink, DEFAULT_CLUSTER_SIZE};
