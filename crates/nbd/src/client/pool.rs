//! A few connections to one export, shared by reading threads: each request takes a free
//! connection, uses it alone, and gives it back. The first connection is made before the
//! export is handed out; the others in the background (a server may accept only one: then
//! they time out quietly and one connection serves).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use vdisk_core::{Error, ErrorKind, Result};

use super::conn::Conn;
use super::negotiate::{negotiate, Negotiated, Wanted};
use super::wire_io::{connect, Wire, WireError, WireResult};
use super::ClientOptions;
use crate::proto::{FLAG_CAN_MULTI_CONN, FLAG_READ_ONLY};
use crate::uri::NbdUri;

/// Longest the background waits for a further connection's handshake: a server that takes
/// one client at a time (qemu-nbd without `--shared`) never answers it.
const EXTRA_HANDSHAKE: Duration = Duration::from_secs(5);

struct Slot {
    /// The connection, while no request holds it.
    conn: Mutex<Option<Conn>>,
    /// Whether the slot's one reconnect was used.
    reconnected: AtomicBool,
    /// Whether the slot selects the dirty bitmaps too.
    bitmaps: bool,
}

#[derive(Default)]
struct FreeList {
    free: Vec<usize>,
    /// Slots connected (free or in use).
    live: usize,
    /// Slots still being connected in the background.
    pending: usize,
    /// Slots whose connection failed for good.
    dead: Vec<usize>,
}

pub(crate) struct Pool {
    pub uri: NbdUri,
    opts: ClientOptions,
    slots: Vec<Slot>,
    list: Mutex<FreeList>,
    ready: Condvar,
    /// What the first connection settled: the export every reconnect must find again.
    pub first: Negotiated,
    closing: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Connect and negotiate one connection.
pub(crate) fn open_conn(
    uri: &NbdUri,
    opts: &ClientOptions,
    bitmaps: bool,
    handshake: Duration,
) -> WireResult<Conn> {
    let stream =
        connect(uri, opts.connect_timeout, opts.request_timeout).map_err(WireError::Answer)?;
    let mut wire = Wire::new(Box::new(stream));
    wire.deadline_in(handshake);
    let want = Wanted {
        export: &uri.export,
        bitmaps,
    };
    match negotiate(&mut wire, &want) {
        Ok(neg) => Ok(Conn::new(wire, neg, opts.request_timeout)),
        Err(e) => {
            wire.close();
            Err(e)
        }
    }
}

impl Pool {
    /// Open the first connection (which lists and selects the dirty bitmaps), and start
    /// the others in the background when the export allows several.
    pub fn open(uri: &NbdUri, opts: &ClientOptions) -> Result<Arc<Pool>> {
        let first =
            open_conn(uri, opts, true, opts.handshake_timeout).map_err(WireError::into_error)?;
        let neg = first.neg.clone();
        let parallel = neg.flags & (FLAG_CAN_MULTI_CONN | FLAG_READ_ONLY) != 0;
        let n = if parallel {
            opts.connections.clamp(1, 16)
        } else {
            1
        };
        let slots = (0..n)
            .map(|i| Slot {
                conn: Mutex::new(None),
                reconnected: AtomicBool::new(false),
                bitmaps: i == 0,
            })
            .collect();
        let pool = Arc::new(Pool {
            uri: uri.clone(),
            opts: opts.clone(),
            slots,
            list: Mutex::new(FreeList {
                free: vec![0],
                live: 1,
                pending: n - 1,
                dead: Vec::new(),
            }),
            ready: Condvar::new(),
            first: neg,
            closing: AtomicBool::new(false),
        });
        *lock(&pool.slots[0].conn) = Some(first);
        if n > 1 {
            let p = Arc::clone(&pool);
            let spawned = std::thread::Builder::new()
                .name("nbd-connect".into())
                .spawn(move || p.connect_rest());
            if spawned.is_err() {
                lock(&pool.list).pending = 0;
            }
        }
        Ok(pool)
    }

