//! Interoperability with qemu-img 10 (qemu's `vpc` driver): what qemu writes reads back byte
//! for byte; what vdisk writes qemu reads at the size meant and compares equal.

mod common;

use std::path::Path;

use common::*;
use vdisk_core::{copy_into, for_each_extent, Allocation, CopyOptions, DiskImage};
use vdisk_io::{CreateOptions, DeltaParent, Format, Layer};
use vdisk_vhd::{DiskType, SizeSource, VhdImage, VHD};

/// qemu-io writes used on qemu-made disks: data in several blocks, partial blocks, explicit
/// zeros, and the last sector.
const WRITES: &[&str] = &[
    "write -P 0x31 0 200k",
    "write -P 0x32 3M 4k",
    "write -P 0x33 4095k 2k",
    "write -z 5M 64k",
    "write -P 0x34 6M 1M",
];

fn assert_same(ours: &VhdImage, qemu: &[u8], what: &str) {
    assert_eq!(ours.size(), qemu.len() as u64, "{what}: size");
    for piece in [1 << 20, 4096 + 512, 4 << 20] {
        assert!(
            read_all(ours, piece) == qemu,
            "{what}: read in {piece}-byte pieces"
        );
    }
    // The map covers the disk, and every range it calls empty reads as zero.
    let mut pos = 0;
    for_each_extent(ours, |e| {
        assert_eq!(e.start, pos);
        pos = e.end();
        if e.allocation != Allocation::Data {
            let s = &qemu[e.start as usize..e.end() as usize];
            assert!(s.iter().all(|&b| b == 0), "{what}: {e:?} is not zero");
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(pos, ours.size());
    let findings = ours.check();
    assert!(findings.is_empty(), "{what}: {findings:?}");
    // Metadata: the footers, and for a sparse disk its header, table and bitmaps; sorted,
    // apart, inside the file, and no data.
    let regions = ours.metadata();
    let ranges = &regions[0].ranges;
    let len = ours.bytes().len();
    assert!(
        ranges.windows(2).all(|w| w[0].0 + w[0].1 < w[1].0),
        "{what}: {ranges:?}"
    );
    assert!(
        ranges.iter().all(|&(s, n)| n > 0 && s + n <= len),
        "{what}: {ranges:?}"
    );
    assert_eq!(
        ranges.last().map(|&(s, n)| s + n),
        Some(len),
        "{what}: the footer"
    );
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    let blocks = ours.dynamic_header().map_or(0, |h| h.blocks);
    assert!(
        total <= 4096 + blocks * (4 + 4096),
        "{what}: {total} bytes of metadata"
    );
}

#[test]
fn qemu_dynamic_and_fixed_disks_read_back_byte_for_byte() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, opts, size) in [
        ("dyn.vhd", "subformat=dynamic", "10M"),
        ("fixed.vhd", "subformat=fixed", "10M"),
        (
            "dyn-force.vhd",
            "subformat=dynamic,force_size=on",
            "10000384",
        ),
        (
            "fixed-force.vhd",
            "subformat=fixed,force_size=on",
            "10000384",
        ),
    ] {
        run(
            d,
            "qemu-img",
            &["create", "-q", "-f", "vpc", "-o", opts, name, size],
        );
        qemu_io(d, name, WRITES);
        let ours = open(&d.join(name));
        let qemu = qemu_raw(d, "vpc", name);
        assert_same(&ours, &qemu, name);
        assert_eq!(ours.size(), qemu_size(d, "vpc", name), "{name}");
        let fixed = opts.contains("fixed");
        assert_eq!(
            ours.disk_type(),
            if fixed {
                DiskType::Fixed
            } else {
                DiskType::Dynamic
            }
        );
        let force = opts.contains("force_size");
        let source = ours.footer().size_source;
        assert_eq!(
            source,
            if force {
                SizeSource::CurrentSize
            } else {
                SizeSource::Geometry
            },
            "{name}"
        );
        // Probing sees both: the copy at offset 0, or a fixed footer at the end.
        let bytes = std::fs::read(d.join(name)).unwrap();
        assert!(vdisk_vhd::probe(&vdisk_io::ProbeBytes {
            head: &bytes[..4096],
            tail: &bytes[bytes.len() - 512..],
            len: bytes.len() as u64,
        }));
    }
}

#[test]
fn qemu_converted_disks_of_odd_sizes_read_back() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Sizes that are and are not whole geometries, blocks or MiB.
    for (i, len) in [(3 << 20) + 12345, 7 << 20, (2 << 20) + 512]
        .into_iter()
        .enumerate()
    {
        let data = pattern(i as u8 + 7, len);
        write_raw(d, "src.raw", &data);
        for opts in [
            "subformat=dynamic",
            "subformat=fixed",
            "subformat=dynamic,force_size=on",
            "subformat=fixed,force_size=on",
        ] {
            let name = format!("conv{i}.vhd");
            let _ = std::fs::remove_file(d.join(&name));
            run(
                d,
                "qemu-img",
                &[
                    "convert", "-f", "raw", "-O", "vpc", "-o", opts, "src.raw", &name,
                ],
            );
            let ours = open(&d.join(&name));
            let qemu = qemu_raw(d, "vpc", &name);
            assert_same(&ours, &qemu, &format!("{name} {opts}"));
            assert_eq!(
                &qemu[..len],
                &data[..],
                "{opts}: qemu reads the source back"
            );
        }
    }
}

