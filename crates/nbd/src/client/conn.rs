//! One connection in transmission: reads (pipelined, each reply checked piece by piece) and
//! block status, with every length the server sends checked before it is used.

use std::collections::BTreeMap;
use std::time::Duration;

use vdisk_core::{Error, ErrorKind};

use super::negotiate::Negotiated;
use super::wire_io::{Wire, WireError, WireResult};
use crate::proto::*;
use crate::wire::{self, ChunkError, ChunkHeader, ReplyMagic, Request};

/// Largest piece of a read asked in one request (less when the server's maximum payload is
/// smaller): small enough that the server reads piece n+1 while this client takes piece n.
pub const READ_PIECE: u32 = 1 << 20;

/// Pieces of one read in flight at once on a connection.
pub const PIECES_IN_FLIGHT: usize = 16;

/// Most content and error chunks one read reply may have: a server splitting a read into
/// more is taken as an attack (covering them costs memory and time).
pub const MAX_CHUNKS: usize = 1 << 16;

/// Longest error chunk read (a message is at most 4096 bytes).
pub const MAX_ERROR_CHUNK: u32 = 64 << 10;

/// Most descriptors one block-status chunk may hold (the spec's limit).
pub const MAX_STATUS_DESCRIPTORS: u32 = 1 << 20;

/// Descriptors of the wanted context kept from one reply; the rest are read and dropped,
/// and the caller asks again from where the kept ones end.
const KEEP_DESCRIPTORS: usize = 1 << 17;

/// Which bytes of a request the chunks of its reply covered: non-overlapping ranges.
#[derive(Default)]
struct Coverage {
    ranges: BTreeMap<u64, u64>,
    total: u64,
    chunks: usize,
}

impl Coverage {
    /// Add `[start, end)`; fails when it overlaps what is covered, or when there are too
    /// many chunks.
    fn add(&mut self, start: u64, end: u64) -> WireResult<()> {
        self.chunks += 1;
        if self.chunks > MAX_CHUNKS {
            return Err(WireError::protocol(format!(
                "it split one read into more than {MAX_CHUNKS} chunks"
            )));
        }
        let before = self.ranges.range(..=start).next_back();
        let after = self.ranges.range(start..).next();
        let overlaps =
            before.is_some_and(|(_, &e)| e > start) || after.is_some_and(|(&s, _)| s < end);
        if overlaps {
            return Err(WireError::protocol(format!(
                "its read reply covers bytes {start}..{end} twice"
            )));
        }
        self.ranges.insert(start, end);
        self.total += end - start;
        Ok(())
    }
}

/// One request of a read in flight.
struct Piece {
    cookie: u64,
    /// Export offset and length.
    start: u64,
    len: u32,
    /// Where its bytes go in the caller's buffer.
    at: usize,
    cover: Coverage,
    error: Option<ChunkError>,
}

impl Piece {
    fn end(&self) -> u64 {
        self.start + u64::from(self.len)
    }

    /// Check that `[off, off + len)` lies inside this request and covers nothing twice.
    fn claim(&mut self, off: u64, len: u64) -> WireResult<()> {
        let end = off
            .checked_add(len)
            .filter(|&e| off >= self.start && e <= self.end());
        let Some(end) = end else {
            return Err(WireError::protocol(format!(
                "it sent {len} bytes at offset {off} for a read of {} bytes at {}",
                self.len, self.start
            )));
        };
        self.cover.add(off, end)
    }
}

/// The error a server reported for a request, as a vdisk error.
pub(crate) fn answer(what: &str, e: &ChunkError) -> Error {
    let msg = if e.message.is_empty() {
        String::new()
    } else {
        format!(": {}", e.message)
    };
    let err = Error::new(
        ErrorKind::Io,
        format!(
            "the NBD server failed the {what}: {}{msg}",
            wire::errno_name(e.errno)
        ),
    );
    match e.offset {
        Some(o) => err.at(o),
        None => err,
    }
}

/// A connection in transmission.
pub(crate) struct Conn {
    wire: Wire,
    pub neg: Negotiated,
    cookie: u64,
    timeout: Duration,
}

fn io(e: std::io::Error) -> WireError {
    WireError::Transport(e)
}

impl Conn {
    /// `timeout` bounds each request (and each reply message of a long read).
    pub fn new(wire: Wire, neg: Negotiated, timeout: Duration) -> Self {
        Conn {
            wire,
            neg,
            cookie: 0,
            timeout,
        }
    }

