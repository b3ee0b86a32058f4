//! `vdisk serve`: the built binary as an NBD server, read by real clients only (qemu-img,
//! qemu-io, and nbdinfo where Debian's `libnbd-bin` installs): images and restore points read
//! byte for byte as they read directly, holes mapped, writes refused, a qcow2 overlay on the
//! export (instant recovery), damaged grains answered with EIO, signals with clients
//! connected, and the errors an operator meets.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

const MIB: u64 = 1 << 20;

/// The URI `vdisk serve --socket s.sock --export NAME` prints when run in `dir`: the export
/// name as given, the socket's absolute path.
fn unix_uri_in(dir: &Path, name: &str) -> String {
    let sock = dir.canonicalize().unwrap().join("s.sock");
    format!("nbd+unix:///{name}?socket={}", sock.display())
}

/// Serve `source` (relative to `dir`) on `dir/s.sock` as export `name`, with `extra`
/// arguments; checks the printed URI.
fn serve_unix(dir: &Path, source: &str, name: &str, extra: &[&str]) -> Served {
    let mut args = vec![source, "--socket", "s.sock", "--export", name];
    args.extend_from_slice(extra);
    let s = serve(dir, &args);
    assert_eq!(s.uri, unix_uri_in(dir, name), "the printed URI");
    s
}

/// A 32 MiB raw disk of qemu-io patterns with holes between them.
fn raw_disk(dir: &Path, name: &str) {
    qemu_img(dir, &["create", "-q", "-f", "raw", name, "32M"]);
    qemu_io(
        dir,
        "raw",
        name,
        &[
            "write -P 0xab 0 1M",
            "write -P 0xcd 8M 3M",
            "write -P 0x11 20M 64k",
            "write -P 0x22 31M 1M",
        ],
    );
}

