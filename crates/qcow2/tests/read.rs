//! Images qemu-img and qemu-io make, in every layout vdisk reads, read back byte for byte
//! (compared with `qemu-img convert -O raw`) with the same allocation map as `qemu-img map`.

mod common;

use common::*;
use vdisk_core::{Allocation, DiskImage, ErrorKind, Severity};
use vdisk_io::Layer;

const SIZE: u64 = (24 << 20) + 1536;

/// Convert `src.raw` to qcow2 with qemu-img `opts`, then read it back and map it.
fn roundtrip(dir: &std::path::Path, name: &str, opts: &[&str]) -> vdisk_qcow2::Qcow2Image {
    let mut args = vec!["convert", "-O", "qcow2"];
    args.extend_from_slice(opts);
    args.extend_from_slice(&["src.raw", name]);
    qemu_img(dir, &args);
    let img = open(dir, name).unwrap();
    let want = qemu_raw(dir, name);
    assert_same(name, &read_all(&img), &want);
    assert_eq!(our_map(&img), qemu_map(dir, name), "{name}: map");
    let findings = img.check();
    assert!(findings.is_empty(), "{name}: {findings:?}");
    img
}

#[test]
fn qemu_img_convert_layouts() {
    if !have_qemu() {
        return;
    }
    let d = tempdir();
    let dir = d.path();
    let src = make_raw(dir, "src.raw", SIZE, 7);
    let cases: &[(&str, &[&str])] = &[
        ("v3.qcow2", &[]),
        ("v2.qcow2", &["-o", "compat=0.10"]),
        ("c512.qcow2", &["-o", "cluster_size=512"]),
        ("c4k.qcow2", &["-o", "cluster_size=4096"]),
        ("c2m.qcow2", &["-o", "cluster_size=2M"]),
        ("zlib.qcow2", &["-c"]),
        ("zlib512.qcow2", &["-c", "-o", "cluster_size=512"]),
        ("zstd.qcow2", &["-c", "-o", "compression_type=zstd"]),
        (
            "zstd2m.qcow2",
            &["-c", "-o", "compression_type=zstd,cluster_size=2M"],
        ),
        ("v2zlib.qcow2", &["-c", "-o", "compat=0.10"]),
        ("xl2.qcow2", &["-o", "extended_l2=on"]),
        (
            "xl2c.qcow2",
            &["-c", "-o", "extended_l2=on,cluster_size=128k"],
        ),
        ("prealloc.qcow2", &["-o", "preallocation=metadata"]),
        ("lazy.qcow2", &["-o", "lazy_refcounts=on"]),
    ];
    for (name, opts) in cases {
        let img = roundtrip(dir, name, opts);
        assert_eq!(read_all(&img), src, "{name}: the source disk");
        assert!(img.backing().is_none());
    }
    for bits in [1, 2, 4, 8, 32, 64] {
        let name = format!("rc{bits}.qcow2");
        let o = format!("refcount_bits={bits}");
        let img = roundtrip(dir, &name, &["-o", &o]);
        assert_eq!(img.header().refcount_bits, bits);
    }
    let zstd = open(dir, "zstd.qcow2").unwrap();
    let info = zstd.info();
    assert_eq!(info.fields["compression_type"], "zstd");
    assert_eq!(info.fields["compat"], "1.1");
    assert_eq!(
        open(dir, "v2.qcow2").unwrap().info().fields["compat"],
        "0.10"
    );
    assert_eq!(
        open(dir, "xl2.qcow2").unwrap().info().fields["extended_l2"],
        true
    );
}

#[test]
fn zero_clusters_and_subclusters_written_by_qemu_io() {
    if !have_qemu() {
        return;
    }
    let d = tempdir();
    let dir = d.path();
    for (name, opts) in [
        ("z.qcow2", "cluster_size=65536"),
        ("zx.qcow2", "extended_l2=on,cluster_size=65536"),
    ] {
        qemu_img(dir, &["create", "-f", "qcow2", "-o", opts, name, "8M"]);
        qemu_io(
            dir,
            name,
            &[
                "write -P 0x11 0 1M",
                "write -z 64k 128k",      // zero clusters
                "write -z -u 512k 64k",   // zero, unmapped
                "write -P 0x22 2M 2k",    // a subcluster (or part of a cluster)
                "write -P 0x33 2052k 6k", // subclusters 2-4 of the next
                "write -z 4M 4k",
                "discard 768k 64k",
            ],
        );
        let img = open(dir, name).unwrap();
        assert_same(name, &read_all(&img), &qemu_raw(dir, name));
        let map = our_map(&img);
        assert_eq!(map, qemu_map(dir, name), "{name}");
        assert!(
            map.iter().any(|e| e.2 == Allocation::Zero),
            "{name}: {map:?}"
        );
        assert!(img.check().is_empty(), "{name}: {:?}", img.check());
        // next_data skips what holds no data.
        assert_eq!(img.next_data(1 << 20).unwrap(), Some(2 << 20));
        assert_eq!(img.next_data((4 << 20) + 1).unwrap(), None);
    }
}

