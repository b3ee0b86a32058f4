//! A minimal NBD client speaking raw bytes, written from the spec independently of the
//! server's own encoders, for the protocol and hostile-client tests.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_UNSUP: u32 = 0x8000_0001;
pub const REP_ERR_INVALID: u32 = 0x8000_0003;
pub const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
pub const REP_ERR_TOO_BIG: u32 = 0x8000_0009;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;
pub const CMD_FLAG_DF: u16 = 4;
pub const CMD_FLAG_REQ_ONE: u16 = 8;

pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const EOVERFLOW: u32 = 75;

pub const TYPE_NONE: u16 = 0;
pub const TYPE_OFFSET_DATA: u16 = 1;
pub const TYPE_OFFSET_HOLE: u16 = 2;
pub const TYPE_BLOCK_STATUS: u16 = 5;
pub const TYPE_ERROR: u16 = 0x8001;
pub const TYPE_ERROR_OFFSET: u16 = 0x8002;

pub struct Client {
    pub s: UnixStream,
}

/// One structured reply chunk.
#[derive(Debug)]
pub struct Chunk {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub payload: Vec<u8>,
}

/// A whole structured reply to a read or block status, reassembled.
#[derive(Debug, Default)]
pub struct Reply {
    /// Content chunks: (offset, bytes), holes expanded to zeroes.
    pub pieces: Vec<(u64, Vec<u8>)>,
    /// Number of hole chunks and data chunks.
    pub holes: usize,
    pub data_chunks: usize,
    /// (errno, offset of an ERROR_OFFSET chunk).
    pub error: Option<(u32, Option<u64>)>,
    /// Block status descriptors (length, flags) and the context id.
    pub status: Vec<(u32, u32)>,
    pub context: Option<u32>,
}

impl Reply {
    /// The read data as one buffer of `len` bytes from `offset` (panics on gaps/overlaps).
    pub fn bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let mut covered = vec![false; len];
        for (o, b) in &self.pieces {
            let at = (o - offset) as usize;
            for i in 0..b.len() {
                assert!(!covered[at + i], "overlapping chunks at {}", o + i as u64);
                covered[at + i] = true;
            }
            out[at..at + b.len()].copy_from_slice(b);
        }
        assert!(
            covered.iter().all(|&c| c),
            "chunks do not cover the request"
        );
        out
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

impl Client {
    pub fn connect(path: &Path) -> Client {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        Client { s }
    }

    pub fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    pub fn recv(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.s.read_exact(&mut b).unwrap();
        b
    }

    /// Whether the server closed the connection (EOF or reset) before sending more bytes;
    /// panics if it sends bytes.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        match self.s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => panic!("server sent a byte where it should have closed"),
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }

    /// Read the greeting, check it, return the handshake flags.
    pub fn greeting(&mut self) -> u16 {
        let g = self.recv(18);
        assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
        be16(&g[16..])
    }

    pub fn client_flags(&mut self, flags: u32) {
        self.send(&flags.to_be_bytes());
    }

    pub fn option(&mut self, opt: u32, payload: &[u8]) {
        let mut m = b"IHAVEOPT".to_vec();
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        m.extend_from_slice(payload);
        self.send(&m);
    }

