//! The bytes of the protocol: pure functions that parse what a client sends and encode what
//! the server answers. Nothing here does I/O or allocates from a length the client chose, so
//! every function can be fed arbitrary bytes (the `nbd_client_bytes` fuzz target does).
//!
//! Parsing is in two layers, as elsewhere in vdisk: fixed-size headers are decoded field by
//! field from arrays ([`OptionHeader`], [`Request`]), and variable option payloads are checked
//! against their own length fields before anything reads them ([`ExportRequest`],
//! [`MetaContextRequest`]).

use vdisk_core::{Error, Result};

use crate::proto::*;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

/// Split `len` bytes off the front of `b`, or fail with `what` when fewer remain.
fn take<'a>(b: &mut &'a [u8], len: usize, what: &str) -> Result<&'a [u8]> {
    if b.len() < len {
        return Err(Error::invalid(format!(
            "{what} needs {len} bytes but only {} remain in the option",
            b.len()
        )));
    }
    let (head, tail) = b.split_at(len);
    *b = tail;
    Ok(head)
}

fn take_u32(b: &mut &[u8], what: &str) -> Result<u32> {
    Ok(be32(take(b, 4, what)?, 0))
}

/// The server's first message: `NBDMAGIC`, `IHAVEOPT` and the handshake flags.
pub fn greeting(handshake_flags: u16) -> [u8; 18] {
    let mut g = [0u8; 18];
    g[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    g[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    g[16..].copy_from_slice(&handshake_flags.to_be_bytes());
    g
}

/// The client flags: fails when a bit is set that the server did not offer (the spec makes
/// the server drop the connection then).
pub fn parse_client_flags(b: &[u8; 4]) -> Result<u32> {
    let flags = u32::from_be_bytes(*b);
    let known = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;
    if flags & !known != 0 {
        return Err(Error::invalid(format!(
            "client flags {flags:#x} have unknown bits"
        )));
    }
    Ok(flags)
}

/// The 16-byte header of an option: `IHAVEOPT`, option, payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// The option (`NBD_OPT_*`).
    pub option: u32,
    /// Length of the payload that follows.
    pub length: u32,
}

impl OptionHeader {
    /// Decode an option header; fails when the magic is not `IHAVEOPT`.
    pub fn parse(b: &[u8; 16]) -> Result<Self> {
        let magic = be64(b, 0);
        if magic != IHAVEOPT {
            return Err(Error::invalid(format!(
                "option magic is {magic:#018x}, not IHAVEOPT"
            )));
        }
        Ok(OptionHeader {
            option: be32(b, 8),
            length: be32(b, 12),
        })
    }

    /// Encode, for clients and tests.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// The payload of `NBD_OPT_INFO` and `NBD_OPT_GO`: an export name and the information the
/// client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportRequest<'a> {
    /// The export name (empty: the default export).
    pub name: &'a [u8],
    /// The requested `NBD_INFO_*` types, two bytes each.
    info: &'a [u8],
}

impl<'a> ExportRequest<'a> {
    /// Decode and check that the lengths inside add up to the payload exactly.
    pub fn parse(payload: &'a [u8]) -> Result<Self> {
        let mut b = payload;
        let name_len = take_u32(&mut b, "the export name length")?;
        let name = take(&mut b, name_len as usize, "the export name")?;
        let count = be16(take(&mut b, 2, "the number of information requests")?, 0);
        let info = take(&mut b, 2 * count as usize, "the information requests")?;
        if !b.is_empty() {
            return Err(Error::invalid(format!(
                "{} bytes follow the information requests",
                b.len()
            )));
        }
        Ok(ExportRequest { name, info })
    }

    /// The requested information types, in the client's order.
    pub fn info_requests(&self) -> impl Iterator<Item = u16> + 'a {
        self.info.chunks_exact(2).map(|c| be16(c, 0))
    }
}

