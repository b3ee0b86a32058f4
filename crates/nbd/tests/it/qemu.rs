//! qemu-img and qemu-io as NBD clients.

use std::net::TcpListener;
use std::sync::Arc;

use vdisk_nbd::{ExportConfig, Server};

use crate::common::*;

#[test]
fn qemu_img_convert_and_compare_raw_export_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = raw_image(dir);
    let srv = Running::unix(dir, open_raw(&src), ExportConfig::new("disk"));
    qemu_img(
        dir,
        &["convert", "-f", "raw", "-O", "raw", &srv.uri, "out.raw"],
    );
    assert_eq!(file_bytes(&dir.join("out.raw")), file_bytes(&src));
    let out = qemu_img(
        dir,
        &["compare", "-f", "raw", "-F", "raw", "src.raw", &srv.uri],
    );
    assert!(out.contains("Images are identical"), "{out}");
}

#[test]
fn qemu_img_map_over_nbd_shows_data_and_holes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = raw_image(dir);
    let srv = Running::unix(dir, open_raw(&src), ExportConfig::new("disk"));
    let direct = qemu_map(dir, &["-f", "raw", "src.raw"]);
    let over_nbd = qemu_map(dir, &["-f", "raw", &srv.uri]);
    let m = 1u64 << 20;
    // Data where it was written, holes (data false, zero true) elsewhere.
    assert_eq!(over_nbd[0], (0, m, true, false));
    assert_eq!(over_nbd[1], (m, 2 * m, false, true));
    assert_eq!(over_nbd[2], (3 * m, m / 2, true, false));
    assert!(!over_nbd[3].2);
    assert_eq!(direct, over_nbd, "the export's map is the file's map");
}

#[test]
fn vmdk_chain_over_nbd_compares_equal_and_maps_zeroed_grains() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let link = vmdk_chain(dir);
    let img = Arc::new(vdisk_image::open(&link).unwrap());
    let srv = Running::unix(dir, img, ExportConfig::new("chain"));
    let out = qemu_img(
        dir,
        &["compare", "-f", "vmdk", "-F", "raw", "link.vmdk", &srv.uri],
    );
    assert!(out.contains("Images are identical"), "{out}");
    qemu_img(
        dir,
        &["convert", "-f", "raw", "-O", "raw", &srv.uri, "out.raw"],
    );
    qemu_img(
        dir,
        &["convert", "-f", "vmdk", "-O", "raw", "link.vmdk", "ref.raw"],
    );
    assert_eq!(
        file_bytes(&dir.join("out.raw")),
        file_bytes(&dir.join("ref.raw"))
    );

    let map = qemu_map(dir, &["-f", "raw", &srv.uri]);
    let at = |off: u64| {
        *map.iter()
            .find(|e| e.0 <= off && off < e.0 + e.1)
            .unwrap_or_else(|| panic!("{off} not in {map:?}"))
    };
    let k = 1u64 << 10;
    // Parent data, zeroed grains (allocated zero: data and zero), unallocated (hole).
    assert_eq!((at(0).2, at(0).3), (true, false));
    assert_eq!((at(300 * k).2, at(300 * k).3), (true, true), "{map:?}");
    assert_eq!((at(520 * k).2, at(520 * k).3), (true, true), "{map:?}");
    assert_eq!((at(3 << 20).2, at(3 << 20).3), (true, false));
    assert_eq!((at(5 << 20).2, at(5 << 20).3), (false, true));
}

