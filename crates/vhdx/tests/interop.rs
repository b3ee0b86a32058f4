//! Interoperability with qemu-img 10: images qemu makes read back byte for byte; images we
//! write pass `qemu-img check` and `compare` and show as vhdx in `qemu-img info`.

mod common;

use common::*;
use vdisk_core::{Allocation, DiskImage};
use vdisk_io::Layer;
use vdisk_vhdx::{Subformat, WriteOptions};

/// Writes made with qemu-io: patterns at odd places, over block edges, zero writes, a write
/// in the last (short) block.
fn qemu_writes(size: u64) -> Vec<String> {
    let mut v = vec![
        "write -P 0x11 0 4k".to_string(),
        "write -P 0x22 1048064 1536".to_string(), // straddles the first 1 MiB edge
        "write -P 0x33 5M 3M".to_string(),
        "write -z 6M 64k".to_string(), // zeros inside written data
        "write -P 0x44 20M 512".to_string(),
    ];
    v.push(format!("write -P 0x55 {} 4096", size - 4096));
    v
}

fn qemu_image(dir: &std::path::Path, name: &str, size: u64, opts: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    let mut args = vec!["create", "-q", "-f", "vhdx"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    let size_s = size.to_string();
    args.extend([s(&p), size_s.as_str()]);
    must("qemu-img", &args);
    let writes = qemu_writes(size);
    let mut io = vec!["-f", "vhdx"];
    for w in &writes {
        io.extend(["-c", w.as_str()]);
    }
    io.push(s(&p));
    must("qemu-io", &io);
    p
}

#[test]
fn qemu_made_images_read_back_byte_for_byte() {
    if !have_qemu() {
        return;
    }
    let dir = tmp();
    let size = 33 * (1 << 20) + 512; // a short last block
    let cases = [
        ("default.vhdx", ""),
        ("b1m.vhdx", "block_size=1M"),
        ("b8m.vhdx", "block_size=8M"),
        ("b32m.vhdx", "block_size=32M"),
        ("b256m.vhdx", "block_size=256M"),
        ("fixed.vhdx", "subformat=fixed"),
        ("fixed1m.vhdx", "subformat=fixed,block_size=1M"),
        ("nozero.vhdx", "block_state_zero=off"),
        ("log4m.vhdx", "log_size=4M"),
    ];
    for (name, opts) in cases {
        let p = qemu_image(dir.path(), name, size, opts);
        let img = open(&p);
        let expect = qemu_raw(&p, "vhdx");
        assert_eq!(img.size(), expect.len() as u64, "{name}");
        let got = read_all(&img);
        assert!(
            got == expect,
            "{name}: contents differ from qemu-img convert"
        );
        // The map covers the disk, and every non-zero byte lies in a Data extent.
        let m = map(&img);
        assert_eq!(m.first().unwrap().start, 0);
        assert_eq!(m.last().unwrap().end(), size);
        for e in &m {
            if e.allocation != Allocation::Data {
                assert!(
                    expect[e.start as usize..e.end() as usize]
                        .iter()
                        .all(|&b| b == 0),
                    "{name}: non-zero bytes in a {:?} extent at {}",
                    e.allocation,
                    e.start
                );
            }
        }
        let fixed = opts.contains("fixed");
        assert_eq!(
            img.subformat(),
            if fixed {
                Subformat::Fixed
            } else {
                Subformat::Dynamic
            },
            "{name}"
        );
        assert!(img.check().is_empty(), "{name}: {:?}", img.check());
        assert!(img.backing().is_none());
        let link = img.link_id().unwrap();
        assert_eq!(link.kind, "vhdx-data-write-guid");
        // Reads at odd offsets and lengths agree too.
        for (off, len) in [
            (1_048_000u64, 2000usize),
            (size - 700, 700),
            (6 * (1 << 20) - 3, 70_000),
        ] {
            let mut b = vec![0u8; len];
            img.read_at(&mut b, off).unwrap();
            assert_eq!(
                b,
                expect[off as usize..off as usize + len],
                "{name} at {off}"
            );
        }
        let info = img.info();
        assert_eq!(
            info.fields["subformat"],
            if fixed { "fixed" } else { "dynamic" }
        );
    }
}

fn check_with_qemu(path: &std::path::Path, raw: &std::path::Path) {
    let (ok, out, err) = run("qemu-img", &["check", "-f", "vhdx", s(path)]);
    assert!(ok, "qemu-img check {}: {out} {err}", path.display());
    must(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "vhdx", s(raw), s(path)],
    );
    let info = must("qemu-img", &["info", "--output=json", s(path)]);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["format"], "vhdx", "{info}");
}

