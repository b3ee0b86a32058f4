//! Accepting connections and their lifecycle: a thread per connection (up to a cap), a few
//! worker threads per connection, and a shutdown that closes everything promptly.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vdisk_core::{DiskImage, Error, ErrorKind, Result};
use vdisk_io::sys::errno;

use crate::export::{Export, ExportConfig};
use crate::handshake::negotiate;
use crate::transmission::{ChunkBuf, Connection, Dispatch, ReplySink, RequestQueue};

/// Bounds that keep one client (or many) from exhausting the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more are accepted and closed at once. Connections still
    /// in their handshake count too (until [`Limits::handshake_timeout`] ends them).
    pub max_connections: usize,
    /// Requests of one connection in flight at once (queued or being served). When the
    /// bound is reached the server stops reading that connection until a reply is sent, so
    /// a flood of requests waits in the client's socket, not in server memory.
    pub max_in_flight: usize,
    /// Worker threads per connection serving reads and block status in parallel. Each
    /// holds one read buffer of 1 MiB once it has served a read.
    pub workers: usize,
    /// Time a client has from connecting to finishing its handshake; a client that stalls
    /// or dribbles bytes is disconnected after it.
    pub handshake_timeout: Duration,
    /// Longest one reply may take to send (each chunk of a structured read is one reply
    /// here): a client that does not read its replies is disconnected after it, however
    /// much it asked for.
    pub write_timeout: Duration,
    /// How long a connection in transmission must have had no request in flight before it
    /// gives its place to a new client when [`Limits::max_connections`] is reached (the one
    /// idle longest goes). Idle connections are never closed otherwise: clients such as a
    /// VM's disk keep them open between requests for hours.
    pub idle_timeout: Duration,
    /// TCP connections one address may hold at once; more are closed on arrival, so that a
    /// single host cannot take every place. (Unix-socket clients are local, and not
    /// counted per peer.)
    pub max_per_peer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            max_in_flight: 32,
            workers: 4,
            handshake_timeout: Duration::from_secs(20),
            write_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_per_peer: 16,
        }
    }
}

impl Limits {
    fn validate(&self) -> Result<()> {
        let bad = |what: &str| {
            Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("NBD server limit {what} must be at least 1"),
            ))
        };
        if self.max_connections == 0 {
            return bad("max_connections");
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight");
        }
        if self.workers == 0 {
            return bad("workers");
        }
        if self.handshake_timeout.is_zero() {
            return bad("handshake_timeout");
        }
        if self.write_timeout.is_zero() {
            return bad("write_timeout");
        }
        if self.idle_timeout.is_zero() {
            return bad("idle_timeout");
        }
        if self.max_per_peer == 0 {
            return bad("max_per_peer");
        }
        Ok(())
    }
}

/// Counters of a running server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted and served.
    pub accepted: u64,
    /// Connections closed on arrival (over [`Limits::max_connections`] with nobody idle
    /// long enough to give way, over [`Limits::max_per_peer`], or during shutdown).
    pub refused: u64,
    /// Idle connections closed to make room for a new client.
    pub evicted: u64,
    /// Connections open now.
    pub active: usize,
    /// Most requests one connection had in flight at once (never above
    /// [`Limits::max_in_flight`]).
    pub peak_in_flight: usize,
}

/// A read-only NBD server for one image.
///
/// Each `serve_*` call runs an accept loop on the calling thread. Every accepted connection
/// gets a thread (up to [`Limits::max_connections`]) that runs the handshake and then reads
/// requests, and [`Limits::workers`] threads that serve reads and block-status queries in
/// parallel; replies may leave out of order, matched by their cookie.
///
/// Writing to a connection the client closed raises `SIGPIPE` on Unix: Rust programs ignore
/// that signal by default, so that the write fails instead; a program that restores the
/// default disposition must not do so while serving.
///
/// ```no_run
/// # fn main() -> vdisk_core::Result<()> {
/// use std::os::unix::net::UnixListener;
/// use std::sync::Arc;
/// use vdisk_nbd::{ExportConfig, Server};
///
/// let image = Arc::new(vdisk_raw::RawImage::open("disk.raw".as_ref())?);
/// let server = Server::new(image, ExportConfig::new("disk"))?;
/// let stop = server.shutdown_handle(); // give this to a signal-handling thread
/// let listener = UnixListener::bind("/tmp/disk.sock")?;
/// println!("{}", vdisk_nbd::unix_uri("disk", "/tmp/disk.sock".as_ref()));
/// server.serve_unix(listener)?; // returns after stop.shutdown()
/// # Ok(()) }
/// ```
pub struct Server {
    inner: Arc<Inner>,
}

