//! The client's handshake: fixed newstyle, structured replies, metadata contexts
//! (`base:allocation` and QEMU's dirty bitmaps), then `NBD_OPT_GO` with the export's
//! information. Every reply is bounded in length and in number.

use std::io;

use vdisk_core::{check_disk_size, Error, ErrorKind};

use super::wire_io::{Wire, WireError, WireResult};
use crate::proto::*;
use crate::wire::{self, InfoItem, OptionReplyHeader};

/// Longest option reply read: the largest legitimate ones (a name or description of up to
/// 4096 bytes with its header) are far below.
pub const MAX_OPTION_REPLY: u32 = 64 << 10;

/// Most replies read for one option (exports listed, contexts offered).
const MAX_REPLIES: usize = 4096;

/// Most dirty bitmaps selected on a connection (more are listed, not selected).
pub const MAX_BITMAPS: usize = 64;

/// Export names kept to name in an error (a server may list thousands).
const MAX_NAMES: usize = 16;

/// The prefix of QEMU's dirty-bitmap metadata contexts.
pub const DIRTY_BITMAP: &str = "qemu:dirty-bitmap:";

/// What the client asks for.
pub(crate) struct Wanted<'a> {
    /// The export.
    pub export: &'a str,
    /// List the dirty bitmaps the server offers, and select them all (up to
    /// [`MAX_BITMAPS`]) besides `base:allocation`.
    pub bitmaps: bool,
}

/// What the handshake settled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Negotiated {
    /// The export's size.
    pub size: u64,
    /// Transmission flags.
    pub flags: u16,
    /// Structured replies are on.
    pub structured: bool,
    /// Block-size constraints (the spec's defaults when the server sent none).
    pub min_block: u32,
    pub preferred_block: u32,
    pub max_payload: u32,
    /// The server's description of the export.
    pub description: Option<String>,
    /// The metadata contexts selected: (id, name).
    pub contexts: Vec<(u32, String)>,
    /// The dirty bitmaps offered (names without the `qemu:dirty-bitmap:` prefix), when
    /// asked for.
    pub offered_bitmaps: Vec<String>,
}

impl Negotiated {
    /// The id of the selected context `name`.
    pub fn context(&self, name: &str) -> Option<u32> {
        self.contexts.iter().find(|c| c.1 == name).map(|c| c.0)
    }
}

/// How an option ended: acknowledged, or refused with an error reply.
enum Outcome {
    Ack,
    Refused { reply: u32, message: String },
}

fn io_err(e: io::Error) -> WireError {
    WireError::Transport(e)
}

/// Send `option` and read its replies until `NBD_REP_ACK` or an error reply, handing every
/// other reply (type, data) to `each`.
fn exchange(
    wire: &mut Wire,
    option: u32,
    data: &[u8],
    mut each: impl FnMut(u32, &[u8]) -> WireResult<()>,
) -> WireResult<Outcome> {
    wire.write_all(&wire::option_request(option, data))
        .map_err(io_err)?;
    for _ in 0..MAX_REPLIES {
        let head = OptionReplyHeader::parse(&wire.read_array::<20>().map_err(io_err)?)
            .map_err(WireError::Protocol)?;
        if head.option != option {
            return Err(WireError::protocol(format!(
                "it answered option {} when asked option {option}",
                head.option
            )));
        }
        if head.length > MAX_OPTION_REPLY {
            return Err(WireError::protocol(format!(
                "an option reply of {} bytes is longer than the {MAX_OPTION_REPLY} vdisk reads",
                head.length
            )));
        }
        let payload = wire.read_vec(head.length as usize).map_err(io_err)?;
        if head.reply == REP_ACK {
            return Ok(Outcome::Ack);
        }
        if head.reply & REP_FLAG_ERROR != 0 {
            return Ok(Outcome::Refused {
                reply: head.reply,
                message: wire::server_string(&payload),
            });
        }
        each(head.reply, &payload)?;
    }
    Err(WireError::protocol(format!(
        "it sent more than {MAX_REPLIES} replies to one option"
    )))
}

