//! The mutation harness: valid images (qemu's dynamic and fixed files, a dirty log, our
//! differencing disk) truncated at many points and with every header field, region and
//! metadata entry, metadata item, BAT entry, log field and parent locator set in turn to edge
//! values. Each must open and read, or fail with one clean error naming the file, never
//! panic, within bounded time.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use vdisk_io::{FileStore, MemStore};
use vdisk_vhdx::{crc32c, RawRegionTable, VhdxImage};

const MIB: usize = 1 << 20;
const HDR: [usize; 2] = [64 << 10, 128 << 10];
const RT: [usize; 2] = [192 << 10, 256 << 10];

/// Open `bytes` (named `name`) from memory and exercise it; check the failure is one line.
fn attempt(name: &str, bytes: Vec<u8>, stats: &mut (usize, usize)) {
    let mut store = MemStore::new();
    store.insert(name, bytes);
    let start = Instant::now();
    match VhdxImage::open(store.load(Path::new(name)).unwrap()) {
        Ok(img) => {
            vdisk_vhdx::fuzzing::exercise(&img);
            stats.0 += 1;
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "{name}: multi-line error {msg:?}");
            assert!(
                msg.contains(name),
                "{name}: error does not name the file: {msg}"
            );
            stats.1 += 1;
        }
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "{name}: took {took:?}");
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

/// Recompute the checksum of the structure of `len` bytes at `at` (checksum at +4).
fn fix_crc(b: &mut [u8], at: usize, len: usize) {
    b[at + 4..at + 8].fill(0);
    let c = crc32c(&b[at..at + len]);
    put_u32(b, at + 4, c);
}

/// Edge values for a field of `width` bytes in a file of `len` bytes.
fn edges(width: usize, len: u64) -> Vec<u64> {
    let max = if width == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * width)) - 1
    };
    let mut v = vec![
        0,
        1,
        max,
        max / 2 + 1,
        len,
        len + 1,
        len - 1,
        64 << 10,
        1 << 20,
        3 << 20,
    ];
    v.retain(|&x| x <= max);
    v.dedup();
    v
}

/// The images mutated: (name, bytes).
fn samples(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    if have_qemu() {
        let dynamic = dir.join("dynamic.vhdx");
        must(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "vhdx",
                "-o",
                "block_size=1M",
                s(&dynamic),
                "6M",
            ],
        );
        must(
            "qemu-io",
            &[
                "-f",
                "vhdx",
                "-c",
                "write -P 0x5a 0 4k",
                "-c",
                "write -P 0x6b 2M 8k",
                s(&dynamic),
            ],
        );
        let fixed = dir.join("fixed.vhdx");
        must(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "vhdx",
                "-o",
                "subformat=fixed,block_size=1M",
                s(&fixed),
                "3M",
            ],
        );
        out.push(("dynamic.vhdx".to_string(), std::fs::read(&dynamic).unwrap()));
        out.push(("fixed.vhdx".to_string(), std::fs::read(&fixed).unwrap()));
        // The dynamic file with its last log entry made live again (a dirty file).
        let mut dirty = std::fs::read(&dynamic).unwrap();
        if let Some(pos) = (MIB..2 * MIB)
            .step_by(4096)
            .rev()
            .find(|&p| &dirty[p..p + 4] == b"loge")
        {
            let guid: Vec<u8> = dirty[pos + 32..pos + 48].to_vec();
            for h in HDR {
                dirty[h + 48..h + 64].copy_from_slice(&guid);
                fix_crc(&mut dirty, h, 4096);
            }
            out.push(("dirty.vhdx".to_string(), dirty));
        }
    }
    // Our differencing disk (1 MiB blocks, partially present blocks, a sector bitmap).
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/vhdx_open/delta");
    let delta = vdisk_vhdx::fuzzing::expand(&std::fs::read(seeds).unwrap());
    out.push(("delta.vhdx".to_string(), delta));
    out
}

#[test]
fn truncated_images_fail_cleanly() {
    let dir = tmp();
    let mut stats = (0, 0);
    for (name, bytes) in samples(dir.path()) {
        let len = bytes.len();
        let mut cuts: Vec<usize> = (0..16).map(|i| i * 512).collect();
        cuts.extend((1..64).map(|i| (i * 64) << 10));
        cuts.extend((0..32).map(|i| len * i / 32));
        cuts.extend([len - 1, len - 4096, len - MIB.min(len)]);
        cuts.retain(|&c| c < len);
        cuts.sort_unstable();
        cuts.dedup();
        for c in cuts {
            attempt(&name, bytes[..c].to_vec(), &mut stats);
        }
    }
    eprintln!("truncations: {} opened, {} refused", stats.0, stats.1);
}

