//! Writing VMDKs: raw -> monolithicSparse and raw -> streamOptimized (parallel deflate), and a
//! delta link holding 10% of the grains of a raw disk on top of a monolithicSparse parent.

use criterion::{Criterion, Throughput};
use vdisk::vmdk::writer::{write_delta_link, LinkTarget, Subformat, WriteOptions};
use vdisk::vmdk::VmdkImage;
use vdisk::{convert_with, ConvertOptions, DiskImage, OutputPolicy, Target};

use super::fixtures::Fixtures;

pub fn bench(c: &mut Criterion, fx: &Fixtures) {
    let mut g = c.benchmark_group("convert/to_vmdk");
    let img = vdisk::open(&fx.raw).expect("open raw");
    g.throughput(Throughput::Bytes(img.size()));
    for sub in [Subformat::MonolithicSparse, Subformat::StreamOptimized] {
        let dst = fx.dir().join(format!("out-{}.vmdk", sub.name()));
        let opts = ConvertOptions {
            policy: OutputPolicy::replacing(),
            ..ConvertOptions::default()
        };
        // What is written reads back as the source (checked once, before timing, so that the
        // check holds when a filter leaves this benchmark out).
        convert_with(&img, &dst, Target::Vmdk(sub), &opts).expect("convert");
        let back = vdisk::open(&dst).expect("open output");
        let mut a = vec![0u8; img.size() as usize];
        let mut b = vec![0u8; img.size() as usize];
        img.read_at(&mut a, 0).expect("read source");
        back.read_at(&mut b, 0).expect("read output");
        assert!(a == b, "{}: output differs from the source", sub.name());
        g.bench_function(sub.name(), |b| {
            b.iter(|| convert_with(&img, &dst, Target::Vmdk(sub), &opts).expect("convert"))
        });
    }
    g.finish();
}

/// Every tenth grain of the fixture disk changed (one byte each), written as a delta link on
/// the qemu-made monolithicSparse copy of the unchanged disk: the link writer's own cost
/// (reading from a mapped raw source, zero checks, appending grains, tables, fsync).
pub fn bench_delta_link(c: &mut Criterion, fx: &Fixtures) {
    const GRAIN: u64 = 64 << 10;
    let new_path = fx.dir().join("link-new.raw");
    let mut bytes = std::fs::read(&fx.raw).expect("read the fixture disk");
    let grains = (bytes.len() as u64).div_ceil(GRAIN);
    let changed: Vec<(u64, u64)> = (0..grains)
        .step_by(10)
        .map(|g| (g * GRAIN, GRAIN.min(bytes.len() as u64 - g * GRAIN)))
        .collect();
    for &(start, _) in &changed {
        bytes[start as usize + 100] ^= 0x5a;
    }
    std::fs::write(&new_path, &bytes).expect("write the changed disk");
    let new = vdisk::open(&new_path).expect("open the changed disk");
    let parent = VmdkImage::open(&fx.sparse).expect("open the parent");
    let dst = fx.dir().join("link.vmdk");
    let wopts = WriteOptions {
        policy: OutputPolicy::replacing(),
        ..WriteOptions::default()
    };
    let target = LinkTarget {
        parent_path: &fx.sparse,
        parent: &parent,
        layout: vdisk::vmdk::writer::Layout::Monolithic,
        opts: &wopts,
        on_grain: None,
    };
    // The link reads as the changed disk (checked once, before timing).
    write_delta_link(&target, &new, changed.iter().copied(), &dst).expect("write the link");
    let link = VmdkImage::open(&dst).expect("open the link");
    let mut back = vec![0u8; bytes.len()];
    link.read_at(&mut back, 0).expect("read the link");
    assert!(
        back == bytes,
        "the delta link does not read as the changed disk"
    );
    let mut g = c.benchmark_group("write/delta_link");
    g.throughput(Throughput::Bytes(changed.iter().map(|e| e.1).sum()));
    g.bench_function("10pct_of_64MiB", |b| {
        b.iter(|| {
            write_delta_link(&target, &new, changed.iter().copied(), &dst).expect("write the link")
        })
    });
    g.finish();
}
