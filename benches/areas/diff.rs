//! The compare and hash engine: diff of two raw images (identical, and 1 % of blocks changed),
//! hashing an image into a manifest, and a diff against that manifest.

use std::os::unix::fs::FileExt;

use criterion::{Criterion, Throughput};
use vdisk::diff::{diff, diff_manifest, hash_image, Manifest, ScanOptions};
use vdisk::DiskImage;

use super::fixtures::Fixtures;

pub fn bench(c: &mut Criterion, fx: &Fixtures) {
    let same = fx.dir().join("same.raw");
    let changed = fx.dir().join("changed.raw");
    std::fs::copy(&fx.raw, &same).expect("copy");
    std::fs::copy(&fx.raw, &changed).expect("copy");
    // 1 % of the 64 KiB blocks get one byte flipped.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&changed)
        .expect("open");
    let size = f.metadata().expect("stat").len();
    let blocks = size / 65536;
    for i in (0..blocks).step_by(100) {
        f.write_all_at(&[0xa5], i * 65536 + 4097).expect("write");
    }
    drop(f);
    let old = vdisk::open(&fx.raw).expect("open");
    let opts = ScanOptions::new(vdisk::Granularity::DEFAULT);

    let mut g = c.benchmark_group("diff");
    // Bytes read: both images.
    g.throughput(Throughput::Bytes(2 * size));
    for (name, path) in [("identical", &same), ("one_percent_changed", &changed)] {
        let new = vdisk::open(path).expect("open");
        g.bench_function(name, |b| b.iter(|| diff(&old, &new, &opts).expect("diff")));
    }
    g.finish();

    let mut g = c.benchmark_group("hash");
    g.throughput(Throughput::Bytes(size));
    g.bench_function("manifest", |b| {
        b.iter(|| hash_image(&old, Vec::new(), &opts).expect("hash"))
    });
    let (manifest, _) = hash_image(&old, Vec::new(), &opts).expect("hash");
    let m = Manifest::decode(&manifest).expect("decode");
    let new = vdisk::open(&changed).expect("open");
    g.bench_function("diff_against_manifest", |b| {
        b.iter(|| diff_manifest(&m, &new, &opts).expect("diff"))
    });
    let r = diff_manifest(&m, &new, &opts).expect("diff");
    assert_eq!(r.map.count(), blocks.div_ceil(100));
    assert_eq!(new.size(), size);
    g.finish();
}