    fn next_cookie(&mut self) -> u64 {
        self.cookie = self.cookie.wrapping_add(1);
        self.cookie
    }

    /// The largest read asked in one request: a multiple of the minimum block.
    fn piece_len(&self) -> u32 {
        let min = self.neg.min_block.max(1);
        let max = READ_PIECE.min(self.neg.max_payload.max(min));
        (max / min * min).max(min)
    }

    /// Read `buf.len()` bytes at `offset` (inside the export, aligned to the minimum block),
    /// as pipelined requests of at most [`READ_PIECE`] bytes.
    pub fn read(&mut self, buf: &mut [u8], offset: u64) -> WireResult<()> {
        let piece_len = self.piece_len() as usize;
        let mut next = 0usize;
        let mut inflight: Vec<Piece> = Vec::with_capacity(PIECES_IN_FLIGHT);
        let mut failed: Option<Error> = None;
        loop {
            let mut reqs = Vec::new();
            // After a failure no new pieces are asked; those in flight are read to stay in step.
            while failed.is_none() && inflight.len() < PIECES_IN_FLIGHT && next < buf.len() {
                let n = piece_len.min(buf.len() - next);
                let cookie = self.next_cookie();
                let req = Request {
                    flags: 0,
                    command: CMD_READ,
                    cookie,
                    offset: offset + next as u64,
                    length: n as u32,
                };
                reqs.extend_from_slice(&req.to_bytes());
                inflight.push(Piece {
                    cookie,
                    start: req.offset,
                    len: req.length,
                    at: next,
                    cover: Coverage::default(),
                    error: None,
                });
                next += n;
            }
            self.wire.deadline_in(self.timeout);
            if !reqs.is_empty() {
                self.wire.write_all(&reqs).map_err(io)?;
            }
            if inflight.is_empty() {
                break;
            }
            if let Some(done) = self.read_message(buf, &mut inflight)? {
                let piece = inflight.swap_remove(done);
                if let Some(e) = &piece.error {
                    failed.get_or_insert_with(|| answer("read", e));
                } else if piece.cover.total != u64::from(piece.len) {
                    return Err(WireError::protocol(format!(
                        "its read reply covers {} of the {} bytes asked at {}",
                        piece.cover.total, piece.len, piece.start
                    )));
                }
            }
        }
        match failed {
            Some(e) => Err(WireError::Answer(e)),
            None => Ok(()),
        }
    }

    fn piece_of(inflight: &[Piece], cookie: u64) -> WireResult<usize> {
        inflight
            .iter()
            .position(|p| p.cookie == cookie)
            .ok_or_else(|| {
                WireError::protocol(format!(
                    "it replied with cookie {cookie:#x}, which no request in flight has"
                ))
            })
    }