#[test]
fn backing_files_are_named_not_opened() {
    if !have_qemu() {
        return;
    }
    let d = tempdir();
    let dir = d.path();
    make_raw(dir, "base.raw", 8 << 20, 3);
    qemu_img(dir, &["convert", "-O", "qcow2", "base.raw", "base.qcow2"]);
    // An overlay bigger than its backing file.
    qemu_img(
        dir,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
            "12M",
        ],
    );
    qemu_io(
        dir,
        "top.qcow2",
        &[
            "write -P 0x44 1M 64k",
            "write -z 2M 64k",
            "write -P 0x55 10M 4k",
        ],
    );
    let top = open(dir, "top.qcow2").unwrap();
    let b = top.backing().unwrap();
    assert_eq!(b.names, [std::path::PathBuf::from("base.qcow2")]);
    assert_eq!(b.format.as_deref(), Some("qcow2"));
    assert_eq!(top.size(), 12 << 20);
    // The layer alone: its own clusters, unallocated elsewhere.
    let map = our_map(&top);
    assert_eq!(map, qemu_map(dir, "top.qcow2"));
    assert_eq!(
        map.iter()
            .filter(|e| e.2 == Allocation::Data)
            .map(|e| (e.0, e.1))
            .collect::<Vec<_>>(),
        [(1 << 20, 65536), (10 << 20, 65536)]
    );
    assert!(map.contains(&(2 << 20, 65536, Allocation::Zero)));
    // The chain, read by hand: unallocated ranges from the base, zero past its end.
    let base = open(dir, "base.qcow2").unwrap();
    let mut chain = read_all(&top);
    let base_bytes = read_all(&base);
    for (start, len, kind) in &map {
        if *kind == Allocation::Unallocated {
            for i in *start..start + len {
                chain[i as usize] = base_bytes.get(i as usize).copied().unwrap_or(0);
            }
        }
    }
    assert_same("chain", &chain, &qemu_raw(dir, "top.qcow2"));
    let info = top.info();
    assert_eq!(info.fields["backing_file"], "base.qcow2");
    assert_eq!(info.fields["backing_format"], "qcow2");
    assert!(top.check().is_empty());
}

#[test]
fn internal_snapshots_are_listed_and_reads_are_current() {
    if !have_qemu() {
        return;
    }
    let d = tempdir();
    let dir = d.path();
    qemu_img(dir, &["create", "-f", "qcow2", "s.qcow2", "4M"]);
    qemu_io(dir, "s.qcow2", &["write -P 1 0 256k"]);
    qemu_img(dir, &["snapshot", "-c", "first", "s.qcow2"]);
    qemu_io(dir, "s.qcow2", &["write -P 2 64k 64k", "write -P 3 1M 64k"]);
    qemu_img(dir, &["snapshot", "-c", "second one", "s.qcow2"]);
    qemu_io(dir, "s.qcow2", &["write -P 4 0 4k"]);
    let img = open(dir, "s.qcow2").unwrap();
    assert_same("snapshots", &read_all(&img), &qemu_raw(dir, "s.qcow2"));
    let names: Vec<_> = img.snapshots().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["first", "second one"]);
    assert_eq!(img.snapshots()[0].id, "1");
    assert_eq!(img.snapshots()[1].disk_size, Some(4 << 20));
    let info = img.info();
    assert_eq!(info.fields["snapshots"][1]["name"], "second one");
    assert!(info.text.iter().any(|l| l.contains("second one")));
    let findings = img.check();
    assert!(findings.is_empty(), "{findings:?}");
    // Damage: drop the refcount of a cluster the snapshot shares.
    assert_eq!(qemu_check(dir, "s.qcow2")["check-errors"], 0);
}