/// `qemu-img map --output=json ARGS` as (start, length, data, zero) rows.
fn map(dir: &Path, args: &[&str]) -> Vec<(u64, u64, bool, bool)> {
    let mut a = vec!["map", "--output=json"];
    a.extend_from_slice(args);
    let v: Value = serde_json::from_str(&qemu_img(dir, &a)).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["start"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["data"].as_bool().unwrap(),
                e["zero"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// (data, zero) at `off` in a map.
fn at(map: &[(u64, u64, bool, bool)], off: u64) -> (bool, bool) {
    let e = map
        .iter()
        .find(|e| e.0 <= off && off < e.0 + e.1)
        .unwrap_or_else(|| panic!("{off} is not in {map:?}"));
    (e.2, e.3)
}

/// The map over NBD covers the disk, with data at each of `data` and a hole (read as zero,
/// no data) at each of `holes`.
fn assert_map(dir: &Path, uri: &str, size: u64, data: &[u64], holes: &[u64]) {
    let m = map(dir, &["-f", "raw", uri]);
    assert_eq!(m.iter().map(|e| e.1).sum::<u64>(), size, "{m:?}");
    for &off in data {
        assert!(at(&m, off).0, "data at {off}: {m:?}");
    }
    for &off in holes {
        assert_eq!(at(&m, off), (false, true), "a hole at {off}: {m:?}");
    }
}

/// Wherever `qemu-img map ARGS` of the source shows a hole (no data, reads as zero), so does
/// the map of the export: clients that skip holes skip the same ranges.
fn assert_same_holes(dir: &Path, uri: &str, source: &[&str]) {
    let src = map(dir, source);
    let over = map(dir, &["-f", "raw", uri]);
    for &(start, len, data, zero) in &src {
        if data || !zero {
            continue;
        }
        for e in over
            .iter()
            .filter(|e| e.0 < start + len && start < e.0 + e.1)
        {
            assert_eq!(
                (e.2, e.3),
                (false, true),
                "the source has a hole at {start}+{len}, the export {e:?}; source {src:?}, export {over:?}"
            );
        }
    }
}

/// `qemu-img compare` of the export with `file` (of format `fmt`) says identical, and
/// `qemu-img convert` of the export is `reference` byte for byte.
fn assert_reads_as(dir: &Path, uri: &str, file: &str, fmt: &str, reference: &str) {
    let out = qemu_img(dir, &["compare", "-f", "raw", "-F", fmt, uri, file]);
    assert!(out.contains("Images are identical"), "{out}");
    let _ = std::fs::remove_file(dir.join("out.raw"));
    qemu_img(dir, &["convert", "-f", "raw", "-O", "raw", uri, "out.raw"]);
    assert_same_bytes(&dir.join("out.raw"), &dir.join(reference));
}

/// Run `qemu-io ARGS` (which may fail), returning the run.
fn qemu_io_run(dir: &Path, args: &[&str]) -> Run {
    let mut c = Command::new("qemu-io");
    c.args(args).current_dir(dir);
    run(c)
}

#[test]
fn raw_image_reads_maps_and_refuses_writes() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    raw_disk(dir, "disk.raw");
    let before = std::fs::read(dir.join("disk.raw")).unwrap();
    let srv = serve_unix(dir, "disk.raw", "disk", &[]);
    let uri = srv.uri.clone();
    assert_reads_as(dir, &uri, "disk.raw", "raw", "disk.raw");
    assert_map(
        dir,
        &uri,
        32 * MIB,
        &[0, 8 * MIB, 10 * MIB, 20 * MIB, 31 * MIB],
        &[MIB, 4 * MIB, 12 * MIB, 25 * MIB],
    );
    assert_same_holes(dir, &uri, &["-f", "raw", "disk.raw"]);

    // Pattern reads, read-only, at odd offsets and lengths too.
    let r = qemu_io_run(
        dir,
        &[
            "-r",
            "-f",
            "raw",
            &uri,
            "-c",
            "read -P 0xab 0 1M",
            "-c",
            "read -P 0 1M 7M",
            "-c",
            "read -P 0xcd 8M 3M",
            "-c",
            "read -P 0xab 1048575 1",
            "-c",
            "read -P 0 1048576 1",
            "-c",
            "read -P 0x11 20971521 12345",
            "-c",
            "read -P 0x22 33554431 1",
        ],
    );
    assert_eq!(r.code, Some(0), "{r:#?}");
    assert!(!r.stdout.contains("failed"), "{}", r.stdout);
    // The check is real: a wrong pattern is noticed.
    let r = qemu_io_run(dir, &["-r", "-f", "raw", &uri, "-c", "read -P 0xab 1M 4k"]);
    assert!(r.stdout.contains("Pattern verification failed"), "{r:#?}");

    // A write is refused: the export says it is read-only, so qemu refuses to open it for
    // writing ("Permission denied"; a client that writes anyway gets EPERM, as the nbd
    // crate's tests show), and the image is unchanged.
    let r = qemu_io_run(dir, &["-f", "raw", &uri, "-c", "write -P 0x99 0 64k"]);
    let said = format!("{}{}", r.stdout, r.stderr);
    assert!(
        r.code != Some(0)
            && ["Permission denied", "read-only", "not permitted"]
                .iter()
                .any(|m| said.contains(m)),
        "the write was not refused: {r:#?}"
    );
    assert!(!said.contains("wrote"), "{said}");
    assert_eq!(std::fs::read(dir.join("disk.raw")).unwrap(), before);
    let r = qemu_io_run(dir, &["-r", "-f", "raw", &uri, "-c", "read -P 0xab 0 64k"]);
    assert!(!r.stdout.contains("failed"), "{r:#?}");
}

#[test]
fn nbdinfo_lists_the_export_and_maps_holes() {
    require_qemu();
    if !have_tool("nbdinfo") {
        eprintln!("skipped: nbdinfo is not installed (Debian: apt-get install libnbd-bin)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    raw_disk(dir, "disk.raw");
    let srv = serve_unix(dir, "disk.raw", "disk", &[]);
    let list = tool(dir, "nbdinfo", &["--list", &srv.uri]);
    assert!(list.contains("export=\"disk\""), "{list}");
    assert!(list.contains("33554432"), "the size: {list}");
    assert!(list.contains("is_read_only: true"), "{list}");
    let info = tool(dir, "nbdinfo", &["--json", &srv.uri]);
    let v: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["exports"][0]["export-name"], "disk", "{info}");
    assert_eq!(v["exports"][0]["export-size"], 32 * MIB, "{info}");

    // `nbdinfo --map`: "START LENGTH TYPE DESCRIPTION" lines covering the disk.
    let out = tool(dir, "nbdinfo", &["--map", &srv.uri]);
    let rows: Vec<(u64, u64, String)> = out
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f.get(3).unwrap_or(&"").to_string(),
            )
        })
        .collect();
    assert_eq!(rows.iter().map(|r| r.1).sum::<u64>(), 32 * MIB, "{out}");
    let kind = |off: u64| {
        rows.iter()
            .find(|r| r.0 <= off && off < r.0 + r.1)
            .map(|r| r.2.clone())
            .unwrap()
    };
    assert_eq!(kind(0), "data", "{out}");
    assert_eq!(kind(9 * MIB), "data", "{out}");
    assert_eq!(kind(2 * MIB), "hole,zero", "{out}");
    assert_eq!(kind(25 * MIB), "hole,zero", "{out}");
}

