//! Hostile input: qemu-made images truncated at many points, and with every header field,
//! header extension field, table entry (L1, L2, refcount table and blocks, snapshot table,
//! bitmap directory and tables) set in turn to edge values. Every mutated image must open
//! and read, or fail with one clean line naming the file; never panic, within bounded time
//! and memory.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use vdisk_core::DiskImage;
use vdisk_io::{FileStore, Layer, MemStore, OpenContext};
use vdisk_qcow2::Qcow2Image;

/// Time one case may take (open, read up to 64 MiB, map, check, bitmaps), in a test build.
const CASE_LIMIT: Duration = Duration::from_secs(5);
/// Peak resident memory of the whole test process.
const RSS_LIMIT: u64 = 1 << 30;
const NAME: &str = "h.qcow2";

fn be(b: &[u8], at: usize, width: usize) -> u64 {
    b[at..at + width]
        .iter()
        .fold(0u64, |v, &x| (v << 8) | u64::from(x))
}

fn put(b: &mut [u8], at: usize, width: usize, v: u64) {
    for i in 0..width {
        b[at + i] = (v >> (8 * (width - 1 - i))) as u8;
    }
}

/// Open `bytes` as a qcow2 file held in memory (beside an external data file) and do all a
/// reader does; errors must be one line naming the file.
fn survive(case: &str, bytes: Vec<u8>) {
    let t = Instant::now();
    let mut store = MemStore::new();
    store.insert(NAME, bytes.clone());
    store.insert("ext.data", vec![0x5a; 1 << 20]);
    let load = store.load(Path::new(NAME)).unwrap();
    let cx = OpenContext {
        files: &store,
        path: Path::new(NAME),
        allow_outside_paths: false,
    };
    let one_line = |e: &vdisk_core::Error| {
        let s = e.to_string();
        assert!(!s.contains('\n'), "{case}: {s}");
        // Named: the image, or the external data file it names.
        assert!(e.path().is_some(), "{case}: {s}");
    };
    match Qcow2Image::from_bytes(load, &cx) {
        Err(e) => one_line(&e),
        Ok(img) => {
            let size = img.size().min(64 << 20);
            let mut buf = vec![0u8; 1 << 20];
            let mut off = 0;
            while off < size {
                let n = (size - off).min(1 << 20);
                if let Err(e) = img.read_at(&mut buf[..n as usize], off) {
                    one_line(&e);
                }
                off += n;
            }
            if let Err(e) = img.allocation(0, img.size().min(1 << 30)) {
                one_line(&e);
            }
            for f in img.check() {
                assert!(!f.message.contains('\n'), "{case}: {f}");
            }
            vdisk_qcow2::fuzzing::exercise(&img);
        }
    }
    assert!(t.elapsed() < CASE_LIMIT, "{case} took {:?}", t.elapsed());
}

/// A change to an image, applied when its case runs (so that memory holds one at a time).
enum Edit {
    Truncate(usize),
    AppendJunk(usize),
    Set(usize, usize, u64),
}

fn apply(img: &[u8], edit: &Edit) -> Vec<u8> {
    match *edit {
        Edit::Truncate(n) => img[..n].to_vec(),
        Edit::AppendJunk(n) => {
            let mut v = img.to_vec();
            v.extend(std::iter::repeat_n(0xa5, n));
            v
        }
        Edit::Set(at, width, v) => {
            let mut m = img.to_vec();
            put(&mut m, at, width, v);
            m
        }
    }
}