#[test]
fn external_data_files() {
    if !have_qemu() {
        return;
    }
    let d = tempdir();
    let dir = d.path();
    for (name, opts) in [
        ("ext.qcow2", "data_file=ext.data"),
        ("extraw.qcow2", "data_file=extraw.data,data_file_raw=on"),
    ] {
        qemu_img(dir, &["create", "-f", "qcow2", "-o", opts, name, "4M"]);
        qemu_io(
            dir,
            name,
            &["write -P 7 0 64k", "write -P 8 1M 192k", "write -z 2M 64k"],
        );
        let img = open(dir, name).unwrap();
        assert_same(name, &read_all(&img), &qemu_raw(dir, name));
        assert_eq!(our_map(&img), qemu_map(dir, name), "{name}");
        assert_eq!(img.files().len(), 2);
        assert!(img.info().fields.contains_key("data_file"));
        assert!(img.check().is_empty(), "{name}: {:?}", img.check());
    }
    // A data file named outside the image's folder is refused.
    let sub = dir.join("sub");
    std::fs::create_dir(&sub).unwrap();
    qemu_img(
        &sub,
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "data_file=../ext.data",
            "out.qcow2",
            "4M",
        ],
    );
    let e = open(&sub, "out.qcow2").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PathRefused, "{e}");
    assert!(e.to_string().contains("external data file"), "{e}");
}

#[test]
fn encrypted_images_are_refused_by_name() {
    if !have_qemu() {
        return;
    }
    let d = tempdir();
    let dir = d.path();
    qemu_img(
        dir,
        &[
            "create",
            "-f",
            "qcow2",
            "--object",
            "secret,id=sec0,data=123456",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=sec0",
            "luks.qcow2",
            "4M",
        ],
    );
    let e = open(dir, "luks.qcow2").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(
        e.to_string().ends_with(
            "luks.qcow2: an encrypted qcow2 (LUKS) image: vdisk does not read encrypted images"
        ),
        "{e}"
    );
}

#[test]
fn dirty_with_lazy_refcounts_reads_and_check_warns() {
    if !have_qemu() {
        return;
    }
    let d = tempdir();
    let dir = d.path();
    qemu_img(
        dir,
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "lazy_refcounts=on",
            "l.qcow2",
            "4M",
        ],
    );
    // qemu-io aborts with the image open: the dirty bit stays, refcounts are stale.
    let _ = try_run(
        dir,
        "qemu-io",
        &["-c", "write -P 9 0 64k", "-c", "abort", "l.qcow2"],
    );
    let img = open(dir, "l.qcow2").unwrap();
    assert!(img.unclean_shutdown());
    let mut head = vec![0u8; 65536];
    img.read_at(&mut head, 0).unwrap();
    assert!(head.iter().all(|&b| b == 9));
    let findings = img.check();
    assert!(
        findings[0].message.contains("refcounts may be stale"),
        "{findings:?}"
    );
    assert!(
        findings.iter().all(|f| f.severity == Severity::Warning),
        "{findings:?}"
    );
    assert_eq!(img.info().fields["dirty"], true);
}

#[test]
fn corrupt_bit_reads_and_is_reported() {
    if !have_qemu() {
        return;
    }
    let d = tempdir();
    let dir = d.path();
    qemu_img(dir, &["create", "-f", "qcow2", "c.qcow2", "4M"]);
    qemu_io(dir, "c.qcow2", &["write -P 5 0 64k"]);
    let mut bytes = std::fs::read(dir.join("c.qcow2")).unwrap();
    bytes[79] |= 2; // incompatible features, bit 1
    std::fs::write(dir.join("c.qcow2"), &bytes).unwrap();
    let img = open(dir, "c.qcow2").unwrap();
    assert_same("corrupt", &read_all(&img), &qemu_raw(dir, "c.qcow2"));
    let f = img.check();
    assert!(f
        .iter()
        .any(|f| f.severity == Severity::Error && f.message.contains("corrupt")));
    assert_eq!(img.info().fields["corrupt"], true);
}

