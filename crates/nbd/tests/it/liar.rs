//! vdisk's NBD client against hostile servers written here: bad magic, absurd option
//! lengths, replies that lie (out of range, overlapping, too long, a bad cookie, short),
//! block status that lies, disconnects mid-read, silence and dribbling. Each must end in one
//! clean error within a bounded time, never a panic, a hang or a huge allocation; a server
//! that drops the connection of a read-only export gets one reconnect.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vdisk_core::{DiskImage, ErrorKind};
use vdisk_nbd::proto::*;
use vdisk_nbd::wire::{self, MetaContextRequest, OptionHeader, Request};
use vdisk_nbd::{ClientOptions, NbdExport, NbdUri};

/// A scripted server: every accepted connection runs the script (with its number, from 0)
/// on a thread of its own.
pub struct Fake {
    pub socket: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub accepted: Arc<AtomicUsize>,
}

impl Fake {
    pub fn start(dir: &Path, script: impl Fn(UnixStream, usize) + Send + Sync + 'static) -> Fake {
        let socket = dir.join("fake.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (st, acc) = (Arc::clone(&stop), Arc::clone(&accepted));
        let script = Arc::new(script);
        let thread = std::thread::spawn(move || {
            for s in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(s) = s else { continue };
                let n = acc.fetch_add(1, Ordering::Relaxed);
                let sc = Arc::clone(&script);
                std::thread::spawn(move || sc(s, n));
            }
        });
        Fake {
            socket,
            stop,
            thread: Some(thread),
            accepted,
        }
    }

