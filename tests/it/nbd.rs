//! Live disks over NBD with the built binary: every reading command takes an NBD URI
//! (qemu-nbd, qemu-storage-daemon and nbdkit exports), `--changed qemu:dirty-bitmap:NAME`
//! on backup, diff and bitmap import, re-export with `serve`, and servers that stall, die,
//! fail or answer garbage: exit 2 within a bounded time, no partial output, the repository
//! as it was.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;
use crate::nbdserver::{have, NbdServer};

const MIB: u64 = 1 << 20;

fn json(r: &Run) -> Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r:#?}"))
}

/// A 16 MiB raw disk of qemu-io patterns with holes between them.
fn raw_disk(dir: &Path) {
    qemu_img(dir, &["create", "-q", "-f", "raw", "disk.raw", "16M"]);
    qemu_io(
        dir,
        "raw",
        "disk.raw",
        &[
            "write -P 0xab 0 1M",
            "write -P 0xcd 4M 3M",
            "write -P 0x11 9M 64k",
            "write -P 0x22 15M 1M",
        ],
    );
}

/// Every file of a folder (recursively) with its bytes: a repository "as it was".
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

fn one_error_line(r: &Run, uri: &str) -> String {
    assert_eq!(r.code, Some(2), "{r:#?}");
    let line = r.stderr.trim_end();
    assert_eq!(line.lines().count(), 1, "{r:#?}");
    assert!(
        line.starts_with(&format!("vdisk: error: {uri}")),
        "the error names the URI: {line}"
    );
    line.to_string()
}

#[test]
fn every_reading_command_takes_an_nbd_uri() {
    require_qemu();
    if !have("qemu-nbd") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    raw_disk(dir);
    let q = NbdServer::qemu_nbd(dir, "q", &["-r", "-e", "8", "-f", "raw"], "disk.raw");
    let uri = q.uri("");

    let info = json(vdisk_in(dir, &["info", &uri, "--json"]).expect_code(0, "info"));
    assert_eq!(info["format"], "nbd");
    assert_eq!(info["virtual_size"], 16 * MIB);
    assert_eq!(info["allocated"], 5 * MIB + (64 << 10));
    assert_eq!(info["chain"][0]["read_only"], true);
    assert_eq!(info["chain"][0]["export"], "");
    let text = vdisk_in(dir, &["info", &uri]);
    assert!(
        text.stdout.contains("format: nbd") && text.stdout.contains("read-only"),
        "{}",
        text.stdout
    );

    // The map comes from base:allocation: the file's own map.
    let over_nbd = json(vdisk_in(dir, &["map", &uri, "--json"]).expect_code(0, "map"));
    let direct = json(vdisk_in(dir, &["map", "disk.raw", "--json"]).expect_code(0, "map"));
    assert_eq!(over_nbd, direct);

    let check = vdisk_in(dir, &["check", &uri]);
    check.expect_code(0, "check");
    assert!(check.stdout.contains("No errors"));

    vdisk_in(dir, &["hash", &uri, "-o", "nbd.hashes"]).expect_code(0, "hash");
    vdisk_in(dir, &["hash", "disk.raw", "-o", "file.hashes"]).expect_code(0, "hash");
    assert_eq!(
        std::fs::read(dir.join("nbd.hashes")).unwrap(),
        std::fs::read(dir.join("file.hashes")).unwrap()
    );

    let d = vdisk_in(dir, &["diff", "disk.raw", &uri]);
    d.expect_code(0, "diff");
    assert_eq!(d.stdout, "identical\n");
    // And against the manifest.
    vdisk_in(dir, &["diff", "file.hashes", &uri]).expect_code(0, "diff manifest");

    for out in ["out.raw", "out.vmdk"] {
        let r = vdisk_in(dir, &["convert", &uri, out, "--json"]);
        let s = json(r.expect_code(0, "convert"));
        assert_eq!(s["source"], uri.as_str());
        assert_eq!(s["bytes_read"], 5 * MIB + (64 << 10));
        let c = qemu_img(dir, &["compare", "-f", "raw", "disk.raw", out]);
        assert!(c.contains("identical"), "{c}");
    }

    // -f names a format: an export is the disk the server presents.
    let r = vdisk_in(dir, &["-f", "vmdk", "info", &uri]);
    let line = one_error_line(&r, &uri);
    assert!(line.contains("-f vmdk does not apply"), "{line}");
}

