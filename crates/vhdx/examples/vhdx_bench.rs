//! Throughput of the VHDX writer and reader against qemu-img, on a mixed disk.
//!
//! `cargo run --release -p vdisk-vhdx --example vhdx_bench -- [DIR] [SIZE_GIB] [RUNS]`
//! (defaults: /dev/shm, 2, 5). Makes DIR/bench.raw (data of many run lengths, written zeros
//! and holes), then times, median of RUNS each:
//! raw → VHDX (ours, `qemu-img convert -O vhdx`), VHDX → raw (ours, qemu-img) for both
//! writers' files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vdisk_core::{copy_into, CopyOptions, DiskImage};
use vdisk_io::{FileStore, FsStore, OutputPolicy};
use vdisk_raw::{RawImage, RawSink};
use vdisk_vhdx::{VhdxImage, VhdxSink, WriteOptions};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time(runs: usize, mut f: impl FnMut()) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn qemu(args: &[&str]) {
    let st = Command::new("qemu-img")
        .args(args)
        .status()
        .expect("qemu-img");
    assert!(st.success(), "qemu-img {args:?}");
}

/// A mixed disk: runs of pseudo-random data from 4 KiB to 8 MiB, some runs of written
/// zeros, holes between; about half the disk holds data.
fn make_disk(path: &Path, size: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut buf = vec![0u8; 8 << 20];
    let mut off = 0u64;
    while off < size {
        let len = (4096u64 << (next() % 12)).min(size - off);
        match next() % 8 {
            0..=3 => {
                for c in buf[..len as usize].chunks_mut(8) {
                    let v = next().to_le_bytes();
                    c.copy_from_slice(&v[..c.len()]);
                }
                f.write_all_at(&buf[..len as usize], off).unwrap();
            }
            4 => {
                buf[..len as usize].fill(0);
                f.write_all_at(&buf[..len as usize], off).unwrap();
            }
            _ => {}
        }
        off += len;
    }
}

fn ours_to_vhdx(src: &Path, dst: &Path) {
    let _ = std::fs::remove_file(dst);
    let raw = RawImage::open(src).unwrap();
    let sink = VhdxSink::create(
        dst,
        raw.size(),
        &WriteOptions::default(),
        &OutputPolicy::new(),
    )
    .unwrap();
    copy_into(&raw, Box::new(sink), &CopyOptions::default()).unwrap();
}

/// What the writer costs when the source's bytes are handed over in place (a memory map)
/// instead of read into buffers: `copy_into` as it is copies every byte once more.
fn mapped_to_vhdx(src: &Path, dst: &Path) {
    use vdisk_core::{Advice, Allocation, ImageSink};
    let _ = std::fs::remove_file(dst);
    let raw = RawImage::open(src).unwrap();
    let mut sink = VhdxSink::create(
        dst,
        raw.size(),
        &WriteOptions::default(),
        &OutputPolicy::new(),
    )
    .unwrap();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    vdisk_core::for_each_extent(&raw, |e| {
        if e.allocation == Allocation::Data {
            let start = e.start / 4096 * 4096;
            let end = e.end().div_ceil(4096) * 4096;
            runs.extend(
                vdisk_core::chunks(start, end.min(raw.size()), 4 << 20).map(|(s, e)| (s, e - s)),
            );
        }
        Ok(())
    })
    .unwrap();
    for batch in runs.chunks(16) {
        let (s, e) = (
            batch[0].0,
            batch[batch.len() - 1].0 + batch[batch.len() - 1].1,
        );
        raw.advise(s, e - s, Advice::Populate);
        let blocks: Vec<(u64, &[u8])> = batch
            .iter()
            .map(|&(o, l)| (o, raw.mapped(o, l).unwrap()))
            .collect();
        sink.put(&blocks).unwrap();
        raw.advise(s, e - s, Advice::Release);
    }
    Box::new(sink).finish().unwrap();
}