    /// Read one reply message of a read; the index of the piece it finished, if any.
    fn read_message(
        &mut self,
        buf: &mut [u8],
        inflight: &mut [Piece],
    ) -> WireResult<Option<usize>> {
        let magic = ReplyMagic::parse(&self.wire.read_array::<4>().map_err(io)?)
            .map_err(WireError::Protocol)?;
        if magic == ReplyMagic::Simple {
            let (error, cookie) =
                wire::parse_simple_reply(&self.wire.read_array::<12>().map_err(io)?);
            let i = Self::piece_of(inflight, cookie)?;
            let p = &mut inflight[i];
            if error != 0 {
                p.error = Some(ChunkError {
                    errno: error,
                    message: String::new(),
                    offset: None,
                });
                return Ok(Some(i));
            }
            if self.neg.structured {
                return Err(WireError::protocol(
                    "it answered a read with a simple reply after structured replies were agreed",
                ));
            }
            let (start, len) = (p.start, p.len);
            p.claim(start, u64::from(len))?;
            let at = p.at;
            self.wire
                .read_exact(&mut buf[at..at + len as usize])
                .map_err(io)?;
            return Ok(Some(i));
        }
        if !self.neg.structured {
            return Err(WireError::protocol(
                "it sent a structured reply, which was not agreed",
            ));
        }
        let h = ChunkHeader::parse(&self.wire.read_array::<16>().map_err(io)?);
        let i = Self::piece_of(inflight, h.cookie)?;
        let p = &mut inflight[i];
        match h.kind {
            REPLY_TYPE_NONE => {
                if h.length != 0 || !h.done() {
                    return Err(WireError::protocol(
                        "it sent an NBD_REPLY_TYPE_NONE chunk with a payload or without the done flag",
                    ));
                }
            }
            REPLY_TYPE_OFFSET_DATA => {
                if h.length < 9 {
                    return Err(WireError::protocol(format!(
                        "it sent a data chunk of {} bytes (at least 9 needed)",
                        h.length
                    )));
                }
                let off = u64::from_be_bytes(self.wire.read_array::<8>().map_err(io)?);
                let len = u64::from(h.length - 8);
                p.claim(off, len)?;
                let at = p.at + (off - p.start) as usize;
                self.wire
                    .read_exact(&mut buf[at..at + len as usize])
                    .map_err(io)?;
            }
            REPLY_TYPE_OFFSET_HOLE => {
                if h.length != 12 {
                    return Err(WireError::protocol(format!(
                        "it sent a hole chunk of {} bytes (12 expected)",
                        h.length
                    )));
                }
                let b = self.wire.read_array::<12>().map_err(io)?;
                let mut o = [0u8; 8];
                o.copy_from_slice(&b[..8]);
                let off = u64::from_be_bytes(o);
                let len = u64::from(u32::from_be_bytes([b[8], b[9], b[10], b[11]]));
                if len == 0 {
                    return Err(WireError::protocol("it sent an empty hole chunk"));
                }
                p.claim(off, len)?;
                let at = p.at + (off - p.start) as usize;
                buf[at..at + len as usize].fill(0);
            }
            kind if h.is_error() => {
                let e = self.read_error_chunk(&h)?;
                if let Some(o) = e.offset {
                    if o < p.start || o >= p.end() {
                        return Err(WireError::protocol(format!(
                            "it reported an error at offset {o}, outside the read of {} bytes at {}",
                            p.len, p.start
                        )));
                    }
                }
                let _ = kind;
                p.error.get_or_insert(e);
            }
            other => {
                return Err(WireError::protocol(format!(
                    "it sent a chunk of type {other} in reply to a read"
                )))
            }
        }
        Ok(h.done().then_some(i))
    }

    fn read_error_chunk(&mut self, h: &ChunkHeader) -> WireResult<ChunkError> {
        if h.length > MAX_ERROR_CHUNK {
            return Err(WireError::protocol(format!(
                "it sent an error chunk of {} bytes",
                h.length
            )));
        }
        let payload = self.wire.read_vec(h.length as usize).map_err(io)?;
        // Unknown error types share the layout of NBD_REPLY_TYPE_ERROR.
        let kind = if h.kind == REPLY_TYPE_ERROR_OFFSET {
            REPLY_TYPE_ERROR_OFFSET
        } else {
            REPLY_TYPE_ERROR
        };
        wire::parse_chunk_error(kind, &payload).map_err(WireError::Protocol)
    }

