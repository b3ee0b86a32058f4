//! The client's side of a connection: a socket (or bytes in memory, when fuzzing) read
//! through a small buffer, with a deadline on everything.
//!
//! Every blocking call is bounded twice: the socket's own timeouts end a call that waits too
//! long for one byte, and the deadline of the current step (the handshake, one request) ends
//! a server that sends a byte now and then to keep the connection alive.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vdisk_core::{Error, ErrorKind, Result};

use crate::uri::{NbdTransport, NbdUri};

/// A byte stream to a server.
pub(crate) trait Transport: Read + Write + Send {
    /// `shutdown(2)` both ways: a peer blocked on us, or we on it, wakes up.
    fn close(&self);
}

/// A connected socket of either family.
pub(crate) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Stream {
    fn close(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }
}

/// Connect to the server `uri` names, within `timeout` (per address tried), with every later
/// read and write of the socket bounded by `io_timeout`.
pub(crate) fn connect(uri: &NbdUri, timeout: Duration, io_timeout: Duration) -> Result<Stream> {
    let stream = match &uri.transport {
        NbdTransport::Unix { socket } => {
            // A Unix connect does not wait for the server: it fails at once when nobody
            // listens, and is queued by the kernel otherwise (the greeting's deadline then
            // bounds a server that never accepts).
            let s = UnixStream::connect(socket)
                .map_err(|e| Error::io(format!("cannot connect to {}", socket.display()), e))?;
            set_timeouts(
                &s,
                io_timeout,
                |s, t| s.set_read_timeout(t),
                |s, t| s.set_write_timeout(t),
            )?;
            Stream::Unix(s)
        }
        NbdTransport::Tcp { host, port } => {
            let addrs: Vec<_> = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(|e| Error::io(format!("cannot resolve {host}"), e))?
                .take(16)
                .collect();
            let mut last = None;
            let mut found = None;
            for a in &addrs {
                match TcpStream::connect_timeout(a, timeout) {
                    Ok(s) => {
                        found = Some(s);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            let s = match (found, last) {
                (Some(s), _) => s,
                (None, Some(e)) => {
                    return Err(Error::io(format!("cannot connect to {host}:{port}"), e))
                }
                (None, None) => {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!("{host} has no address"),
                    ))
                }
            };
            // Requests are small and must not wait for an ACK (the spec asks for this).
            let _ = s.set_nodelay(true);
            set_timeouts(
                &s,
                io_timeout,
                |s, t| s.set_read_timeout(t),
                |s, t| s.set_write_timeout(t),
            )?;
            Stream::Tcp(s)
        }
    };
    Ok(stream)
}

fn set_timeouts<S>(
    s: &S,
    t: Duration,
    r: impl Fn(&S, Option<Duration>) -> io::Result<()>,
    w: impl Fn(&S, Option<Duration>) -> io::Result<()>,
) -> Result<()> {
    let t = Some(t.max(Duration::from_millis(1)));
    r(s, t)
        .and_then(|()| w(s, t))
        .map_err(|e| Error::io("cannot set socket timeouts", e))
}

/// How a step on the wire failed.
#[derive(Debug)]
pub(crate) enum WireError {
    /// The connection is gone or stuck: closed, reset, timed out. The stream is unusable.
    Transport(io::Error),
    /// The server broke the protocol (or lied). The stream is unusable.
    Protocol(Error),
    /// The server answered with an error (no such export, a failed read): the stream is
    /// still in step.
    Answer(Error),
}

impl WireError {
    pub(crate) fn protocol(msg: impl Into<String>) -> Self {
        WireError::Protocol(Error::invalid(msg))
    }

    /// Whether the server went away (closed or reset), rather than stalled or lied: the one
    /// failure worth a reconnect.
    pub(crate) fn is_disconnect(&self) -> bool {
        matches!(
            self,
            WireError::Transport(e) if matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::NotConnected
            )
        )
    }

    /// As a vdisk error.
    pub(crate) fn into_error(self) -> Error {
        match self {
            WireError::Transport(e) => match e.kind() {
                io::ErrorKind::UnexpectedEof => {
                    Error::new(ErrorKind::Io, "the NBD server closed the connection")
                }
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                    Error::new(ErrorKind::Io, "the NBD server did not answer in time")
                }
                _ => Error::io("NBD connection failed", e),
            },
            WireError::Protocol(e) => Error::new(
                e.kind(),
                format!("the NBD server broke the protocol: {}", e.message()),
            ),
            WireError::Answer(e) => e,
        }
    }
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> Self {
        WireError::Transport(e)
    }
}

pub(crate) type WireResult<T> = std::result::Result<T, WireError>;

/// Bytes held for small reads (headers); large payloads bypass it.
const READ_BUFFER: usize = 64 << 10;

/// A transport read through a buffer, with a deadline.
pub(crate) struct Wire {
    io: Box<dyn Transport>,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    deadline: Instant,
}

fn timed_out() -> io::Error {
    io::ErrorKind::TimedOut.into()
}

impl Wire {
    pub(crate) fn new(io: Box<dyn Transport>) -> Self {
        Wire {
            io,
            buf: vec![0u8; READ_BUFFER].into_boxed_slice(),
            pos: 0,
            end: 0,
            deadline: Instant::now() + Duration::from_secs(3600),
        }
    }

    /// Everything from now must be done within `t`.
    pub(crate) fn deadline_in(&mut self, t: Duration) {
        self.deadline = Instant::now() + t;
    }

    fn check_deadline(&self) -> io::Result<()> {
        if Instant::now() > self.deadline {
            return Err(timed_out());
        }
        Ok(())
    }

    fn raw_read(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        loop {
            self.check_deadline()?;
            match self.io.read(dst) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(timed_out()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Fill `dst` exactly.
    pub(crate) fn read_exact(&mut self, dst: &mut [u8]) -> io::Result<()> {
        let mut done = (self.end - self.pos).min(dst.len());
        dst[..done].copy_from_slice(&self.buf[self.pos..self.pos + done]);
        self.pos += done;
        while done < dst.len() {
            let rest = dst.len() - done;
            if rest >= self.buf.len() {
                done += self.raw_read(&mut dst[done..])?;
            } else {
                let mut buf = std::mem::take(&mut self.buf);
                let got = self.raw_read(&mut buf);
                self.buf = buf;
                self.pos = 0;
                self.end = got?;
                let n = self.end.min(rest);
                dst[done..done + n].copy_from_slice(&self.buf[..n]);
                self.pos = n;
                done += n;
            }
        }
        Ok(())
    }

    /// A fixed-size array read exactly.
    pub(crate) fn read_array<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut a = [0u8; N];
        self.read_exact(&mut a)?;
        Ok(a)
    }

    /// Read `len` bytes into a new vector; callers bound `len` first.
    pub(crate) fn read_vec(&mut self, len: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.read_exact(&mut v)?;
        Ok(v)
    }

    /// Read and drop `len` bytes.
    pub(crate) fn skip(&mut self, mut len: u64) -> io::Result<()> {
        let mut scratch = [0u8; 4096];
        while len > 0 {
            let n = len.min(scratch.len() as u64) as usize;
            self.read_exact(&mut scratch[..n])?;
            len -= n as u64;
        }
        Ok(())
    }

    /// Send all of `bytes`.
    pub(crate) fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            self.check_deadline()?;
            match self.io.write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(timed_out()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Shut the connection down.
    pub(crate) fn close(&self) {
        self.io.close();
    }
}