fn ours_to_raw(src: &Path, dst: &Path) {
    let _ = std::fs::remove_file(dst);
    let img = VhdxImage::open(FsStore::default().load(src).unwrap()).unwrap();
    let sink = RawSink::create(dst, img.size(), &OutputPolicy::new()).unwrap();
    copy_into(&img, Box::new(sink), &CopyOptions::default()).unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).map_or("/dev/shm", |s| s.as_str()));
    let gib: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    let runs: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5);
    let raw = dir.join("bench.raw");
    // Profiling aids: `write SRC DST` and `read SRC DST` run one conversion of ours.
    if let (Some(mode), Some(src), Some(dst)) = (args.get(1), args.get(2), args.get(3)) {
        match mode.as_str() {
            "write" => return ours_to_vhdx(Path::new(src), Path::new(dst)),
            "read" => return ours_to_raw(Path::new(src), Path::new(dst)),
            "rawcopy" => {
                let _ = std::fs::remove_file(dst);
                let img = RawImage::open(Path::new(src)).unwrap();
                let sink =
                    RawSink::create(Path::new(dst), img.size(), &OutputPolicy::new()).unwrap();
                copy_into(&img, Box::new(sink), &CopyOptions::default()).unwrap();
                return;
            }
            "mapwrite" => return mapped_to_vhdx(Path::new(src), Path::new(dst)),
            "make" => return make_disk(Path::new(src), dst.parse::<u64>().unwrap() << 30),
            _ => {}
        }
    }
    let ours = dir.join("bench.ours.vhdx");
    let theirs = dir.join("bench.qemu.vhdx");
    let out = dir.join("bench.out.raw");
    make_disk(&raw, gib << 30);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let t_ours_w = time(runs, || ours_to_vhdx(&raw, &ours));
    let t_qemu_w = time(runs, || {
        let _ = std::fs::remove_file(&theirs);
        qemu(&["convert", "-f", "raw", "-O", "vhdx", &s(&raw), &s(&theirs)]);
    });
    let t_ours_r = time(runs, || ours_to_raw(&ours, &out));
    let t_ours_rq = time(runs, || ours_to_raw(&theirs, &out));
    let t_qemu_r = time(runs, || {
        let _ = std::fs::remove_file(&out);
        qemu(&["convert", "-f", "vhdx", "-O", "raw", &s(&theirs), &s(&out)]);
    });
    let t_qemu_ro = time(runs, || {
        let _ = std::fs::remove_file(&out);
        qemu(&["convert", "-f", "vhdx", "-O", "raw", &s(&ours), &s(&out)]);
    });
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let used = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
    };
    println!(
        "disk: {gib} GiB mixed, {} MiB stored, {runs} runs, medians",
        used(&raw) >> 20
    );
    println!(
        "raw -> vhdx   vdisk {:>8.3} s   qemu-img {:>8.3} s   ratio {:.2}x",
        t_ours_w.as_secs_f64(),
        t_qemu_w.as_secs_f64(),
        t_qemu_w.as_secs_f64() / t_ours_w.as_secs_f64()
    );
    println!(
        "vhdx -> raw   vdisk {:>8.3} s   qemu-img {:>8.3} s   ratio {:.2}x   (qemu's file)",
        t_ours_rq.as_secs_f64(),
        t_qemu_r.as_secs_f64(),
        t_qemu_r.as_secs_f64() / t_ours_rq.as_secs_f64()
    );
    println!(
        "vhdx -> raw   vdisk {:>8.3} s   qemu-img {:>8.3} s   ratio {:.2}x   (our file)",
        t_ours_r.as_secs_f64(),
        t_qemu_ro.as_secs_f64(),
        t_qemu_ro.as_secs_f64() / t_ours_r.as_secs_f64()
    );
    println!(
        "files: ours {} MiB ({} MiB used), qemu's {} MiB ({} MiB used)",
        size(&ours) >> 20,
        used(&ours) >> 20,
        size(&theirs) >> 20,
        used(&theirs) >> 20
    );
    for p in [&raw, &ours, &theirs, &out] {
        let _ = std::fs::remove_file(p);
    }
}