#[test]
fn header_and_region_fields_at_edge_values() {
    let dir = tmp();
    let mut stats = (0, 0);
    for (name, bytes) in samples(dir.path()) {
        let len = bytes.len() as u64;
        // Header fields: (offset, width). Each copy, with and without a fixed checksum.
        let fields = [
            (8, 8),
            (16, 16),
            (32, 16),
            (48, 16),
            (64, 2),
            (66, 2),
            (68, 4),
            (72, 8),
        ];
        for h in HDR {
            for (off, width) in fields {
                let vals: Vec<u64> = if width == 16 {
                    vec![0, 1, u64::MAX]
                } else {
                    edges(width, len)
                };
                for v in vals {
                    for fix in [true, false] {
                        let mut b = bytes.clone();
                        match width {
                            2 => put_u16(&mut b, h + off, v as u16),
                            4 => put_u32(&mut b, h + off, v as u32),
                            8 => put_u64(&mut b, h + off, v),
                            _ => {
                                b[h + off..h + off + 8].copy_from_slice(&v.to_le_bytes());
                                b[h + off + 8..h + off + 16].copy_from_slice(&v.to_le_bytes());
                            }
                        }
                        if fix {
                            fix_crc(&mut b, h, 4096);
                        }
                        attempt(&name, b, &mut stats);
                    }
                }
            }
        }
        // Region table: count, and each entry's offset, length and required flag, in both
        // copies at once (checksums fixed), so that no copy is left to fall back to.
        let raw = RawRegionTable::parse(&bytes[RT[0]..RT[0] + (64 << 10)]);
        let mut fields: Vec<(usize, usize)> = vec![(8, 4)];
        for i in 0..raw.entries.len() + 1 {
            fields.extend([
                (16 + 32 * i + 16, 8),
                (16 + 32 * i + 24, 4),
                (16 + 32 * i + 28, 4),
            ]);
        }
        for (off, width) in fields {
            for v in edges(width, len) {
                let mut b = bytes.clone();
                for t in RT {
                    match width {
                        4 => put_u32(&mut b, t + off, v as u32),
                        _ => put_u64(&mut b, t + off, v),
                    }
                    fix_crc(&mut b, t, 64 << 10);
                }
                attempt(&name, b, &mut stats);
            }
        }
        // A region table entry that points at the header section, the log, the other region.
        for i in 0..raw.entries.len() {
            for target in [
                0u64,
                64 << 10,
                1 << 20,
                raw.entries[(i + 1) % raw.entries.len()].file_offset,
            ] {
                let mut b = bytes.clone();
                for t in RT {
                    put_u64(&mut b, t + 16 + 32 * i + 16, target);
                    fix_crc(&mut b, t, 64 << 10);
                }
                attempt(&name, b, &mut stats);
            }
        }
    }
    eprintln!(
        "header/region mutations: {} opened, {} refused",
        stats.0, stats.1
    );
}

