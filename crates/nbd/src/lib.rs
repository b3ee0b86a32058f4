//! vdisk-nbd: a read-only NBD (Network Block Device) server for any
//! [`vdisk_core::DiskImage`], so that qemu, libnbd (`nbdinfo`, `nbdcopy`), the Linux
//! kernel client and others can read an image or a restore point without converting it;
//! and a client ([`NbdExport`], from an [`NbdUri`]) that reads a live export (a running
//! VM's disk, handed over by libvirt, Proxmox or qemu-storage-daemon) as a disk image,
//! with its allocation map and QEMU's dirty bitmaps (see [`client`]).
//!
//! - [`Server`]: serves one image as one export on Unix or TCP listeners until its
//!   [`ShutdownHandle`] stops it; [`Limits`] bound connections (in all, and per TCP peer),
//!   in-flight requests, handshake time and the time each reply may take, and let idle
//!   connections give way to new clients;
//! - [`ExportConfig`]: the export's name and description;
//! - [`unix_uri`] and [`tcp_uri`]: the URIs clients connect to; [`NbdUri`] parses them;
//! - [`NbdExport`]: the client, with [`ClientOptions`] (connections, timeouts);
//! - [`wire`]: the protocol's bytes as pure functions, both ways (what clients send and
//!   servers answer: parsing and encoding), shared by the server and the client, and
//!   [`proto`]: its numbers.
//!
//! What the server implements (from the NBD project's `doc/proto.md`): the fixed newstyle
//! handshake; the options `NBD_OPT_GO`, `NBD_OPT_INFO` (export, name, description, block
//! sizes), `NBD_OPT_LIST`, `NBD_OPT_ABORT`, `NBD_OPT_EXPORT_NAME`,
//! `NBD_OPT_STRUCTURED_REPLY`, `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`
//! (`base:allocation`); the commands `NBD_CMD_READ` (simple or structured replies, with hole
//! chunks for ranges the allocation map says read as zero, and `NBD_CMD_FLAG_DF`),
//! `NBD_CMD_BLOCK_STATUS`, `NBD_CMD_FLUSH` (a no-op) and `NBD_CMD_DISC`. Writes, trims and
//! write-zeroes are refused with `NBD_EPERM`. No TLS.
//!
//! Clients are hostile: no request can make the server allocate more than a bounded
//! amount (reads are streamed in 1 MiB windows, block status walks the map in windows and
//! stops after a bounded number of extents, option payloads over 64 KiB are skipped
//! unread), a stalled handshake times out, and a client that floods requests is simply
//! not read while its in-flight bound is reached. A read the image fails (a damaged grain,
//! a hash mismatch) is answered with `NBD_EIO` and the connection stays up.
//!
//! Threads, no async runtime: an accept loop per listener, a thread per connection reading
//! requests, and a few worker threads per connection serving them.

pub mod client;
mod export;
#[doc(hidden)]
pub mod fuzzing;
mod handshake;
pub mod proto;
mod server;
mod transmission;
mod uri;
pub mod wire;

pub use client::{ClientOptions, ExportInfo, NbdExport, NbdFormat, NBD};
pub use export::{ExportConfig, MAX_PAYLOAD, MIN_BLOCK, PREFERRED_BLOCK};
pub use handshake::{MAX_OPTIONS, MAX_OPTION_LEN};
pub use server::{Limits, Server, ServerStats, ShutdownHandle};
pub use transmission::{MAX_DESCRIPTORS, READ_CHUNK, STATUS_WINDOW};
pub use uri::{tcp_uri, unix_uri, NbdTransport, NbdUri, DEFAULT_PORT};
