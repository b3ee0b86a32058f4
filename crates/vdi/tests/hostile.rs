//! Hostile input: VDI images made by qemu-img, truncated and with every header field and
//! block map entry set to edge values. Every mutated image must open and read, or fail with
//! one clean error: never panic, within bounded time and memory.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vdisk_core::DiskImage;
use vdisk_io::{Bytes, Layer};
use vdisk_vdi::VdiImage;

const CASE_LIMIT: Duration = Duration::from_secs(2);
const RSS_LIMIT: u64 = 1 << 30;

fn have_qemu() -> bool {
    let ok = ["qemu-img", "qemu-io"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ok {
        eprintln!("note: qemu-img or qemu-io is missing; skipping the qemu hostile test");
    }
    ok
}

fn run(dir: &Path, prog: &str, args: &[&str]) {
    let out = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn max_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn clean(case: &str, e: &vdisk_core::Error) {
    let text = e.to_string();
    assert_eq!(text.lines().count(), 1, "{case}: {text}");
    assert!(text.starts_with("case.vdi: "), "{case}: {text}");
}

fn survive(case: &str, bytes: Vec<u8>) {
    let t = Instant::now();
    match VdiImage::from_bytes(Bytes::Owned("case.vdi".into(), Arc::new(bytes.clone()))) {
        Ok(img) => {
            let _ = img.check();
            let _ = img.info();
            let _ = img.metadata();
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
    vdisk_vdi::fuzzing::open_and_read(&bytes);
    assert!(t.elapsed() < CASE_LIMIT, "{case} took {:?}", t.elapsed());
}

fn sources(d: &Path) -> Vec<(&'static str, Vec<u8>)> {
    for (name, opts) in [("dyn.vdi", "static=off"), ("static.vdi", "static=on")] {
        run(
            d,
            "qemu-img",
            &["create", "-q", "-f", "vdi", "-o", opts, name, "3M"],
        );
        run(
            d,
            "qemu-io",
            &[
                "-f",
                "vdi",
                "-c",
                "write -P 0x31 0 100k",
                "-c",
                "write -P 0x32 2M 4k",
                name,
            ],
        );
    }
    vec![
        ("dyn", std::fs::read(d.join("dyn.vdi")).unwrap()),
        ("static", std::fs::read(d.join("static.vdi")).unwrap()),
    ]
}

#[test]
fn truncated_and_mutated_images() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // (offset, width) of every numeric header field.
    let mut fields: Vec<(usize, usize)> =
        vec![(0x40, 4), (0x44, 4), (0x48, 4), (0x4c, 4), (0x50, 4)];
    fields.extend((0x154..0x170).step_by(4).map(|a| (a, 4)));
    fields.extend([
        (0x170, 8),
        (0x178, 4),
        (0x17c, 4),
        (0x180, 4),
        (0x184, 4),
        (0x1a8, 4),
        (0x1b8, 4),
    ]);
    for (name, bytes) in sources(dir.path()) {
        let len = bytes.len();
        let mut points: Vec<usize> = (0..2048).step_by(64).collect();
        points.extend([len - 1, len / 2, len.saturating_sub(1 << 20)]);
        points.extend((0..len).step_by(len / 30 + 1));
        for p in points.into_iter().filter(|&p| p < len) {
            survive(&format!("{name} cut at {p}"), bytes[..p].to_vec());
        }
        for (at, width) in &fields {
            let max = if *width == 8 {
                u64::MAX
            } else {
                u32::MAX as u64
            };
            let values = [
                0,
                1,
                2,
                3,
                4,
                511,
                512,
                0x200,
                0x400,
                max,
                max - 1,
                1 << 20,
                1 << 31,
                len as u64,
                (len as u64) * 2,
                0x0001_0001,
            ];
            for v in values {
                let mut b = bytes.clone();
                b[*at..*at + width].copy_from_slice(&(v & max).to_le_bytes()[..*width]);
                survive(&format!("{name} header+{at:#x}={v:#x}"), b);
            }
        }
        // Block map entries.
        for i in 0..3 {
            for v in [
                0u32,
                1,
                2,
                3,
                4,
                100,
                0x7fff_ffff,
                0xffff_fffd,
                0xffff_fffe,
                u32::MAX,
            ] {
                let mut b = bytes.clone();
                b[0x200 + 4 * i..0x204 + 4 * i].copy_from_slice(&v.to_le_bytes());
                survive(&format!("{name} entry {i}={v:#x}"), b);
            }
        }
    }
    assert!(max_rss() < RSS_LIMIT, "{} bytes", max_rss());
}
