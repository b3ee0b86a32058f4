//! VHD conversions timed against qemu-img: a 2 GiB mixed disk (data, written zeros, holes,
//! partly filled stretches) converted VHD (dynamic, fixed) → raw and raw → VHD (dynamic,
//! fixed), each run 5 times, by vdisk's library and by `qemu-img convert`, alternating;
//! medians printed.
//!
//! ```sh
//! cargo run --release -p vdisk-vhd --example bench -- [DIR] [RUNS]   # DIR: /dev/shm
//! ```

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use vdisk_core::{copy_into, CopyOptions, DiskImage};
use vdisk_io::{CreateOptions, Format};
use vdisk_raw::{RawImage, RAW};
use vdisk_vhd::{VhdImage, VHD};

const SIZE: u64 = 2 << 30;
const MIB: u64 = 1 << 20;

/// The mixed disk: of every 16 MiB, 7 MiB of data that does not compress, 2 MiB of written
/// zeros, 3 MiB where only the first 64 KiB of each MiB holds data, 4 MiB of holes.
fn make_source(path: &Path) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(SIZE).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; MIB as usize];
    for m in 0..SIZE / MIB {
        let at = m * MIB;
        match m % 16 {
            0..=6 => {
                for w in buf.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    w.copy_from_slice(&x.to_le_bytes());
                }
                f.write_all_at(&buf, at).unwrap();
            }
            7 | 8 => f.write_all_at(&vec![0u8; MIB as usize], at).unwrap(),
            9..=11 => f.write_all_at(&buf[..64 << 10], at).unwrap(),
            _ => {}
        }
    }
    f.sync_all().unwrap();
}

fn qemu(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ours(src: &Path, src_fmt: &str, dst: &Path, dst_fmt: &str, subformat: Option<&str>) {
    let img: Box<dyn DiskImage> = match src_fmt {
        "raw" => Box::new(RawImage::open(src).unwrap()),
        _ => Box::new(VhdImage::open(src).unwrap()),
    };
    let opts = CreateOptions {
        subformat: subformat.map(str::to_string),
        ..Default::default()
    };
    let sink = match dst_fmt {
        "raw" => RAW.create(dst, img.size(), &opts).unwrap(),
        _ => VHD.create(dst, img.size(), &opts).unwrap(),
    };
    copy_into(&*img, sink, &CopyOptions::default()).unwrap();
}

/// CPU seconds (user + system) this process has used (`self`), or its waited-for children
/// have, from /proc (clock ticks of 10 ms).
fn cpu(children: bool) -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap_or(0)).collect();
    let (u, s) = if children {
        (f[13], f[14])
    } else {
        (f[11], f[12])
    };
    (u + s) as f64 / 100.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "/dev/shm".into()));
    let runs: usize = args.next().map_or(5, |r| r.parse().unwrap());
    // "vdisk" or "qemu": time one side only (for profiling).
    let only = args.next();
    let work = dir.join(format!("vdisk-vhd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let p = |n: &str| work.join(n);
    let s = |n: &str| p(n).to_string_lossy().into_owned();
    make_source(&p("src.raw"));
    qemu(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vpc",
        "-o",
        "subformat=dynamic,force_size=on",
        &s("src.raw"),
        &s("src-dyn.vhd"),
    ]);
    qemu(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vpc",
        "-o",
        "subformat=fixed,force_size=on",
        &s("src.raw"),
        &s("src-fixed.vhd"),
    ]);

    type Case = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
        &'static str,
    );
    // (label, source, source format, output format, subformat, qemu -O options)
    let cases: [Case; 5] = [
        // The reference: vdisk-raw's output, driven the same way.
        ("raw -> raw", "src.raw", "raw", "raw", None, ""),
        ("dynamic VHD -> raw", "src-dyn.vhd", "vhd", "raw", None, ""),
        ("fixed VHD -> raw", "src-fixed.vhd", "vhd", "raw", None, ""),
        (
            "raw -> dynamic VHD",
            "src.raw",
            "raw",
            "vhd",
            None,
            "subformat=dynamic,force_size=on",
        ),
        (
            "raw -> fixed VHD",
            "src.raw",
            "raw",
            "vhd",
            Some("fixed"),
            "subformat=fixed,force_size=on",
        ),
    ];
    println!(
        "{:<20} {:>8} {:>8} {:>6}   {:>8} {:>8} {:>6}",
        "case (medians)", "vdisk s", "qemu s", "ratio", "vdisk cpu", "qemu cpu", "ratio"
    );
    for (label, src, sfmt, dfmt, sub, qopts) in cases {
        let (mut v, mut q, mut vc, mut qc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let out = p("out");
            let _ = std::fs::remove_file(&out);
            if only.as_deref() != Some("qemu") {
                let (t, c) = (Instant::now(), cpu(false));
                ours(&p(src), sfmt, &out, dfmt, sub);
                v.push(t.elapsed().as_secs_f64());
                vc.push(cpu(false) - c);
                std::fs::remove_file(&out).unwrap();
            }
            if only.as_deref() == Some("vdisk") {
                continue;
            }
            let (qf, qo) = if sfmt == "raw" {
                ("raw", "vpc")
            } else {
                ("vpc", "raw")
            };
            let mut a = vec!["convert", "-f", qf, "-O", qo];
            if !qopts.is_empty() {
                a.extend(["-o", qopts]);
            }
            let (sp, op) = (s(src), s("out"));
            a.extend([sp.as_str(), op.as_str()]);
            let (t, c) = (Instant::now(), cpu(true));
            qemu(&a);
            q.push(t.elapsed().as_secs_f64());
            qc.push(cpu(true) - c);
            std::fs::remove_file(&out).unwrap();
        }
        let med = |v: Vec<f64>| if v.is_empty() { f64::NAN } else { median(v) };
        let (mv, mq, cv, cq) = (med(v), med(q), med(vc), med(qc));
        println!(
            "{label:<20} {mv:>8.3} {mq:>8.3} {:>5.2}x   {cv:>8.2} {cq:>8.2} {:>5.2}x",
            mq / mv,
            cq / cv
        );
    }
    std::fs::remove_dir_all(&work).unwrap();
}
