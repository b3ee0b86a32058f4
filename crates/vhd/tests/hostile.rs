//! Hostile input: VHDs made by qemu-img (and by vdisk, for differencing disks), truncated
//! and with every header field, table entry and locator set to edge values. Every mutated
//! image must open and read, or fail with one clean error: never panic, within bounded time
//! and memory.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use vdisk_core::{DiskImage, SECTOR};
use vdisk_io::{Bytes, CreateOptions, DeltaParent, Format, Layer};
use vdisk_vhd::{checksum, VhdImage, VHD};

/// Time one mutated image may take to open, check, read (64 MiB at most) and map.
const CASE_LIMIT: Duration = Duration::from_secs(2);
/// Memory the whole run may reach.
const RSS_LIMIT: u64 = 1 << 30;

/// Edge values for a field of `width` bytes, plus the offsets given (file offsets, in the
/// unit the field counts).
fn edges(width: usize, extra: &[u64]) -> Vec<u64> {
    let max = if width == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * width)) - 1
    };
    let mut v = vec![0, 1, 2, 511, 512, max, max - 1, max / 2 + 1, 1 << 31];
    v.extend_from_slice(extra);
    v.into_iter().map(|x| x & max).collect()
}

fn put_be(b: &mut [u8], at: usize, width: usize, value: u64) {
    b[at..at + width].copy_from_slice(&value.to_be_bytes()[8 - width..]);
}

/// Set the footer checksum at `at` so that the mutation is not caught by it alone.
fn fix_footer(b: &mut [u8], at: usize) {
    let sum = checksum(&b[at..at + 512], 64);
    b[at + 64..at + 68].copy_from_slice(&sum.to_be_bytes());
}

fn fix_header(b: &mut [u8], at: usize) {
    if at + 1024 <= b.len() {
        let sum = checksum(&b[at..at + 1024], 36);
        b[at + 36..at + 40].copy_from_slice(&sum.to_be_bytes());
    }
}

/// Open, check, read and map `bytes`; panics (the test fails) on a panic, or when a case
/// takes too long or an error is not one line naming the file.
fn survive(case: &str, bytes: Vec<u8>) {
    let t = Instant::now();
    let name = Path::new("case.vhd");
    match VhdImage::from_bytes(Bytes::Owned(name.into(), Arc::new(bytes.clone()))) {
        Ok(img) => {
            let _ = img.check();
            let _ = img.info();
            let _ = img.metadata();
            let _ = img.backing();
            let limit = img.size().min(64 << 20);
            let mut buf = vec![0u8; 1 << 20];
            let mut off = 0;
            while off < limit {
                let n = (limit - off).min(1 << 20) as usize;
                if let Err(e) = img.read_at(&mut buf[..n], off) {
                    clean(case, &e);
                    break;
                }
                off += n as u64;
            }
            if let Err(e) = img.allocation(0, limit) {
                clean(case, &e);
            }
        }
        Err(e) => clean(case, &e),
    }
    vdisk_vhd::fuzzing::open_and_read(&bytes);
    assert!(t.elapsed() < CASE_LIMIT, "{case} took {:?}", t.elapsed());
}

fn clean(case: &str, e: &vdisk_core::Error) {
    let text = e.to_string();
    assert_eq!(text.lines().count(), 1, "{case}: {text}");
    assert!(text.starts_with("case.vhd: "), "{case}: {text}");
}