/// Stops a [`Server`]: cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct ShutdownHandle {
    inner: Arc<Inner>,
}

struct Inner {
    export: Export,
    limits: Limits,
    registry: Mutex<Registry>,
    accepted: AtomicU64,
    refused: AtomicU64,
    evicted: AtomicU64,
    peak_in_flight: AtomicUsize,
    /// The clock connections' activity is measured on.
    epoch: Instant,
}

/// What the accept loop knows of a connection: how to close it, where it comes from, and
/// whether it is idle.
struct Entry {
    close: Box<dyn Fn() + Send>,
    peer: Option<IpAddr>,
    activity: Arc<Activity>,
}

/// A connection's activity, kept by its threads.
#[derive(Default)]
pub(crate) struct Activity {
    /// In transmission (the handshake is over).
    transmitting: AtomicBool,
    /// Requests read and not yet answered.
    busy: AtomicUsize,
    /// When a request last arrived or was answered, in milliseconds since the server's
    /// epoch.
    last: AtomicU64,
}

impl Activity {
    fn touch(&self, epoch: Instant) {
        self.last
            .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long the connection has been idle in transmission; `None` while it has work
    /// or is still in its handshake (which has a deadline of its own).
    fn idle_for(&self, epoch: Instant) -> Option<Duration> {
        if !self.transmitting.load(Ordering::Relaxed) || self.busy.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let now = epoch.elapsed().as_millis() as u64;
        Some(Duration::from_millis(
            now.saturating_sub(self.last.load(Ordering::Relaxed)),
        ))
    }
}

/// Everything shutdown must reach, under one lock so that nothing registers after it ran.
#[derive(Default)]
struct Registry {
    stopping: bool,
    next_id: u64,
    /// Open connections, each with a way to shut its socket down.
    connections: HashMap<u64, Entry>,
    /// The write ends of the wake-up sockets of running accept loops.
    wakers: HashMap<u64, UnixStream>,
}

impl Inner {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shutdown(&self) {
        let mut r = self.registry();
        r.stopping = true;
        for c in r.connections.values() {
            (c.close)();
        }
        for w in r.wakers.values() {
            // Non-blocking: a full buffer means a wake-up is already pending.
            let _ = (&*w).write(&[1]);
        }
    }

    fn stopping(&self) -> bool {
        self.registry().stopping
    }
}

impl ShutdownHandle {
    /// Stop the server: accept loops return, and every connection is shut down
    /// (`shutdown(2)` on its socket), so that [`Server::serve_unix`] and
    /// [`Server::serve_tcp`] return promptly even with clients connected. Final: a server
    /// cannot be restarted. Takes a lock, so call it from a thread, not a signal handler.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    /// Whether [`ShutdownHandle::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.inner.stopping()
    }
}

impl std::fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownHandle")
            .field("export", &self.inner.export.config.name)
            .finish()
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("export", &self.inner.export.config)
            .field("size", &self.inner.export.size)
            .field("limits", &self.inner.limits)
            .finish()
    }
}

impl Server {
    /// A server exporting `image` read-only under `config`, with the default [`Limits`].
    /// Fails when the name or description breaks the protocol's string rules.
    pub fn new(image: Arc<dyn DiskImage>, config: ExportConfig) -> Result<Self> {
        Self::with_limits(image, config, Limits::default())
    }

    /// As [`Server::new`], with other limits. Fails when a limit is zero.
    pub fn with_limits(
        image: Arc<dyn DiskImage>,
        config: ExportConfig,
        limits: Limits,
    ) -> Result<Self> {
        config.validate()?;
        limits.validate()?;
        Ok(Server {
            inner: Arc::new(Inner {
                export: Export::new(image, config),
                limits,
                registry: Mutex::new(Registry::default()),
                accepted: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                evicted: AtomicU64::new(0),
                peak_in_flight: AtomicUsize::new(0),
                epoch: Instant::now(),
            }),
        })
    }

    /// The export's settings.
    pub fn config(&self) -> &ExportConfig {
        &self.inner.export.config
    }