    /// (option, reply type, data)
    pub fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        let h = self.recv(20);
        assert_eq!(be64(&h), 0x0003_e889_0455_65a9, "option reply magic");
        let len = be32(&h[16..]) as usize;
        assert!(len < 1 << 20);
        let data = self.recv(len);
        (be32(&h[8..]), be32(&h[12..]), data)
    }

    /// Replies to one option up to and including the final one (ACK or error).
    pub fn option_replies(&mut self) -> Vec<(u32, Vec<u8>)> {
        let mut v = Vec::new();
        loop {
            let (_, kind, data) = self.option_reply();
            let last = kind == REP_ACK || kind & 0x8000_0000 != 0;
            v.push((kind, data));
            if last {
                return v;
            }
        }
    }

    /// Payload of NBD_OPT_INFO / NBD_OPT_GO.
    pub fn go_payload(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut p = (name.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(name.as_bytes());
        p.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            p.extend_from_slice(&i.to_be_bytes());
        }
        p
    }

    /// Payload of the meta-context options.
    pub fn meta_payload(name: &str, queries: &[&str]) -> Vec<u8> {
        let mut p = (name.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(name.as_bytes());
        p.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            p.extend_from_slice(&(q.len() as u32).to_be_bytes());
            p.extend_from_slice(q.as_bytes());
        }
        p
    }

    /// Full handshake to transmission: returns (size, transmission flags).
    pub fn handshake(path: &Path, name: &str, structured: bool, meta: bool) -> (Client, u64, u16) {
        let mut c = Client::connect(path);
        assert_eq!(c.greeting(), 3);
        c.client_flags(3);
        if structured {
            c.option(OPT_STRUCTURED_REPLY, &[]);
            assert_eq!(c.option_replies()[0].0, REP_ACK);
        }
        if meta {
            c.option(
                OPT_SET_META_CONTEXT,
                &Client::meta_payload(name, &["base:allocation"]),
            );
            let r = c.option_replies();
            assert_eq!(r.len(), 2, "{r:?}");
            assert_eq!(r[0].0, REP_META_CONTEXT);
        }
        c.option(OPT_GO, &Client::go_payload(name, &[3]));
        let mut export = None;
        for (kind, data) in c.option_replies() {
            if kind == REP_INFO && be16(&data) == 0 {
                export = Some((be64(&data[2..]), be16(&data[10..])));
            }
            assert!(kind == REP_INFO || kind == REP_ACK, "GO failed: {kind:#x}");
        }
        let (size, flags) = export.expect("NBD_INFO_EXPORT");
        (c, size, flags)
    }

    pub fn request(&mut self, cmd: u16, flags: u16, cookie: u64, offset: u64, len: u32) {
        self.send(&Self::request_bytes(cmd, flags, cookie, offset, len));
    }

    pub fn request_bytes(cmd: u16, flags: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
        let mut m = 0x2560_9513u32.to_be_bytes().to_vec();
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&cmd.to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
        m
    }

    /// A simple reply header: (error, cookie).
    pub fn simple_reply(&mut self) -> (u32, u64) {
        let h = self.recv(16);
        assert_eq!(be32(&h), 0x6744_6698, "simple reply magic");
        (be32(&h[4..]), be64(&h[8..]))
    }

    pub fn chunk(&mut self) -> Chunk {
        let h = self.recv(20);
        assert_eq!(be32(&h), 0x668e_33ef, "structured reply magic");
        let len = be32(&h[16..]) as usize;
        assert!(len <= (32 << 20) + 8, "chunk of {len} bytes");
        Chunk {
            flags: be16(&h[4..]),
            kind: be16(&h[6..]),
            cookie: be64(&h[8..]),
            payload: self.recv(len),
        }
    }

    /// Read chunks until `n` replies are complete (chunks of different replies may
    /// interleave); returns them by cookie.
    pub fn replies(&mut self, n: usize) -> HashMap<u64, Reply> {
        let mut done = HashMap::new();
        self.replies_each(n, |cookie, r| {
            assert!(done.insert(cookie, r).is_none(), "two replies for {cookie}");
        });
        done
    }

    /// Read chunks until `n` replies are complete, handing each to `f` as it completes.
    pub fn replies_each(&mut self, n: usize, mut f: impl FnMut(u64, Reply)) {
        let mut open: HashMap<u64, Reply> = HashMap::new();
        let mut finished = 0;
        while finished < n {
            let c = self.chunk();
            let r = open.entry(c.cookie).or_default();
            let p = &c.payload;
            match c.kind {
                TYPE_NONE => assert!(p.is_empty()),
                TYPE_OFFSET_DATA => {
                    assert!(p.len() > 8);
                    r.pieces.push((be64(p), p[8..].to_vec()));
                    r.data_chunks += 1;
                }
                TYPE_OFFSET_HOLE => {
                    assert_eq!(p.len(), 12);
                    let len = be32(&p[8..]);
                    assert!(len > 0);
                    r.pieces.push((be64(p), vec![0; len as usize]));
                    r.holes += 1;
                }
                TYPE_BLOCK_STATUS => {
                    assert!(p.len() >= 12 && (p.len() - 4).is_multiple_of(8));
                    r.context = Some(be32(p));
                    for d in p[4..].chunks(8) {
                        r.status.push((be32(d), be32(&d[4..])));
                    }
                }
                TYPE_ERROR | TYPE_ERROR_OFFSET => {
                    let errno = be32(p);
                    let mlen = be16(&p[4..]) as usize;
                    let msg = std::str::from_utf8(&p[6..6 + mlen]).expect("UTF-8 message");
                    assert!(!msg.contains('\n'));
                    let off = (c.kind == TYPE_ERROR_OFFSET).then(|| {
                        assert_eq!(p.len(), 6 + mlen + 8);
                        be64(&p[6 + mlen..])
                    });
                    r.error = Some((errno, off));
                }
                k => panic!("unexpected chunk type {k}"),
            }
            if c.flags & 1 != 0 {
                let r = open.remove(&c.cookie).unwrap();
                f(c.cookie, r);
                finished += 1;
            }
        }
        assert!(open.is_empty(), "unfinished replies: {:?}", open.keys());
    }

    /// One structured reply.
    pub fn reply(&mut self) -> (u64, Reply) {
        self.replies(1).into_iter().next().unwrap()
    }

    /// A structured read of `len` bytes at `offset`: the data, or the error.
    pub fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, (u32, Option<u64>)> {
        self.request(CMD_READ, 0, 0xabcd, offset, len);
        let (cookie, r) = self.reply();
        assert_eq!(cookie, 0xabcd);
        match r.error {
            Some(e) => Err(e),
            None => Ok(r.bytes(offset, len as usize)),
        }
    }
}
