//! Starting, stopping, limits and settings.

use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vdisk_core::ErrorKind;
use vdisk_nbd::{ExportConfig, Limits, Server};

use crate::client::*;
use crate::common::*;

#[test]
fn shutdown_with_clients_connected_returns_promptly() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = pattern_image(tmp.path());
    let srv = Running::unix(tmp.path(), open_raw(&path), ExportConfig::new("disk"));
    // One client mid-handshake, one idle in transmission, one whose replies pile up unread.
    let mut handshaking = Client::connect(&srv.socket);
    handshaking.greeting();
    let (mut idle, _, _) = Client::handshake(&srv.socket, "disk", true, false);
    let (mut busy, _, _) = Client::handshake(&srv.socket, "disk", false, false);
    let m: Vec<u8> = (0..64u64)
        .flat_map(|i| Client::request_bytes(CMD_READ, 0, i, 0, 3 << 20))
        .collect();
    busy.send(&m);
    let t = Instant::now();
    while srv.server.stats().active < 3 {
        assert!(t.elapsed() < Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    let server = Arc::clone(&srv.server);
    let took = srv.shutdown();
    assert!(
        took < Duration::from_secs(2),
        "serve returned after {took:?}"
    );
    assert_eq!(server.stats().active, 0);
    assert!(handshaking.closed());
    assert!(idle.closed());
    let mut rest = Vec::new();
    use std::io::Read;
    let _ = busy.s.read_to_end(&mut rest);
}

#[test]
fn shutdown_before_serve_and_twice_is_fine() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = pattern_image(tmp.path());
    let server = Server::new(open_raw(&path), ExportConfig::new("disk")).unwrap();
    let stop = server.shutdown_handle();
    assert!(!stop.is_shut_down());
    stop.shutdown();
    stop.clone().shutdown();
    assert!(stop.is_shut_down());
    let listener = UnixListener::bind(tmp.path().join("s")).unwrap();
    let t = Instant::now();
    server.serve_unix(listener).unwrap();
    assert!(t.elapsed() < Duration::from_millis(500));
}

#[test]
fn one_shutdown_stops_unix_and_tcp_listeners() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (path, want) = pattern_image(dir);
    let server = Arc::new(Server::new(open_raw(&path), ExportConfig::new("disk")).unwrap());
    let stop = server.shutdown_handle();
    let sock = dir.join("u.sock");
    let ul = UnixListener::bind(&sock).unwrap();
    let tl = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tl.local_addr().unwrap().port();
    let (s1, s2) = (Arc::clone(&server), Arc::clone(&server));
    let t1 = std::thread::spawn(move || s1.serve_unix(ul));
    let t2 = std::thread::spawn(move || s2.serve_tcp(tl));
    let (mut c, _, _) = Client::handshake(&sock, "disk", true, false);
    assert_eq!(c.read(0, 64).unwrap(), want[..64]);
    let uri = vdisk_nbd::tcp_uri("127.0.0.1", port, "disk");
    qemu_io(dir, &["-r", "-f", "raw", &uri], &["read -P 0 64k 64k"]);
    let t = Instant::now();
    stop.shutdown();
    t1.join().unwrap().unwrap();
    t2.join().unwrap().unwrap();
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(c.closed());
    let stats = server.stats();
    assert_eq!(stats.accepted, 2);
    assert_eq!(stats.active, 0);
}

#[test]
fn settings_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = pattern_image(tmp.path());
    let img = open_raw(&path);
    let e = Server::new(Arc::clone(&img), ExportConfig::new("a\0b")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    let e = Server::new(Arc::clone(&img), ExportConfig::new("x".repeat(5000))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(!e.to_string().contains('\n'));
    let config = ExportConfig::new("d").with_description("y".repeat(5000));
    assert!(Server::new(Arc::clone(&img), config).is_err());
    for limits in [
        Limits {
            max_connections: 0,
            ..Limits::default()
        },
        Limits {
            max_in_flight: 0,
            ..Limits::default()
        },
        Limits {
            workers: 0,
            ..Limits::default()
        },
        Limits {
            handshake_timeout: Duration::ZERO,
            ..Limits::default()
        },
    ] {
        let e = Server::with_limits(Arc::clone(&img), ExportConfig::new("d"), limits);
        assert_eq!(e.unwrap_err().kind(), ErrorKind::InvalidArgument);
    }
    let s = Server::new(img, ExportConfig::new("")).unwrap();
    assert_eq!(s.size(), (3 << 20) + 1000);
    assert_eq!(s.config().name, "");
}