#[test]
fn a_large_sparse_disk_maps_in_few_extents() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run(
        d,
        "qemu-img",
        &["create", "-q", "-f", "vpc", "big.vhd", "100G"],
    );
    qemu_io(
        d,
        "big.vhd",
        &["write -P 0x41 1G 3M", "write -P 0x42 90G 512"],
    );
    let img = open(&d.join("big.vhd"));
    let t = std::time::Instant::now();
    let map = img.allocation(0, img.size()).unwrap();
    assert!(t.elapsed().as_secs_f64() < 1.0, "{:?}", t.elapsed());
    // qemu allocates whole 2 MiB blocks (1G..1G+4M, and one at 90G); the zeros qemu left
    // unwritten in them are holes in the file, mapped as zeros.
    assert!(map.len() < 20, "{map:?}");
    let data = |at: u64| {
        map.iter()
            .any(|e| e.allocation == Allocation::Data && e.start <= at && at < e.end())
    };
    assert!(data(1 << 30) && data((1 << 30) + (3 << 20) - 1) && data(90 << 30));
    let stored: u64 = map
        .iter()
        .filter(|e| e.allocation != Allocation::Unallocated)
        .map(|e| e.length)
        .sum();
    assert_eq!(stored, 6 << 20);
    let mut buf = vec![0u8; 1024];
    img.read_at(&mut buf, (90 << 30) - 512).unwrap();
    assert!(buf[..512].iter().all(|&b| b == 0) && buf[512..].iter().all(|&b| b == 0x42));
}

#[test]
fn fixed_output_is_rounded_to_whole_mib_for_azure() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (i, len) in [(5 << 20) + 4096 + 512, 3 << 20, 1000]
        .into_iter()
        .enumerate()
    {
        let data = pattern(i as u8 + 40, len);
        let src = write_raw(d, &format!("src{i}.raw"), &data);
        let name = format!("fixed{i}.vhd");
        convert(&src, &d.join(&name), &sub(Some("fixed")));
        let vsize = (len as u64).next_multiple_of(1 << 20);
        assert_eq!(
            qemu_size(d, "vpc", &name),
            vsize,
            "qemu sees the rounded size"
        );
        assert_eq!(std::fs::metadata(d.join(&name)).unwrap().len(), vsize + 512);
        let (code, out) = run_status(
            d,
            "qemu-img",
            &[
                "compare",
                "-f",
                "raw",
                "-F",
                "vpc",
                &format!("src{i}.raw"),
                &name,
            ],
        );
        assert_eq!(code, 0, "{out}");
        let ours = open(&d.join(&name));
        let qemu = qemu_raw(d, "vpc", &name);
        assert_same(&ours, &qemu, &name);
        assert_eq!(&qemu[..len], &data[..]);
        // qemu-img writes the same footer fields with force_size=on.
        let raw = ours.footer().raw;
        assert_eq!(&raw.creator_app, b"qem2");
        assert_eq!(raw.current_size, vsize);
        assert_eq!(raw.original_size, vsize);
        assert_eq!(raw.geometry, vdisk_vhd::Geometry::MAX);
    }
}