#[test]
fn qemu_made_vmdk_chain_of_three_links_reads_byte_identical() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    qemu_create_vmdk(dir, "base.vmdk", "32M", &[]);
    qemu_io(
        dir,
        "vmdk",
        "base.vmdk",
        &["write -P 0x31 0 4M", "write -P 0x32 16M 2M"],
    );
    for (parent, link, cmds) in [
        (
            "base.vmdk",
            "l1.vmdk",
            [
                "write -P 0x41 1M 128k",
                "write -z 16M 256k",
                "write -P 0x42 24M 1M",
            ],
        ),
        (
            "l1.vmdk",
            "l2.vmdk",
            [
                "write -P 0x51 3M 64k",
                "write -P 0x52 24M 64k",
                "write -P 0x53 30M 70k",
            ],
        ),
    ] {
        qemu_img(
            dir,
            &[
                "create", "-q", "-f", "vmdk", "-b", parent, "-F", "vmdk", link,
            ],
        );
        qemu_io(dir, "vmdk", link, &cmds);
    }
    qemu_img(
        dir,
        &["convert", "-f", "vmdk", "-O", "raw", "l2.vmdk", "ref.raw"],
    );
    let srv = serve_unix(dir, "l2.vmdk", "chain", &[]);
    assert_reads_as(dir, &srv.uri, "l2.vmdk", "vmdk", "ref.raw");
    assert_map(
        dir,
        &srv.uri,
        32 * MIB,
        &[0, MIB, 3 * MIB, 17 * MIB, 24 * MIB, 30 * MIB],
        &[5 * MIB, 12 * MIB, 20 * MIB, 28 * MIB],
    );
    assert_same_holes(dir, &srv.uri, &["-f", "vmdk", "l2.vmdk"]);
    let r = qemu_io_run(
        dir,
        &[
            "-r",
            "-f",
            "raw",
            &srv.uri,
            "-c",
            "read -P 0x31 0 1M",
            "-c",
            "read -P 0x41 1M 128k",
            "-c",
            "read -P 0x51 3M 64k",
            "-c",
            "read -P 0 16M 256k",
            "-c",
            "read -P 0x32 17M 1M",
            "-c",
            "read -P 0x52 24M 64k",
            "-c",
            "read -P 0x42 25231360 983040",
        ],
    );
    assert!(r.code == Some(0) && !r.stdout.contains("failed"), "{r:#?}");
}

