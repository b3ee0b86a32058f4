//! The transmission phase: requests in, replies out.
//!
//! One reader parses requests and hands reads and block-status queries to workers through a
//! [`Dispatch`]; everything else (refused writes, flush, disconnect) it answers itself.
//! Replies go out under one lock per connection, so the chunks of one reply never interleave
//! with bytes of another; replies may leave in any order, matched by their cookie.
//!
//! Memory per request is bounded whatever the client asks: reads are split into windows of
//! [`READ_CHUNK`] bytes, each read from the image into one reused buffer and sent before the
//! next, and block status walks the allocation map in windows of [`STATUS_WINDOW`] bytes and
//! stops after [`MAX_DESCRIPTORS`] extents.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use vdisk_core::{Allocation, Error};

use crate::export::{Export, MAX_PAYLOAD};
use crate::handshake::{skip, Negotiated, BASE_ALLOCATION_ID};
use crate::proto::*;
use crate::wire::{self, Request};

/// Bytes read from the image at a time for one read request (and the size of each data
/// chunk of a structured reply).
pub const READ_CHUNK: usize = 1 << 20;

/// Bytes of allocation map asked of the image at a time for block status. A hostile image
/// can describe one extent per 512 bytes, so a window costs at most 128 Ki extents.
pub const STATUS_WINDOW: u64 = 64 << 20;

/// Most descriptors in one block-status reply (128 KiB of reply); the spec lets the server
/// answer a shorter range, and clients ask again from where the reply ended.
pub const MAX_DESCRIPTORS: usize = 16 << 10;

/// Room kept in front of the data in a read buffer for the largest reply header (a
/// structured chunk header and its offset), so header and data leave in one write.
const HEADROOM: usize = 28;

static ZEROES: [u8; 64 << 10] = [0; 64 << 10];

/// A reusable read buffer with room for a reply header in front of the data.
#[derive(Default)]
pub(crate) struct ChunkBuf {
    buf: Vec<u8>,
}

impl ChunkBuf {
    /// The data part, `len` bytes (at most [`READ_CHUNK`]); allocated on first use only.
    fn data(&mut self, len: usize) -> &mut [u8] {
        if self.buf.is_empty() {
            self.buf = vec![0; HEADROOM + READ_CHUNK];
        }
        &mut self.buf[HEADROOM..HEADROOM + len]
    }

    /// `header` written just in front of the first `len` data bytes, and the whole
    /// message as one slice.
    fn framed(&mut self, header: &[u8], len: usize) -> &[u8] {
        let start = HEADROOM - header.len();
        self.buf[start..HEADROOM].copy_from_slice(header);
        &self.buf[start..HEADROOM + len]
    }
}

/// Where replies go: a writer told when each reply starts (a socket bounds the time each
/// reply may take from then).
pub(crate) trait ReplySink: Write + Send {
    /// A reply (or one chunk of a long read) starts now.
    fn start_reply(&mut self) {}
}

impl ReplySink for std::io::Sink {}

/// Where the reader hands requests and how it waits for room.
pub(crate) trait Dispatch {
    /// Wait until one more request may be in flight; false when the connection is ending.
    fn reserve(&self) -> bool;
    /// Serve a request that [`Dispatch::reserve`] made room for; the slot is given back
    /// once its reply is sent.
    fn submit(&self, req: Request);
    /// Give back a slot without submitting (the reader answered the request itself).
    fn release(&self);
}

/// A run of bytes of one kind, inside one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    start: u64,
    len: u64,
    /// `base:allocation` flags: 0 data, `STATE_ZERO`, or `STATE_HOLE | STATE_ZERO`.
    status: u32,
}

impl Run {
    fn end(&self) -> u64 {
        self.start + self.len
    }
    fn reads_as_zero(&self) -> bool {
        self.status & STATE_ZERO != 0
    }
}