    /// The size of the export in bytes.
    pub fn size(&self) -> u64 {
        self.inner.export.size
    }

    /// A handle that stops this server from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Counters: connections accepted, refused and open, and the in-flight peak.
    pub fn stats(&self) -> ServerStats {
        ServerStats {
            accepted: self.inner.accepted.load(Ordering::Relaxed),
            refused: self.inner.refused.load(Ordering::Relaxed),
            evicted: self.inner.evicted.load(Ordering::Relaxed),
            active: self.inner.registry().connections.len(),
            peak_in_flight: self.inner.peak_in_flight.load(Ordering::Relaxed),
        }
    }

    /// Serve connections accepted from `listener` until [`ShutdownHandle::shutdown`] is
    /// called, then wait for the connection threads to end and return `Ok(())`.
    ///
    /// The listener is switched to non-blocking mode. Several `serve_*` calls may run at
    /// once (one per listener, each on its own thread); one shutdown stops them all. On an
    /// error that makes accepting impossible, the whole server shuts down and the error is
    /// returned. Removing the socket file is the caller's business.
    pub fn serve_unix(&self, listener: UnixListener) -> Result<()> {
        self.serve(listener)
    }

    /// As [`Server::serve_unix`], for TCP (with `TCP_NODELAY` on every connection).
    pub fn serve_tcp(&self, listener: TcpListener) -> Result<()> {
        self.serve(listener)
    }