/// The payload of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`: an export name
/// and a list of queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaContextRequest<'a> {
    /// The export name (empty: the default export).
    pub name: &'a [u8],
    /// Number of queries.
    pub count: u32,
    queries: &'a [u8],
}

impl<'a> MetaContextRequest<'a> {
    /// Decode and check every query length against the payload, without allocating.
    pub fn parse(payload: &'a [u8]) -> Result<Self> {
        let mut b = payload;
        let name_len = take_u32(&mut b, "the export name length")?;
        let name = take(&mut b, name_len as usize, "the export name")?;
        let count = take_u32(&mut b, "the number of queries")?;
        let queries = b;
        // Each query takes at least its 4-byte length, so this loop fails within
        // payload.len() / 4 turns whatever `count` says.
        for _ in 0..count {
            let len = take_u32(&mut b, "a query length")?;
            take(&mut b, len as usize, "a query")?;
        }
        if !b.is_empty() {
            return Err(Error::invalid(format!(
                "{} bytes follow the queries",
                b.len()
            )));
        }
        Ok(MetaContextRequest {
            name,
            count,
            queries,
        })
    }

    /// The queries, in the client's order.
    pub fn queries(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut b = self.queries;
        (0..self.count).map_while(move |_| {
            let len = take_u32(&mut b, "").ok()?;
            take(&mut b, len as usize, "").ok()
        })
    }
}

/// An option reply: header (magic, option, type, length) and data.
pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(20 + data.len());
    r.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    r.extend_from_slice(&option.to_be_bytes());
    r.extend_from_slice(&reply.to_be_bytes());
    // Callers send at most a few KiB (strings are capped at MAX_STRING).
    r.extend_from_slice(&(data.len() as u32).to_be_bytes());
    r.extend_from_slice(data);
    r
}

/// The answer to `NBD_OPT_EXPORT_NAME`: size, transmission flags, and 124 zero bytes unless
/// the client asked for none.
pub fn export_name_reply(size: u64, transmission_flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut r = Vec::with_capacity(134);
    r.extend_from_slice(&size.to_be_bytes());
    r.extend_from_slice(&transmission_flags.to_be_bytes());
    if !no_zeroes {
        r.extend_from_slice(&[0u8; 124]);
    }
    r
}

/// A transmission request (the 28-byte header; a write's payload follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags (`NBD_CMD_FLAG_*`).
    pub flags: u16,
    /// The command (`NBD_CMD_*`).
    pub command: u16,
    /// Opaque value echoed in the reply (called handle in older texts).
    pub cookie: u64,
    /// First byte of the range.
    pub offset: u64,
    /// Length of the range.
    pub length: u32,
}

impl Request {
    /// Size of the header on the wire.
    pub const LEN: usize = 28;

    /// Decode a request header; fails when the magic is wrong, after which the stream
    /// cannot be resynchronised and the connection must be closed.
    pub fn parse(b: &[u8; 28]) -> Result<Self> {
        let magic = be32(b, 0);
        if magic != REQUEST_MAGIC {
            return Err(Error::invalid(format!(
                "request magic is {magic:#010x}, not {REQUEST_MAGIC:#010x}"
            )));
        }
        Ok(Request {
            flags: be16(b, 4),
            command: be16(b, 6),
            cookie: be64(b, 8),
            offset: be64(b, 16),
            length: be32(b, 24),
        })
    }