/// Set the 16-bit refcount of cluster `c` in a one-block image of 64 KiB clusters.
fn set_refcount(bytes: &mut [u8], c: u64, value: u16) {
    let rt = u64::from_be_bytes(bytes[48..56].try_into().unwrap()) as usize;
    let block = u64::from_be_bytes(bytes[rt..rt + 8].try_into().unwrap()) as usize;
    let at = block + c as usize * 2;
    bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

#[test]
fn check_agrees_with_qemu_img_on_damaged_images() {
    if !have_qemu() {
        return;
    }
    let d = tempdir();
    let dir = d.path();
    qemu_img(dir, &["create", "-f", "qcow2", "good.qcow2", "8M"]);
    qemu_io(
        dir,
        "good.qcow2",
        &["write -P 1 0 192k", "write -P 2 4M 64k"],
    );
    let good = std::fs::read(dir.join("good.qcow2")).unwrap();
    let clusters = good.len() as u64 / 65536;

    // A leak: a cluster past the end of the file, counted in.
    let mut leak = good.clone();
    set_refcount(&mut leak, clusters + 2, 1);
    leak.resize(leak.len() + 3 * 65536, 0);
    set_refcount(&mut leak, clusters, 1);
    std::fs::write(dir.join("leak.qcow2"), &leak).unwrap();
    let q = qemu_check(dir, "leak.qcow2");
    let img = open(dir, "leak.qcow2").unwrap();
    let f = img.check();
    assert_eq!(q["leaks"], 2, "{q}");
    assert!(f.iter().all(|f| f.severity == Severity::Warning), "{f:?}");
    assert!(
        f.iter().any(|f| f.message.contains("2 leaked clusters")),
        "{f:?}"
    );

    // A data cluster with refcount 0: an error for both.
    let mut low = good.clone();
    let last_data = clusters - 1;
    set_refcount(&mut low, last_data, 0);
    std::fs::write(dir.join("low.qcow2"), &low).unwrap();
    let q = qemu_check(dir, "low.qcow2");
    assert!(q["corruptions"].as_u64().unwrap() >= 1, "{q}");
    let f = open(dir, "low.qcow2").unwrap().check();
    assert!(
        f.iter()
            .any(|f| f.severity == Severity::Error && f.message.contains("refcount 0 but 1")),
        "{f:?}"
    );

    // Two L2 entries pointing at one cluster: overlapping data.
    let img = open(dir, "good.qcow2").unwrap();
    let l1 = img.header().l1_table_offset() as usize;
    let l2 =
        (u64::from_be_bytes(good[l1..l1 + 8].try_into().unwrap()) & 0x00ff_ffff_ffff_fe00) as usize;
    let mut twice = good.clone();
    let first: [u8; 8] = twice[l2..l2 + 8].try_into().unwrap();
    twice[l2 + 8..l2 + 16].copy_from_slice(&first);
    std::fs::write(dir.join("twice.qcow2"), &twice).unwrap();
    let q = qemu_check(dir, "twice.qcow2");
    assert!(q["corruptions"].as_u64().unwrap() >= 1, "{q}");
    let f = open(dir, "twice.qcow2").unwrap().check();
    assert!(f.iter().any(|f| f.severity == Severity::Error), "{f:?}");

    // An L2 entry into the L1 table (metadata) and one past the end of the file.
    let mut meta = good.clone();
    meta[l2 + 16..l2 + 24].copy_from_slice(&((1u64 << 63) | l1 as u64).to_be_bytes());
    meta[l2 + 24..l2 + 32].copy_from_slice(&((1u64 << 63) | (1 << 30)).to_be_bytes());
    std::fs::write(dir.join("meta.qcow2"), &meta).unwrap();
    let q = qemu_check(dir, "meta.qcow2");
    assert!(q["corruptions"].as_u64().unwrap() >= 1, "{q}");
    let img = open(dir, "meta.qcow2").unwrap();
    let f = img.check();
    assert!(
        f.iter().any(|f| f.message.contains("overlaps metadata")),
        "{f:?}"
    );
    assert!(
        f.iter()
            .any(|f| f.message.contains("past the end of the file")),
        "{f:?}"
    );
    // Reading the cluster past the end is refused with one line; the rest reads.
    let mut buf = vec![0u8; 65536];
    let e = img.read_at(&mut buf, 3 * 65536).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(!e.to_string().contains('\n'));
    img.read_at(&mut buf, 0).unwrap();
}

#[test]
fn probe_claims_every_qcow_version_and_open_refuses_version_1() {
    if !have_qemu() {
        return;
    }
    let d = tempdir();
    let dir = d.path();
    qemu_img(dir, &["create", "-f", "qcow", "old.qcow", "1M"]);
    qemu_img(dir, &["create", "-f", "qcow2", "new.qcow2", "1M"]);
    for name in ["old.qcow", "new.qcow2"] {
        let head = std::fs::read(dir.join(name)).unwrap();
        let probe = vdisk_io::ProbeBytes {
            head: &head[..head.len().min(4096)],
            tail: &[],
            len: head.len() as u64,
        };
        assert!(
            vdisk_io::Format::probe(&vdisk_qcow2::QCOW2, &probe),
            "{name}"
        );
    }
    let e = open(dir, "old.qcow").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().contains("qcow (version 1)"), "{e}");
    let raw = b"not a qcow image at all".to_vec();
    let probe = vdisk_io::ProbeBytes {
        head: &raw,
        tail: &[],
        len: raw.len() as u64,
    };
    assert!(!vdisk_io::Format::probe(&vdisk_qcow2::QCOW2, &probe));
}
