//! Writing VMDKs: raw -> monolithicSparse and raw -> streamOptimized (parallel deflate), and a
//! delta link holding 10% of the grains of a raw disk on top of a monolithicSparse parent.

use criterion::{Criterion, Throughput};
use vdisk::vmdk::writer::Subformat;
use vdisk::{ConvertOptions, CreateOptions, DeltaOptions, DiskImage, OutputPolicy};

use super::fixtures::{assert_same, disk_bytes, Fixtures};

pub fn bench(c: &mut Criterion, fx: &Fixtures) {
    let mut g = c.benchmark_group("convert/to_vmdk");
    let img = vdisk::open(&fx.raw).expect("open raw");
    let want = disk_bytes(&img);
    g.throughput(Throughput::Bytes(img.size()));
    for sub in [Subformat::MonolithicSparse, Subformat::StreamOptimized] {
        let dst = fx.dir().join(format!("out-{}.vmdk", sub.name()));
        let opts = ConvertOptions {
            create: CreateOptions {
                policy: OutputPolicy::replacing(),
                subformat: Some(sub.name().into()),
                ..CreateOptions::default()
            },
            ..ConvertOptions::default()
        };
        // What is written reads back as the source (checked once, before timing, so that the
        // check holds when a filter leaves this benchmark out).
        vdisk::convert(&img, &dst, &vdisk::vmdk::VMDK, &opts).expect("convert");
        let back = vdisk::open(&dst).expect("open output");
        assert_same(sub.name(), &want, &disk_bytes(&back));
        g.bench_function(sub.name(), |b| {
            b.iter(|| vdisk::convert(&img, &dst, &vdisk::vmdk::VMDK, &opts).expect("convert"))
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
    let parent = vdisk::open(&fx.sparse).expect("open the parent");
    let dst = fx.dir().join("link.vmdk");
    // The parent's format (VMDK), written over an existing link.
    let opts = DeltaOptions {
        create: CreateOptions {
            policy: OutputPolicy::replacing(),
            ..CreateOptions::default()
        },
        ..DeltaOptions::default()
    };
    let write = || {
        vdisk::write_delta(&parent, &new, changed.iter().copied(), &dst, &opts)
            .expect("write the link")
    };
    // The link reads as the changed disk, through its parent, and stores only the changed
    // grains (checked once, before timing).
    let stats = write();
    assert_eq!(stats.data_blocks, changed.len() as u64, "{stats:?}");
    let link = vdisk::open(&dst).expect("open the link");
    assert_eq!(link.layers().len(), 2, "the link and its parent");
    assert_eq!(link.size(), new.size());
    assert_same("the delta link", &bytes, &disk_bytes(&link));
    let mut g = c.benchmark_group("write/delta_link");
    g.throughput(Throughput::Bytes(changed.iter().map(|e| e.1).sum()));
    g.bench_function("10pct_of_64MiB", |b| b.iter(write));
    g.finish();
}