    /// Open slots 1.. one by one; stop at the first that fails (the server takes no more).
    fn connect_rest(&self) {
        let handshake = self.opts.handshake_timeout.min(EXTRA_HANDSHAKE);
        let mut failed = false;
        for i in 1..self.slots.len() {
            let conn = if failed || self.closing.load(Ordering::Relaxed) {
                None
            } else {
                open_conn(&self.uri, &self.opts, false, handshake)
                    .ok()
                    .filter(|c| c.neg.size == self.first.size)
            };
            failed |= conn.is_none();
            let mut list = lock(&self.list);
            list.pending -= 1;
            match conn {
                None => list.dead.push(i),
                Some(mut c) if self.closing.load(Ordering::Relaxed) => c.disconnect(),
                Some(c) => {
                    *lock(&self.slots[i].conn) = Some(c);
                    list.free.push(i);
                    list.live += 1;
                }
            }
            drop(list);
            self.ready.notify_all();
        }
    }

    /// Connections open now.
    pub fn live(&self) -> usize {
        lock(&self.list).live
    }

    fn acquire(&self, prefer: Option<usize>) -> Result<usize> {
        let mut list = lock(&self.list);
        loop {
            match prefer {
                Some(p) => {
                    if let Some(pos) = list.free.iter().position(|&i| i == p) {
                        return Ok(list.free.swap_remove(pos));
                    }
                    if list.dead.contains(&p) || p >= self.slots.len() {
                        return Err(Error::new(
                            ErrorKind::Io,
                            "the NBD connection that reads dirty bitmaps failed earlier",
                        ));
                    }
                }
                None => {
                    if let Some(i) = list.free.pop() {
                        return Ok(i);
                    }
                }
            }
            if list.live == 0 && list.pending == 0 {
                return Err(Error::new(
                    ErrorKind::Io,
                    "no connection to the NBD server is left (an earlier failure closed it)",
                ));
            }
            list = self.ready.wait(list).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn release(&self, i: usize, conn: Option<Conn>) {
        let mut list = lock(&self.list);
        match conn {
            Some(c) => {
                *lock(&self.slots[i].conn) = Some(c);
                list.free.push(i);
            }
            None => {
                list.live -= 1;
                list.dead.push(i);
            }
        }
        drop(list);
        self.ready.notify_all();
    }

    /// Run `op` on a connection (slot `prefer` when given): an answer from the server is
    /// returned as it is; a connection the server closed is made again once per slot for a
    /// read-only export and `op` retried on it; any other failure ends the connection.
    pub fn run<T>(
        &self,
        prefer: Option<usize>,
        mut op: impl FnMut(&mut Conn) -> WireResult<T>,
    ) -> Result<T> {
        let i = self.acquire(prefer)?;
        let slot = &self.slots[i];
        let mut conn = lock(&slot.conn).take();
        loop {
            let Some(c) = conn.as_mut() else {
                self.release(i, None);
                return Err(Error::new(ErrorKind::Io, "the NBD connection is gone"));
            };
            match op(c) {
                Ok(v) => {
                    self.release(i, conn);
                    return Ok(v);
                }
                Err(WireError::Answer(e)) => {
                    self.release(i, conn);
                    return Err(e);
                }
                Err(e) => {
                    c.abort();
                    let read_only = self.first.flags & FLAG_READ_ONLY != 0;
                    if e.is_disconnect()
                        && read_only
                        && !self.closing.load(Ordering::Relaxed)
                        && !slot.reconnected.swap(true, Ordering::Relaxed)
                    {
                        match self.reconnect(slot.bitmaps) {
                            Ok(c) => {
                                conn = Some(c);
                                continue;
                            }
                            Err(re) => {
                                self.release(i, None);
                                let first = e.into_error();
                                return Err(Error::new(
                                    re.kind(),
                                    format!(
                                        "{}; reconnecting failed: {}",
                                        first.message(),
                                        re.message()
                                    ),
                                ));
                            }
                        }
                    }
                    self.release(i, None);
                    return Err(e.into_error());
                }
            }
        }
    }

    /// A new connection standing for one the server closed: it must find the same export.
    fn reconnect(&self, bitmaps: bool) -> Result<Conn> {
        let c = open_conn(&self.uri, &self.opts, bitmaps, self.opts.handshake_timeout)
            .map_err(WireError::into_error)?;
        if c.neg.size != self.first.size {
            c.abort();
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "the export is {} bytes now, not {} as before",
                    c.neg.size, self.first.size
                ),
            ));
        }
        Ok(c)
    }

    /// Disconnect every connection (politely) and stop the background connector.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        for s in &self.slots {
            if let Some(mut c) = lock(&s.conn).take() {
                c.disconnect();
            }
        }
    }
}