#[test]
fn stream_optimized_image_reads_byte_identical() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    raw_disk(dir, "disk.raw");
    qemu_to_vmdk(dir, "streamOptimized", "disk.raw", "stream.vmdk");
    let srv = serve_unix(dir, "stream.vmdk", "stream", &[]);
    assert_reads_as(dir, &srv.uri, "stream.vmdk", "vmdk", "disk.raw");
    assert_map(dir, &srv.uri, 32 * MIB, &[0, 8 * MIB], &[4 * MIB, 25 * MIB]);
    assert_same_holes(dir, &srv.uri, &["-f", "vmdk", "stream.vmdk"]);
}

/// A repository of three points of a 48 MiB disk made with qemu-io patterns:
/// 1. 0x11 at 0..4M, 0x22 at 8..12M, 0x33 at 40..41M;
/// 2. also 0x44 at 2..3M and 0x55 at 20..21M;
/// 3. also zeros at 40..41M and 0x77 at 44..45M.
fn repository(dir: &Path) {
    qemu_img(dir, &["create", "-q", "-f", "raw", "disk.raw", "48M"]);
    let versions: [&[&str]; 3] = [
        &[
            "write -P 0x11 0 4M",
            "write -P 0x22 8M 4M",
            "write -P 0x33 40M 1M",
        ],
        &["write -P 0x44 2M 1M", "write -P 0x55 20M 1M"],
        &["write -z 40M 1M", "write -P 0x77 44M 1M"],
    ];
    for (i, cmds) in versions.iter().enumerate() {
        qemu_io(dir, "raw", "disk.raw", cmds);
        vdisk_in(dir, &["backup", "disk.raw", "repo"]).expect_code(0, "backup");
        std::fs::copy(dir.join("disk.raw"), dir.join(format!("v{}.raw", i + 1))).unwrap();
    }
}

/// `vdisk restore repo restored-N.raw --point N`.
fn restore(dir: &Path, n: u64) -> String {
    let out = format!("restored-{n}.raw");
    vdisk_in(
        dir,
        &[
            "restore",
            "repo",
            &out,
            "--point",
            &n.to_string(),
            "--force",
        ],
    )
    .expect_code(0, "restore");
    out
}

#[test]
fn repository_points_read_as_restore_writes_them() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    repository(dir);
    for (point, n) in [(Some("1"), 1u64), (Some("2"), 2), (None, 3)] {
        let extra: Vec<&str> = point.map(|p| vec!["--point", p]).unwrap_or_default();
        let restored = restore(dir, n);
        assert_same_bytes(&dir.join(&restored), &dir.join(format!("v{n}.raw")));
        let srv = serve_unix(dir, "repo", "point", &extra);
        assert_reads_as(dir, &srv.uri, &restored, "raw", &restored);
        let data: &[u64] = match n {
            1 => &[0, 8 * MIB, 40 * MIB],
            2 => &[0, 2 * MIB, 20 * MIB],
            _ => &[0, 20 * MIB, 44 * MIB],
        };
        assert_map(
            dir,
            &srv.uri,
            48 * MIB,
            data,
            &[5 * MIB, 16 * MIB, 30 * MIB],
        );
        // The disk backed up: its holes are the point's.
        assert_same_holes(dir, &srv.uri, &["-f", "raw", &format!("v{n}.raw")]);
    }
    // The newest point is the default: with no --point, what restore writes without one.
    vdisk_in(dir, &["restore", "repo", "newest.raw"]).expect_code(0, "restore");
    let srv = serve_unix(dir, "repo", "", &[]);
    assert_reads_as(dir, &srv.uri, "newest.raw", "raw", "v3.raw");
}