    /// Encode, for clients and tests.
    pub fn to_bytes(&self) -> [u8; 28] {
        let mut b = [0u8; 28];
        b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// A simple reply header: magic, error, cookie.
pub fn simple_reply(error: u32, cookie: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// A structured reply chunk header: magic, flags, type, cookie, payload length.
pub fn chunk_header(flags: u16, kind: u16, cookie: u64, length: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..].copy_from_slice(&length.to_be_bytes());
    b
}

/// A message for a human, as the spec wants strings: valid UTF-8, no NUL, at most
/// [`MAX_STRING`] bytes. Control characters become spaces so that it stays one line.
pub fn message(text: &str) -> String {
    let mut m = String::with_capacity(text.len().min(MAX_STRING));
    for ch in text.chars() {
        let ch = if ch.is_control() { ' ' } else { ch };
        if m.len() + ch.len_utf8() > MAX_STRING {
            break;
        }
        m.push(ch);
    }
    m
}

// The other direction: what a client sends and how it reads what a server answers. These are
// the client's parsers of hostile input (the `nbd_server_bytes` fuzz target feeds them): each
// decodes a fixed-size header or a payload whose length the caller has already bounded.

/// `NBDMAGIC` followed by the oldstyle magic: a server that skips option haggling.
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;

/// Decode the server's 18-byte greeting; returns the handshake flags. Fails when the bytes
/// are not an NBD server's, when the server speaks only the oldstyle handshake, or when it
/// does not offer the fixed newstyle handshake (the only one this client speaks).
pub fn parse_greeting(b: &[u8; 18]) -> Result<u16> {
    let magic = be64(b, 0);
    if magic != NBDMAGIC {
        return Err(Error::invalid(format!(
            "is not an NBD server (its greeting starts with {magic:#018x}, not NBDMAGIC)"
        )));
    }
    let second = be64(b, 8);
    if second == OLDSTYLE_MAGIC {
        return Err(Error::unsupported(
            "the server speaks only the oldstyle NBD handshake, which names no export; vdisk needs a newstyle server",
        ));
    }
    if second != IHAVEOPT {
        return Err(Error::invalid(format!(
            "the server's greeting has {second:#018x} where IHAVEOPT belongs"
        )));
    }
    let flags = be16(b, 16);
    if flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(Error::unsupported(
            "the server does not offer the fixed newstyle NBD handshake",
        ));
    }
    Ok(flags)
}

/// An option as a client sends it: header, then `data`.
pub fn option_request(option: u32, data: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(16 + data.len());
    // Callers send small payloads: names are capped at MAX_STRING, queries at a few.
    let length = data.len() as u32;
    r.extend_from_slice(&OptionHeader { option, length }.to_bytes());
    r.extend_from_slice(data);
    r
}

/// The payload of `NBD_OPT_INFO` and `NBD_OPT_GO`: the export name and the information
/// requests (`NBD_INFO_*`).
pub fn export_request(name: &[u8], info: &[u16]) -> Vec<u8> {
    let mut p = Vec::with_capacity(6 + name.len() + 2 * info.len());
    p.extend_from_slice(&(name.len() as u32).to_be_bytes());
    p.extend_from_slice(name);
    p.extend_from_slice(&(info.len() as u16).to_be_bytes());
    for i in info {
        p.extend_from_slice(&i.to_be_bytes());
    }
    p
}

/// The payload of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`.
pub fn meta_context_request(name: &[u8], queries: &[&str]) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + name.len());
    p.extend_from_slice(&(name.len() as u32).to_be_bytes());
    p.extend_from_slice(name);
    p.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        p.extend_from_slice(&(q.len() as u32).to_be_bytes());
        p.extend_from_slice(q.as_bytes());
    }
    p
}

/// The 20-byte header of an option reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    /// The option answered.
    pub option: u32,
    /// The reply type (`NBD_REP_*`).
    pub reply: u32,
    /// Length of the data that follows.
    pub length: u32,
}

impl OptionReplyHeader {
    /// Size on the wire.
    pub const LEN: usize = 20;

    /// Decode; fails when the magic is wrong.
    pub fn parse(b: &[u8; 20]) -> Result<Self> {
        let magic = be64(b, 0);
        if magic != OPTION_REPLY_MAGIC {
            return Err(Error::invalid(format!(
                "option reply magic is {magic:#018x}, not {OPTION_REPLY_MAGIC:#018x}"
            )));
        }
        Ok(OptionReplyHeader {
            option: be32(b, 8),
            reply: be32(b, 12),
            length: be32(b, 16),
        })
    }
}

