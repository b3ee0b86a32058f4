//! Accepting connections and their lifecycle: a thread per connection (up to a cap), a few
//! worker threads per connection, and a shutdown that closes everything promptly.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vdisk_core::{DiskImage, Error, ErrorKind, Result};
use vdisk_io::sys::errno;

use crate::export::{Export, ExportConfig};
use crate::handshake::negotiate;
use crate::transmission::{ChunkBuf, Connection, Dispatch, RequestQueue};

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
    /// Time a reply may wait for a client that does not read; the connection is closed
    /// after it. (There is no timeout on idle clients in transmission: clients keep
    /// connections open between requests.)
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            max_in_flight: 32,
            workers: 4,
            handshake_timeout: Duration::from_secs(20),
            write_timeout: Duration::from_secs(60),
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
        Ok(())
    }
}

/// Counters of a running server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted and served.
    pub accepted: u64,
    /// Connections closed on arrival (over [`Limits::max_connections`], or during
    /// shutdown).
    pub refused: u64,
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
    peak_in_flight: AtomicUsize,
}

/// Everything shutdown must reach, under one lock so that nothing registers after it ran.
#[derive(Default)]
struct Registry {
    stopping: bool,
    next_id: u64,
    /// Open connections, each with a way to shut its socket down.
    connections: HashMap<u64, Box<dyn Fn() + Send>>,
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
        for close in r.connections.values() {
            close();
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
                peak_in_flight: AtomicUsize::new(0),
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
        let id = {
            let mut r = self.inner.registry();
            if r.stopping || r.connections.len() >= self.inner.limits.max_connections {
                drop(r);
                return refuse();
            }
            let id = r.next_id;
            r.next_id += 1;
            r.connections.insert(id, Box::new(move || closer.close()));
            id
        };
        self.inner.accepted.fetch_add(1, Ordering::Relaxed);
        let inner = Arc::clone(&self.inner);
        let spawned = thread::Builder::new()
            .name("nbd-connection".into())
            .spawn(move || {
                let inner = inner;
                let _registered = Registered { inner: &inner, id };
                run_connection(&inner, stream);
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
fn run_connection<S: Socket>(inner: &Inner, sock: S) {
    let limits = &inner.limits;
    sock.tune();
    let mut handshake = DeadlineIo {
        sock: &sock,
        deadline: Instant::now() + limits.handshake_timeout,
    };
    let Ok(Some(negotiated)) = negotiate(&mut handshake, &inner.export) else {
        return;
    };
    if sock.set_read_timeout(None).is_err()
        || sock.set_write_timeout(Some(limits.write_timeout)).is_err()
    {
        return;
    }
    let close = || sock.close();
    let conn = Connection::new(&inner.export, negotiated, SockIo(&sock), &close);
    let peak = |n: usize| {
        inner.peak_in_flight.fetch_max(n, Ordering::Relaxed);
    };
    let queue = RequestQueue::new(limits.max_in_flight, &peak);
    thread::scope(|s| {
        let mut workers = 0;
        for _ in 0..limits.workers {
            let spawned = thread::Builder::new()
                .name("nbd-worker".into())
                .spawn_scoped(s, || {
                    let mut buf = ChunkBuf::default();
                    while let Some(req) = queue.next() {
                        conn.execute(req, &mut buf);
                        queue.release();
                    }
                });
            if spawned.is_ok() {
                workers += 1;
            }
        }
        if workers > 0 {
            conn.read_requests(&mut SockIo(&sock), &queue);
        }
        // Workers answer what was already read (the spec wants requests before a
        // disconnect served), then end.
        queue.close();
    });
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
}

macro_rules! socket_impl {
    ($t:ty, $tune:expr) => {
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
        }
    };
}

socket_impl!(UnixStream, |_| {});
// The spec asks for TCP_NODELAY: replies are often small and must not wait for an ACK.
socket_impl!(TcpStream, |s| {
    let _ = s.set_nodelay(true);
});

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