#[test]
fn qcow2_overlay_on_a_point_takes_writes_and_reads_through() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    repository(dir);
    let restored = restore(dir, 2);
    let srv = serve_unix(dir, "repo", "disk", &["--point", "2"]);
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            &srv.uri,
            "-F",
            "raw",
            "overlay.qcow2",
        ],
    );
    qemu_io(
        dir,
        "qcow2",
        "overlay.qcow2",
        &["write -P 0x5c 1M 64k", "write -P 0x5d 30M 4k"],
    );
    qemu_io(
        dir,
        "qcow2",
        "overlay.qcow2",
        &[
            "read -P 0x5c 1M 64k",
            "read -P 0x5d 30M 4k",
            "read -P 0x11 0 1M",
            "read -P 0x11 1114112 917504",
            "read -P 0x44 2M 1M",
            "read -P 0x55 20M 1M",
            "read -P 0 31461376 1M",
        ],
    );
    // The whole overlay is the point with the two writes on it.
    qemu_img(dir, &["convert", "-O", "raw", "overlay.qcow2", "ov.raw"]);
    let want = dir.join(&restored);
    let f = std::fs::OpenOptions::new().write(true).open(&want).unwrap();
    f.write_all_at(&[0x5c; 65536], MIB).unwrap();
    f.write_all_at(&[0x5d; 4096], 30 * MIB).unwrap();
    assert_same_bytes(&dir.join("ov.raw"), &want);
    // The repository did not change: the point still restores as it did.
    let again = restore(dir, 2);
    assert_same_bytes(&dir.join(&again), &dir.join("v2.raw"));

    // Moving back to a disk of its own, as the README shows: the point restored (done above,
    // while the overlay was in use), the overlay put on the copy (same bytes, so an unsafe
    // rebase) and committed into it. The copy is then the overlay, and needs no server.
    qemu_img(
        dir,
        &[
            "rebase",
            "-u",
            "-f",
            "qcow2",
            "-b",
            &again,
            "-F",
            "raw",
            "overlay.qcow2",
        ],
    );
    drop(srv);
    qemu_img(dir, &["commit", "-q", "-f", "qcow2", "overlay.qcow2"]);
    assert_same_bytes(&dir.join(&again), &want);
}

/// Run the NBD handshake on `sock` up to transmission (fixed newstyle, `NBD_OPT_EXPORT_NAME`),
/// returning the export size the server announced.
fn handshake(sock: &mut UnixStream, name: &str) -> u64 {
    let mut hello = [0u8; 18];
    sock.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..16], b"NBDMAGICIHAVEOPT");
    // NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES.
    sock.write_all(&3u32.to_be_bytes()).unwrap();
    let mut opt = b"IHAVEOPT".to_vec();
    opt.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
    opt.extend_from_slice(&(name.len() as u32).to_be_bytes());
    opt.extend_from_slice(name.as_bytes());
    sock.write_all(&opt).unwrap();
    let mut reply = [0u8; 10]; // size, transmission flags (no zeroes)
    sock.read_exact(&mut reply).unwrap();
    u64::from_be_bytes(reply[..8].try_into().unwrap())
}

/// How many threads of process `pid` serve an NBD connection (vdisk-nbd names them).
fn connection_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|c| c.trim() == "nbd-connection")
                .count()
        })
        .unwrap_or(0)
}