#[test]
fn metadata_bat_log_and_locator_at_edge_values() {
    let dir = tmp();
    let mut stats = (0, 0);
    for (name, bytes) in samples(dir.path()) {
        let len = bytes.len() as u64;
        let raw = RawRegionTable::parse(&bytes[RT[0]..RT[0] + (64 << 10)]);
        let region = |guid_first: u8| {
            raw.entries
                .iter()
                .find(|e| e.guid.0[0] == guid_first)
                .map(|e| e.file_offset as usize)
                .unwrap()
        };
        let bat = region(0x66); // 2DC27766-...
        let meta = region(0x06); // 8B7CA206-...
                                 // Metadata table: count, and each entry's offset, length and flags.
        let count = u16::from_le_bytes([bytes[meta + 10], bytes[meta + 11]]) as usize;
        let mut fields: Vec<(usize, usize)> = vec![(10, 2)];
        for i in 0..count + 1 {
            fields.extend([
                (32 + 32 * i + 16, 4),
                (32 + 32 * i + 20, 4),
                (32 + 32 * i + 24, 4),
            ]);
        }
        for (off, width) in fields {
            for v in edges(width, len) {
                let mut b = bytes.clone();
                match width {
                    2 => put_u16(&mut b, meta + off, v as u16),
                    _ => put_u32(&mut b, meta + off, v as u32),
                }
                attempt(&name, b, &mut stats);
            }
        }
        // Empty items whose offsets point anywhere.
        for i in 0..count {
            for v in edges(4, len) {
                let mut b = bytes.clone();
                put_u32(&mut b, meta + 32 + 32 * i + 20, 0);
                put_u32(&mut b, meta + 32 + 32 * i + 16, v as u32);
                attempt(&name, b, &mut stats);
            }
        }
        // The items themselves: every 4 and 8 bytes of the first 256 item bytes.
        for at in (0..256).step_by(4) {
            for v in edges(4, len)
                .into_iter()
                .chain([512, 4096, 3 << 20, 1 << 28])
            {
                let mut b = bytes.clone();
                put_u32(&mut b, meta + (64 << 10) + at, v as u32);
                attempt(&name, b, &mut stats);
            }
            let mut b = bytes.clone();
            put_u64(&mut b, meta + (64 << 10) + at, u64::MAX);
            attempt(&name, b, &mut stats);
        }
        // BAT entries: every state with offsets 0, the header, the BAT itself, the
        // metadata, past the end, the largest.
        for i in 0..10 {
            for state in 0..8u64 {
                for off in [
                    0u64,
                    64 << 10,
                    bat as u64,
                    meta as u64,
                    len + (1 << 20),
                    ((1u64 << 44) - 1) << 20,
                ] {
                    let mut b = bytes.clone();
                    put_u64(&mut b, bat + 8 * i, (off & !0xFFFFF) | state);
                    attempt(&name, b, &mut stats);
                }
            }
            let mut b = bytes.clone();
            put_u64(&mut b, bat + 8 * i, u64::MAX);
            attempt(&name, b, &mut stats);
        }
        // Log entry fields (checksums fixed over the entry), when there is a live log.
        if name == "dirty.vhdx" {
            let pos = (MIB..2 * MIB)
                .step_by(4096)
                .rev()
                .find(|&p| &bytes[p..p + 4] == b"loge")
                .unwrap();
            let elen = u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into().unwrap()) as usize;
            let fields = [
                (8, 4),
                (12, 4),
                (16, 8),
                (24, 4),
                (48, 8),
                (56, 8),
                (64 + 8, 8),
                (64 + 16, 8),
                (64 + 24, 8),
            ];
            for (off, width) in fields {
                for v in edges(width, len).into_iter().chain([4096, 8192, 1 << 20]) {
                    let mut b = bytes.clone();
                    match width {
                        4 => put_u32(&mut b, pos + off, v as u32),
                        _ => put_u64(&mut b, pos + off, v),
                    }
                    if pos + elen <= b.len() {
                        fix_crc(&mut b, pos, elen);
                    }
                    attempt(&name, b, &mut stats);
                }
            }
            // A zero descriptor of every length, over the BAT and the headers.
            for (target, zlen) in [
                (bat as u64, 4096u64),
                (0, 1 << 20),
                (bat as u64, u64::MAX - 4095),
                (1 << 40, 1 << 40),
            ] {
                let mut b = bytes.clone();
                b[pos + 64..pos + 68].copy_from_slice(b"zero");
                put_u64(&mut b, pos + 64 + 8, zlen);
                put_u64(&mut b, pos + 64 + 16, target);
                fix_crc(&mut b, pos, elen);
                attempt(&name, b, &mut stats);
            }
        }
        // The parent locator: key/value offsets and lengths, and a parent that is itself.
        if name == "delta.vhdx" {
            let count = u16::from_le_bytes([bytes[meta + 10], bytes[meta + 11]]) as usize;
            let loc = (0..count)
                .map(|i| meta + 32 + 32 * i)
                .find(|&e| bytes[e] == 0x2d) // A8D35F2D-...
                .map(|e| {
                    meta + u32::from_le_bytes(bytes[e + 16..e + 20].try_into().unwrap()) as usize
                })
                .unwrap();
            for at in (18..20 + 12 * 2).step_by(2) {
                for v in [0u16, 1, 2, 3, 0xffff, 0x8000] {
                    let mut b = bytes.clone();
                    put_u16(&mut b, loc + at, v);
                    attempt(&name, b, &mut stats);
                }
            }
            // relative_path "base.vhdx" (9 UTF-16 units) becomes "delta.vhd" → "delta.vhdx"
            // needs one more unit: write "delt.vhdx", then check the name comes back as is.
            let text: Vec<u8> = "base.vhdx"
                .encode_utf16()
                .flat_map(|u| u.to_le_bytes())
                .collect();
            let self_name: Vec<u8> = "delt.vhdx"
                .encode_utf16()
                .flat_map(|u| u.to_le_bytes())
                .collect();
            let mut b = bytes.clone();
            let at = b[loc..loc + 4096]
                .windows(text.len())
                .position(|w| w == text.as_slice())
                .unwrap();
            b[loc + at..loc + at + text.len()].copy_from_slice(&self_name);
            let mut store = MemStore::new();
            store.insert("delt.vhdx", b);
            let img = VhdxImage::open(store.load(Path::new("delt.vhdx")).unwrap()).unwrap();
            use vdisk_io::Layer;
            assert_eq!(img.backing().unwrap().names, [Path::new("delt.vhdx")]);
        }
    }
    eprintln!(
        "metadata/BAT/log/locator mutations: {} opened, {} refused",
        stats.0, stats.1
    );
}

/// Regression: an empty disk's mapped() looked up block 0, which has no BAT entry.
#[test]
fn an_empty_disk_is_exercised() {
    let dir = tmp();
    let raw = dir.path().join("empty.raw");
    make_raw(&raw, 0, &[]);
    let p = dir.path().join("empty.vhdx");
    write_vhdx(&raw, &p, &vdisk_vhdx::WriteOptions::default());
    let mut stats = (0, 0);
    attempt("empty.vhdx", std::fs::read(&p).unwrap(), &mut stats);
    assert_eq!(stats, (1, 0));
}
