//! Conversion speed against qemu-img, on a mixed disk (half data: random bytes and text;
//! half holes) in a folder in memory.
//!
//! ```text
//! cargo run --release -p vdisk-qcow2 --example bench -- [DIR] [SIZE_MIB] [RUNS]
//! ```
//!
//! Measures, RUNS times each, interleaved with qemu-img's same conversion, and prints the
//! medians: raw → qcow2, raw → zstd-compressed qcow2, qcow2 → raw.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vdisk_core::{copy_into, CopyOptions, DiskImage};
use vdisk_io::{CreateOptions, Format, OutputPolicy};
use vdisk_qcow2::{Qcow2Image, QCOW2};
use vdisk_raw::{RawImage, RAW};

fn make_source(path: &Path, size: u64) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == size) {
        return;
    }
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let text = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit; vdisk writes qcow2. \n";
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut buf = vec![0u8; 1 << 20];
    // Per 16 MiB: 6 MiB of random bytes, 2 MiB of text, 8 MiB of hole.
    for mib in 0..size >> 20 {
        match mib % 16 {
            0..=5 => {
                for b in buf.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
            }
            6 | 7 => {
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = text[(i + mib as usize * 7) % text.len()];
                }
            }
            _ => continue,
        }
        f.write_all_at(&buf, mib << 20).unwrap();
    }
}

fn qemu_img(args: &[&str]) {
    let st = Command::new("qemu-img").args(args).status().unwrap();
    assert!(st.success(), "qemu-img {args:?}");
}

/// CPU seconds this process and its waited-for children used so far (from /proc/self/stat,
/// in clock ticks of 10 ms).
fn cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // utime, stime, cutime, cstime are fields 14-17: indexes 11-14 here.
    f.get(11..15).map_or(0.0, |v| v.iter().sum::<f64>() / 100.0)
}

/// Wall time and CPU time of `f`.
fn time(f: impl FnOnce()) -> (Duration, f64) {
    let c = cpu();
    let t = Instant::now();
    f();
    (t.elapsed(), cpu() - c)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn replace() -> CreateOptions {
    CreateOptions {
        policy: OutputPolicy::replacing(),
        ..CreateOptions::default()
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "/dev/shm/qcow2-bench".into()));
    let size_mib: u64 = args.next().map_or(2048, |s| s.parse().unwrap());
    let runs: usize = args.next().map_or(5, |s| s.parse().unwrap());
    // Only the cases whose name contains this; "vdisk" or "qemu" runs one side only.
    let filter = args.next().unwrap_or_default();
    let side = args.next().unwrap_or_default();
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("src.raw");
    make_source(&src, size_mib << 20);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let out = dir.join("out.qcow2");
    let qout = dir.join("qemu.qcow2");
    let back = dir.join("back.raw");
    let qback = dir.join("qemu-back.raw");
    // The qcow2 read back: qemu-img's plain conversion of the source.
    let plain = dir.join("plain.qcow2");
    qemu_img(&["convert", "-O", "qcow2", &s(&src), &s(&plain)]);

    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, Box<dyn Fn() + 'a>);
    let cases: Vec<Case<'_>> = vec![
        (
            "raw -> qcow2",
            Box::new(|| {
                let img = RawImage::open(&src).unwrap();
                let sink = QCOW2.create(&out, img.size(), &replace()).unwrap();
                copy_into(&img, sink, &CopyOptions::default()).unwrap();
            }),
            Box::new(|| qemu_img(&["convert", "-O", "qcow2", &s(&src), &s(&qout)])),
        ),
        (
            "raw -> qcow2 zstd",
            Box::new(|| {
                let img = RawImage::open(&src).unwrap();
                let opts = CreateOptions {
                    compress: true,
                    ..replace()
                };
                let sink = QCOW2.create(&out, img.size(), &opts).unwrap();
                copy_into(&img, sink, &CopyOptions::default()).unwrap();
            }),
            Box::new(|| {
                qemu_img(&[
                    "convert",
                    "-c",
                    "-O",
                    "qcow2",
                    "-o",
                    "compression_type=zstd",
                    &s(&src),
                    &s(&qout),
                ])
            }),
        ),
        (
            "qcow2 -> raw",
            Box::new(|| {
                let img = Qcow2Image::open(&plain).unwrap();
                let sink = RAW.create(&back, img.size(), &replace()).unwrap();
                copy_into(&img, sink, &CopyOptions::default()).unwrap();
            }),
            Box::new(|| qemu_img(&["convert", "-O", "raw", &s(&plain), &s(&qback)])),
        ),
    ];
    println!(
        "{size_mib} MiB mixed disk in {}, {runs} runs each, medians:",
        dir.display()
    );
    for (name, ours, theirs) in &cases {
        if !name.contains(filter.as_str()) {
            continue;
        }
        let mut a = Vec::new();
        let mut b = Vec::new();
        let (mut ca, mut cb) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            if side != "qemu" {
                let (w, c) = time(ours);
                a.push(w);
                ca.push(c);
            }
            let sizes = [&out, &back].map(|p| std::fs::metadata(p).map_or(0, |m| m.len()));
            let _ = std::fs::remove_file(&out);
            let _ = std::fs::remove_file(&back);
            if side != "vdisk" {
                let (w, c) = time(theirs);
                b.push(w);
                cb.push(c);
            }
            let qsizes = [&qout, &qback].map(|p| std::fs::metadata(p).map_or(0, |m| m.len()));
            if a.len() == 1 && b.len() <= 1 {
                println!("  output bytes: vdisk {:?}, qemu-img {:?}", sizes, qsizes);
            }
            let _ = std::fs::remove_file(&qout);
            let _ = std::fs::remove_file(&qback);
        }
        let (ma, mb) = (median(a.clone()), median(b.clone()));
        let cpu_median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or_default()
        };
        let (pa, pb) = (cpu_median(ca), cpu_median(cb));
        println!(
            "{name:<20} vdisk {:>7.3} s   qemu-img {:>7.3} s   {:.2}x   (CPU: vdisk {pa:.2} s, qemu-img {pb:.2} s, {:.2}x; runs: vdisk {:?}, qemu-img {:?})",
            ma.as_secs_f64(),
            mb.as_secs_f64(),
            mb.as_secs_f64() / ma.as_secs_f64(),
            pb / pa,
            a.iter().map(|d| (d.as_secs_f64() * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
            b.iter().map(|d| (d.as_secs_f64() * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
        );
    }
}