    fn serve<L: Listen>(&self, listener: L) -> Result<()> {
        let io_err = |what: &str, e| Error::io(format!("NBD server: {what}"), e);
        let (wake_rx, wake_tx) =
            UnixStream::pair().map_err(|e| io_err("creating a wake-up socket", e))?;
        wake_tx
            .set_nonblocking(true)
            .map_err(|e| io_err("creating a wake-up socket", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| io_err("configuring the listening socket", e))?;
        let waker = {
            let mut r = self.inner.registry();
            if r.stopping {
                return Ok(());
            }
            let id = r.next_id;
            r.next_id += 1;
            r.wakers.insert(id, wake_tx);
            id
        };
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let result = self.accept_loop(&listener, &wake_rx, &mut threads);
        if result.is_err() {
            self.inner.shutdown();
        }
        self.inner.registry().wakers.remove(&waker);
        for t in threads {
            let _ = t.join();
        }
        result.map_err(|e| io_err("accepting connections", e))
    }

    fn accept_loop<L: Listen>(
        &self,
        listener: &L,
        wake: &UnixStream,
        threads: &mut Vec<JoinHandle<()>>,
    ) -> io::Result<()> {
        loop {
            if self.inner.stopping() {
                return Ok(());
            }
            match wait_readable(listener.as_raw_fd(), wake.as_raw_fd()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if self.inner.stopping() {
                return Ok(());
            }
            loop {
                match listener.accept_one() {
                    Ok(stream) => self.admit(stream, threads),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if is_transient(&e) => {
                        // Out of descriptors or memory: the connection stays in the
                        // backlog, so pause instead of spinning on it.
                        thread::sleep(Duration::from_millis(50));
                        break;
                    }
                    Err(e) if is_dropped_connection(&e) => continue,
                    Err(e) => return Err(e),
                }
            }
            threads.retain(|t| !t.is_finished());
        }
    }

    /// Register and start a connection, or close it when over the cap or stopping.
    fn admit<S: Socket>(&self, stream: S, threads: &mut Vec<JoinHandle<()>>) {
        let refuse = || {
            self.inner.refused.fetch_add(1, Ordering::Relaxed);
        };
        // Accepted sockets may inherit the listener's non-blocking mode on some systems.
        if stream.set_nonblocking(false).is_err() {
            return refuse();
        }
        let Ok(closer) = stream.duplicate() else {
            return refuse();
        };
        let peer = stream.peer_ip();
        let activity = Arc::new(Activity::default());
        let limits = &self.inner.limits;
        let id = {
            let mut r = self.inner.registry();
            let same_peer = |r: &Registry| {
                peer.map_or(0, |p| {
                    r.connections.values().filter(|c| c.peer == Some(p)).count()
                })
            };
            if r.stopping || same_peer(&r) >= limits.max_per_peer {
                drop(r);
                return refuse();
            }
            if r.connections.len() >= limits.max_connections {
                // Full: the connection idle longest gives way, if it has been idle long
                // enough; otherwise the newcomer is turned away.
                let epoch = self.inner.epoch;
                let victim = r
                    .connections
                    .iter()
                    .filter_map(|(id, c)| c.activity.idle_for(epoch).map(|d| (d, *id)))
                    .filter(|(d, _)| *d >= limits.idle_timeout)
                    .max();
                match victim.and_then(|(_, id)| r.connections.remove(&id)) {
                    Some(gone) => {
                        (gone.close)();
                        self.inner.evicted.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        drop(r);
                        return refuse();
                    }
                }
            }
            let id = r.next_id;
            r.next_id += 1;
            r.connections.insert(
                id,
                Entry {
                    close: Box::new(move || closer.close()),
                    peer,
                    activity: Arc::clone(&activity),
                },
            );
            id
        };
        self.inner.accepted.fetch_add(1, Ordering::Relaxed);
        let inner = Arc::clone(&self.inner);
        let spawned = thread::Builder::new()
            .name("nbd-connection".into())
            .spawn(move || {
                let inner = inner;
                let _registered = Registered { inner: &inner, id };
                run_connection(&inner, stream, &activity);
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(_) => {
                self.inner.registry().connections.remove(&id);
            }
        }
    }
}

/// Removes a connection from the registry when its thread ends, however it ends.
struct Registered<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.inner.registry().connections.remove(&self.id);
    }
}

/// Handshake, then transmission with the reader on this thread and workers beside it.
fn run_connection<S: Socket>(inner: &Inner, sock: S, activity: &Activity) {
    let limits = &inner.limits;
    sock.tune();
    let mut handshake = DeadlineIo {
        sock: &sock,
        deadline: Instant::now() + limits.handshake_timeout,
    };
    let Ok(Some(negotiated)) = negotiate(&mut handshake, &inner.export) else {
        return;
    };
    if sock.set_read_timeout(None).is_err() {
        return;
    }
    let close = || sock.close();
    let replies = ReplyIo {
        sock: &sock,
        limit: limits.write_timeout,
        deadline: Instant::now() + limits.write_timeout,
    };
    let conn = Connection::new(&inner.export, negotiated, replies, &close);
    let peak = |n: usize| {
        inner.peak_in_flight.fetch_max(n, Ordering::Relaxed);
    };
    let queue = RequestQueue::new(limits.max_in_flight, &peak);
    activity.touch(inner.epoch);
    activity.transmitting.store(true, Ordering::Relaxed);
    let tracked = Tracked {
        queue: &queue,
        activity,
        epoch: inner.epoch,
    };
    thread::scope(|s| {
        let mut workers = 0;
        for _ in 0..limits.workers {
            let spawned = thread::Builder::new()
                .name("nbd-worker".into())
                .spawn_scoped(s, || {
                    let mut buf = ChunkBuf::default();
                    while let Some(req) = queue.next() {
                        conn.execute(req, &mut buf);
                        activity.busy.fetch_sub(1, Ordering::Relaxed);
                        activity.touch(inner.epoch);
                        queue.release();
                    }
                });
            if spawned.is_ok() {
                workers += 1;
            }
        }
        if workers > 0 {
            conn.read_requests(&mut SockIo(&sock), &tracked);
        }
        // Workers answer what was already read (the spec wants requests before a
        // disconnect served), then end.
        queue.close();
    });
}

/// The request queue, noting the connection's activity on the way.
struct Tracked<'a> {
    queue: &'a RequestQueue<'a>,
    activity: &'a Activity,
    epoch: Instant,
}

impl Dispatch for Tracked<'_> {
    fn reserve(&self) -> bool {
        self.queue.reserve()
    }
    fn submit(&self, req: crate::wire::Request) {
        self.activity.busy.fetch_add(1, Ordering::Relaxed);
        self.activity.touch(self.epoch);
        self.queue.submit(req);
    }
    fn release(&self) {
        self.activity.touch(self.epoch);
        self.queue.release();
    }
}

/// Wait until `a` or `b` is readable (or has an error or hang-up pending).
fn wait_readable(a: RawFd, b: RawFd) -> io::Result<()> {
    vdisk_io::sys::wait_readable(&[a, b]).map(|_| ())
}

/// Accept errors caused by a lack of resources: wait and try again.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(errno::EMFILE | errno::ENFILE | errno::ENOBUFS | errno::ENOMEM)
    )
}