/// Run the handshake on a fresh connection.
pub(crate) fn negotiate(wire: &mut Wire, want: &Wanted<'_>) -> WireResult<Negotiated> {
    let greeting = wire.read_array::<18>().map_err(io_err)?;
    let flags = wire::parse_greeting(&greeting).map_err(WireError::Protocol)?;
    let mut client = FLAG_C_FIXED_NEWSTYLE;
    if flags & FLAG_NO_ZEROES != 0 {
        client |= FLAG_C_NO_ZEROES;
    }
    wire.write_all(&client.to_be_bytes()).map_err(io_err)?;
    let no_zeroes = flags & FLAG_NO_ZEROES != 0;
    let name = want.export.as_bytes();
    let mut neg = Negotiated {
        min_block: 1,
        preferred_block: 4096,
        max_payload: 32 << 20,
        ..Default::default()
    };
    let unexpected = |what: &str, reply: u32| {
        WireError::protocol(format!("it answered {what} with reply type {reply}"))
    };
    neg.structured = match exchange(wire, OPT_STRUCTURED_REPLY, &[], |r, _| {
        Err(unexpected("NBD_OPT_STRUCTURED_REPLY", r))
    })? {
        Outcome::Ack => true,
        // Old servers: simple replies, no block status.
        Outcome::Refused { .. } => false,
    };
    if neg.structured {
        let mut queries: Vec<String> = vec![BASE_ALLOCATION.to_string()];
        if want.bitmaps {
            let mut offered = Vec::new();
            let q = wire::meta_context_request(name, &[DIRTY_BITMAP]);
            let outcome = exchange(wire, OPT_LIST_META_CONTEXT, &q, |r, data| {
                if r != REP_META_CONTEXT {
                    return Err(unexpected("NBD_OPT_LIST_META_CONTEXT", r));
                }
                let (_, ctx) = wire::parse_meta_context(data).map_err(WireError::Protocol)?;
                // Only the contexts asked for; a wildcard answer (the bare prefix) is none.
                if let Some(bitmap) = ctx.strip_prefix(DIRTY_BITMAP) {
                    if !bitmap.is_empty() && !offered.contains(&bitmap.to_string()) {
                        offered.push(bitmap.to_string());
                    }
                }
                Ok(())
            })?;
            if let Outcome::Ack = outcome {
                queries.extend(
                    offered
                        .iter()
                        .take(MAX_BITMAPS)
                        .map(|b| format!("{DIRTY_BITMAP}{b}")),
                );
                neg.offered_bitmaps = offered;
            }
        }
        let refs: Vec<&str> = queries.iter().map(String::as_str).collect();
        let q = wire::meta_context_request(name, &refs);
        let mut selected: Vec<(u32, String)> = Vec::new();
        let outcome = exchange(wire, OPT_SET_META_CONTEXT, &q, |r, data| {
            if r != REP_META_CONTEXT {
                return Err(unexpected("NBD_OPT_SET_META_CONTEXT", r));
            }
            let (id, ctx) = wire::parse_meta_context(data).map_err(WireError::Protocol)?;
            if !queries.contains(&ctx) {
                return Err(WireError::protocol(format!(
                    "it selected the metadata context \"{ctx}\", which vdisk did not ask for"
                )));
            }
            if selected.iter().any(|(i, n)| *i == id || *n == ctx) {
                return Err(WireError::protocol(format!(
                    "it selected the metadata context \"{ctx}\" (id {id}) twice"
                )));
            }
            selected.push((id, ctx));
            Ok(())
        })?;
        if let Outcome::Ack = outcome {
            neg.contexts = selected;
        }
    }
    go(wire, name, no_zeroes, &mut neg)?;
    check_disk_size(neg.size).map_err(WireError::Protocol)?;
    Ok(neg)
}

/// `NBD_OPT_GO` (or `NBD_OPT_EXPORT_NAME` on servers without it).
fn go(wire: &mut Wire, name: &[u8], no_zeroes: bool, neg: &mut Negotiated) -> WireResult<()> {
    let req = wire::export_request(name, &[INFO_BLOCK_SIZE, INFO_DESCRIPTION]);
    let mut export: Option<(u64, u16)> = None;
    let outcome = exchange(wire, OPT_GO, &req, |r, data| {
        if r != REP_INFO {
            return Err(WireError::protocol(format!(
                "it answered NBD_OPT_GO with reply type {r}"
            )));
        }
        match wire::parse_info(data).map_err(WireError::Protocol)? {
            InfoItem::Export { size, flags } => export = Some((size, flags)),
            InfoItem::BlockSize {
                min,
                preferred,
                max_payload,
            } => {
                neg.min_block = min;
                neg.preferred_block = preferred;
                neg.max_payload = max_payload;
            }
            InfoItem::Description(d) => neg.description = Some(d),
            InfoItem::Name(_) | InfoItem::Unknown(_) => {}
        }
        Ok(())
    })?;
    match outcome {
        Outcome::Ack => {
            let (size, flags) = export.ok_or_else(|| {
                WireError::protocol("it accepted NBD_OPT_GO without giving the export's size")
            })?;
            neg.size = size;
            neg.flags = flags;
            Ok(())
        }
        Outcome::Refused { reply, .. } if reply == REP_ERR_UNSUP => {
            export_name(wire, name, no_zeroes, neg)
        }
        Outcome::Refused { reply, message } => Err(refused(wire, name, reply, &message)),
    }
}