fn status_of(a: Allocation) -> u32 {
    match a {
        Allocation::Data => 0,
        Allocation::Zero => STATE_ZERO,
        Allocation::Unallocated => STATE_HOLE | STATE_ZERO,
    }
}

/// One client connection in transmission: the export, what was negotiated, and the reply
/// stream. `W` is the socket (or a sink when fuzzing).
pub(crate) struct Connection<'a, W: ReplySink> {
    export: &'a Export,
    neg: Negotiated,
    out: Mutex<W>,
    broken: AtomicBool,
    close: &'a (dyn Fn() + Sync),
}

impl<'a, W: ReplySink> Connection<'a, W> {
    /// `close` shuts the connection down (both directions), so that a reader blocked on the
    /// client returns; it is called when a reply cannot be sent.
    pub fn new(export: &'a Export, neg: Negotiated, out: W, close: &'a (dyn Fn() + Sync)) -> Self {
        Connection {
            export,
            neg,
            out: Mutex::new(out),
            broken: AtomicBool::new(false),
            close,
        }
    }

    /// Whether a reply failed to go out (the connection is being torn down).
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Tear the connection down: no more replies, and the reader wakes up.
    pub fn abort(&self) {
        self.broken.store(true, Ordering::Relaxed);
        (self.close)();
    }

