//! The fixed newstyle handshake: greeting, client flags, then options until the client
//! picks the export (`NBD_OPT_GO`, `NBD_OPT_EXPORT_NAME`) or leaves.
//!
//! Generic over any `Read + Write`, so the fuzz entry point runs it over bytes in memory;
//! the server gives it a socket wrapped with the handshake deadline.

use std::io::{self, Read, Write};

use crate::export::{Export, MAX_PAYLOAD, MIN_BLOCK, PREFERRED_BLOCK};
use crate::proto::*;
use crate::wire::{self, ExportRequest, MetaContextRequest, OptionHeader};

/// Longest option payload read into memory. The largest legitimate ones (an export name of
/// up to 4096 bytes plus meta-context queries) are far below; longer ones are answered with
/// `NBD_REP_ERR_TOO_BIG` and skipped without being stored.
pub const MAX_OPTION_LEN: u32 = 64 << 10;

/// Options a client may send in one handshake before it is disconnected: real clients send
/// a handful, a client looping forever is a denial of service.
pub const MAX_OPTIONS: usize = 1024;

/// The metadata context id of `base:allocation` in `NBD_OPT_SET_META_CONTEXT` answers.
pub const BASE_ALLOCATION_ID: u32 = 1;

/// What the handshake settled for the transmission phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Negotiated {
    /// Structured replies (`NBD_OPT_STRUCTURED_REPLY` acknowledged).
    pub structured: bool,
    /// `base:allocation` selected (block status allowed).
    pub base_allocation: bool,
}

/// Run the handshake. `Ok(Some(_))` enters transmission; `Ok(None)` means close the
/// connection (the client aborted or broke a rule the spec answers with a disconnect).
pub(crate) fn negotiate<S: Read + Write>(
    io: &mut S,
    export: &Export,
) -> io::Result<Option<Negotiated>> {
    io.write_all(&wire::greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))?;
    let mut flags = [0u8; 4];
    io.read_exact(&mut flags)?;
    let Ok(client_flags) = wire::parse_client_flags(&flags) else {
        return Ok(None);
    };
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;
    let mut state = Negotiated::default();
    for _ in 0..MAX_OPTIONS {
        let mut head = [0u8; 16];
        io.read_exact(&mut head)?;
        let Ok(head) = OptionHeader::parse(&head) else {
            return Ok(None);
        };
        if head.length > MAX_OPTION_LEN {
            if head.option == OPT_EXPORT_NAME {
                // This option has no error reply: the spec's answer is a disconnect.
                return Ok(None);
            }
            let msg = format!(
                "option of {} bytes is longer than the {MAX_OPTION_LEN} this server reads",
                head.length
            );
            reply(io, head.option, REP_ERR_TOO_BIG, msg.as_bytes())?;
            skip(io, u64::from(head.length))?;
            continue;
        }
        let mut payload = vec![0u8; head.length as usize];
        io.read_exact(&mut payload)?;
        match option(io, export, &mut state, head.option, &payload, no_zeroes)? {
            Step::Continue => {}
            Step::Close => return Ok(None),
            Step::Transmit => return Ok(Some(state)),
        }
    }
    Ok(None)
}

enum Step {
    Continue,
    Close,
    Transmit,
}

fn reply<S: Write>(io: &mut S, option: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    io.write_all(&wire::option_reply(option, kind, data))
}

fn error<S: Write>(io: &mut S, option: u32, kind: u32, msg: &str) -> io::Result<Step> {
    reply(io, option, kind, wire::message(msg).as_bytes())?;
    Ok(Step::Continue)
}

