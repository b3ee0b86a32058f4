//! vdisk's NBD client against real servers: qemu-nbd (read-only, shared, one-shot, with
//! dirty bitmaps), qemu-storage-daemon (named exports), nbdkit (failures and stalls) and
//! vdisk's own server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vdisk_core::{Allocation, DiskImage, ErrorKind, Extent};
use vdisk_io::Layer;
use vdisk_nbd::{ClientOptions, ExportConfig, NbdExport};

use crate::common::*;
use crate::servers::{have, Proc};

/// Data runs of a map as (start, length, data).
fn kinds(map: &[Extent]) -> Vec<(u64, u64, bool)> {
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    for e in map {
        let d = e.allocation == Allocation::Data;
        match out.last_mut() {
            Some(l) if l.0 + l.1 == e.start && l.2 == d => l.1 += e.length,
            _ => out.push((e.start, e.length, d)),
        }
    }
    out
}

/// Read `img` whole through odd-sized, unaligned pieces.
fn read_all_oddly(img: &dyn DiskImage) -> Vec<u8> {
    let size = img.size() as usize;
    let mut out = vec![0u8; size];
    let mut pos = 0usize;
    let mut step = 1usize;
    while pos < size {
        let n = (step * 7919 % (3 << 20)).max(1).min(size - pos);
        img.read_at(&mut out[pos..pos + n], pos as u64).unwrap();
        pos += n;
        step += 1;
    }
    out
}

#[test]
fn qemu_nbd_read_only_export_reads_byte_for_byte_and_maps_as_qemu_does() {
    if !have("qemu-nbd") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = raw_image(dir);
    // Shared (-e): qemu-img reads the export beside the client, for its map.
    let q = Proc::qemu_nbd(dir, "q", &["-r", "-t", "-e", "8", "-f", "raw"], &src);
    let img = q.open("");
    assert_eq!(img.size(), 8 << 20);
    assert!(img.export_info().read_only());
    assert!(img.export_info().block_status);
    assert_eq!(img.format_name(), "nbd");
    assert_eq!(read_all_oddly(&img), file_bytes(&src));
    let mut whole = vec![0u8; 8 << 20];
    img.read_at(&mut whole, 0).unwrap();
    assert_eq!(whole, file_bytes(&src));
    // The map is qemu's own map of the export.
    let uri = q.uri("").to_string();
    let theirs: Vec<(u64, u64, bool)> = qemu_map(dir, &["-f", "raw", &uri])
        .into_iter()
        .map(|(s, l, d, _)| (s, l, d))
        .collect();
    let mine = kinds(&img.allocation(0, img.size()).unwrap());
    assert_eq!(mine, theirs);
    // Holes are unallocated (they read as zero), data is data.
    let m = img.allocation(0, 8 << 20).unwrap();
    assert_eq!(m[0].allocation, Allocation::Data);
    assert!(m.iter().any(|e| e.allocation == Allocation::Unallocated));
    // A window inside a run, unaligned.
    let w = img.allocation(1000, 5000).unwrap();
    assert_eq!((w[0].start, w[0].length), (1000, 5000));
    // Past the end is refused, naming the URI.
    let e = img.read_at(&mut [0u8; 2], (8 << 20) - 1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OutOfBounds);
    assert!(e.to_string().starts_with("nbd+unix:///?socket="), "{e}");
}

