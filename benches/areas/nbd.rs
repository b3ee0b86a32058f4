//! NBD transmission: `vdisk::nbd::Server` serving the 64 MiB raw fixture disk on a Unix
//! socket in this process, and a minimal client here (written from the protocol, not from
//! the server's encoders): the fixed newstyle handshake, `NBD_OPT_GO`, then `NBD_CMD_READ`
//! of the whole export in 1 MiB requests, a few in flight, with simple replies. Each
//! iteration connects anew; the rate is bytes of export per second through the server.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use vdisk::nbd::proto::{
    CMD_DISC, CMD_READ, FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, FLAG_FIXED_NEWSTYLE, IHAVEOPT,
    INFO_EXPORT, NBDMAGIC, OPTION_REPLY_MAGIC, OPT_GO, REP_ACK, REP_INFO, REQUEST_MAGIC,
    SIMPLE_REPLY_MAGIC,
};
use vdisk::nbd::{ExportConfig, Server};
use vdisk::DiskImage;

use super::fixtures::{assert_same, Fixtures, MIB};

/// Bytes per read request.
const REQUEST: u64 = MIB;
/// Requests in flight at once (the server's default bound is 32).
const IN_FLIGHT: usize = 8;
const EXPORT: &str = "bench";

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

/// A client in transmission phase.
struct Client {
    s: UnixStream,
    size: u64,
}

impl Client {
    fn recv(&mut self, buf: &mut [u8]) {
        self.s.read_exact(buf).expect("read from the server");
    }

    /// Connect, do the fixed newstyle handshake and `NBD_OPT_GO` for the export.
    fn connect(socket: &Path) -> Client {
        let s = UnixStream::connect(socket).expect("connect to the server");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut c = Client { s, size: 0 };
        let mut greeting = [0u8; 18];
        c.recv(&mut greeting);
        assert_eq!(be64(&greeting), NBDMAGIC);
        assert_eq!(be64(&greeting[8..]), IHAVEOPT);
        assert!(be16(&greeting[16..]) & FLAG_FIXED_NEWSTYLE != 0);
        // Client flags, then NBD_OPT_GO: the name, and no information requests.
        let mut m = (FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
            .to_be_bytes()
            .to_vec();
        m.extend_from_slice(&IHAVEOPT.to_be_bytes());
        m.extend_from_slice(&OPT_GO.to_be_bytes());
        m.extend_from_slice(&(4 + EXPORT.len() as u32 + 2).to_be_bytes());
        m.extend_from_slice(&(EXPORT.len() as u32).to_be_bytes());
        m.extend_from_slice(EXPORT.as_bytes());
        m.extend_from_slice(&0u16.to_be_bytes());
        c.s.write_all(&m).expect("send the option");
        // Replies: NBD_REP_INFO (at least NBD_INFO_EXPORT), then NBD_REP_ACK.
        let mut size = None;
        loop {
            let mut h = [0u8; 20];
            c.recv(&mut h);
            assert_eq!(be64(&h), OPTION_REPLY_MAGIC);
            assert_eq!(be32(&h[8..]), OPT_GO);
            let (kind, len) = (be32(&h[12..]), be32(&h[16..]) as usize);
            assert!(len <= 4096, "option reply of {len} bytes");
            let mut data = vec![0u8; len];
            c.recv(&mut data);
            match kind {
                REP_ACK => break,
                REP_INFO if len >= 12 && be16(&data) == INFO_EXPORT => {
                    size = Some(be64(&data[2..]));
                }
                REP_INFO => {}
                _ => panic!("NBD_OPT_GO refused: reply type {kind:#x}"),
            }
        }
        c.size = size.expect("NBD_INFO_EXPORT in the replies");
        c
    }

    fn request(&mut self, cmd: u16, cookie: u64, offset: u64, len: u32) {
        let mut m = [0u8; 28];
        m[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        // m[4..6]: command flags, none.
        m[6..8].copy_from_slice(&cmd.to_be_bytes());
        m[8..16].copy_from_slice(&cookie.to_be_bytes());
        m[16..24].copy_from_slice(&offset.to_be_bytes());
        m[24..28].copy_from_slice(&len.to_be_bytes());
        self.s.write_all(&m).expect("send a request");
    }

    /// Read the whole export into `disk` (its size) with `IN_FLIGHT` requests of 1 MiB at
    /// once; replies may come in any order (the cookie is the offset), then disconnect.
    fn read_all(mut self, disk: &mut [u8]) {
        assert_eq!(disk.len() as u64, self.size);
        let mut next = 0u64;
        let mut pending: HashMap<u64, usize> = HashMap::new();
        loop {
            while pending.len() < IN_FLIGHT && next < self.size {
                let len = REQUEST.min(self.size - next);
                self.request(CMD_READ, next, next, len as u32);
                pending.insert(next, len as usize);
                next += len;
            }
            if pending.is_empty() {
                break;
            }
            let mut h = [0u8; 16];
            self.recv(&mut h);
            assert_eq!(be32(&h), SIMPLE_REPLY_MAGIC);
            assert_eq!(be32(&h[4..]), 0, "read error");
            let cookie = be64(&h[8..]);
            let len = pending.remove(&cookie).expect("a reply to a request made");
            let at = cookie as usize;
            self.recv(&mut disk[at..at + len]);
        }
        self.request(CMD_DISC, 0, 0, 0);
    }
}

pub fn bench(c: &mut Criterion, fx: &Fixtures) {
    let img: Arc<dyn DiskImage> = Arc::new(vdisk::open(&fx.raw).expect("open the disk"));
    let size = img.size();
    let server = Arc::new(Server::new(img, ExportConfig::new(EXPORT)).expect("a server"));
    let socket = fx.dir().join("nbd.sock");
    let listener = UnixListener::bind(&socket).expect("bind the socket");
    let stop = server.shutdown_handle();
    let serving = {
        let server = Arc::clone(&server);
        std::thread::spawn(move || server.serve_unix(listener))
    };
    let mut disk = vec![0u8; size as usize];
    // What the client reads is the disk (checked once, before timing).
    let c0 = Client::connect(&socket);
    assert_eq!(c0.size, size);
    c0.read_all(&mut disk);
    let want = std::fs::read(&fx.raw).expect("read the disk");
    assert_same("the export read over NBD", &want, &disk);

    let mut g = c.benchmark_group("nbd");
    g.throughput(Throughput::Bytes(size));
    g.bench_function("read_1MiB_requests_unix", |b| {
        b.iter(|| Client::connect(&socket).read_all(&mut disk))
    });
    g.finish();
    stop.shutdown();
    serving
        .join()
        .expect("the server thread")
        .expect("the server");
}