/// Every mutation of `img`: truncations, then fields and entries set to edge values.
fn mutations(img: &[u8]) -> Vec<(String, Edit)> {
    let len = img.len() as u64;
    let cs = 1u64 << be(img, 20, 4);
    let mut fields: Vec<(String, usize, usize)> = Vec::new();
    let mut field = |name: String, at: usize, width: usize| {
        if at + width <= img.len() {
            fields.push((name, at, width));
        }
    };
    // The header, field by field (offsets from the spec).
    for (name, at, width) in [
        ("version", 4, 4),
        ("backing_file_offset", 8, 8),
        ("backing_file_size", 16, 4),
        ("cluster_bits", 20, 4),
        ("size", 24, 8),
        ("crypt_method", 32, 4),
        ("l1_size", 36, 4),
        ("l1_table_offset", 40, 8),
        ("refcount_table_offset", 48, 8),
        ("refcount_table_clusters", 56, 4),
        ("nb_snapshots", 60, 4),
        ("snapshots_offset", 64, 8),
        ("incompatible_features", 72, 8),
        ("compatible_features", 80, 8),
        ("autoclear_features", 88, 8),
        ("refcount_order", 96, 4),
        ("header_length", 100, 4),
        ("compression_type", 104, 1),
    ] {
        field(name.into(), at, width);
    }
    // Header extensions: type, length, and the fields of the bitmaps extension.
    let version = be(img, 4, 4);
    let mut pos = if version >= 3 {
        be(img, 100, 4) as usize
    } else {
        72
    };
    let mut bitmap_dir = None;
    for i in 0..16 {
        if pos + 8 > cs as usize {
            break;
        }
        let kind = be(img, pos, 4);
        let elen = be(img, pos + 4, 4) as usize;
        field(format!("extension {i} type"), pos, 4);
        field(format!("extension {i} length"), pos + 4, 4);
        if kind == 0 {
            break;
        }
        if kind == 0x2385_2875 {
            field("bitmaps count".into(), pos + 8, 4);
            field("bitmap directory size".into(), pos + 16, 8);
            field("bitmap directory offset".into(), pos + 24, 8);
            bitmap_dir = Some(be(img, pos + 24, 8) as usize);
        }
        if kind == 0x4441_5441 || kind == 0xe279_2aca {
            field(format!("extension {i} first byte"), pos + 8, 1);
        }
        pos += 8 + elen.next_multiple_of(8);
    }
    // L1 entries, and the entries of the first L2 table (first ones, and a spread).
    let l1 = be(img, 40, 8) as usize;
    let l1_size = be(img, 36, 4) as usize;
    for i in 0..l1_size.min(3) {
        field(format!("L1 entry {i}"), l1 + i * 8, 8);
    }
    let extended = be(img, 72, 8) & 16 != 0;
    let entry = if extended { 16 } else { 8 };
    if let Some(l2) = (0..l1_size.min(8))
        .map(|i| (be(img, l1 + i * 8, 8) & 0x00ff_ffff_ffff_fe00) as usize)
        .find(|&o| o != 0)
    {
        let entries = cs as usize / entry;
        for i in (0..entries.min(6)).chain((6..entries).step_by(entries / 7 + 1)) {
            field(format!("L2 entry {i}"), l2 + i * entry, 8);
            if extended {
                field(format!("L2 entry {i} bitmap"), l2 + i * entry + 8, 8);
            }
        }
    }
    // Refcount table and the first refcount block.
    let rt = be(img, 48, 8) as usize;
    for i in 0..2 {
        field(format!("refcount table entry {i}"), rt + i * 8, 8);
    }
    if rt + 8 <= img.len() {
        let rb = (be(img, rt, 8) & 0x00ff_ffff_ffff_fe00) as usize;
        for i in 0..6 {
            field(format!("refcount block entry {i}"), rb + i * 2, 2);
        }
    }
    // The first snapshot table entry.
    if be(img, 60, 4) > 0 {
        let s = be(img, 64, 8) as usize;
        for (name, at, width) in [
            ("l1 offset", 0, 8),
            ("l1 size", 8, 4),
            ("id length", 12, 2),
            ("name length", 14, 2),
            ("vm state size", 32, 4),
            ("extra size", 36, 4),
            ("extra vm state size", 40, 8),
        ] {
            field(format!("snapshot {name}"), s + at, width);
        }
    }
    // The first bitmap directory entry and its table.
    if let Some(d) = bitmap_dir {
        for (name, at, width) in [
            ("table offset", 0, 8),
            ("table size", 8, 4),
            ("flags", 12, 4),
            ("type", 16, 1),
            ("granularity bits", 17, 1),
            ("name size", 18, 2),
            ("extra data size", 20, 4),
        ] {
            field(format!("bitmap {name}"), d + at, width);
        }
        if d + 8 <= img.len() {
            let t = be(img, d, 8) as usize;
            for i in 0..2 {
                field(format!("bitmap table entry {i}"), t + i * 8, 8);
            }
        }
    }

    let mut out = Vec::new();
    // Truncations: inside the header, at its edges, through the file.
    let mut cuts: Vec<u64> = vec![0, 1, 8, 71, 72, 103, 104, 111, 112, 200, cs - 1, cs, cs + 8];
    cuts.extend((1..24).map(|k| len * k / 24));
    cuts.extend([len - 1, len.saturating_sub(cs)]);
    for c in cuts.into_iter().filter(|&c| c < len) {
        out.push((format!("truncated at {c}"), Edit::Truncate(c as usize)));
    }
    out.push((
        "a cluster of junk appended".into(),
        Edit::AppendJunk(cs as usize),
    ));

    for (name, at, width) in fields {
        let values: Vec<u64> = match width {
            8 => vec![
                0,
                1,
                u64::MAX,
                1 << 63,
                1 << 62,
                (1 << 62) | (0xff << 54) | (len - 100),
                len,
                len.saturating_sub(8),
                0x200,
                cs,
                (1 << 63) | cs, // points at the first cluster past the header
                (1 << 63) | l1 as u64,
                (1 << 63) | (len + cs),
                (1 << 63) | (1 << 55),
                0xffff_ffff_0000_0000, // a bitmap: all allocated and all zero
                1 << 32 | 1,
            ],
            4 => vec![0, 1, 2, 3, 7, 9, 14, 22, 64, 104, 0x7fff_ffff, 0xffff_ffff],
            2 => vec![0, 1, 0x100, 0xffff],
            _ => vec![0, 1, 2, 0x80, 0xff],
        };
        let old = be(img, at, width);
        for v in values {
            if v == old {
                continue;
            }
            out.push((format!("{name} = {v:#x}"), Edit::Set(at, width, v)));
        }
    }
    out
}