    pub fn uri(&self) -> NbdUri {
        NbdUri::parse(&vdisk_nbd::unix_uri("x", &self.socket)).unwrap()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = UnixStream::connect(&self.socket);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn opts() -> ClientOptions {
    ClientOptions {
        connections: 1,
        ..ClientOptions::with_timeout(Duration::from_secs(1))
    }
}

pub fn read_option(s: &mut UnixStream) -> Option<(u32, Vec<u8>)> {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).ok()?;
    let h = OptionHeader::parse(&h).ok()?;
    let mut data = vec![0u8; h.length as usize];
    s.read_exact(&mut data).ok()?;
    Some((h.option, data))
}

pub fn reply(s: &mut UnixStream, opt: u32, kind: u32, data: &[u8]) {
    let _ = s.write_all(&wire::option_reply(opt, kind, data));
}

/// Greeting and client flags.
pub fn greet(s: &mut UnixStream) {
    let _ = s.write_all(&wire::greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
    let mut f = [0u8; 4];
    let _ = s.read_exact(&mut f);
}

/// A correct handshake offering `contexts`; returns the selected (id, name).
pub fn handshake(
    s: &mut UnixStream,
    size: u64,
    flags: u16,
    contexts: &[&str],
) -> Option<Vec<(u32, String)>> {
    greet(s);
    let mut selected = Vec::new();
    loop {
        let (opt, data) = read_option(s)?;
        match opt {
            OPT_STRUCTURED_REPLY => reply(s, opt, REP_ACK, b""),
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let req = MetaContextRequest::parse(&data).ok()?;
                let qs: Vec<Vec<u8>> = req.queries().map(|q| q.to_vec()).collect();
                for (i, c) in contexts.iter().enumerate() {
                    let hit = qs.iter().any(|q| {
                        if opt == OPT_LIST_META_CONTEXT {
                            c.as_bytes().starts_with(q)
                        } else {
                            c.as_bytes() == &q[..]
                        }
                    });
                    if hit {
                        let id = if opt == OPT_SET_META_CONTEXT {
                            i as u32 + 1
                        } else {
                            0
                        };
                        let mut d = id.to_be_bytes().to_vec();
                        d.extend_from_slice(c.as_bytes());
                        reply(s, opt, REP_META_CONTEXT, &d);
                        if opt == OPT_SET_META_CONTEXT {
                            selected.push((id, c.to_string()));
                        }
                    }
                }
                reply(s, opt, REP_ACK, b"");
            }
            OPT_GO => {
                let mut d = INFO_EXPORT.to_be_bytes().to_vec();
                d.extend_from_slice(&size.to_be_bytes());
                d.extend_from_slice(&(flags | FLAG_HAS_FLAGS).to_be_bytes());
                reply(s, opt, REP_INFO, &d);
                reply(s, opt, REP_ACK, b"");
                return Some(selected);
            }
            _ => reply(s, opt, REP_ERR_UNSUP, b""),
        }
    }
}

pub fn read_request(s: &mut UnixStream) -> Option<Request> {
    let mut h = [0u8; 28];
    s.read_exact(&mut h).ok()?;
    Request::parse(&h).ok()
}

pub fn chunk(s: &mut UnixStream, flags: u16, kind: u16, cookie: u64, payload: &[u8]) {
    let mut m = wire::chunk_header(flags, kind, cookie, payload.len() as u32).to_vec();
    m.extend_from_slice(payload);
    let _ = s.write_all(&m);
}

fn data_chunk(s: &mut UnixStream, flags: u16, cookie: u64, offset: u64, data: &[u8]) {
    let mut p = offset.to_be_bytes().to_vec();
    p.extend_from_slice(data);
    chunk(s, flags, REPLY_TYPE_OFFSET_DATA, cookie, &p);
}

fn hole_chunk(s: &mut UnixStream, flags: u16, cookie: u64, offset: u64, len: u32) {
    let mut p = offset.to_be_bytes().to_vec();
    p.extend_from_slice(&len.to_be_bytes());
    chunk(s, flags, REPLY_TYPE_OFFSET_HOLE, cookie, &p);
}

/// Serve reads honestly (bytes `(offset % 251)`), block status as all data.
pub fn serve_honestly(s: &mut UnixStream, ids: &[(u32, String)]) {
    while let Some(r) = read_request(s) {
        match r.command {
            CMD_READ => {
                let d: Vec<u8> = (r.offset..r.offset + u64::from(r.length))
                    .map(|o| (o % 251) as u8)
                    .collect();
                data_chunk(s, REPLY_FLAG_DONE, r.cookie, r.offset, &d);
            }
            CMD_BLOCK_STATUS => {
                for (i, (id, _)) in ids.iter().enumerate() {
                    let mut p = id.to_be_bytes().to_vec();
                    p.extend_from_slice(&r.length.to_be_bytes());
                    p.extend_from_slice(&0u32.to_be_bytes());
                    let f = if i + 1 == ids.len() {
                        REPLY_FLAG_DONE
                    } else {
                        0
                    };
                    chunk(s, f, REPLY_TYPE_BLOCK_STATUS, r.cookie, &p);
                }
            }
            _ => return,
        }
    }
}

const SIZE: u64 = 1 << 20;

/// Open the fake's export and read its first 64 KiB: the error, and how long it took.
fn read_fails(fake: &Fake) -> (String, ErrorKind, Duration) {
    let t = Instant::now();
    let r = NbdExport::open(&fake.uri(), &opts()).and_then(|img| {
        let mut b = vec![0u8; 64 << 10];
        img.read_at(&mut b, 0)
    });
    let e = r.expect_err("the lie went unnoticed");
    let msg = e.to_string();
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(msg.starts_with("nbd+unix:///x?socket="), "{msg}");
    (msg, e.kind(), t.elapsed())
}

#[test]
fn handshakes_that_are_not_nbd_or_lie_fail_cleanly() {
    type Script = fn(&mut UnixStream);
    let cases: Vec<(&str, Script, &str)> = vec![
        (
            "http",
            |s| {
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
            },
            "is not an NBD server",
        ),
        (
            "oldstyle",
            |s| {
                let mut g = NBDMAGIC.to_be_bytes().to_vec();
                g.extend_from_slice(&wire::OLDSTYLE_MAGIC.to_be_bytes());
                g.extend_from_slice(&[0u8; 2]);
                let _ = s.write_all(&g);
            },
            "oldstyle",
        ),
        (
            "no fixed newstyle",
            |s| {
                let _ = s.write_all(&wire::greeting(0));
            },
            "fixed newstyle",
        ),
        (
            "absurd option reply length",
            |s| {
                greet(s);
                let _ = read_option(s);
                let mut r = wire::option_reply(OPT_STRUCTURED_REPLY, REP_ACK, b"");
                r[16..20].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
                let _ = s.write_all(&r);
            },
            "longer than",
        ),
        (
            "reply to another option",
            |s| {
                greet(s);
                let _ = read_option(s);
                reply(s, OPT_GO, REP_ACK, b"");
            },
            "when asked option",
        ),
        (
            "bad option reply magic",
            |s| {
                greet(s);
                let _ = read_option(s);
                let _ = s.write_all(&[0x55u8; 20]);
            },
            "option reply magic",
        ),
        (
            "endless contexts",
            |s| {
                greet(s);
                let _ = read_option(s); // structured
                reply(s, OPT_STRUCTURED_REPLY, REP_ACK, b"");
                let _ = read_option(s); // list
                for i in 0..5000u32 {
                    let mut d = 0u32.to_be_bytes().to_vec();
                    d.extend_from_slice(format!("qemu:dirty-bitmap:b{i}").as_bytes());
                    reply(s, OPT_LIST_META_CONTEXT, REP_META_CONTEXT, &d);
                }
            },
            "more than 4096 replies",
        ),
        (
            "a context never asked for",
            |s| {
                greet(s);
                let _ = read_option(s);
                reply(s, OPT_STRUCTURED_REPLY, REP_ACK, b"");
                let _ = read_option(s);
                reply(s, OPT_LIST_META_CONTEXT, REP_ACK, b"");
                let _ = read_option(s);
                let mut d = 7u32.to_be_bytes().to_vec();
                d.extend_from_slice(b"x-evil:thing");
                reply(s, OPT_SET_META_CONTEXT, REP_META_CONTEXT, &d);
            },
            "did not ask for",
        ),
        (
            "go without a size",
            |s| {
                greet(s);
                loop {
                    let Some((opt, _)) = read_option(s) else {
                        return;
                    };
                    if opt == OPT_GO {
                        reply(s, opt, REP_ACK, b"");
                        return;
                    }
                    reply(s, opt, REP_ERR_UNSUP, b"");
                }
            },
            "without giving the export's size",
        ),
        (
            "a short export item",
            |s| {
                greet(s);
                loop {
                    let Some((opt, _)) = read_option(s) else {
                        return;
                    };
                    if opt == OPT_GO {
                        reply(s, opt, REP_INFO, &[0, 0, 1, 2, 3]);
                        return;
                    }
                    reply(s, opt, REP_ERR_UNSUP, b"");
                }
            },
            "NBD_INFO_EXPORT",
        ),
        (
            "block sizes that break the rules",
            |s| {
                greet(s);
                loop {
                    let Some((opt, _)) = read_option(s) else {
                        return;
                    };
                    if opt == OPT_GO {
                        let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                        for v in [3u32, 4096, 1 << 20] {
                            d.extend_from_slice(&v.to_be_bytes());
                        }
                        reply(s, opt, REP_INFO, &d);
                        return;
                    }
                    reply(s, opt, REP_ERR_UNSUP, b"");
                }
            },
            "minimum block size 3",
        ),
        ("an exabyte export", |_| {}, "larger than vdisk handles"),
        (
            "silence after the greeting",
            |s| {
                greet(s);
                std::thread::sleep(Duration::from_secs(10));
            },
            "did not answer in time",
        ),
        (
            "closing mid-handshake",
            |s| {
                greet(s);
                let _ = read_option(s);
            },
            "closed the connection",
        ),
    ];
    for (name, script, want) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let fake = if name == "an exabyte export" {
            Fake::start(tmp.path(), |mut s, _| {
                if let Some(ids) = handshake(&mut s, 1 << 60, FLAG_READ_ONLY, &[]) {
                    serve_honestly(&mut s, &ids);
                }
            })
        } else {
            Fake::start(tmp.path(), move |mut s, _| script(&mut s))
        };
        let (msg, _, took) = read_fails(&fake);
        assert!(msg.contains(want), "{name}: {msg}");
        assert!(took < Duration::from_secs(4), "{name}: {took:?}");
    }
}

