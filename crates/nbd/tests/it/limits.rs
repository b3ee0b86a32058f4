//! Denial of service by the clients: one that never reads its replies is dropped within the
//! write timeout (60 s by default, whatever the size of what it asked for); idle
//! connections give their place to a new client once idle long enough; one address may hold
//! only so many TCP connections.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vdisk_nbd::{ExportConfig, Limits, Server};

use crate::client::*;
use crate::common::*;

/// A TCP handshake to transmission with simple replies.
fn tcp_client(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let mut m = b"IHAVEOPT".to_vec();
    m.extend_from_slice(&OPT_GO.to_be_bytes());
    let p = Client::go_payload("disk", &[]);
    m.extend_from_slice(&(p.len() as u32).to_be_bytes());
    m.extend_from_slice(&p);
    s.write_all(&m).unwrap();
    // Replies until the ACK.
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let mut d = vec![0u8; len];
        s.read_exact(&mut d).unwrap();
        if kind == REP_ACK {
            return s;
        }
    }
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "{what} not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    t.elapsed()
}

/// A 48 MiB raw image of data (so that replies are big and never holes).
fn big_image(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("big.raw");
    std::fs::write(&p, vec![0x5au8; 48 << 20]).unwrap();
    p
}

#[test]
fn the_documented_write_timeout_is_60_seconds() {
    assert_eq!(Limits::default().write_timeout, Duration::from_secs(60));
}

#[test]
fn a_client_that_never_reads_is_dropped_within_the_write_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let img = open_raw(&big_image(dir));
    let limits = Limits {
        write_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    // Over TCP (whose buffers grow while the client does not read) and over a Unix socket;
    // the client asks for far more than any buffer holds and reads nothing.
    let server =
        Arc::new(Server::with_limits(Arc::clone(&img), ExportConfig::new("disk"), limits).unwrap());
    let tl = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tl.local_addr().unwrap();
    let s = Arc::clone(&server);
    let serving = std::thread::spawn(move || s.serve_tcp(tl));
    let mut c = tcp_client(addr);
    let asks: Vec<u8> = (0..32u64)
        .flat_map(|i| Client::request_bytes(CMD_READ, 0, i, (i % 16) << 20, 32 << 20))
        .collect();
    c.write_all(&asks).unwrap();
    wait_until(
        "the connection in transmission",
        Duration::from_secs(5),
        || server.stats().active == 1,
    );
    let took = wait_until("the TCP client dropped", Duration::from_secs(10), || {
        server.stats().active == 0
    });
    assert!(took < Duration::from_secs(4), "{took:?}");
    server.shutdown_handle().shutdown();
    serving.join().unwrap().unwrap();

    let srv = Running::unix_with(dir, img, ExportConfig::new("disk"), limits);
    let (mut c, _, _) = Client::handshake(&srv.socket, "disk", true, false);
    c.send(&asks);
    wait_until(
        "the connection in transmission",
        Duration::from_secs(5),
        || srv.server.stats().active == 1,
    );
    let took = wait_until("the Unix client dropped", Duration::from_secs(10), || {
        srv.server.stats().active == 0
    });
    assert!(took < Duration::from_secs(4), "{took:?}");
}

#[test]
fn idle_connections_make_room_for_a_new_client_once_idle_long_enough() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (path, want) = pattern_image(dir);
    let limits = Limits {
        max_connections: 64,
        idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let srv = Running::unix_with(dir, open_raw(&path), ExportConfig::new("disk"), limits);
    // 64 clients finish their handshake and sit idle.
    let mut idle: Vec<Client> = (0..64)
        .map(|_| Client::handshake(&srv.socket, "disk", true, false).0)
        .collect();
    wait_until("64 connections", Duration::from_secs(5), || {
        srv.server.stats().active == 64
    });
    // At once, a newcomer is turned away: nobody has been idle long enough.
    let mut early = Client::connect(&srv.socket);
    assert!(early.closed());
    // One of the 64 keeps busy (a read now and then); the others are idle.
    let busy = &mut idle[10];
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(busy.read(0, 64).unwrap(), want[..64]);
    }
    // Past the idle timeout a newcomer is served, in place of an idle one.
    let (mut late, _, _) = Client::handshake(&srv.socket, "disk", true, false);
    assert_eq!(late.read(100, 100).unwrap(), want[100..200]);
    let stats = srv.server.stats();
    assert_eq!(stats.evicted, 1);
    assert!(stats.active <= 64);
    // The busy one was not the one closed.
    assert_eq!(idle[10].read(64, 64).unwrap(), want[64..128]);
    let mut closed = 0;
    for c in idle.iter_mut() {
        c.s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        if matches!(c.s.read(&mut b), Ok(0)) {
            closed += 1;
        }
    }
    assert_eq!(closed, 1);
}

#[test]
fn one_address_holds_only_so_many_tcp_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = pattern_image(tmp.path());
    let limits = Limits {
        max_per_peer: 4,
        ..Limits::default()
    };
    let server =
        Arc::new(Server::with_limits(open_raw(&path), ExportConfig::new("disk"), limits).unwrap());
    let tl = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tl.local_addr().unwrap();
    let s = Arc::clone(&server);
    let serving = std::thread::spawn(move || s.serve_tcp(tl));
    let held: Vec<TcpStream> = (0..4).map(|_| tcp_client(addr)).collect();
    let mut fifth = TcpStream::connect(addr).unwrap();
    fifth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut b = [0u8; 18];
    let n = fifth.read(&mut b).unwrap_or(0);
    assert_eq!(n, 0, "the fifth connection got a greeting");
    assert_eq!(server.stats().refused, 1);
    drop(held);
    wait_until("the four gone", Duration::from_secs(5), || {
        server.stats().active == 0
    });
    drop(tcp_client(addr));
    server.shutdown_handle().shutdown();
    serving.join().unwrap().unwrap();
}