#[test]
fn a_missing_export_or_a_bad_uri_is_named_in_one_line() {
    if !have("qemu-storage-daemon") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("a.raw"), vec![1u8; 1 << 20]).unwrap();
    let mut qsd = NbdServer::storage_daemon(
        dir,
        "qsd",
        &[
            "--blockdev",
            "driver=file,node-name=f0,filename=a.raw,read-only=on",
        ],
    );
    qsd.qmp(r#"{"execute":"block-export-add","arguments":{"type":"nbd","id":"e0","node-name":"f0","name":"alpha"}}"#);
    vdisk_in(dir, &["info", &qsd.uri("alpha")]).expect_code(0, "info alpha");
    let beta = qsd.uri("beta");
    let line = one_error_line(&vdisk_in(dir, &["info", &beta]), &beta);
    assert!(
        line.contains("no export \"beta\"") && line.contains("\"alpha\""),
        "{line}"
    );
    let repo_line = one_error_line(&vdisk_in(dir, &["backup", &beta, "repo"]), &beta);
    assert!(repo_line.contains("no export \"beta\""));
    assert!(
        !dir.join("repo").exists(),
        "a failed first backup leaves no repository"
    );

    for (uri, want) in [
        ("nbds://host/x", "TLS"),
        ("nbd+unix:///x", "socket="),
        ("nbd://host:0/x", "port"),
        (
            "nbd+unix:///x?socket=/nonexistent/vdisk.sock",
            "cannot connect",
        ),
    ] {
        let line = one_error_line(&vdisk_in(dir, &["info", uri]), uri);
        assert!(line.contains(want), "{uri}: {line}");
    }
}

/// A qcow2 disk of 16 MiB with data at [0,2M) and [8M,9M); returns its raw bytes' file.
fn qcow2_disk(dir: &Path) {
    qemu_img(dir, &["create", "-q", "-f", "qcow2", "d.qcow2", "16M"]);
    qemu_io(
        dir,
        "qcow2",
        "d.qcow2",
        &["write -P 5 0 2M", "write -P 6 8M 1M"],
    );
}