#[test]
fn shared_export_is_read_over_several_connections_in_parallel() {
    if !have("qemu-nbd") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (src, want) = pattern_image(dir);
    let q = Proc::qemu_nbd(dir, "q", &["-r", "-t", "-e", "8", "-f", "raw"], &src);
    let img = Arc::new(q.open(""));
    assert!(img.export_info().multi_conn());
    let t = Instant::now();
    while img.connections() < 4 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{}",
            img.connections()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let want = Arc::new(want);
    let threads: Vec<_> = (0..8u64)
        .map(|k| {
            let (img, want) = (Arc::clone(&img), Arc::clone(&want));
            std::thread::spawn(move || {
                for i in 0..40u64 {
                    let off = ((k * 977 + i * 131_071) * 4099) % (want.len() as u64 - 70_000);
                    let len = (1 + (k + i) * 1733 % 69_999) as usize;
                    let mut b = vec![0u8; len];
                    img.read_at(&mut b, off).unwrap();
                    assert_eq!(b, want[off as usize..off as usize + len]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let info = img.info();
    assert_eq!(info.fields["connections"], 4);
}

#[test]
fn a_server_taking_one_client_is_read_over_one_connection_without_waiting() {
    if !have("qemu-nbd") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (src, want) = pattern_image(dir);
    // No -t, no -e: one client, then qemu-nbd exits.
    let q = Proc::qemu_nbd_once(dir, "q", &["-r", "-f", "raw"], &src);
    let t = Instant::now();
    let img = q.open("");
    let mut b = vec![0u8; want.len()];
    img.read_at(&mut b, 0).unwrap();
    assert_eq!(b, want);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert_eq!(img.connections(), 1);
}

/// A qcow2 image with two persistent bitmaps: b0 sees writes at 1M (64 KiB), 5M (128 KiB)
/// and 7M (64 KiB); b1, added after the first two writes, sees only the one at 7M.
fn qcow2_with_bitmaps(dir: &std::path::Path) -> std::path::PathBuf {
    qemu_img(dir, &["create", "-q", "-f", "qcow2", "d.qcow2", "8M"]);
    qemu_img(dir, &["bitmap", "--add", "d.qcow2", "b0"]);
    qemu_io(
        dir,
        &["-f", "qcow2", "d.qcow2"],
        &["write -P 1 1M 64k", "write -P 2 5M 128k"],
    );
    qemu_img(dir, &["bitmap", "--add", "d.qcow2", "b1"]);
    qemu_io(dir, &["-f", "qcow2", "d.qcow2"], &["write -P 3 7M 64k"]);
    dir.join("d.qcow2")
}

fn dirty_of(img: &NbdExport, name: &str) -> (Vec<(u64, u64)>, u64) {
    let mut v = Vec::new();
    let g = img
        .read_bitmap(name, &mut |s, l| {
            v.push((s, l));
            Ok(())
        })
        .unwrap();
    (v, g)
}

#[test]
fn qemu_dirty_bitmaps_are_listed_and_read_and_unknown_ones_refused_with_the_list() {
    if !have("qemu-nbd") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let d = qcow2_with_bitmaps(dir);
    let m = 1u64 << 20;
    let q = Proc::qemu_nbd(
        dir,
        "q",
        &["-r", "-t", "-f", "qcow2", "-B", "b0", "-B", "b1"],
        &d,
    );
    let img = q.open("");
    let mut names = img.export_info().bitmaps.clone();
    names.sort();
    assert_eq!(names, ["b0", "b1"]);
    assert_eq!(
        dirty_of(&img, "b0"),
        (
            vec![(m, 64 << 10), (5 * m, 128 << 10), (7 * m, 64 << 10)],
            64 << 10
        )
    );
    assert_eq!(dirty_of(&img, "b1").0, vec![(7 * m, 64 << 10)]);
    let e = img.read_bitmap("b9", &mut |_, _| Ok(())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let msg = e.to_string();
    assert!(
        msg.contains("\"b9\"") && msg.contains("\"b0\"") && msg.contains("\"b1\""),
        "{msg}"
    );
    assert_eq!(img.bitmaps().len(), 2);
    // One bitmap exported: only it is offered.
    let one = Proc::qemu_nbd(dir, "one", &["-r", "-t", "-f", "qcow2", "-B", "b1"], &d);
    let img1 = one.open("");
    assert_eq!(img1.export_info().bitmaps, ["b1"]);
    let e = img1.read_bitmap("b0", &mut |_, _| Ok(())).unwrap_err();
    assert!(e.to_string().contains("it offers \"b1\""), "{e}");
    // None exported.
    let none = Proc::qemu_nbd(dir, "none", &["-r", "-t", "-f", "qcow2"], &d);
    let e = none
        .open("")
        .read_bitmap("b0", &mut |_, _| Ok(()))
        .unwrap_err();
    assert!(e.to_string().contains("offers none"), "{e}");
}

#[test]
fn storage_daemon_names_the_exports_it_has_when_one_is_missing() {
    if !have("qemu-storage-daemon") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (src, want) = pattern_image(dir);
    let blockdev = format!(
        "driver=file,node-name=file0,filename={},read-only=on",
        src.display()
    );
    let mut qsd = Proc::storage_daemon(dir, "qsd", &["--blockdev", &blockdev]);
    qsd.qmp(r#"{"execute":"block-export-add","arguments":{"type":"nbd","id":"e1","node-name":"file0","name":"alpha"}}"#);
    let img = qsd.open("alpha");
    let mut b = vec![0u8; want.len()];
    img.read_at(&mut b, 0).unwrap();
    assert_eq!(b, want);
    let e = NbdExport::open(&qsd.uri("beta"), &ClientOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let msg = e.to_string();
    assert!(
        msg.starts_with("nbd+unix:///beta?socket=")
            && msg.contains("no export \"beta\"")
            && msg.contains("\"alpha\""),
        "{msg}"
    );
    assert_eq!(msg.lines().count(), 1);
}

#[test]
fn nbdkit_read_errors_are_answers_and_the_connection_stays_usable() {
    if !have("nbdkit") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let trigger = dir.join("fail-now");
    let k = Proc::nbdkit(
        dir,
        "k",
        &[
            "--filter=error",
            "pattern",
            "size=8M",
            "error-pread=EIO",
            "error-pread-rate=100%",
            &format!("error-file={}", trigger.display()),
        ],
    );
    let img = k.open("");
    let mut b = vec![0u8; 1 << 20];
    img.read_at(&mut b, 0).unwrap();
    std::fs::write(&trigger, b"").unwrap();
    let e = img.read_at(&mut b, 1 << 20).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("EIO") && msg.starts_with("nbd+unix://"),
        "{msg}"
    );
    std::fs::remove_file(&trigger).unwrap();
    // Still in step: the next read works on the same connections.
    img.read_at(&mut b, 2 << 20).unwrap();
    // nbdkit's pattern plugin: each 8-byte word is its own offset, big-endian.
    assert_eq!(&b[..8], &(2u64 << 20).to_be_bytes());
}

#[test]
fn a_stalled_server_times_out_within_the_bound() {
    if !have("nbdkit") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let k = Proc::nbdkit(
        dir,
        "k",
        &["--filter=delay", "memory", "size=8M", "rdelay=30"],
    );
    let img = NbdExport::open(
        &k.uri(""),
        &ClientOptions::with_timeout(Duration::from_secs(1)),
    )
    .unwrap();
    let t = Instant::now();
    let e = img.read_at(&mut [0u8; 4096], 0).unwrap_err();
    let took = t.elapsed();
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert!(e.to_string().contains("did not answer in time"), "{e}");
}

#[test]
fn vdisk_serves_to_itself_zeroed_grains_and_all() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let link = vmdk_chain(dir);
    let chain = Arc::new(vdisk_image::open(&link).unwrap());
    let srv = Running::unix(dir, chain.clone(), ExportConfig::new("chain"));
    let img = NbdExport::open(
        &vdisk_nbd::NbdUri::parse(&srv.uri).unwrap(),
        &ClientOptions::default(),
    )
    .unwrap();
    let mut a = vec![0u8; 8 << 20];
    let mut b = vec![0u8; 8 << 20];
    img.read_at(&mut a, 0).unwrap();
    chain.read_at(&mut b, 0).unwrap();
    assert_eq!(a, b);
    // The chain's zeroed grains come back as Zero (not holes), unallocated as Unallocated.
    let theirs = chain.allocation(0, 8 << 20).unwrap();
    let mine = img.allocation(0, 8 << 20).unwrap();
    let strip = |m: &[Extent]| -> Vec<(u64, u64, Allocation)> {
        let mut v: Vec<(u64, u64, Allocation)> = Vec::new();
        for e in m {
            match v.last_mut() {
                Some(l) if l.0 + l.1 == e.start && l.2 == e.allocation => l.1 += e.length,
                _ => v.push((e.start, e.length, e.allocation)),
            }
        }
        v
    };
    assert_eq!(strip(&mine), strip(&theirs));
    assert!(mine.iter().any(|e| e.allocation == Allocation::Zero));
}