    /// The reply stream, for one reply: its time to send starts now.
    fn lock(&self) -> MutexGuard<'_, W> {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        out.start_reply();
        out
    }

    /// Write under a lock the caller holds; on failure the connection is aborted.
    fn write(&self, out: &mut W, bytes: &[u8]) -> bool {
        if self.is_broken() {
            return false;
        }
        if out.write_all(bytes).is_err() {
            self.abort();
            return false;
        }
        true
    }

    fn send(&self, bytes: &[u8]) -> bool {
        let mut out = self.lock();
        self.write(&mut out, bytes)
    }

    fn chunk(&self, flags: u16, kind: u16, cookie: u64, payload: &[u8]) -> bool {
        // Payloads passed here are small (errors, holes, block status up to 128 KiB).
        let mut m = Vec::with_capacity(20 + payload.len());
        m.extend_from_slice(&wire::chunk_header(
            flags,
            kind,
            cookie,
            payload.len() as u32,
        ));
        m.extend_from_slice(payload);
        self.send(&m)
    }

    /// Success without data.
    fn reply_ok(&self, cookie: u64) -> bool {
        if self.neg.structured {
            self.chunk(REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, &[])
        } else {
            self.send(&wire::simple_reply(0, cookie))
        }
    }

    /// An error for the whole request, with a message when structured replies allow one.
    fn reply_error(&self, cookie: u64, errno: u32, msg: &str) -> bool {
        if self.neg.structured {
            self.chunk(
                REPLY_FLAG_DONE,
                REPLY_TYPE_ERROR,
                cookie,
                &error_payload(errno, msg, None),
            )
        } else {
            self.send(&wire::simple_reply(errno, cookie))
        }
    }

    /// The final chunk of a structured read that failed at `offset`.
    fn error_at_chunk(cookie: u64, errno: u32, msg: &str, offset: u64) -> Vec<u8> {
        let p = error_payload(errno, msg, Some(offset));
        let mut m =
            wire::chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_ERROR_OFFSET, cookie, 0).to_vec();
        m[16..20].copy_from_slice(&(p.len() as u32).to_be_bytes());
        m.extend_from_slice(&p);
        m
    }

    /// Serve requests read from `input` until the client disconnects, breaks the protocol,
    /// or a reply cannot be sent. Returns when no more requests will be dispatched; the
    /// caller then lets the dispatched ones finish.
    pub fn read_requests<R: Read>(&self, input: &mut R, dispatch: &dyn Dispatch) {
        loop {
            if self.is_broken() || !dispatch.reserve() {
                return;
            }
            let mut head = [0u8; Request::LEN];
            if input.read_exact(&mut head).is_err() {
                // End of stream, or the connection was shut down.
                dispatch.release();
                return;
            }
            let Ok(req) = Request::parse(&head) else {
                // Without a valid magic the stream cannot be resynchronised.
                dispatch.release();
                self.abort();
                return;
            };
            match req.command {
                CMD_READ | CMD_BLOCK_STATUS => {
                    dispatch.submit(req);
                    continue;
                }
                CMD_DISC => {
                    dispatch.release();
                    return;
                }
                CMD_WRITE => {
                    // The payload must be consumed to find the next request. Up to the
                    // maximum payload it is skipped (never stored); a longer one is taken
                    // as an attack, which the spec allows answering with a disconnect.
                    if req.length > MAX_PAYLOAD || skip(input, u64::from(req.length)).is_err() {
                        dispatch.release();
                        self.abort();
                        return;
                    }
                    self.reply_error(req.cookie, EPERM, "the export is read-only");
                }
                CMD_WRITE_ZEROES | CMD_TRIM => {
                    self.reply_error(req.cookie, EPERM, "the export is read-only");
                }
                CMD_FLUSH => {
                    // Nothing is ever written, so there is nothing to flush.
                    self.reply_ok(req.cookie);
                }
                CMD_CACHE => {
                    self.reply_error(req.cookie, EINVAL, "NBD_CMD_CACHE is not supported");
                }
                other => {
                    self.reply_error(req.cookie, EINVAL, &format!("unknown command {other}"));
                }
            }
            dispatch.release();
        }
    }

    /// Serve one read or block-status request (in a worker).
    pub fn execute(&self, req: Request, buf: &mut ChunkBuf) {
        if self.is_broken() {
            return;
        }
        match req.command {
            CMD_READ => self.read(req, buf),
            CMD_BLOCK_STATUS => self.block_status(req),
            _ => {
                self.reply_error(req.cookie, EINVAL, "unexpected command");
            }
        }
    }

    /// Check flags and range; on failure the error reply is sent and false returned.
    fn check(&self, req: &Request, allowed_flags: u16, max_len: Option<u32>) -> bool {
        if req.flags & !allowed_flags != 0 {
            let msg = format!("command flags {:#x} are not valid here", req.flags);
            self.reply_error(req.cookie, EINVAL, &msg);
            return false;
        }
        if req.length == 0 {
            self.reply_error(req.cookie, EINVAL, "zero-length request");
            return false;
        }
        let size = self.export.size;
        match req.offset.checked_add(u64::from(req.length)) {
            Some(end) if end <= size => {}
            _ => {
                let msg = format!(
                    "{} bytes at offset {} are past the end of the {size}-byte export",
                    req.length, req.offset
                );
                self.reply_error(req.cookie, EINVAL, &msg);
                return false;
            }
        }
        if let Some(max) = max_len {
            if req.length > max {
                // Structured replies may refuse long reads with EOVERFLOW; simple
                // replies have only EINVAL for a request the server will not take.
                let errno = if self.neg.structured {
                    EOVERFLOW
                } else {
                    EINVAL
                };
                let msg = format!(
                    "a read of {} bytes is longer than the {max}-byte maximum",
                    req.length
                );
                self.reply_error(req.cookie, errno, &msg);
                return false;
            }
        }
        true
    }

    /// The runs of `[start, end)`, from the allocation map, contiguous and covering the
    /// range exactly whatever the image returned (gaps count as data). `None` when the
    /// image cannot tell.
    fn runs(&self, start: u64, end: u64) -> Option<Vec<Run>> {
        let map = self.export.image.allocation(start, end - start).ok()?;
        let mut runs: Vec<Run> = Vec::with_capacity(map.len().min(64));
        let mut pos = start;
        let push = |runs: &mut Vec<Run>, s: u64, e: u64, status: u32| {
            if e <= s {
                return;
            }
            match runs.last_mut() {
                Some(last) if last.status == status && last.end() == s => last.len += e - s,
                _ => runs.push(Run {
                    start: s,
                    len: e - s,
                    status,
                }),
            }
        };
        for ext in map {
            let s = ext.start.max(pos);
            let e = ext.start.saturating_add(ext.length).min(end);
            if e <= s {
                continue;
            }
            push(&mut runs, pos, s, 0);
            push(&mut runs, s, e, status_of(ext.allocation));
            pos = e;
        }
        push(&mut runs, pos, end, 0);
        Some(runs)
    }

    /// Runs for reading: when the map fails, the whole window is read (and the read
    /// reports the error, if there is one).
    fn read_runs(&self, start: u64, end: u64) -> Vec<Run> {
        self.runs(start, end).unwrap_or_else(|| {
            vec![Run {
                start,
                len: end - start,
                status: 0,
            }]
        })
    }

    /// Fill `data` with the export's bytes at `offset`: zero runs without reading.
    /// On failure, the offset of the run that failed and the error.
    fn fill(&self, data: &mut [u8], offset: u64) -> Result<(), (u64, Error)> {
        let end = offset + data.len() as u64;
        for run in self.read_runs(offset, end) {
            let a = (run.start - offset) as usize;
            let b = (run.end() - offset) as usize;
            if run.reads_as_zero() {
                data[a..b].fill(0);
            } else if let Err(e) = self.export.image.read_at(&mut data[a..b], run.start) {
                return Err((run.start, e));
            }
        }
        Ok(())
    }

    fn read(&self, req: Request, buf: &mut ChunkBuf) {
        let mut allowed = CMD_FLAG_FUA;
        if self.neg.structured {
            allowed |= CMD_FLAG_DF;
        }
        if !self.check(&req, allowed, Some(MAX_PAYLOAD)) {
            return;
        }
        if self.neg.structured && req.flags & CMD_FLAG_DF == 0 {
            self.read_chunked(req, buf);
        } else {
            self.read_contiguous(req, buf);
        }
    }

    /// A structured read: data chunks of at most [`READ_CHUNK`] bytes and hole chunks for
    /// ranges that read as zero; the last chunk carries the done flag.
    fn read_chunked(&self, req: Request, buf: &mut ChunkBuf) {
        let cookie = req.cookie;
        let end = req.offset + u64::from(req.length);
        let mut hole: Option<(u64, u64)> = None;
        let mut pos = req.offset;
        while pos < end {
            let window_end = end.min(pos + READ_CHUNK as u64);
            for run in self.read_runs(pos, window_end) {
                if run.reads_as_zero() {
                    hole = match hole {
                        Some((s, l)) => Some((s, l + run.len)),
                        None => Some((run.start, run.len)),
                    };
                    continue;
                }
                if let Some((s, l)) = hole.take() {
                    if !self.send_hole(cookie, s, l, false) {
                        return;
                    }
                }
                let len = run.len as usize;
                if let Err(e) = self.export.image.read_at(buf.data(len), run.start) {
                    let msg = wire::message(&format!("read failed: {}", e.message()));
                    self.send(&Self::error_at_chunk(cookie, EIO, &msg, run.start));
                    return;
                }
                let flags = if run.end() == end { REPLY_FLAG_DONE } else { 0 };
                let mut head = [0u8; 28];
                head[..20].copy_from_slice(&wire::chunk_header(
                    flags,
                    REPLY_TYPE_OFFSET_DATA,
                    cookie,
                    8 + len as u32,
                ));
                head[20..].copy_from_slice(&run.start.to_be_bytes());
                if !self.send(buf.framed(&head, len)) {
                    return;
                }
            }
            pos = window_end;
        }
        if let Some((s, l)) = hole {
            self.send_hole(cookie, s, l, true);
        }
    }

    fn send_hole(&self, cookie: u64, start: u64, len: u64, done: bool) -> bool {
        let mut p = [0u8; 12];
        p[..8].copy_from_slice(&start.to_be_bytes());
        // Holes lie inside one request, whose length is a u32.
        p[8..].copy_from_slice(&(len as u32).to_be_bytes());
        let flags = if done { REPLY_FLAG_DONE } else { 0 };
        self.chunk(flags, REPLY_TYPE_OFFSET_HOLE, cookie, &p)
    }

    /// A read whose data must leave as one piece: a simple reply, or a structured reply
    /// with `NBD_CMD_FLAG_DF`. The first window is read before anything is sent, so an
    /// early error gets a clean error reply; later windows are streamed under the lock.
    fn read_contiguous(&self, req: Request, buf: &mut ChunkBuf) {
        let cookie = req.cookie;
        let structured = self.neg.structured;
        let len = req.length as usize;
        let end = req.offset + u64::from(req.length);
        let first = len.min(READ_CHUNK);
        if let Err((at, e)) = self.fill(buf.data(first), req.offset) {
            let msg = wire::message(&format!("read failed: {}", e.message()));
            if structured {
                self.send(&Self::error_at_chunk(cookie, EIO, &msg, at));
            } else {
                self.send(&wire::simple_reply(EIO, cookie));
            }
            return;
        }
        let mut head = [0u8; 28];
        let head: &[u8] = if structured {
            let flags = if first == len { REPLY_FLAG_DONE } else { 0 };
            head[..20].copy_from_slice(&wire::chunk_header(
                flags,
                REPLY_TYPE_OFFSET_DATA,
                cookie,
                8 + req.length,
            ));
            head[20..].copy_from_slice(&req.offset.to_be_bytes());
            &head
        } else {
            head[..16].copy_from_slice(&wire::simple_reply(0, cookie));
            &head[..16]
        };
        let mut out = self.lock();
        if !self.write(&mut out, buf.framed(head, first)) || first == len {
            return;
        }
        let mut pos = req.offset + first as u64;
        while pos < end {
            let n = (end - pos).min(READ_CHUNK as u64) as usize;
            if let Err((at, e)) = self.fill(buf.data(n), pos) {
                if !structured {
                    // The header promised data; the spec's only way out is a disconnect.
                    drop(out);
                    self.abort();
                    return;
                }
                // Finish the promised chunk with zeroes, then say where it went wrong.
                let mut left = end - pos;
                while left > 0 {
                    let k = left.min(ZEROES.len() as u64) as usize;
                    if !self.write(&mut out, &ZEROES[..k]) {
                        return;
                    }
                    left -= k as u64;
                }
                let msg = wire::message(&format!("read failed: {}", e.message()));
                self.write(&mut out, &Self::error_at_chunk(cookie, EIO, &msg, at));
                return;
            }
            if !self.write(&mut out, &buf.data(n)[..]) {
                return;
            }
            pos += n as u64;
        }
        if structured {
            let done = wire::chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0);
            self.write(&mut out, &done);
        }
    }

    /// `base:allocation` for the requested range: Data is 0, Zero is `NBD_STATE_ZERO`,
    /// Unallocated is `NBD_STATE_HOLE | NBD_STATE_ZERO`, touching runs joined.
    fn block_status(&self, req: Request) {
        if !(self.neg.structured && self.neg.base_allocation) {
            self.reply_error(
                req.cookie,
                EINVAL,
                "block status needs the base:allocation metadata context",
            );
            return;
        }
        if !self.check(&req, CMD_FLAG_FUA | CMD_FLAG_REQ_ONE, None) {
            return;
        }
        let max = if req.flags & CMD_FLAG_REQ_ONE != 0 {
            1
        } else {
            MAX_DESCRIPTORS
        };
        let end = req.offset + u64::from(req.length);
        // (length, status) pairs; lengths fit in u32 as they lie inside the request.
        let mut descs: Vec<(u32, u32)> = Vec::new();
        let mut pos = req.offset;
        'walk: while pos < end {
            let window_end = end.min(pos + STATUS_WINDOW);
            let Some(runs) = self.runs(pos, window_end) else {
                if descs.is_empty() {
                    self.reply_error(req.cookie, EIO, "the allocation map cannot be read");
                    return;
                }
                // Answer the part already known; the client asks again for the rest.
                break;
            };
            for run in runs {
                let full = descs.len() == max;
                match descs.last_mut() {
                    Some(last) if last.1 == run.status => last.0 += run.len as u32,
                    _ if full => break 'walk,
                    _ => descs.push((run.len as u32, run.status)),
                }
            }
            pos = window_end;
        }
        let mut p = Vec::with_capacity(4 + 8 * descs.len());
        p.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
        for (len, status) in descs {
            p.extend_from_slice(&len.to_be_bytes());
            p.extend_from_slice(&status.to_be_bytes());
        }
        self.chunk(REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, req.cookie, &p);
    }
}