/// Accept errors about one connection that went away before it was accepted.
fn is_dropped_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
    ) || matches!(e.raw_os_error(), Some(errno::EPROTO | errno::EPERM))
}

/// A listening socket of either family.
trait Listen: AsRawFd {
    type Stream: Socket;
    fn accept_one(&self) -> io::Result<Self::Stream>;
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()>;
}

impl Listen for UnixListener {
    type Stream = UnixStream;
    fn accept_one(&self) -> io::Result<UnixStream> {
        self.accept().map(|(s, _)| s)
    }
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        UnixListener::set_nonblocking(self, nonblocking)
    }
}

impl Listen for TcpListener {
    type Stream = TcpStream;
    fn accept_one(&self) -> io::Result<TcpStream> {
        self.accept().map(|(s, _)| s)
    }
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        TcpListener::set_nonblocking(self, nonblocking)
    }
}

/// A connected socket of either family, used through `&self` from several threads.
pub(crate) trait Socket: Send + Sync + Sized + 'static {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn send(&self, buf: &[u8]) -> io::Result<usize>;
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()>;
    /// `shutdown(2)` both directions, ignoring errors (it may be closed already).
    fn close(&self);
    fn duplicate(&self) -> io::Result<Self>;
    /// Per-family settings at the start of a connection.
    fn tune(&self) {}
    /// The peer's address, for TCP.
    fn peer_ip(&self) -> Option<IpAddr> {
        None
    }
}

macro_rules! socket_impl {
    ($t:ty, $tune:expr, $peer:expr) => {
        impl Socket for $t {
            fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
                (&*self).read(buf)
            }
            fn send(&self, buf: &[u8]) -> io::Result<usize> {
                (&*self).write(buf)
            }
            fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
                <$t>::set_read_timeout(self, t)
            }
            fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
                <$t>::set_write_timeout(self, t)
            }
            fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
                <$t>::set_nonblocking(self, nonblocking)
            }
            fn close(&self) {
                let _ = self.shutdown(Shutdown::Both);
            }
            fn duplicate(&self) -> io::Result<Self> {
                self.try_clone()
            }
            fn tune(&self) {
                let tune: fn(&$t) = $tune;
                tune(self)
            }
            fn peer_ip(&self) -> Option<IpAddr> {
                let peer: fn(&$t) -> Option<IpAddr> = $peer;
                peer(self)
            }
        }
    };
}

socket_impl!(UnixStream, |_| {}, |_| None);
// The spec asks for TCP_NODELAY: replies are often small and must not wait for an ACK.
socket_impl!(
    TcpStream,
    |s| {
        let _ = s.set_nodelay(true);
    },
    |s| s.peer_addr().ok().map(|a| a.ip())
);

/// `Read + Write` over a shared socket.
struct SockIo<'a, S>(&'a S);

impl<S: Socket> Read for SockIo<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }
}

impl<S: Socket> Write for SockIo<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.send(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The reply stream of a connection: each reply (from [`ReplySink::start_reply`]) must be
/// sent within the write timeout, however many `send` calls it takes. (A timeout per call
/// would not do: a call that sends a little before its timeout returns, and the next call
/// starts a new one.)
struct ReplyIo<'a, S> {
    sock: &'a S,
    limit: Duration,
    deadline: Instant,
}

impl<S: Socket> Write for ReplyIo<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.sock.set_write_timeout(Some(left))?;
        self.sock.send(buf).map_err(timed_out)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<S: Socket> ReplySink for ReplyIo<'_, S> {
    fn start_reply(&mut self) {
        self.deadline = Instant::now() + self.limit;
    }
}

/// `Read + Write` over a socket, failing with `TimedOut` once `deadline` has passed: the
/// whole handshake must fit in it, however slowly the client sends.
struct DeadlineIo<'a, S> {
    sock: &'a S,
    deadline: Instant,
}

impl<S> DeadlineIo<'_, S> {
    fn remaining(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        Ok(left)
    }
}

fn timed_out(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::ErrorKind::TimedOut.into()
    } else {
        e
    }
}

impl<S: Socket> Read for DeadlineIo<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.set_read_timeout(Some(self.remaining()?))?;
        self.sock.recv(buf).map_err(timed_out)
    }
}

impl<S: Socket> Write for DeadlineIo<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.set_write_timeout(Some(self.remaining()?))?;
        self.sock.send(buf).map_err(timed_out)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