/// SIGTERM or SIGINT with an idle client (in transmission) and a busy one (a `qemu-img
/// convert` loop): the server removes its socket and exits with status 0 within 2 s.
fn stops_on(sig: libc::c_int) {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    qemu_img(dir, &["create", "-q", "-f", "raw", "disk.raw", "64M"]);
    qemu_io(dir, "raw", "disk.raw", &["write -P 0x61 0 64M"]);
    let mut srv = serve_unix(dir, "disk.raw", "disk", &[]);
    let mut idle = UnixStream::connect(dir.join("s.sock")).unwrap();
    assert_eq!(handshake(&mut idle, "disk"), 64 * MIB);
    let mut busy = Command::new("sh")
        .arg("-c")
        .arg(r#"while qemu-img convert -f raw -O raw "$0" out.raw; do rm -f out.raw; done"#)
        .arg(&srv.uri)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Signal while both clients are connected: the server runs a thread per connection.
    let t = Instant::now();
    while connection_threads(srv.pid()) < 2 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the convert loop did not connect"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(srv.running(), "{}", srv.stderr());
    let t = Instant::now();
    srv.signal(sig);
    let status = srv.wait_timeout(Duration::from_secs(10));
    let took = t.elapsed();
    let _ = busy.kill();
    let _ = busy.wait();
    let status = status.unwrap_or_else(|| panic!("still running 10 s after signal {sig}"));
    assert!(
        took < Duration::from_secs(2),
        "took {took:?} to stop on signal {sig}"
    );
    assert_eq!(status.code(), Some(0), "{status:?}: {}", srv.stderr());
    assert!(!dir.join("s.sock").exists(), "the socket is still there");
    // The idle client was disconnected.
    idle.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut b = [0u8; 1];
    assert!(matches!(idle.read(&mut b), Ok(0) | Err(_)));
}

#[test]
fn sigterm_with_clients_connected_removes_the_socket_and_exits_0() {
    stops_on(libc::SIGTERM);
}

#[test]
fn sigint_with_clients_connected_removes_the_socket_and_exits_0() {
    stops_on(libc::SIGINT);
}

/// The sockets listening on TCP `port` in this network namespace, as /proc/net/tcp and
/// tcp6 show them: hex local addresses.
fn tcp_listeners(port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // f[1] is ADDR:PORT (hex), f[3] the state: 0A is LISTEN.
            let Some((addr, p)) = f[1].rsplit_once(':') else {
                continue;
            };
            if f[3] == "0A" && u16::from_str_radix(p, 16) == Ok(port) {
                out.push(addr.to_string());
            }
        }
    }
    out
}

#[test]
fn listen_on_tcp_binds_only_the_given_address() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    raw_disk(dir, "disk.raw");
    // A name with a space: percent-encoded in the URI, and clients ask for it as given
    // (the server answers only to its name and to the default, empty one).
    let srv = serve(
        dir,
        &["disk.raw", "--listen", "127.0.0.1:0", "--name", "vm 1"],
    );
    let port: u16 = srv
        .uri
        .strip_prefix("nbd://127.0.0.1:")
        .and_then(|r| r.strip_suffix("/vm%201"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not nbd://127.0.0.1:PORT/vm%201: {}", srv.uri));
    assert_ne!(port, 0);
    // 127.0.0.1 is 0100007F in /proc/net/tcp: nothing on 0.0.0.0 or :: for that port.
    assert_eq!(tcp_listeners(port), vec!["0100007F".to_string()]);
    assert_reads_as(dir, &srv.uri, "disk.raw", "raw", "disk.raw");
    // Another name is not this export.
    let wrong = srv.uri.replace("/vm%201", "/vm%202");
    let mut c = Command::new("qemu-img");
    c.args(["info", &wrong]).current_dir(dir);
    assert_ne!(run(c).code, Some(0), "{wrong} was served");
}

/// Flip a byte of the first block point 2 stored: the block of 0x44 its writes start with
/// at 2M (the sixteen blocks of 2M..3M are equal: stored once), first in the pack its backup
/// wrote (the second pack made, after point 1's).
fn damage_point_2(dir: &Path) {
    let mut packs = Vec::new();
    for d in std::fs::read_dir(dir.join("repo/data")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let f = f.unwrap();
            packs.push((f.metadata().unwrap().modified().unwrap(), f.path()));
        }
    }
    packs.sort();
    assert_eq!(packs.len(), 3, "one pack per backup");
    let p = &packs[1].1;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap();
    let at = 10;
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[!b[0]], at).unwrap();
}