fn max_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// qemu-made and vdisk-made sources: a dynamic disk with data in three blocks, a fixed
/// disk, and a differencing disk on the dynamic one.
fn sources(d: &Path) -> Vec<(&'static str, Vec<u8>)> {
    run(
        d,
        "qemu-img",
        &["create", "-q", "-f", "vpc", "dyn.vhd", "6M"],
    );
    qemu_io(
        d,
        "dyn.vhd",
        &[
            "write -P 0x31 0 100k",
            "write -P 0x32 2M 4k",
            "write -P 0x33 5M 512",
        ],
    );
    run(
        d,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vpc",
            "-o",
            "subformat=fixed",
            "fixed.vhd",
            "1M",
        ],
    );
    qemu_io(d, "fixed.vhd", &["write -P 0x34 4k 8k"]);
    let base = open(&d.join("dyn.vhd"));
    let parent = DeltaParent {
        name: Path::new("dyn.vhd"),
        format: "vhd",
        layer: &base,
    };
    let opts = CreateOptions {
        cluster_size: Some(64 << 10),
        ..Default::default()
    };
    let mut sink = VHD
        .create_delta(&d.join("diff.vhd"), &parent, base.size(), &opts)
        .unwrap();
    sink.put(&[(65536, &[0x44u8; 8192][..]), (3 << 20, &[0u8; 4096][..])])
        .unwrap();
    sink.finish().unwrap();
    ["dyn.vhd", "fixed.vhd", "diff.vhd"]
        .into_iter()
        .zip(["dyn", "fixed", "diff"])
        .map(|(f, n)| (n, std::fs::read(d.join(f)).unwrap()))
        .collect()
}

#[test]
fn truncated_files() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in sources(dir.path()) {
        let len = bytes.len();
        let mut points: Vec<usize> = (0..8192).step_by(256).collect();
        points.extend([
            len - 1,
            len - 511,
            len - 512,
            len - 513,
            len - 4096,
            len / 2,
            1,
            0,
        ]);
        points.extend((0..len).step_by(len / 40 + 1));
        for p in points.into_iter().filter(|&p| p < len) {
            survive(&format!("{name} cut at {p}"), bytes[..p].to_vec());
        }
    }
    assert!(max_rss() < RSS_LIMIT, "{} bytes", max_rss());
}

#[test]
fn footer_fields_at_edge_values() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // (offset, width) of every footer field.
    let fields = [
        (8, 4),
        (12, 4),
        (16, 8),
        (24, 4),
        (28, 4),
        (32, 4),
        (36, 4),
        (40, 8),
        (48, 8),
        (56, 2),
        (58, 1),
        (59, 1),
        (60, 4),
        (64, 4),
        (68, 8),
        (84, 1),
    ];
    for (name, bytes) in sources(dir.path()) {
        let len = bytes.len() as u64;
        let copies: Vec<usize> = if name == "fixed" {
            vec![bytes.len() - 512]
        } else {
            vec![0, bytes.len() - 512]
        };
        for &copy in &copies {
            for (at, width) in fields {
                for v in edges(width, &[len, len - 512, len + 512, 2 << 20, 3, 4]) {
                    for fix in [true, false] {
                        let mut b = bytes.clone();
                        put_be(&mut b, copy + at, width, v);
                        if fix && at != 64 {
                            fix_footer(&mut b, copy);
                        }
                        survive(&format!("{name} footer@{copy}+{at}={v:#x} fix={fix}"), b);
                    }
                }
            }
            // Both copies mutated alike: no intact copy to fall back on.
            if copies.len() == 2 {
                for v in [0u64, 1, 5, u64::MAX] {
                    let mut b = bytes.clone();
                    for &c in &copies {
                        put_be(&mut b, c + 60, 4, v);
                        fix_footer(&mut b, c);
                    }
                    survive(&format!("{name} both types {v}"), b);
                }
            }
        }
    }
    assert!(max_rss() < RSS_LIMIT, "{} bytes", max_rss());
}

#[test]
fn dynamic_header_fields_and_locators_at_edge_values() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut fields: Vec<(usize, usize)> = vec![
        (8, 8),
        (16, 8),
        (24, 4),
        (28, 4),
        (32, 4),
        (36, 4),
        (40, 8),
        (56, 4),
        (64, 2),
    ];
    for i in 0..2 {
        let at = 576 + 24 * i;
        fields.extend([
            (at, 4),
            (at + 4, 4),
            (at + 8, 4),
            (at + 12, 4),
            (at + 16, 8),
        ]);
    }
    for (name, bytes) in sources(dir.path()) {
        if name == "fixed" {
            continue;
        }
        let len = bytes.len() as u64;
        for (at, width) in &fields {
            let extra = [
                len,
                len - 4,
                0x57327275,
                0x57326b75,
                0x4d616358,
                0x5769_3272,
                1 << 20,
                64 << 10,
                1536,
            ];
            for v in edges(*width, &extra) {
                for fix in [true, false] {
                    let mut b = bytes.clone();
                    put_be(&mut b, 512 + at, *width, v);
                    if fix && *at != 36 {
                        fix_header(&mut b, 512);
                    }
                    survive(&format!("{name} header+{at}={v:#x} fix={fix}"), b);
                }
            }
        }
    }
    assert!(max_rss() < RSS_LIMIT, "{} bytes", max_rss());
}