#[test]
fn backups_diffs_and_bitmaps_from_a_qemu_dirty_bitmap() {
    require_qemu();
    if !have("qemu-nbd") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    qcow2_disk(dir);
    // The full point, through one socket.
    {
        let q = NbdServer::qemu_nbd(dir, "first", &["-r", "-f", "qcow2"], "d.qcow2");
        let r = vdisk_in(dir, &["backup", &q.uri(""), "repo", "--json"]);
        assert_eq!(json(r.expect_code(0, "full backup"))["kind"], "full");
    }
    qemu_img(
        dir,
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            "d.qcow2",
            "before.raw",
        ],
    );
    // A bitmap from now on; then a write, a zeroing and a discard of data (QEMU marks all
    // three dirty; only the write has data to read).
    qemu_img(dir, &["bitmap", "--add", "d.qcow2", "b1"]);
    qemu_io(
        dir,
        "qcow2",
        "d.qcow2",
        &["write -P 7 3M 128k", "write -z 0 64k", "discard 8M 64k"],
    );
    // Served again under another socket: the same disk for the repository.
    let q = NbdServer::qemu_nbd(
        dir,
        "second",
        &["-r", "-e", "8", "-f", "qcow2", "-B", "b1"],
        "d.qcow2",
    );
    let uri = q.uri("");

    // A name the server does not offer: refused with the list, nothing written.
    let before = snapshot(&dir.join("repo"));
    let line = one_error_line(
        &vdisk_in(
            dir,
            &[
                "backup",
                &uri,
                "repo",
                "--changed",
                "qemu:dirty-bitmap:nope",
            ],
        ),
        &uri,
    );
    assert!(
        line.contains("no dirty bitmap \"nope\"") && line.contains("it offers \"b1\""),
        "{line}"
    );
    assert_eq!(snapshot(&dir.join("repo")), before);

    let r = vdisk_in(
        dir,
        &[
            "backup",
            &uri,
            "repo",
            "--changed",
            "qemu:dirty-bitmap:b1",
            "--json",
        ],
    );
    let s = json(r.expect_code(0, "incremental"));
    assert_eq!(s["kind"], "incremental");
    assert_eq!(s["point"], 2);
    // Only the written blocks are read: the zeroed and discarded ones are recorded as zero.
    assert_eq!(s["bytes_read"], 128 << 10);
    vdisk_in(dir, &["restore", "repo", "restored.raw"]).expect_code(0, "restore");
    let c = qemu_img(
        dir,
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            "restored.raw",
            "d.qcow2",
        ],
    );
    assert!(c.contains("identical"), "{c}");
    vdisk_in(dir, &["verify", "repo"]).expect_code(0, "verify");

    // The same bitmap as a file.
    let r = vdisk_in(
        dir,
        &[
            "bitmap",
            "import",
            &uri,
            "--qemu-bitmap",
            "b1",
            "-o",
            "b1.map",
            "--json",
        ],
    );
    let b = json(r.expect_code(0, "bitmap import"));
    assert_eq!(b["size"], 16 * MIB);
    assert_eq!(b["changed_bytes"], (128 << 10) + (64 << 10) + (64 << 10));
    let shown = json(vdisk_in(dir, &["bitmap", "show", "b1.map", "--json"]).expect_code(0, "show"));
    let ext: Vec<(u64, u64)> = shown["extents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        ext,
        [(0, 64 << 10), (3 * MIB, 128 << 10), (8 * MIB, 64 << 10)]
    );
    let r = vdisk_in(
        dir,
        &[
            "bitmap",
            "import",
            &uri,
            "--qemu-bitmap",
            "b1",
            "--size",
            "1M",
            "-o",
            "x.map",
        ],
    );
    one_error_line(&r, "");

    // diff --changed compares only the dirty blocks: a change the bitmap does not know of
    // (made to the old side here) is not seen, while a plain diff sees it.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("before.raw"))
            .unwrap();
        f.write_all_at(&[0xee; 10], 12 * MIB).unwrap();
    }
    let r = vdisk_in(
        dir,
        &[
            "diff",
            "before.raw",
            &uri,
            "--changed",
            "qemu:dirty-bitmap:b1",
            "--json",
        ],
    );
    let d = json(r.expect_code(1, "diff --changed"));
    let ext: Vec<(u64, u64)> = d["extents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        ext,
        [(0, 64 << 10), (3 * MIB, 128 << 10), (8 * MIB, 64 << 10)]
    );
    let plain = json(vdisk_in(dir, &["diff", "before.raw", &uri, "--json"]).expect_code(1, "diff"));
    assert_eq!(plain["changed_blocks"], 5);
    // A bitmap file works as well, and one of another size is refused.
    let r = vdisk_in(
        dir,
        &["diff", "before.raw", &uri, "--changed", "b1.map", "--json"],
    );
    assert_eq!(
        json(r.expect_code(1, "diff --changed file"))["changed_blocks"],
        4
    );
    vdisk_in(
        dir,
        &[
            "bitmap",
            "import",
            "/dev/null",
            "--size",
            "1M",
            "-o",
            "small.map",
        ],
    );
    let r = vdisk_in(dir, &["diff", "before.raw", &uri, "--changed", "small.map"]);
    assert_eq!(r.code, Some(2), "{r:#?}");
}

#[test]
fn serve_re_exports_an_nbd_export() {
    require_qemu();
    if !have("qemu-nbd") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    raw_disk(dir);
    let q = NbdServer::qemu_nbd(dir, "q", &["-r", "-f", "raw"], "disk.raw");
    let served = serve(dir, &[&q.uri(""), "--socket", "s.sock", "--name", "again"]);
    let c = qemu_img(
        dir,
        &["compare", "-f", "raw", "-F", "raw", "disk.raw", &served.uri],
    );
    assert!(c.contains("identical"), "{c}");
}

/// A repository with one full point of `disk.raw` exported as "" by qemu-nbd.
fn repo_with_a_point(dir: &Path) {
    raw_disk(dir);
    let q = NbdServer::qemu_nbd(dir, "good", &["-r", "-f", "raw"], "disk.raw");
    vdisk_in(dir, &["backup", &q.uri(""), "repo"]).expect_code(0, "full backup");
}

/// Run `vdisk ARGS` with a 1 s NBD timeout.
fn vdisk_quick(dir: &Path, args: &[&str]) -> Run {
    let mut c = Command::new(vdisk_bin());
    c.args(args).current_dir(dir).env("VDISK_NBD_TIMEOUT", "1");
    run(c)
}