/// Run every mutation of the image `file` of `dir`, on two threads.
fn hammer(dir: &Path, file: &str) -> usize {
    let img = std::fs::read(dir.join(file)).unwrap();
    // The image as made opens and reads.
    survive(&format!("{file} as made"), img.clone());
    let cases = mutations(&img);
    let n = cases.len();
    let half = n.div_ceil(2);
    let img = &img;
    std::thread::scope(|s| {
        for part in cases.chunks(half.max(1)) {
            s.spawn(move || {
                for (case, edit) in part {
                    survive(&format!("{file}: {case}"), apply(img, edit));
                }
            });
        }
    });
    n
}

fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[test]
fn mutated_qemu_images_fail_cleanly() {
    if !have_qemu() {
        return;
    }
    let d = tempdir();
    let dir = d.path();
    make_raw(dir, "src.raw", 2 << 20, 9);
    let convert: &[(&str, &[&str])] = &[
        ("v3.qcow2", &["-o", "cluster_size=4096"]),
        ("v2.qcow2", &["-o", "compat=0.10,cluster_size=4096"]),
        ("zlib.qcow2", &["-c", "-o", "cluster_size=4096"]),
        (
            "zstd.qcow2",
            &["-c", "-o", "compression_type=zstd,cluster_size=4096"],
        ),
        ("xl2.qcow2", &["-o", "extended_l2=on,cluster_size=16384"]),
        ("rc1.qcow2", &["-o", "refcount_bits=1,cluster_size=4096"]),
        ("c512.qcow2", &["-o", "cluster_size=512"]),
    ];
    for (name, opts) in convert {
        let mut args = vec!["convert", "-O", "qcow2"];
        args.extend_from_slice(opts);
        args.extend_from_slice(&["src.raw", name]);
        qemu_img(dir, &args);
    }
    // A delta with a backing file, a snapshot and bitmaps.
    qemu_img(
        dir,
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            "-b",
            "v3.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    qemu_img(dir, &["bitmap", "--add", "top.qcow2", "b0"]);
    qemu_io(dir, "top.qcow2", &["write -P 3 64k 64k", "write -z 1M 8k"]);
    qemu_img(dir, &["snapshot", "-c", "s1", "top.qcow2"]);
    qemu_io(dir, "top.qcow2", &["write -P 4 72k 4k"]);
    // External data file (named as the harness provides it).
    qemu_img(
        dir,
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096,data_file=ext.data",
            "ext.qcow2",
            "1M",
        ],
    );
    qemu_io(dir, "ext.qcow2", &["write -P 6 0 8k"]);
    // vdisk's own compressed output.
    write_qcow2(
        dir,
        "src.raw",
        "ours.qcow2",
        &vdisk_io::CreateOptions {
            compress: true,
            cluster_size: Some(4096),
            ..Default::default()
        },
    );

    let mut total = 0;
    for name in convert
        .iter()
        .map(|c| c.0)
        .chain(["top.qcow2", "ext.qcow2", "ours.qcow2"])
    {
        total += hammer(dir, name);
    }
    eprintln!(
        "{total} mutated images survived; peak RSS {} MiB",
        peak_rss() >> 20
    );
    assert!(total > 2000, "{total} cases");
    assert!(peak_rss() < RSS_LIMIT, "peak RSS {} bytes", peak_rss());
}

#[test]
fn a_backing_file_or_data_file_naming_the_image_itself() {
    if !have_qemu() {
        return;
    }
    let d = tempdir();
    let dir = d.path();
    qemu_img(
        dir,
        &[
            "create",
            "-u",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            "-b",
            "x",
            "-F",
            "raw",
            "self.qcow2",
            "1M",
        ],
    );
    let mut b = std::fs::read(dir.join("self.qcow2")).unwrap();
    let off = be(&b, 8, 8) as usize;
    // Rename the backing file "x" to the image's own name, keeping its length at one byte
    // would not fit: write the name and its new length.
    let name = NAME.as_bytes();
    b[off..off + name.len()].copy_from_slice(name);
    put(&mut b, 16, 4, name.len() as u64);
    survive("backing file is itself", b.clone());
    let mut store = MemStore::new();
    store.insert(NAME, b.clone());
    let img = Qcow2Image::from_bytes(
        store.load(Path::new(NAME)).unwrap(),
        &OpenContext {
            files: &store,
            path: Path::new(NAME),
            allow_outside_paths: false,
        },
    )
    .unwrap();
    assert_eq!(img.backing().unwrap().names, [Path::new(NAME)]);

    // A data file that is the image itself.
    qemu_img(
        dir,
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096,data_file=ext.data",
            "e.qcow2",
            "1M",
        ],
    );
    qemu_io(dir, "e.qcow2", &["write -P 6 0 8k"]);
    let mut b = std::fs::read(dir.join("e.qcow2")).unwrap();
    let at = b.windows(8).position(|w| w == b"ext.data").unwrap();
    b[at..at + 8].copy_from_slice(b"h.qcow2\0");
    put(&mut b, at - 4, 4, 7);
    survive("data file is itself", b);
}