#[test]
fn qemu_io_reads_patterns_read_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = raw_image(dir);
    let srv = Running::unix(dir, open_raw(&src), ExportConfig::new("disk"));
    qemu_io(
        dir,
        &["-r", "-f", "raw", &srv.uri],
        &[
            "read -P 0xab 0 1M",
            "read -P 0 1M 2M",
            "read -P 0xcd 3M 512k",
            "read -P 0x22 7000001 1000",
            "read -P 0 7001001 100",
            "read -P 0xab 4095 2",
        ],
    );
    // A wrong pattern is noticed (the check is real).
    let o = run(
        dir,
        "qemu-io",
        &["-r", "-f", "raw", &srv.uri, "-c", "read -P 0xab 1M 4k"],
    );
    assert!(
        o.stdout.contains("Pattern verification failed"),
        "{}",
        o.stdout
    );
    // Writes are refused by the read-only export.
    let o = run(
        dir,
        "qemu-io",
        &["-f", "raw", &srv.uri, "-c", "write -P 1 0 4k"],
    );
    assert!(
        o.code != Some(0) || o.stdout.contains("failed") || o.stderr.contains("read-only"),
        "write went through: {}{}",
        o.stdout,
        o.stderr
    );
    assert_eq!(file_bytes(&src)[0], 0xab);
}

#[test]
fn qcow2_overlay_on_the_export_writes_locally_and_reads_through() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = raw_image(dir);
    let before = file_bytes(&src);
    let srv = Running::unix(dir, open_raw(&src), ExportConfig::new("disk"));
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
        &["-f", "qcow2", "overlay.qcow2"],
        &[
            "write -P 0x99 512k 64k",
            "read -P 0x99 512k 64k",
            "read -P 0xab 0 512k",
            "read -P 0xab 576k 448k",
            "read -P 0xcd 3M 512k",
        ],
    );
    assert_eq!(file_bytes(&src), before, "the export is never written");
}

#[test]
fn tcp_listener_serves_qemu() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = raw_image(dir);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = Arc::new(Server::new(open_raw(&src), ExportConfig::new("disk")).unwrap());
    let stop = server.shutdown_handle();
    let s = Arc::clone(&server);
    let t = std::thread::spawn(move || s.serve_tcp(listener));
    let uri = vdisk_nbd::tcp_uri("127.0.0.1", port, "disk");
    assert_eq!(uri, format!("nbd://127.0.0.1:{port}/disk"));
    let out = qemu_img(dir, &["compare", "-f", "raw", "-F", "raw", "src.raw", &uri]);
    assert!(out.contains("Images are identical"), "{out}");
    qemu_io(dir, &["-r", "-f", "raw", &uri], &["read -P 0xcd 3M 512k"]);
    stop.shutdown();
    t.join().unwrap().unwrap();
}

#[test]
fn export_names_wrong_refused_default_and_encoded_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = raw_image(dir);
    let srv = Running::unix(dir, open_raw(&src), ExportConfig::new("my disk"));
    assert!(srv.uri.contains("my%20disk"), "{}", srv.uri);
    qemu_io(dir, &["-r", "-f", "raw", &srv.uri], &["read -P 0xab 0 4k"]);
    let default = vdisk_nbd::unix_uri("", &srv.socket);
    qemu_io(dir, &["-r", "-f", "raw", &default], &["read -P 0xab 0 4k"]);
    let wrong = vdisk_nbd::unix_uri("other", &srv.socket);
    let o = run(dir, "qemu-img", &["info", "-f", "raw", &wrong]);
    assert_ne!(o.code, Some(0));
    assert!(o.stderr.contains("other"), "{}", o.stderr);
}

#[test]
fn qemu_io_sees_eio_for_a_damaged_range_and_keeps_reading() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = raw_image(dir);
    let img = Arc::new(FailingImage {
        inner: open_raw(&src),
        bad_start: 64 << 10,
        bad_end: 128 << 10,
    });
    let srv = Running::unix(dir, img, ExportConfig::new("disk"));
    let o = run(
        dir,
        "qemu-io",
        &[
            "-r",
            "-f",
            "raw",
            &srv.uri,
            "-c",
            "read -P 0xab 0 64k",
            "-c",
            "read 64k 4k",
            "-c",
            "read -P 0xab 128k 64k",
        ],
    );
    assert!(
        o.stdout.contains("read failed: Input/output error"),
        "{}",
        o.stdout
    );
    assert_eq!(
        o.stdout.matches("read 65536/65536").count(),
        2,
        "{}",
        o.stdout
    );
}