/// One `NBD_REP_INFO` item, decoded from its data (type included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InfoItem {
    /// `NBD_INFO_EXPORT`: size and transmission flags.
    Export {
        /// The export's size in bytes.
        size: u64,
        /// Transmission flags (`NBD_FLAG_*`).
        flags: u16,
    },
    /// `NBD_INFO_NAME`: the canonical name.
    Name(String),
    /// `NBD_INFO_DESCRIPTION`: text for a human.
    Description(String),
    /// `NBD_INFO_BLOCK_SIZE`: the size constraints, checked against the spec's rules.
    BlockSize {
        /// Minimum block size (alignment of every request).
        min: u32,
        /// Preferred block size.
        preferred: u32,
        /// Largest read the server takes.
        max_payload: u32,
    },
    /// An information type this client does not know (ignored, as the spec asks).
    Unknown(u16),
}

/// A protocol string from a server: UTF-8 (invalid bytes replaced), one line, at most
/// [`MAX_STRING`] bytes.
pub fn server_string(b: &[u8]) -> String {
    message(&String::from_utf8_lossy(&b[..b.len().min(MAX_STRING)]))
}

/// Decode the data of an `NBD_REP_INFO` reply.
pub fn parse_info(data: &[u8]) -> Result<InfoItem> {
    if data.len() < 2 {
        return Err(Error::invalid(
            "an NBD_REP_INFO reply is shorter than its type",
        ));
    }
    let kind = be16(data, 0);
    let body = &data[2..];
    let exact = |n: usize, what: &str| {
        if body.len() != n {
            return Err(Error::invalid(format!(
                "{what} information is {} bytes long, not {n}",
                body.len()
            )));
        }
        Ok(())
    };
    Ok(match kind {
        INFO_EXPORT => {
            exact(10, "NBD_INFO_EXPORT")?;
            InfoItem::Export {
                size: be64(body, 0),
                flags: be16(body, 8),
            }
        }
        INFO_NAME => InfoItem::Name(server_string(body)),
        INFO_DESCRIPTION => InfoItem::Description(server_string(body)),
        INFO_BLOCK_SIZE => {
            exact(12, "NBD_INFO_BLOCK_SIZE")?;
            let (min, preferred, max_payload) = (be32(body, 0), be32(body, 4), be32(body, 8));
            if !min.is_power_of_two() || min > 1 << 16 {
                return Err(Error::invalid(format!(
                    "minimum block size {min} is not a power of two up to 64 KiB"
                )));
            }
            if !preferred.is_power_of_two() || preferred < min {
                return Err(Error::invalid(format!(
                    "preferred block size {preferred} is not a power of two at least the minimum {min}"
                )));
            }
            if max_payload < min {
                return Err(Error::invalid(format!(
                    "maximum payload {max_payload} is below the minimum block size {min}"
                )));
            }
            InfoItem::BlockSize {
                min,
                preferred,
                max_payload,
            }
        }
        other => InfoItem::Unknown(other),
    })
}

/// Decode the data of an `NBD_REP_META_CONTEXT` reply: context id and name.
pub fn parse_meta_context(data: &[u8]) -> Result<(u32, String)> {
    if data.len() < 5 || data.len() > 4 + MAX_STRING {
        return Err(Error::invalid(format!(
            "a metadata context reply of {} bytes is not an id and a name of 1 to {MAX_STRING} bytes",
            data.len()
        )));
    }
    let name = std::str::from_utf8(&data[4..])
        .map_err(|_| Error::invalid("a metadata context name is not UTF-8"))?;
    if name.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(
            "a metadata context name holds control characters",
        ));
    }
    Ok((be32(data, 0), name.to_string()))
}