#[test]
fn dynamic_output_keeps_the_exact_size_and_compares_equal() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: [(usize, Option<u64>); 5] = [
        ((5 << 20) + 12288 + 512, None),
        (9 << 20, None),
        ((3 << 20) + 1000, Some(64 << 10)),
        (7 << 20, Some(512 << 10)),
        (0, None),
    ];
    for (i, (len, block)) in cases.into_iter().enumerate() {
        let data = pattern(i as u8 + 60, len);
        let src = write_raw(d, &format!("src{i}.raw"), &data);
        let name = format!("dyn{i}.vhd");
        let opts = CreateOptions {
            cluster_size: block,
            ..sub(None)
        };
        convert(&src, &d.join(&name), &opts);
        let vsize = (len as u64).next_multiple_of(512);
        assert_eq!(qemu_size(d, "vpc", &name), vsize, "{name}");
        if len > 0 {
            let (code, out) = run_status(
                d,
                "qemu-img",
                &[
                    "compare",
                    "-f",
                    "raw",
                    "-F",
                    "vpc",
                    &format!("src{i}.raw"),
                    &name,
                ],
            );
            assert_eq!(code, 0, "{name}: {out}");
        }
        let ours = open(&d.join(&name));
        let qemu = qemu_raw(d, "vpc", &name);
        assert_same(&ours, &qemu, &name);
        assert_eq!(&qemu[..len], &data[..]);
        // qemu writes into what vdisk wrote, and reads it back.
        if len >= 4 << 20 {
            qemu_io(d, &name, &["write -P 0x55 1M 8k", "write -P 0x56 100k 4k"]);
            let after = qemu_raw(d, "vpc", &name);
            assert_eq!(read_all(&open(&d.join(&name)), 1 << 20), after);
            assert!(after[1 << 20..(1 << 20) + 8192].iter().all(|&b| b == 0x55));
        }
    }
}

#[test]
fn vhd_to_vhd_copies_keep_every_byte() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run(
        d,
        "qemu-img",
        &["create", "-q", "-f", "vpc", "q.vhd", "12M"],
    );
    qemu_io(d, "q.vhd", WRITES);
    let src = open(&d.join("q.vhd"));
    for (name, s) in [("c-dyn.vhd", None), ("c-fixed.vhd", Some("fixed"))] {
        let sink = VHD.create(&d.join(name), src.size(), &sub(s)).unwrap();
        copy_into(&src, sink, &CopyOptions::default()).unwrap();
        let (code, out) = run_status(
            d,
            "qemu-img",
            &["compare", "-f", "vpc", "-F", "vpc", "q.vhd", name],
        );
        assert_eq!(code, 0, "{name}: {out}");
        let copy = open(&d.join(name));
        assert!(copy.check().is_empty(), "{:?}", copy.check());
    }
}

#[test]
fn differencing_disks_name_their_parent_and_qemu_reads_them_as_dynamic() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let len = 9 << 20;
    let base_data = pattern(90, len);
    write_raw(d, "base.raw", &base_data);
    run(
        d,
        "qemu-img",
        &[
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "vpc",
            "-o",
            "force_size=on",
            "base.raw",
            "base.vhd",
        ],
    );
    let base = open(&d.join("base.vhd"));
    // The child stores: new data in block 0, zeros over base data at 2 MiB + 8 KiB (they
    // must mask the parent), and data in the last block.
    let mut expect = base_data.clone();
    let mut own = vec![0u8; len];
    let mut given = vec![false; len / 4096];
    let mut blocks: Vec<(u64, Vec<u8>)> = Vec::new();
    for (off, n, fill) in [
        (4096usize, 8192usize, 0x77u8),
        ((2 << 20) + 8192, 4096, 0),
        (len - 4096, 4096, 0x78),
    ] {
        let piece = vec![fill; n];
        expect[off..off + n].copy_from_slice(&piece);
        own[off..off + n].copy_from_slice(&piece);
        given[off / 4096..(off + n) / 4096].fill(true);
        blocks.push((off as u64, piece));
    }
    let parent = DeltaParent {
        name: Path::new("base.vhd"),
        format: "vhd",
        layer: &base,
    };
    let mut sink = VHD
        .create_delta(
            &d.join("child.vhd"),
            &parent,
            len as u64,
            &CreateOptions::default(),
        )
        .unwrap();
    let batch: Vec<(u64, &[u8])> = blocks.iter().map(|(o, b)| (*o, b.as_slice())).collect();
    sink.put(&batch).unwrap();
    sink.finish().unwrap();

    let child = open(&d.join("child.vhd"));
    assert_eq!(child.disk_type(), DiskType::Differencing);
    assert!(child.check().is_empty(), "{:?}", child.check());
    let b = child.backing().expect("names a parent");
    assert_eq!(b.names[0], Path::new("base.vhd"));
    assert!(b.names.iter().any(|n| n == Path::new("base.vhd")));
    assert!(
        b.names.iter().all(|n| n.is_relative()),
        "confined names only by default"
    );
    let bytes =
        vdisk_io::FileStore::load(&vdisk_io::FsStore::default(), &d.join("child.vhd")).unwrap();
    let outside = VhdImage::from_bytes_with(bytes, true).unwrap();
    let all = &outside.backing().unwrap().names;
    assert!(all.last().unwrap().is_absolute(), "{all:?}");
    assert!(
        std::fs::metadata(all.last().unwrap()).is_ok(),
        "W2ku names the parent"
    );
    assert_eq!(b.link, base.link_id(), "the parent's unique id is recorded");
    // As a layer: given sectors are data or zero, the rest unallocated.
    let mut composed = vec![0u8; len];
    let mut pos = 0;
    for_each_extent(&child, |e| {
        assert_eq!(e.start, pos);
        pos = e.end();
        let range = e.start as usize..e.end() as usize;
        match e.allocation {
            Allocation::Unallocated => {
                assert!(
                    range.clone().step_by(4096).all(|o| !given[o / 4096]),
                    "{e:?}"
                );
                composed[range.clone()].copy_from_slice(&base_data[range]);
            }
            _ => {
                assert!(
                    range.clone().step_by(4096).all(|o| given[o / 4096]),
                    "{e:?}"
                );
                child
                    .read_at(&mut composed[range.clone()], e.start)
                    .unwrap();
            }
        }
        Ok(())
    })
    .unwrap();
    assert!(composed == expect, "the chain reads as the new disk");
    assert!(read_all(&child, 1 << 20) == own);

    // qemu's vpc driver opens a differencing disk as a dynamic one: it ignores the parent
    // and reads what the child stores (unallocated sectors as zero).
    assert_eq!(qemu_size(d, "vpc", "child.vhd"), len as u64);
    let (code, out) = run_status(
        d,
        "qemu-img",
        &["info", "-f", "vpc", "--output=json", "child.vhd"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        !out.contains("backing-filename"),
        "qemu names no backing file: {out}"
    );
    write_raw(d, "own.raw", &own);
    let (code, out) = run_status(
        d,
        "qemu-img",
        &["compare", "-f", "raw", "-F", "vpc", "own.raw", "child.vhd"],
    );
    assert_eq!(code, 0, "{out}");
}