#[test]
fn table_entries_and_bitmaps_at_edge_values() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in sources(dir.path()) {
        if name == "fixed" {
            continue;
        }
        let len = bytes.len() as u64;
        let table = u64::from_be_bytes(bytes[512 + 16..512 + 24].try_into().unwrap()) as usize;
        let entries = u32::from_be_bytes(bytes[512 + 28..512 + 32].try_into().unwrap()) as usize;
        let entry = |b: &[u8], i: usize| {
            u32::from_be_bytes(b[table + 4 * i..table + 4 * i + 4].try_into().unwrap())
        };
        let allocated: Vec<u32> = (0..entries)
            .map(|i| entry(&bytes, i))
            .filter(|&e| e != u32::MAX)
            .collect();
        let sectors = len / SECTOR;
        for i in 0..entries {
            let mut values: Vec<u64> = vec![
                0,
                1,
                2,
                3,
                (table / 512) as u64,
                sectors - 1,
                sectors,
                sectors + 1,
                sectors.saturating_sub(5),
                0xffff_fffe,
                u32::MAX as u64 - 1,
                1 << 31,
            ];
            values.extend(allocated.iter().map(|&e| u64::from(e)));
            values.extend(allocated.iter().map(|&e| u64::from(e) + 1));
            for v in values {
                let mut b = bytes.clone();
                put_be(&mut b, table + 4 * i, 4, v);
                survive(&format!("{name} entry {i}={v:#x}"), b);
            }
        }
        // Bitmaps: none, alternate, and a bitmap that marks sectors past the disk.
        for &e in &allocated {
            for fill in [0x00u8, 0x55, 0xff, 0x80] {
                let mut b = bytes.clone();
                let at = e as usize * 512;
                if at + 512 <= b.len() {
                    b[at..at + 512].fill(fill);
                }
                survive(&format!("{name} bitmap of {e:#x} = {fill:#x}"), b);
            }
        }
        // Every table entry pointing at the same block, and at the footer copy.
        for v in [allocated[0], 0] {
            let mut b = bytes.clone();
            for i in 0..entries {
                put_be(&mut b, table + 4 * i, 4, u64::from(v));
            }
            survive(&format!("{name} all entries {v:#x}"), b);
        }
    }
    assert!(max_rss() < RSS_LIMIT, "{} bytes", max_rss());
}

#[test]
fn a_differencing_disk_that_names_itself_only_names_it() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sources = sources(d);
    let (_, diff) = sources.iter().find(|(n, _)| *n == "diff").unwrap();
    // Point both locators at "case.vhd" and give the parent the child's own unique id.
    let mut b = diff.clone();
    let own_id: [u8; 16] = b[68..84].try_into().unwrap();
    b[512 + 40..512 + 56].copy_from_slice(&own_id);
    for i in 0..2 {
        let at = 512 + 576 + 24 * i;
        let off = u64::from_be_bytes(b[at + 16..at + 24].try_into().unwrap()) as usize;
        let name: Vec<u8> = ".\\case.vhd"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        b[off..off + name.len()].copy_from_slice(&name);
        put_be(&mut b, at + 8, 4, name.len() as u64);
    }
    fix_header(&mut b, 512);
    let img = VhdImage::from_bytes(Bytes::Owned("case.vhd".into(), Arc::new(b.clone()))).unwrap();
    let backing = img.backing().unwrap();
    assert_eq!(backing.names[0], Path::new("case.vhd"));
    assert_eq!(
        backing.link,
        img.link_id(),
        "the loop is the registry's to refuse"
    );
    survive("self-named", b);
}