#[test]
fn servers_that_stall_fail_or_answer_garbage_end_in_exit_2_leaving_everything_as_it_was() {
    require_qemu();
    if !have("qemu-nbd") || !have("nbdkit") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    repo_with_a_point(dir);
    let before = snapshot(&dir.join("repo"));
    let check = |r: &Run, uri: &str, want: &str, bound: Duration| {
        let line = one_error_line(r, uri);
        assert!(line.contains(want), "{line}");
        assert!(r.elapsed < bound, "{:?}: {line}", r.elapsed);
        assert_eq!(snapshot(&dir.join("repo")), before, "{line}");
        assert!(!dir.join("out.raw").exists(), "{line}");
    };

    // Silence: every read waits 30 s; the timeout (1 s here) ends it.
    let slow = NbdServer::nbdkit(
        dir,
        "slow",
        &["-r", "--filter=delay", "file", "disk.raw", "rdelay=30"],
    );
    let uri = slow.uri("");
    check(
        &vdisk_quick(dir, &["backup", &uri, "repo"]),
        &uri,
        "did not answer in time",
        Duration::from_secs(8),
    );
    check(
        &vdisk_quick(dir, &["convert", &uri, "out.raw"]),
        &uri,
        "did not answer in time",
        Duration::from_secs(8),
    );
    drop(slow);

    // Every read fails with EIO.
    let failing = NbdServer::nbdkit(
        dir,
        "failing",
        &[
            "-r",
            "--filter=error",
            "file",
            "disk.raw",
            "error-pread=EIO",
            "error-pread-rate=100%",
        ],
    );
    let uri = failing.uri("");
    check(
        &vdisk_quick(dir, &["backup", &uri, "repo"]),
        &uri,
        "EIO",
        Duration::from_secs(8),
    );
    check(
        &vdisk_quick(dir, &["convert", &uri, "out.raw"]),
        &uri,
        "EIO",
        Duration::from_secs(8),
    );
    drop(failing);

    // The server dies in the middle of the backup (reads paced to 2 MB/s): the one
    // reconnect finds nobody.
    let mut dying = NbdServer::nbdkit(
        dir,
        "dying",
        &["-r", "--filter=rate", "file", "disk.raw", "rate=2M"],
    );
    let uri = dying.uri("");
    let mut c = Command::new(vdisk_bin());
    c.args(["backup", &uri, "repo"])
        .current_dir(dir)
        .env("VDISK_NBD_TIMEOUT", "2");
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        dying.kill();
    });
    let r = run(c);
    killer.join().unwrap();
    check(&r, &uri, "reconnecting failed", Duration::from_secs(10));

    // Garbage: not an NBD server at all.
    let sock = dir.join("garbage.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten().take(4) {
            let mut s = s;
            let _ = s.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n");
        }
    });
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let t = Instant::now();
    check(
        &vdisk_quick(dir, &["backup", &uri, "repo"]),
        &uri,
        "is not an NBD server",
        Duration::from_secs(5),
    );
    check(
        &vdisk_quick(dir, &["convert", &uri, "out.raw"]),
        &uri,
        "is not an NBD server",
        Duration::from_secs(5),
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    // A bad VDISK_NBD_TIMEOUT is refused before anything.
    let mut c = Command::new(vdisk_bin());
    c.args(["info", &uri])
        .current_dir(dir)
        .env("VDISK_NBD_TIMEOUT", "soon");
    let r = run(c);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("VDISK_NBD_TIMEOUT"), "{}", r.stderr);
}

#[test]
fn a_backup_from_nbd_stays_in_bounded_memory() {
    if !have("nbdkit") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // 1 GiB, a quarter of it random data in scattered runs.
    let k = NbdServer::nbdkit(
        dir,
        "big",
        &["-r", "sparse-random", "size=1G", "percent=25", "seed=7"],
    );
    let uri = k.uri("");
    let runs = vdisk_measured(dir, &[vec!["backup", &uri, "repo", "--json"]]);
    let r = &runs[0];
    assert_eq!(r.code, Some(0), "{r:#?}");
    let s = json(r);
    assert!(s["bytes_read"].as_u64().unwrap() > 200 * MIB, "{s}");
    assert!(r.max_rss < 256 * MIB, "peak RSS {} MiB", r.max_rss / MIB);
    eprintln!(
        "backup of a 1 GiB export ({} MiB of data): {:.2} s, peak RSS {} MiB",
        s["bytes_read"].as_u64().unwrap() / MIB,
        r.elapsed.as_secs_f64(),
        r.max_rss / MIB
    );
}