/// The old way in: no error replies, the server closes the connection on an unknown export.
fn export_name(
    wire: &mut Wire,
    name: &[u8],
    no_zeroes: bool,
    neg: &mut Negotiated,
) -> WireResult<()> {
    // Without NBD_OPT_GO no block sizes were agreed: keep to the spec's safe defaults.
    neg.min_block = 512.min(neg.min_block.max(1));
    wire.write_all(&wire::option_request(OPT_EXPORT_NAME, name))
        .map_err(io_err)?;
    let reply = match wire.read_array::<10>() {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(WireError::Answer(Error::new(
                ErrorKind::NotFound,
                format!(
                    "the server closed the connection when asked for the export \"{}\" (it has no such export?)",
                    String::from_utf8_lossy(name)
                ),
            )))
        }
        Err(e) => return Err(io_err(e)),
    };
    let mut size = [0u8; 8];
    size.copy_from_slice(&reply[..8]);
    neg.size = u64::from_be_bytes(size);
    neg.flags = u16::from_be_bytes([reply[8], reply[9]]);
    if !no_zeroes {
        // Without NBD_FLAG_C_NO_ZEROES the server pads the answer with 124 zero bytes.
        wire.skip(124).map_err(io_err)?;
    }
    Ok(())
}

/// The error for a refused `NBD_OPT_GO`: a missing export names what the server offers.
fn refused(wire: &mut Wire, name: &[u8], reply: u32, message: &str) -> WireError {
    let export = String::from_utf8_lossy(name);
    let said = if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    };
    let (kind, what) = match reply {
        REP_ERR_UNKNOWN => {
            let names = list_exports(wire);
            let offers = match names {
                Some(n) if n.is_empty() => " (it lists no exports)".to_string(),
                Some(n) => format!(" (it offers {})", n.join(", ")),
                None => String::new(),
            };
            (
                ErrorKind::NotFound,
                format!("the server has no export \"{export}\"{offers}"),
            )
        }
        REP_ERR_TLS_REQD => (
            ErrorKind::Unsupported,
            "the server requires TLS, which vdisk's NBD client does not speak".to_string(),
        ),
        REP_ERR_POLICY => (
            ErrorKind::Refused,
            format!("the server refuses access to the export \"{export}\""),
        ),
        REP_ERR_SHUTDOWN => (ErrorKind::Io, "the server is shutting down".to_string()),
        other => (
            ErrorKind::Io,
            format!(
                "the server refused the export \"{export}\" (error reply {:#x})",
                other
            ),
        ),
    };
    abort(wire);
    WireError::Answer(Error::new(kind, format!("{what}{said}")))
}

/// End the handshake politely: `NBD_OPT_ABORT`, and its acknowledgement read (briefly), so
/// that the server does not see its reply fail.
fn abort(wire: &mut Wire) {
    if wire
        .write_all(&wire::option_request(OPT_ABORT, &[]))
        .is_err()
    {
        return;
    }
    wire.deadline_in(std::time::Duration::from_secs(1));
    if let Ok(h) = wire.read_array::<20>() {
        if let Ok(h) = OptionReplyHeader::parse(&h) {
            let _ = wire.skip(u64::from(h.length.min(MAX_OPTION_REPLY)));
        }
    }
}

/// The quoted names of the exports the server lists (a few), or `None` when it will not.
fn list_exports(wire: &mut Wire) -> Option<Vec<String>> {
    let mut names = Vec::new();
    let outcome = exchange(wire, OPT_LIST, &[], |r, data| {
        if r == REP_SERVER {
            if let Ok((n, _)) = wire::parse_server_entry(data) {
                if names.len() < MAX_NAMES {
                    names.push(format!("\"{n}\""));
                }
            }
        }
        Ok(())
    })
    .ok()?;
    match outcome {
        Outcome::Ack => Some(names),
        Outcome::Refused { .. } => None,
    }
}