/// Decode the data of an `NBD_REP_SERVER` reply: the export's name and description.
pub fn parse_server_entry(data: &[u8]) -> Result<(String, String)> {
    let mut b = data;
    let len = take_u32(&mut b, "the export name length")
        .map_err(|_| Error::invalid("an NBD_REP_SERVER reply is shorter than its name length"))?;
    let name = take(&mut b, len as usize, "the export name")
        .map_err(|_| Error::invalid("an NBD_REP_SERVER name is longer than its reply"))?;
    Ok((server_string(name), server_string(b)))
}

/// A transmission reply's first 4 bytes: which kind of reply follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyMagic {
    /// A simple reply: 12 more header bytes (error, cookie).
    Simple,
    /// A structured reply chunk: 16 more header bytes (flags, type, cookie, length).
    Structured,
}

impl ReplyMagic {
    /// Decode; fails on any other magic (the stream cannot be resynchronised after it).
    pub fn parse(b: &[u8; 4]) -> Result<Self> {
        match u32::from_be_bytes(*b) {
            SIMPLE_REPLY_MAGIC => Ok(ReplyMagic::Simple),
            STRUCTURED_REPLY_MAGIC => Ok(ReplyMagic::Structured),
            m => Err(Error::invalid(format!(
                "reply magic is {m:#010x}, neither a simple nor a structured reply"
            ))),
        }
    }
}

/// The rest of a simple reply's header (after its magic): error and cookie.
pub fn parse_simple_reply(b: &[u8; 12]) -> (u32, u64) {
    (be32(b, 0), be64(b, 4))
}

/// The rest of a structured chunk's header (after its magic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Reply flags (`NBD_REPLY_FLAG_DONE`).
    pub flags: u16,
    /// Chunk type (`NBD_REPLY_TYPE_*`).
    pub kind: u16,
    /// The request's cookie.
    pub cookie: u64,
    /// Payload length.
    pub length: u32,
}

impl ChunkHeader {
    /// Decode the 16 bytes after the magic.
    pub fn parse(b: &[u8; 16]) -> Self {
        ChunkHeader {
            flags: be16(b, 0),
            kind: be16(b, 2),
            cookie: be64(b, 4),
            length: be32(b, 12),
        }
    }

    /// Whether this is the reply's last chunk.
    pub fn done(&self) -> bool {
        self.flags & REPLY_FLAG_DONE != 0
    }

    /// Whether the type is an error chunk (bit 15).
    pub fn is_error(&self) -> bool {
        self.kind & (1 << 15) != 0
    }
}

/// An error chunk's payload, decoded: error number, message, and the offset of
/// `NBD_REPLY_TYPE_ERROR_OFFSET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkError {
    /// The error (`NBD_E*`), never zero.
    pub errno: u32,
    /// The server's message, made one line.
    pub message: String,
    /// Where it happened, for `NBD_REPLY_TYPE_ERROR_OFFSET`.
    pub offset: Option<u64>,
}

/// Decode an error chunk of type `kind` (bit 15 set) from its whole payload.
pub fn parse_chunk_error(kind: u16, payload: &[u8]) -> Result<ChunkError> {
    let fixed = if kind == REPLY_TYPE_ERROR_OFFSET {
        14
    } else {
        6
    };
    if payload.len() < fixed {
        return Err(Error::invalid(format!(
            "an error chunk of {} bytes is shorter than its {fixed} fixed bytes",
            payload.len()
        )));
    }
    let errno = be32(payload, 0);
    let len = be16(payload, 4) as usize;
    if len > payload.len() - fixed {
        return Err(Error::invalid(format!(
            "an error chunk's message of {len} bytes is longer than its payload"
        )));
    }
    if errno == 0 {
        return Err(Error::invalid("an error chunk carries error number 0"));
    }
    let offset = (kind == REPLY_TYPE_ERROR_OFFSET).then(|| be64(payload, 6 + len));
    Ok(ChunkError {
        errno,
        message: server_string(&payload[6..6 + len]),
        offset,
    })
}