#[test]
fn damaged_grain_reads_as_eio_and_the_rest_still_reads() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    repository(dir);
    damage_point_2(dir);
    let mut srv = serve_unix(dir, "repo", "disk", &["--point", "2"]);
    let uri = srv.uri.clone();
    let read = |cmd: &str| qemu_io_run(dir, &["-r", "-f", "raw", &uri, "-c", cmd]);
    for cmd in [
        "read 2M 64k",
        "read 2097162 1",
        "read 1M 2M",
        "read -P 0x44 2M 4k",
        "read -P 0x44 2162688 983040",
    ] {
        let r = read(cmd);
        assert!(
            r.stdout.contains("Input/output error") || r.stderr.contains("Input/output error"),
            "{cmd}: {r:#?}"
        );
        assert!(!r.stdout.contains("Pattern verification"), "{cmd}: {r:#?}");
    }
    for cmd in [
        "read -P 0x11 0 2M",
        "read -P 0x55 20M 1M",
        "read -P 0x22 8M 4M",
    ] {
        let r = read(cmd);
        assert!(
            r.code == Some(0) && !r.stdout.contains("failed"),
            "{cmd}: {r:#?}"
        );
    }
    // A whole copy fails rather than return other bytes; the server stays up and serves.
    let mut c = Command::new("qemu-img");
    c.args(["convert", "-f", "raw", "-O", "raw", &uri, "out.raw"])
        .current_dir(dir);
    assert_ne!(run(c).code, Some(0), "a copy of a damaged point succeeded");
    assert!(srv.running(), "{}", srv.stderr());
    let r = read("read -P 0x11 0 1M");
    assert!(r.code == Some(0) && !r.stdout.contains("failed"), "{r:#?}");
    // Point 1 does not read through point 2: it is served whole.
    let p1 = serve(
        dir,
        &[
            "repo", "--point", "1", "--socket", "p1.sock", "--export", "p1",
        ],
    );
    let restored = restore(dir, 1);
    assert_reads_as(dir, &p1.uri, &restored, "raw", "v1.raw");
}

#[test]
fn stale_socket_is_replaced_and_other_files_are_refused() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    raw_disk(dir, "disk.raw");
    // A killed server leaves its socket behind; the next one replaces it.
    let mut first = serve_unix(dir, "disk.raw", "disk", &[]);
    first.signal(libc::SIGKILL);
    first.wait_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        dir.join("s.sock").exists(),
        "SIGKILL left no socket to test with"
    );
    let srv = serve_unix(dir, "disk.raw", "disk", &[]);
    assert_reads_as(dir, &srv.uri, "disk.raw", "raw", "disk.raw");

    // A live server's socket is not taken over.
    let r = vdisk_in(dir, &["serve", "disk.raw", "--socket", "s.sock"]);
    r.expect_code(2, "serve on a live socket");
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    let out = qemu_img(
        dir,
        &["compare", "-f", "raw", "-F", "raw", &srv.uri, "disk.raw"],
    );
    assert!(out.contains("Images are identical"), "{out}");

    // A regular file at the socket path is refused and left alone.
    std::fs::write(dir.join("notes.sock"), b"keep me").unwrap();
    let r = vdisk_in(dir, &["serve", "disk.raw", "--socket", "notes.sock"]);
    r.expect_code(2, "serve on a regular file");
    assert!(r.stderr.starts_with("vdisk: error: "), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("notes.sock"), "{}", r.stderr);
    assert!(
        !r.stderr.contains("--force"),
        "serve has no --force: {}",
        r.stderr
    );
    assert_eq!(std::fs::read(dir.join("notes.sock")).unwrap(), b"keep me");
}

#[test]
fn source_errors_come_before_anything_listens() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    raw_disk(dir, "disk.raw");
    vdisk_in(dir, &["backup", "disk.raw", "repo"]).expect_code(0, "backup");
    for args in [
        // --point on an image that is not a repository.
        &["disk.raw", "--point", "1", "--socket", "s.sock"][..],
        // A SOURCE that does not exist, over a socket and over TCP.
        &["missing.raw", "--socket", "s.sock"],
        &["missing/", "--listen", "127.0.0.1:0"],
        // A point the repository does not hold.
        &["repo", "--point", "7", "--socket", "s.sock"],
    ] {
        let mut a = vec!["serve"];
        a.extend_from_slice(args);
        let r = vdisk_in(dir, &a);
        r.expect_code(2, &a.join(" "));
        assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
        assert!(
            r.stderr.starts_with("vdisk: error: "),
            "{args:?}: {}",
            r.stderr
        );
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr);
        assert!(!dir.join("s.sock").exists(), "{args:?} created the socket");
    }
}