    /// Block status of `len` bytes at `offset` (inside the export, aligned to the minimum
    /// block) for the context with id `want`: appends `(length, flags)` runs (touching
    /// runs of equal flags joined) and returns how many bytes from `offset` they cover
    /// (at least one, at most `len`).
    pub fn block_status(
        &mut self,
        offset: u64,
        len: u32,
        want: u32,
        out: &mut Vec<(u64, u32)>,
    ) -> WireResult<u64> {
        let cookie = self.next_cookie();
        let req = Request {
            flags: 0,
            command: CMD_BLOCK_STATUS,
            cookie,
            offset,
            length: len,
        };
        self.wire.deadline_in(self.timeout);
        self.wire.write_all(&req.to_bytes()).map_err(io)?;
        let first = out.len();
        let mut covered: Option<u64> = None;
        let mut seen: Vec<u32> = Vec::new();
        let mut error: Option<ChunkError> = None;
        loop {
            self.wire.deadline_in(self.timeout);
            let magic = ReplyMagic::parse(&self.wire.read_array::<4>().map_err(io)?)
                .map_err(WireError::Protocol)?;
            if magic == ReplyMagic::Simple {
                let (errno, c) =
                    wire::parse_simple_reply(&self.wire.read_array::<12>().map_err(io)?);
                if c != cookie {
                    return Err(WireError::protocol(format!(
                        "it replied with cookie {c:#x}, which no request in flight has"
                    )));
                }
                if errno == 0 {
                    return Err(WireError::protocol(
                        "it answered block status with an empty simple reply",
                    ));
                }
                let e = ChunkError {
                    errno,
                    message: String::new(),
                    offset: None,
                };
                return Err(WireError::Answer(answer("block status request", &e)));
            }
            let h = ChunkHeader::parse(&self.wire.read_array::<16>().map_err(io)?);
            if h.cookie != cookie {
                return Err(WireError::protocol(format!(
                    "it replied with cookie {:#x}, which no request in flight has",
                    h.cookie
                )));
            }
            match h.kind {
                REPLY_TYPE_NONE => {
                    if h.length != 0 || !h.done() {
                        return Err(WireError::protocol(
                            "it sent an NBD_REPLY_TYPE_NONE chunk with a payload or without the done flag",
                        ));
                    }
                }
                REPLY_TYPE_BLOCK_STATUS => {
                    let n = h.length.checked_sub(4).filter(|n| *n >= 8 && n % 8 == 0);
                    let Some(n) = n.map(|n| n / 8) else {
                        return Err(WireError::protocol(format!(
                            "it sent a block status chunk of {} bytes (4 + 8 per extent)",
                            h.length
                        )));
                    };
                    if n > MAX_STATUS_DESCRIPTORS {
                        return Err(WireError::protocol(format!(
                            "it sent {n} block status extents in one chunk (at most {MAX_STATUS_DESCRIPTORS})"
                        )));
                    }
                    let id = u32::from_be_bytes(self.wire.read_array::<4>().map_err(io)?);
                    if !self.neg.contexts.iter().any(|c| c.0 == id) {
                        return Err(WireError::protocol(format!(
                            "it sent block status for context id {id}, which was not selected"
                        )));
                    }
                    if seen.contains(&id) {
                        return Err(WireError::protocol(format!(
                            "it sent two block status chunks for context id {id}"
                        )));
                    }
                    seen.push(id);
                    let c =
                        self.descriptors(n, u64::from(len), (id == want).then_some(&mut *out))?;
                    if id == want {
                        covered = Some(c);
                    }
                }
                kind if h.is_error() => {
                    let e = self.read_error_chunk(&h)?;
                    if let Some(o) = e.offset {
                        if o < offset || o - offset >= u64::from(len) {
                            return Err(WireError::protocol(format!(
                                "it reported an error at offset {o}, outside the block status request"
                            )));
                        }
                    }
                    let _ = kind;
                    error.get_or_insert(e);
                }
                other => {
                    return Err(WireError::protocol(format!(
                        "it sent a chunk of type {other} in reply to block status"
                    )))
                }
            }
            if h.done() {
                break;
            }
        }
        if let Some(e) = error {
            out.truncate(first);
            return Err(WireError::Answer(answer("block status request", &e)));
        }
        covered.ok_or_else(|| {
            WireError::protocol("its block status reply has no extents for the context asked")
        })
    }

    /// Read `n` descriptors of a chunk; keep them in `out` when given (clipped to `len`);
    /// returns the bytes they cover (at most `len`).
    fn descriptors(
        &mut self,
        n: u32,
        len: u64,
        mut out: Option<&mut Vec<(u64, u32)>>,
    ) -> WireResult<u64> {
        let mut sum = 0u64;
        let mut kept = 0usize;
        let mut covered = 0u64;
        for i in 0..n {
            let (l, flags) = wire::parse_descriptor(&self.wire.read_array::<8>().map_err(io)?);
            if l == 0 {
                return Err(WireError::protocol(
                    "it sent a block status extent of length 0",
                ));
            }
            if sum >= len {
                return Err(WireError::protocol(format!(
                    "its block status extent {i} starts past the {len} bytes asked"
                )));
            }
            let take = u64::from(l).min(len - sum);
            sum += u64::from(l);
            if let Some(out) = out.as_deref_mut() {
                if kept < KEEP_DESCRIPTORS {
                    match out.last_mut() {
                        Some(last) if last.1 == flags => last.0 += take,
                        _ => out.push((take, flags)),
                    }
                    kept += 1;
                    covered += take;
                }
            } else {
                covered += take;
            }
        }
        Ok(covered)
    }

    /// End the session politely (`NBD_CMD_DISC`) and close.
    pub fn disconnect(&mut self) {
        let cookie = self.next_cookie();
        let req = Request {
            flags: 0,
            command: CMD_DISC,
            cookie,
            offset: 0,
            length: 0,
        };
        self.wire.deadline_in(Duration::from_secs(1));
        let _ = self.wire.write_all(&req.to_bytes());
        self.wire.close();
    }

    /// Close without a word (after a failure).
    pub fn abort(&self) {
        self.wire.close();
    }
}