#[test]
fn qemu_has_no_vpc_check_and_both_read_old_511_byte_footers() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // qemu-img check does not check vpc images: vdisk's outputs are judged by compare.
    run(d, "qemu-img", &["create", "-q", "-f", "vpc", "a.vhd", "1M"]);
    let (code, out) = run_status(d, "qemu-img", &["check", "-f", "vpc", "a.vhd"]);
    assert_eq!(code, 63, "{out}");
    assert!(out.contains("does not support checks"), "{out}");

    // A fixed disk with the 511-byte footer of Virtual PC before 2004: vdisk reads it (the
    // disk is the file less its footer), and so does qemu (it rounds the file's length up to
    // a sector, which puts the footer where it reads it).
    run(
        d,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vpc",
            "-o",
            "subformat=fixed,force_size=on",
            "old.vhd",
            "1M",
        ],
    );
    qemu_io(d, "old.vhd", &["write -P 0x66 0 1M"]);
    let mut bytes = std::fs::read(d.join("old.vhd")).unwrap();
    assert_eq!(bytes.pop(), Some(0));
    std::fs::write(d.join("old.vhd"), &bytes).unwrap();
    let img = open(&d.join("old.vhd"));
    assert_eq!(img.size(), 1 << 20);
    assert!(read_all(&img, 1 << 20).iter().all(|&b| b == 0x66));
    assert_same(&img, &qemu_raw(d, "vpc", "old.vhd"), "511-byte footer");
    assert!(img.info().text.iter().any(|l| l.contains("511 bytes")));
    assert!(vdisk_vhd::probe(&vdisk_io::ProbeBytes {
        head: &bytes[..4096],
        tail: &bytes[bytes.len() - 512..],
        len: bytes.len() as u64,
    }));
}

#[test]
fn large_sparse_disks_convert_fast_into_small_files() {
    if !have_qemu() {
        return;
    }
    use std::os::unix::fs::{FileExt, MetadataExt};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size: u64 = 200 << 30;
    let f = std::fs::File::create(d.join("big.raw")).unwrap();
    f.set_len(size).unwrap();
    f.write_all_at(&[0x71; 65536], 7 << 30).unwrap();
    f.write_all_at(&[0x72; 512], size - 512).unwrap();
    drop(f);
    for (name, s) in [("big-dyn.vhd", None), ("big-fixed.vhd", Some("fixed"))] {
        let t = std::time::Instant::now();
        convert(&d.join("big.raw"), &d.join(name), &sub(s));
        assert!(t.elapsed().as_secs() < 10, "{name}: {:?}", t.elapsed());
        let meta = std::fs::metadata(d.join(name)).unwrap();
        assert!(
            meta.blocks() * 512 < 16 << 20,
            "{name}: {} bytes on disk",
            meta.blocks() * 512
        );
        assert_eq!(qemu_size(d, "vpc", name), size);
        let (code, out) = run_status(
            d,
            "qemu-img",
            &["compare", "-f", "raw", "-F", "vpc", "big.raw", name],
        );
        assert_eq!(code, 0, "{name}: {out}");
    }
}