/// The name of an NBD error number, for messages.
pub fn errno_name(errno: u32) -> &'static str {
    match errno {
        EPERM => "EPERM (operation not permitted)",
        EIO => "EIO (input/output error)",
        ENOMEM => "ENOMEM (out of memory)",
        EINVAL => "EINVAL (invalid argument)",
        ENOSPC => "ENOSPC (no space left)",
        EOVERFLOW => "EOVERFLOW (request too large)",
        ENOTSUP => "ENOTSUP (not supported)",
        ESHUTDOWN => "ESHUTDOWN (server shutting down)",
        _ => "an unknown error",
    }
}

/// A block-status descriptor: extent length and status flags.
pub fn parse_descriptor(b: &[u8; 8]) -> (u32, u32) {
    (be32(b, 0), be32(b, 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_bytes_spelled_out() {
        assert_eq!(
            greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES),
            *b"NBDMAGICIHAVEOPT\x00\x03"
        );
    }

    #[test]
    fn client_flags_refuse_unknown_bits() {
        assert_eq!(parse_client_flags(&[0, 0, 0, 3]).unwrap(), 3);
        assert_eq!(parse_client_flags(&[0, 0, 0, 0]).unwrap(), 0);
        assert!(parse_client_flags(&[0, 0, 0, 4]).is_err());
        assert!(parse_client_flags(&[0x80, 0, 0, 1]).is_err());
    }

    #[test]
    fn option_header_round_trip_and_bad_magic() {
        let h = OptionHeader {
            option: OPT_GO,
            length: 0xdead_beef,
        };
        let b = h.to_bytes();
        assert_eq!(&b[..8], b"IHAVEOPT");
        assert_eq!(&b[8..], &[0, 0, 0, 7, 0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(OptionHeader::parse(&b).unwrap(), h);
        let mut bad = b;
        bad[0] = b'X';
        assert!(OptionHeader::parse(&bad).is_err());
    }

    #[test]
    fn export_request_checks_lengths() {
        // name "ab", two info requests (3, 1)
        let p = [0, 0, 0, 2, b'a', b'b', 0, 2, 0, 3, 0, 1];
        let r = ExportRequest::parse(&p).unwrap();
        assert_eq!(r.name, b"ab");
        assert_eq!(r.info_requests().collect::<Vec<_>>(), vec![3, 1]);
        // Empty name, no requests.
        let r = ExportRequest::parse(&[0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(r.name, b"");
        assert_eq!(r.info_requests().count(), 0);
        // Name longer than the payload; info count larger than what follows; trailing byte.
        assert!(ExportRequest::parse(&[0xff, 0xff, 0xff, 0xff, 0, 0]).is_err());
        assert!(ExportRequest::parse(&[0, 0, 0, 0, 0, 2, 0, 1]).is_err());
        assert!(ExportRequest::parse(&[0, 0, 0, 0, 0, 0, 9]).is_err());
        assert!(ExportRequest::parse(&[]).is_err());
    }

    #[test]
    fn meta_context_request_checks_lengths() {
        let mut p = vec![0, 0, 0, 1, b'x', 0, 0, 0, 2];
        for q in [&b"base:allocation"[..], b"qemu:dirty"] {
            p.extend_from_slice(&(q.len() as u32).to_be_bytes());
            p.extend_from_slice(q);
        }
        let r = MetaContextRequest::parse(&p).unwrap();
        assert_eq!(r.name, b"x");
        let qs: Vec<&[u8]> = r.queries().collect();
        assert_eq!(qs, vec![&b"base:allocation"[..], &b"qemu:dirty"[..]]);
        // One byte short, one byte extra.
        assert!(MetaContextRequest::parse(&p[..p.len() - 1]).is_err());
        let mut extra = p.clone();
        extra.push(0);
        assert!(MetaContextRequest::parse(&extra).is_err());
        // A huge query count with nothing behind it fails without looping over it.
        assert!(MetaContextRequest::parse(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
        // Zero-length queries still need their 4-byte length.
        assert!(MetaContextRequest::parse(&[0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0]).is_err());
        let r = MetaContextRequest::parse(&[0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(r.queries().count(), 0);
    }

    #[test]
    fn request_round_trip_and_bad_magic() {
        let r = Request {
            flags: CMD_FLAG_DF,
            command: CMD_READ,
            cookie: 0x0102_0304_0506_0708,
            offset: 1 << 40,
            length: 4096,
        };
        let b = r.to_bytes();
        assert_eq!(&b[..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(Request::parse(&b).unwrap(), r);
        let mut bad = b;
        bad[3] = 0x14;
        assert!(Request::parse(&bad).is_err());
    }

    #[test]
    fn reply_headers_spelled_out() {
        assert_eq!(
            simple_reply(EIO, 7),
            [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 7]
        );
        assert_eq!(
            chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, 1, 6),
            [0x66, 0x8e, 0x33, 0xef, 0, 1, 0x80, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 6]
        );
        let r = option_reply(OPT_LIST, REP_ACK, b"");
        assert_eq!(
            r,
            [0, 3, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0]
        );
        assert_eq!(export_name_reply(5, 3, false).len(), 134);
        assert_eq!(
            export_name_reply(5, 3, true),
            [0, 0, 0, 0, 0, 0, 0, 5, 0, 3]
        );
    }

    #[test]
    fn greetings_are_checked_byte_by_byte() {
        assert_eq!(parse_greeting(b"NBDMAGICIHAVEOPT\x00\x03").unwrap(), 3);
        assert_eq!(
            parse_greeting(b"NBDMAGICIHAVEOPT\x00\x00")
                .unwrap_err()
                .kind(),
            vdisk_core::ErrorKind::Unsupported
        );
        let mut old = *b"NBDMAGIC\x00\x00\x42\x02\x81\x86\x12\x53\x00\x00";
        assert_eq!(
            parse_greeting(&old).unwrap_err().kind(),
            vdisk_core::ErrorKind::Unsupported
        );
        old[0] = b'X';
        assert!(parse_greeting(&old)
            .unwrap_err()
            .message()
            .contains("not an NBD server"));
    }

    #[test]
    fn client_requests_spelled_out() {
        assert_eq!(
            option_request(OPT_STRUCTURED_REPLY, b""),
            *b"IHAVEOPT\x00\x00\x00\x08\x00\x00\x00\x00"
        );
        assert_eq!(
            export_request(b"vda", &[INFO_BLOCK_SIZE]),
            [0, 0, 0, 3, b'v', b'd', b'a', 0, 1, 0, 3]
        );
        let q = meta_context_request(b"", &["base:allocation"]);
        assert_eq!(&q[..12], &[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 15]);
        // What the server's parser makes of them.
        let r = MetaContextRequest::parse(&q).unwrap();
        assert_eq!(
            r.queries().collect::<Vec<_>>(),
            vec![&b"base:allocation"[..]]
        );
        let g = export_request(b"x", &[3, 2]);
        assert_eq!(
            ExportRequest::parse(&g)
                .unwrap()
                .info_requests()
                .collect::<Vec<_>>(),
            [3, 2]
        );
    }

    #[test]
    fn server_replies_are_decoded_and_checked() {
        let r = option_reply(OPT_GO, REP_INFO, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 3]);
        let h = OptionReplyHeader::parse(r[..20].try_into().unwrap()).unwrap();
        assert_eq!((h.option, h.reply, h.length), (OPT_GO, REP_INFO, 12));
        assert_eq!(
            parse_info(&r[20..]).unwrap(),
            InfoItem::Export { size: 1, flags: 3 }
        );
        assert!(OptionReplyHeader::parse(&[0u8; 20]).is_err());
        assert!(parse_info(&[0, 0, 1]).is_err());
        assert!(parse_info(&[0]).is_err());
        let bs = |min: u32, pref: u32, max: u32| {
            let mut d = vec![0, 3];
            for v in [min, pref, max] {
                d.extend_from_slice(&v.to_be_bytes());
            }
            parse_info(&d)
        };
        assert_eq!(
            bs(512, 4096, 1 << 25).unwrap(),
            InfoItem::BlockSize {
                min: 512,
                preferred: 4096,
                max_payload: 1 << 25
            }
        );
        assert!(bs(3, 4096, 1 << 25).is_err());
        assert!(bs(1 << 17, 1 << 17, 1 << 25).is_err());
        assert!(bs(4096, 512, 1 << 25).is_err());
        assert!(bs(4096, 4096, 512).is_err());
        assert_eq!(parse_info(&[0, 9, 1, 2]).unwrap(), InfoItem::Unknown(9));
        assert_eq!(
            parse_info(b"\x00\x02hi\nthere").unwrap(),
            InfoItem::Description("hi there".into())
        );
        assert_eq!(
            parse_meta_context(b"\x00\x00\x00\x07base:allocation").unwrap(),
            (7, "base:allocation".to_string())
        );
        assert!(parse_meta_context(b"\x00\x00\x00\x07").is_err());
        assert!(parse_meta_context(b"\x00\x00\x00\x07\xff").is_err());
        assert!(parse_meta_context(b"\x00\x00\x00\x07a\nb").is_err());
        assert_eq!(
            parse_server_entry(b"\x00\x00\x00\x02abdesc").unwrap(),
            ("ab".to_string(), "desc".to_string())
        );
        assert!(parse_server_entry(b"\x00\x00\x00\x09ab").is_err());
        assert!(parse_server_entry(b"\x00\x00").is_err());
    }

    #[test]
    fn transmission_replies_are_decoded() {
        assert_eq!(
            ReplyMagic::parse(&[0x67, 0x44, 0x66, 0x98]).unwrap(),
            ReplyMagic::Simple
        );
        assert_eq!(
            ReplyMagic::parse(&[0x66, 0x8e, 0x33, 0xef]).unwrap(),
            ReplyMagic::Structured
        );
        assert!(ReplyMagic::parse(&[0, 0, 0, 0]).is_err());
        let s = simple_reply(EIO, 9);
        assert_eq!(parse_simple_reply(s[4..].try_into().unwrap()), (EIO, 9));
        let c = chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_ERROR_OFFSET, 5, 20);
        let h = ChunkHeader::parse(c[4..].try_into().unwrap());
        assert_eq!(
            (h.flags, h.kind, h.cookie, h.length),
            (1, REPLY_TYPE_ERROR_OFFSET, 5, 20)
        );
        assert!(h.done() && h.is_error());
        // error, message length 2, "no", offset 4096
        let p = [0, 0, 0, 5, 0, 2, b'n', b'o', 0, 0, 0, 0, 0, 0, 0x10, 0];
        let e = parse_chunk_error(REPLY_TYPE_ERROR_OFFSET, &p).unwrap();
        assert_eq!(
            (e.errno, e.message.as_str(), e.offset),
            (5, "no", Some(4096))
        );
        let e = parse_chunk_error(REPLY_TYPE_ERROR, &p[..8]).unwrap();
        assert_eq!(e.offset, None);
        assert!(parse_chunk_error(REPLY_TYPE_ERROR, &[0, 0, 0, 5, 0, 9, b'x']).is_err());
        assert!(parse_chunk_error(REPLY_TYPE_ERROR, &[0, 0, 0, 0, 0, 0]).is_err());
        assert!(parse_chunk_error(REPLY_TYPE_ERROR_OFFSET, &p[..13]).is_err());
        assert_eq!(parse_descriptor(&[0, 0, 16, 0, 0, 0, 0, 3]), (4096, 3));
        assert!(errno_name(EIO).starts_with("EIO"));
    }

    #[test]
    fn messages_are_one_line_and_capped() {
        assert_eq!(message("a\nb\0c"), "a b c");
        let long = "é".repeat(5000);
        let m = message(&long);
        assert!(m.len() <= MAX_STRING && m.len() >= MAX_STRING - 1);
    }
}