#[test]
fn images_we_write_pass_qemu_check_and_compare() {
    if !have_qemu() {
        return;
    }
    let dir = tmp();
    let size = 70 * (1 << 20) + 4096;
    let raw_path = dir.path().join("src.raw");
    let raw = make_raw(
        &raw_path,
        size,
        &[
            (0, 4096, 1),
            (1_048_576 - 512, 8192, 2),
            (5 << 20, 3 << 20, 3),
            (40 << 20, 1 << 20, 4),
            (size - 4096, 4096, 5),
        ],
    );
    let cases: Vec<(&str, WriteOptions)> = vec![
        ("dyn32m.vhdx", WriteOptions::default()),
        (
            "dyn1m.vhdx",
            WriteOptions {
                block_size: 1 << 20,
                ..Default::default()
            },
        ),
        (
            "dyn256m.vhdx",
            WriteOptions {
                block_size: 256 << 20,
                ..Default::default()
            },
        ),
        (
            "fixed.vhdx",
            WriteOptions {
                fixed: true,
                ..Default::default()
            },
        ),
        (
            "fixed1m.vhdx",
            WriteOptions {
                fixed: true,
                block_size: 1 << 20,
                ..Default::default()
            },
        ),
    ];
    for (name, opts) in cases {
        let p = dir.path().join(name);
        write_vhdx(&raw_path, &p, &opts);
        check_with_qemu(&p, &raw_path);
        let img = open(&p);
        assert_eq!(read_all(&img), raw, "{name}");
        assert!(img.check().is_empty(), "{name}: {:?}", img.check());
        assert_eq!(
            img.subformat().name(),
            if opts.fixed { "fixed" } else { "dynamic" }
        );
        // qemu reads it back the same.
        assert!(
            qemu_raw(&p, "vhdx") == raw,
            "{name}: qemu reads other bytes"
        );
        // Only blocks holding data take space in a dynamic file.
        if !opts.fixed && opts.block_size == 1 << 20 {
            let m = map(&img);
            let data: u64 = m
                .iter()
                .filter(|e| e.allocation == Allocation::Data)
                .map(|e| e.length)
                .sum();
            assert!(data < size, "{name}: everything allocated");
        }
    }
}

#[test]
fn odd_and_empty_sizes() {
    if !have_qemu() {
        return;
    }
    let dir = tmp();
    // An empty disk, and one whose size is not a multiple of 512 (rounded up, like qemu).
    for (size, pieces) in [
        (0u64, vec![]),
        (3_000_000u64, vec![(0u64, 1000usize, 9u64)]),
    ] {
        let raw_path = dir.path().join(format!("{size}.raw"));
        make_raw(&raw_path, size, &pieces);
        let p = dir.path().join(format!("{size}.vhdx"));
        write_vhdx(&raw_path, &p, &WriteOptions::default());
        let (ok, out, err) = run("qemu-img", &["check", "-f", "vhdx", s(&p)]);
        assert!(ok, "{out}{err}");
        let img = open(&p);
        assert_eq!(img.size(), size.div_ceil(512) * 512);
        let got = read_all(&img);
        let want = std::fs::read(&raw_path).unwrap();
        assert_eq!(&got[..want.len()], &want[..]);
        assert!(got[want.len()..].iter().all(|&b| b == 0));
        assert_eq!(qemu_raw(&p, "vhdx"), got);
    }
}

#[test]
fn qemu_refuses_differencing_vhdx() {
    if !have_qemu() {
        return;
    }
    // qemu cannot create one...
    let dir = tmp();
    let p = dir.path().join("d.vhdx");
    let (ok, _, err) = run(
        "qemu-img",
        &[
            "create",
            "-f",
            "vhdx",
            "-o",
            "subformat=differencing",
            s(&p),
            "64M",
        ],
    );
    assert!(!ok, "qemu-img created a differencing VHDX");
    eprintln!("qemu-img create subformat=differencing: {}", err.trim());
}
