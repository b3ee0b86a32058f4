//! The NBD client: an export read as a [`vdisk_core::DiskImage`] (and a
//! [`vdisk_io::Layer`]), so that every command reads a live disk as it reads a file.
//!
//! - the fixed newstyle handshake with `NBD_OPT_STRUCTURED_REPLY`,
//!   `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT` (`base:allocation` and QEMU's
//!   `qemu:dirty-bitmap:NAME`), `NBD_OPT_GO` (`NBD_OPT_EXPORT_NAME` on servers without it)
//!   and `NBD_OPT_LIST` to name the exports a server has when the one asked for is missing;
//! - `NBD_CMD_READ` (pipelined pieces, structured or simple replies), `NBD_CMD_BLOCK_STATUS`
//!   and `NBD_CMD_DISC`;
//! - reads are positional and thread-safe: several connections when the server allows them
//!   (`NBD_FLAG_CAN_MULTI_CONN`, or a read-only export), each request on one of them;
//! - the server is hostile input: every reply is checked against its request (cookies,
//!   ranges, overlaps, lengths, counts), every length is bounded before anything is
//!   allocated, every step has a finite timeout; a connection the server closes is made
//!   again once for a read-only export.

mod conn;
mod format;
mod layer;
mod negotiate;
mod pool;
pub(crate) mod wire_io;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vdisk_core::Result;

pub use conn::{MAX_CHUNKS, MAX_STATUS_DESCRIPTORS, PIECES_IN_FLIGHT, READ_PIECE};
pub use format::{NbdFormat, NBD};
pub use negotiate::{DIRTY_BITMAP, MAX_BITMAPS, MAX_OPTION_REPLY};

pub(crate) use conn::Conn;
pub(crate) use negotiate::{negotiate as client_negotiate, Wanted};
pub(crate) use wire_io::{Transport, Wire};

use crate::uri::NbdUri;
use pool::Pool;

/// How the client connects and how long it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Most connections to one export (1 to 16). More than one is used only when the server
    /// allows it (`NBD_FLAG_CAN_MULTI_CONN`, or a read-only export).
    pub connections: usize,
    /// Longest wait for a TCP connection.
    pub connect_timeout: Duration,
    /// Longest a handshake may take, from the server's greeting to the export's details.
    pub handshake_timeout: Duration,
    /// Longest wait for the reply to a request (and for each reply message of a long read).
    pub request_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connections: 4,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(20),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl ClientOptions {
    /// The defaults, with every timeout (connect, handshake, each request) set to `t`.
    pub fn with_timeout(t: Duration) -> Self {
        let t = t.max(Duration::from_millis(1));
        ClientOptions {
            connect_timeout: t,
            handshake_timeout: t,
            request_timeout: t,
            ..Default::default()
        }
    }
}

/// What the server said of its export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags (`NBD_FLAG_*`).
    pub flags: u16,
    /// Whether structured replies were agreed.
    pub structured: bool,
    /// Whether `base:allocation` was agreed (the allocation map comes from the server;
    /// without it the whole export is taken as data).
    pub block_status: bool,
    /// Minimum block size: every request is aligned to it.
    pub min_block: u32,
    /// Preferred block size.
    pub preferred_block: u32,
    /// Largest read the server takes in one request.
    pub max_payload: u32,
    /// The server's description of the export.
    pub description: Option<String>,
    /// The dirty bitmaps the server offers (`qemu:dirty-bitmap:NAME` contexts), by name.
    pub bitmaps: Vec<String>,
}

impl ExportInfo {
    /// Whether the export is read-only.
    pub fn read_only(&self) -> bool {
        self.flags & crate::proto::FLAG_READ_ONLY != 0
    }

    /// Whether the server says several connections see the same data.
    pub fn multi_conn(&self) -> bool {
        self.flags & crate::proto::FLAG_CAN_MULTI_CONN != 0
    }
}

/// An NBD export opened for reading: a [`vdisk_core::DiskImage`] and a [`vdisk_io::Layer`]
/// without a backing file, whose format name is `"nbd"` (its bytes are the disk as the
/// server presents it; what format the server reads them from is its business).
///
/// ```no_run
/// use vdisk_core::DiskImage;
/// use vdisk_nbd::{ClientOptions, NbdExport, NbdUri};
/// let uri = NbdUri::parse("nbd+unix:///vda?socket=/run/backup.sock")?;
/// let disk = NbdExport::open(&uri, &ClientOptions::default())?;
/// let mut head = vec![0u8; 512];
/// disk.read_at(&mut head, 0)?;
/// println!("{} bytes; dirty bitmaps: {:?}", disk.size(), disk.export_info().bitmaps);
/// # Ok::<(), vdisk_core::Error>(())
/// ```
pub struct NbdExport {
    pool: Arc<Pool>,
    label: PathBuf,
    info: ExportInfo,
}

impl std::fmt::Debug for NbdExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdExport")
            .field("uri", &self.pool.uri.to_string())
            .field("info", &self.info)
            .finish()
    }
}

impl NbdExport {
    /// Connect to the export `uri` names and negotiate; fails with one line naming the URI
    /// (a missing export names those the server has).
    pub fn open(uri: &NbdUri, opts: &ClientOptions) -> Result<NbdExport> {
        let label = PathBuf::from(uri.to_string());
        let pool = Pool::open(uri, opts).map_err(|e| e.with_path(&label))?;
        let n = &pool.first;
        let info = ExportInfo {
            size: n.size,
            flags: n.flags,
            structured: n.structured,
            block_status: n.context(crate::proto::BASE_ALLOCATION).is_some(),
            min_block: n.min_block,
            preferred_block: n.preferred_block,
            max_payload: n.max_payload,
            description: n.description.clone(),
            bitmaps: n.offered_bitmaps.clone(),
        };
        Ok(NbdExport { pool, label, info })
    }

    /// The URI it was opened from.
    pub fn uri(&self) -> &NbdUri {
        &self.pool.uri
    }

    /// What the server said of the export.
    pub fn export_info(&self) -> &ExportInfo {
        &self.info
    }

    /// Connections open now (the first at least; others join in the background).
    pub fn connections(&self) -> usize {
        self.pool.live()
    }
}

impl Drop for NbdExport {
    fn drop(&mut self) {
        self.pool.close();
    }
}