/// How a read reply lies.
#[derive(Debug, Clone, Copy)]
enum Lie {
    OutOfRange,
    Overlap,
    TooLong,
    BadCookie,
    Short,
    EmptyHole,
    NoneWithPayload,
    SimpleAfterStructured,
    UnknownType,
    ErrorLongerThanItself,
    ErrorOutsideTheRead,
    ManyTinyChunks,
    BadReplyMagic,
    DisconnectMidData,
    Silence,
    Dribble,
}

fn lie(s: &mut UnixStream, r: &Request, how: Lie) {
    let (c, off, len) = (r.cookie, r.offset, r.length);
    let d = vec![7u8; len as usize];
    match how {
        Lie::OutOfRange => data_chunk(s, REPLY_FLAG_DONE, c, off + 4096, &d),
        Lie::Overlap => {
            data_chunk(s, 0, c, off, &d[..8192]);
            data_chunk(s, REPLY_FLAG_DONE, c, off + 4096, &d[..len as usize - 4096]);
        }
        Lie::TooLong => {
            let mut big = d.clone();
            big.extend_from_slice(&[1u8; 100]);
            data_chunk(s, REPLY_FLAG_DONE, c, off, &big);
        }
        Lie::BadCookie => data_chunk(s, REPLY_FLAG_DONE, c ^ 0xdead, off, &d),
        Lie::Short => data_chunk(s, REPLY_FLAG_DONE, c, off, &d[..1000]),
        Lie::EmptyHole => hole_chunk(s, REPLY_FLAG_DONE, c, off, 0),
        Lie::NoneWithPayload => chunk(s, REPLY_FLAG_DONE, REPLY_TYPE_NONE, c, b"x"),
        Lie::SimpleAfterStructured => {
            let _ = s.write_all(&wire::simple_reply(0, c));
            let _ = s.write_all(&d);
        }
        Lie::UnknownType => chunk(s, REPLY_FLAG_DONE, 77, c, &[0u8; 8]),
        Lie::ErrorLongerThanItself => {
            let mut p = EIO.to_be_bytes().to_vec();
            p.extend_from_slice(&1000u16.to_be_bytes());
            p.extend_from_slice(b"short");
            chunk(s, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, c, &p);
        }
        Lie::ErrorOutsideTheRead => {
            let mut p = EIO.to_be_bytes().to_vec();
            p.extend_from_slice(&0u16.to_be_bytes());
            p.extend_from_slice(&(off + (1 << 40)).to_be_bytes());
            chunk(s, REPLY_FLAG_DONE, REPLY_TYPE_ERROR_OFFSET, c, &p);
        }
        Lie::ManyTinyChunks => {
            let mut m = Vec::new();
            // One more chunk than bytes: the last is one too many whatever its range.
            for i in 0..=(len as u64) {
                let mut p = (off + i % u64::from(len)).to_be_bytes().to_vec();
                p.extend_from_slice(&1u32.to_be_bytes());
                m.extend_from_slice(&wire::chunk_header(0, REPLY_TYPE_OFFSET_HOLE, c, 12));
                m.extend_from_slice(&p);
            }
            let _ = s.write_all(&m);
        }
        Lie::BadReplyMagic => {
            let _ = s.write_all(&[0x42u8; 64]);
        }
        Lie::DisconnectMidData => {
            let mut m =
                wire::chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, c, 8 + len).to_vec();
            m.extend_from_slice(&off.to_be_bytes());
            m.extend_from_slice(&d[..1000]);
            let _ = s.write_all(&m);
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        Lie::Silence => std::thread::sleep(Duration::from_secs(8)),
        Lie::Dribble => {
            let mut m =
                wire::chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, c, 8 + len).to_vec();
            m.extend_from_slice(&off.to_be_bytes());
            m.extend_from_slice(&d);
            for b in m {
                if s.write_all(&[b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
}

#[test]
fn read_replies_that_lie_are_errors_never_data() {
    use Lie::*;
    let cases = [
        (OutOfRange, "for a read of"),
        (Overlap, "twice"),
        (TooLong, "for a read of"),
        (BadCookie, "no request in flight has"),
        (Short, "covers 1000 of the"),
        (EmptyHole, "empty hole"),
        (NoneWithPayload, "NBD_REPLY_TYPE_NONE"),
        (SimpleAfterStructured, "simple reply"),
        (UnknownType, "type 77"),
        (ErrorLongerThanItself, "longer than its payload"),
        (ErrorOutsideTheRead, "outside the read"),
        (ManyTinyChunks, "more than 65536 chunks"),
        (BadReplyMagic, "reply magic"),
        (Silence, "did not answer in time"),
        (Dribble, "did not answer in time"),
    ];
    for (how, want) in cases {
        let tmp = tempfile::tempdir().unwrap();
        // A writable export: no reconnect, so the first lie is the answer.
        let fake = Fake::start(tmp.path(), move |mut s, _| {
            if handshake(&mut s, SIZE, 0, &[BASE_ALLOCATION]).is_none() {
                return;
            }
            if let Some(r) = read_request(&mut s) {
                lie(&mut s, &r, how);
            }
            std::thread::sleep(Duration::from_millis(200));
        });
        let (msg, _, took) = read_fails(&fake);
        assert!(msg.contains(want), "{how:?}: {msg}");
        assert!(took < Duration::from_secs(5), "{how:?}: {took:?}");
    }
}

#[test]
fn a_read_only_export_is_reconnected_once_and_not_twice() {
    let tmp = tempfile::tempdir().unwrap();
    // The first connection drops mid-read; the second serves.
    let fake = Fake::start(tmp.path(), |mut s, n| {
        let Some(ids) = handshake(&mut s, SIZE, FLAG_READ_ONLY, &[BASE_ALLOCATION]) else {
            return;
        };
        if n == 0 {
            if let Some(r) = read_request(&mut s) {
                lie(&mut s, &r, Lie::DisconnectMidData);
            }
            return;
        }
        serve_honestly(&mut s, &ids);
    });
    let img = NbdExport::open(&fake.uri(), &opts()).unwrap();
    let mut b = vec![0u8; 64 << 10];
    img.read_at(&mut b, 4096).unwrap();
    assert!(b
        .iter()
        .enumerate()
        .all(|(i, &x)| x == ((4096 + i as u64) % 251) as u8));
    assert_eq!(fake.accepted.load(Ordering::Relaxed), 2);
    drop(img);

    // Every connection drops: one reconnect, then the error.
    let tmp = tempfile::tempdir().unwrap();
    let fake = Fake::start(tmp.path(), |mut s, _| {
        if handshake(&mut s, SIZE, FLAG_READ_ONLY, &[BASE_ALLOCATION]).is_some() {
            if let Some(r) = read_request(&mut s) {
                lie(&mut s, &r, Lie::DisconnectMidData);
            }
        }
    });
    let (msg, _, took) = read_fails(&fake);
    assert!(msg.contains("closed the connection"), "{msg}");
    assert!(took < Duration::from_secs(4));
    assert_eq!(fake.accepted.load(Ordering::Relaxed), 2);

    // A writable export is not reconnected (its contents may have moved on).
    let tmp = tempfile::tempdir().unwrap();
    let fake = Fake::start(tmp.path(), |mut s, _| {
        if handshake(&mut s, SIZE, 0, &[BASE_ALLOCATION]).is_some() {
            if let Some(r) = read_request(&mut s) {
                lie(&mut s, &r, Lie::DisconnectMidData);
            }
        }
    });
    read_fails(&fake);
    assert_eq!(fake.accepted.load(Ordering::Relaxed), 1);

    // A reconnect that finds another export is refused.
    let tmp = tempfile::tempdir().unwrap();
    let fake = Fake::start(tmp.path(), |mut s, n| {
        let size = if n == 0 { SIZE } else { 2 * SIZE };
        if let Some(ids) = handshake(&mut s, size, FLAG_READ_ONLY, &[BASE_ALLOCATION]) {
            if n == 0 {
                if let Some(r) = read_request(&mut s) {
                    lie(&mut s, &r, Lie::DisconnectMidData);
                }
            } else {
                serve_honestly(&mut s, &ids);
            }
        }
    });
    let (msg, _, _) = read_fails(&fake);
    assert!(
        msg.contains("reconnecting failed") && msg.contains("2097152 bytes now"),
        "{msg}"
    );
}

/// How a block-status reply lies.
#[derive(Debug, Clone, Copy)]
enum StatusLie {
    ZeroLength,
    PastTheRequest,
    UnselectedContext,
    OddLength,
    HugeCount,
    TwiceForOneContext,
    NoChunkForTheContext,
    SimpleSuccess,
}

fn status_lie(s: &mut UnixStream, r: &Request, how: StatusLie) {
    let c = r.cookie;
    let desc = |id: u32, ds: &[(u32, u32)]| {
        let mut p = id.to_be_bytes().to_vec();
        for (l, f) in ds {
            p.extend_from_slice(&l.to_be_bytes());
            p.extend_from_slice(&f.to_be_bytes());
        }
        p
    };
    let d = REPLY_FLAG_DONE;
    match how {
        StatusLie::ZeroLength => chunk(s, d, REPLY_TYPE_BLOCK_STATUS, c, &desc(1, &[(0, 0)])),
        StatusLie::PastTheRequest => chunk(
            s,
            d,
            REPLY_TYPE_BLOCK_STATUS,
            c,
            &desc(1, &[(r.length, 0), (4096, 3)]),
        ),
        StatusLie::UnselectedContext => {
            chunk(s, d, REPLY_TYPE_BLOCK_STATUS, c, &desc(9, &[(r.length, 0)]))
        }
        StatusLie::OddLength => chunk(s, d, REPLY_TYPE_BLOCK_STATUS, c, &[0, 0, 0, 1, 0, 0]),
        StatusLie::HugeCount => {
            // Claims 2^21 descriptors and sends none: refused before anything is read.
            let _ = s.write_all(&wire::chunk_header(
                d,
                REPLY_TYPE_BLOCK_STATUS,
                c,
                4 + 8 * (1 << 21),
            ));
        }
        StatusLie::TwiceForOneContext => {
            chunk(s, 0, REPLY_TYPE_BLOCK_STATUS, c, &desc(1, &[(r.length, 0)]));
            chunk(s, d, REPLY_TYPE_BLOCK_STATUS, c, &desc(1, &[(r.length, 0)]));
        }
        StatusLie::NoChunkForTheContext => chunk(s, d, REPLY_TYPE_NONE, c, b""),
        StatusLie::SimpleSuccess => {
            let _ = s.write_all(&wire::simple_reply(0, c));
        }
    }
}

#[test]
fn block_status_that_lies_is_an_error_never_a_map() {
    use StatusLie::*;
    let cases = [
        (ZeroLength, "length 0"),
        (PastTheRequest, "past the"),
        (UnselectedContext, "not selected"),
        (OddLength, "4 + 8 per extent"),
        (HugeCount, "in one chunk"),
        (TwiceForOneContext, "two block status chunks"),
        (NoChunkForTheContext, "no extents for the context"),
        (SimpleSuccess, "empty simple reply"),
    ];
    for (how, want) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let fake = Fake::start(tmp.path(), move |mut s, _| {
            if handshake(&mut s, SIZE, 0, &[BASE_ALLOCATION]).is_none() {
                return;
            }
            if let Some(r) = read_request(&mut s) {
                status_lie(&mut s, &r, how);
            }
            std::thread::sleep(Duration::from_millis(200));
        });
        let t = Instant::now();
        let img = NbdExport::open(&fake.uri(), &opts()).unwrap();
        let e = img.allocation(0, SIZE).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(want) && msg.starts_with("nbd+unix://"),
            "{how:?}: {msg}"
        );
        assert!(t.elapsed() < Duration::from_secs(4), "{how:?}");
    }
}

#[test]
fn honest_fakes_read_and_map_and_errors_keep_the_stream_in_step() {
    let tmp = tempfile::tempdir().unwrap();
    // Replies out of order, data and holes mixed, an EIO for one piece, and a map with a
    // run past the request's end (allowed: it is clipped).
    let fake = Fake::start(tmp.path(), |mut s, _| {
        let Some(_) = handshake(&mut s, 4 << 20, FLAG_READ_ONLY, &[BASE_ALLOCATION]) else {
            return;
        };
        let mut pending: Vec<Request> = Vec::new();
        while let Some(r) = read_request(&mut s) {
            match r.command {
                CMD_READ => {
                    pending.push(r);
                    // Answer two at a time, the later first.
                    if pending.len() == 2 || r.offset + u64::from(r.length) >= 2 << 20 {
                        while let Some(r) = pending.pop() {
                            if r.offset == 3 << 20 {
                                let mut p = EIO.to_be_bytes().to_vec();
                                let m = b"disk on fire";
                                p.extend_from_slice(&(m.len() as u16).to_be_bytes());
                                p.extend_from_slice(m);
                                p.extend_from_slice(&(r.offset + 5).to_be_bytes());
                                chunk(
                                    &mut s,
                                    REPLY_FLAG_DONE,
                                    REPLY_TYPE_ERROR_OFFSET,
                                    r.cookie,
                                    &p,
                                );
                                continue;
                            }
                            let half = r.length / 2;
                            hole_chunk(
                                &mut s,
                                0,
                                r.cookie,
                                r.offset + u64::from(half),
                                r.length - half,
                            );
                            let d: Vec<u8> = (r.offset..r.offset + u64::from(half))
                                .map(|o| (o % 251) as u8)
                                .collect();
                            data_chunk(&mut s, 0, r.cookie, r.offset, &d);
                            chunk(&mut s, REPLY_FLAG_DONE, REPLY_TYPE_NONE, r.cookie, b"");
                        }
                    }
                }
                CMD_BLOCK_STATUS => {
                    let mut p = 1u32.to_be_bytes().to_vec();
                    for (l, f) in [
                        (4096u32, 0u32),
                        (4096, 3),
                        ((r.length.saturating_sub(4096).max(1) + 1) << 20, 2),
                    ] {
                        p.extend_from_slice(&l.to_be_bytes());
                        p.extend_from_slice(&f.to_be_bytes());
                    }
                    chunk(
                        &mut s,
                        REPLY_FLAG_DONE,
                        REPLY_TYPE_BLOCK_STATUS,
                        r.cookie,
                        &p,
                    );
                }
                _ => return,
            }
        }
    });
    let img = NbdExport::open(&fake.uri(), &opts()).unwrap();
    let mut b = vec![0u8; 2 << 20];
    img.read_at(&mut b, 0).unwrap();
    for (i, &x) in b.iter().enumerate() {
        let in_piece = i % (1 << 20);
        let want = if in_piece < 1 << 19 {
            (i % 251) as u8
        } else {
            0
        };
        assert_eq!(x, want, "byte {i}");
    }
    let e = img.read_at(&mut b[..1 << 20], 3 << 20).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("EIO") && msg.contains("disk on fire") && msg.contains("(at offset 3145733)"),
        "{msg}"
    );
    // Still in step after the error.
    img.read_at(&mut b[..1 << 20], 1 << 20).unwrap();
    let map = img.allocation(0, 12288).unwrap();
    let kinds: Vec<_> = map
        .iter()
        .map(|e| (e.start, e.length, e.allocation))
        .collect();
    use vdisk_core::Allocation::*;
    assert_eq!(
        kinds,
        [
            (0, 4096, Data),
            (4096, 4096, Unallocated),
            (8192, 4096, Zero)
        ]
    );
}

#[test]
fn default_timeouts_are_finite_and_short() {
    let o = ClientOptions::default();
    for t in [o.connect_timeout, o.handshake_timeout, o.request_timeout] {
        assert!(t > Duration::ZERO && t <= Duration::from_secs(60), "{t:?}");
    }
}