/// Read and drop `len` bytes through a small buffer.
pub(crate) fn skip<R: Read>(io: &mut R, len: u64) -> io::Result<()> {
    let copied = io::copy(&mut io.take(len), &mut io::sink())?;
    if copied < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn unknown_export(name: &[u8]) -> String {
    format!(
        "there is no export named \"{}\" on this server",
        String::from_utf8_lossy(&name[..name.len().min(256)])
    )
}

fn option<S: Read + Write>(
    io: &mut S,
    export: &Export,
    state: &mut Negotiated,
    opt: u32,
    payload: &[u8],
    no_zeroes: bool,
) -> io::Result<Step> {
    match opt {
        OPT_EXPORT_NAME => {
            if !export.answers_to(payload) {
                return Ok(Step::Close);
            }
            let flags = export.transmission_flags(state.structured);
            io.write_all(&wire::export_name_reply(export.size, flags, no_zeroes))?;
            Ok(Step::Transmit)
        }
        OPT_ABORT => {
            // The client may already be gone; the spec asks servers to cope.
            let _ = reply(io, opt, REP_ACK, b"");
            Ok(Step::Close)
        }
        OPT_LIST => {
            if !payload.is_empty() {
                return error(io, opt, REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
            }
            let name = export.config.name.as_bytes();
            let mut data = Vec::with_capacity(4 + name.len());
            data.extend_from_slice(&(name.len() as u32).to_be_bytes());
            data.extend_from_slice(name);
            if let Some(d) = &export.config.description {
                data.extend_from_slice(d.as_bytes());
            }
            reply(io, opt, REP_SERVER, &data)?;
            reply(io, opt, REP_ACK, b"")?;
            Ok(Step::Continue)
        }
        OPT_INFO | OPT_GO => {
            let req = match ExportRequest::parse(payload) {
                Ok(r) => r,
                Err(e) => return error(io, opt, REP_ERR_INVALID, e.message()),
            };
            if !export.answers_to(req.name) {
                return error(io, opt, REP_ERR_UNKNOWN, &unknown_export(req.name));
            }
            let mut info = Vec::with_capacity(12);
            info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
            info.extend_from_slice(&export.size.to_be_bytes());
            info.extend_from_slice(&export.transmission_flags(state.structured).to_be_bytes());
            reply(io, opt, REP_INFO, &info)?;
            let wants = |t: u16| req.info_requests().any(|r| r == t);
            if wants(INFO_NAME) {
                let mut d = INFO_NAME.to_be_bytes().to_vec();
                d.extend_from_slice(export.config.name.as_bytes());
                reply(io, opt, REP_INFO, &d)?;
            }
            if let (true, Some(desc)) = (wants(INFO_DESCRIPTION), &export.config.description) {
                let mut d = INFO_DESCRIPTION.to_be_bytes().to_vec();
                d.extend_from_slice(desc.as_bytes());
                reply(io, opt, REP_INFO, &d)?;
            }
            // Sent whether asked or not: these are the spec's defaults, so a client that
            // does not understand the item loses nothing.
            let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
            d.extend_from_slice(&MIN_BLOCK.to_be_bytes());
            d.extend_from_slice(&PREFERRED_BLOCK.to_be_bytes());
            d.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
            reply(io, opt, REP_INFO, &d)?;
            reply(io, opt, REP_ACK, b"")?;
            Ok(if opt == OPT_GO {
                Step::Transmit
            } else {
                Step::Continue
            })
        }
        OPT_STRUCTURED_REPLY => {
            if !payload.is_empty() {
                return error(
                    io,
                    opt,
                    REP_ERR_INVALID,
                    "NBD_OPT_STRUCTURED_REPLY takes no data",
                );
            }
            state.structured = true;
            reply(io, opt, REP_ACK, b"")?;
            Ok(Step::Continue)
        }
        OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
            let set = opt == OPT_SET_META_CONTEXT;
            if set {
                // A new selection replaces the old one, even when it fails.
                state.base_allocation = false;
                if !state.structured {
                    return error(
                        io,
                        opt,
                        REP_ERR_INVALID,
                        "structured replies must be negotiated before metadata contexts",
                    );
                }
            }
            let req = match MetaContextRequest::parse(payload) {
                Ok(r) => r,
                Err(e) => return error(io, opt, REP_ERR_INVALID, e.message()),
            };
            if !export.answers_to(req.name) {
                return error(io, opt, REP_ERR_UNKNOWN, &unknown_export(req.name));
            }
            let selected = if set {
                req.queries().any(|q| q == BASE_ALLOCATION.as_bytes())
            } else {
                // Listing: no query lists everything; `base:` is the namespace wildcard.
                req.count == 0
                    || req
                        .queries()
                        .any(|q| q == BASE_ALLOCATION.as_bytes() || q == b"base:")
            };
            if selected {
                // The spec asks for id 0 in list answers, a real id in set answers.
                let id = if set { BASE_ALLOCATION_ID } else { 0 };
                let mut d = id.to_be_bytes().to_vec();
                d.extend_from_slice(BASE_ALLOCATION.as_bytes());
                reply(io, opt, REP_META_CONTEXT, &d)?;
                if set {
                    state.base_allocation = true;
                }
            }
            reply(io, opt, REP_ACK, b"")?;
            Ok(Step::Continue)
        }
        OPT_STARTTLS => error(
            io,
            opt,
            REP_ERR_POLICY,
            "TLS is not offered by this server; connect without it",
        ),
        _ => error(
            io,
            opt,
            REP_ERR_UNSUP,
            &format!("option {opt} is not supported by this server"),
        ),
    }
}