/// The payload of an error chunk: error, message length, message, and the offset for
/// `NBD_REPLY_TYPE_ERROR_OFFSET`.
fn error_payload(errno: u32, msg: &str, offset: Option<u64>) -> Vec<u8> {
    let msg = wire::message(msg);
    let mut p = Vec::with_capacity(14 + msg.len());
    p.extend_from_slice(&errno.to_be_bytes());
    p.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    p.extend_from_slice(msg.as_bytes());
    if let Some(o) = offset {
        p.extend_from_slice(&o.to_be_bytes());
    }
    p
}

/// Requests waiting for a worker, and the count of requests in flight (queued, being
/// served, or answered by the reader), which the reader keeps under the bound by not
/// reading while it is reached.
pub(crate) struct RequestQueue<'a> {
    state: Mutex<QueueState>,
    ready: Condvar,
    room: Condvar,
    max_in_flight: usize,
    on_reserve: &'a (dyn Fn(usize) + Sync),
}

struct QueueState {
    jobs: std::collections::VecDeque<Request>,
    in_flight: usize,
    closed: bool,
}

impl<'a> RequestQueue<'a> {
    /// A queue allowing `max_in_flight` requests; `on_reserve` sees the count after each
    /// reservation (for statistics).
    pub fn new(max_in_flight: usize, on_reserve: &'a (dyn Fn(usize) + Sync)) -> Self {
        RequestQueue {
            state: Mutex::new(QueueState {
                jobs: std::collections::VecDeque::new(),
                in_flight: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            room: Condvar::new(),
            max_in_flight: max_in_flight.max(1),
            on_reserve,
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// No more requests: workers finish the queued ones, then [`RequestQueue::next`]
    /// returns `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
        self.room.notify_all();
    }

    /// The next request to serve (in a worker), waiting for one.
    pub fn next(&self) -> Option<Request> {
        let mut s = self.lock();
        loop {
            if let Some(r) = s.jobs.pop_front() {
                return Some(r);
            }
            if s.closed {
                return None;
            }
            s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Dispatch for RequestQueue<'_> {
    fn reserve(&self) -> bool {
        let mut s = self.lock();
        while s.in_flight >= self.max_in_flight && !s.closed {
            s = self.room.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if s.closed {
            return false;
        }
        s.in_flight += 1;
        (self.on_reserve)(s.in_flight);
        true
    }

    fn submit(&self, req: Request) {
        self.lock().jobs.push_back(req);
        self.ready.notify_one();
    }

    fn release(&self) {
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        drop(s);
        self.room.notify_one();
    }
}

/// A dispatcher that serves each request at once, in the reader's thread (for fuzzing).
pub(crate) struct Inline<'c, 'a, W: ReplySink> {
    pub conn: &'c Connection<'a, W>,
    pub buf: Mutex<ChunkBuf>,
}

impl<W: ReplySink> Dispatch for Inline<'_, '_, W> {
    fn reserve(&self) -> bool {
        true
    }
    fn submit(&self, req: Request) {
        let mut buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        self.conn.execute(req, &mut buf);
    }
    fn release(&self) {}
}
