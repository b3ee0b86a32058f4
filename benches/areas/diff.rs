//! The compare and hash engine: diff of two raw images (identical, and 1 % of blocks changed),
//! hashing an image into a manifest, and a diff against that manifest.

use criterion::{Criterion, Throughput};
use vdisk::diff::{diff, diff_manifest, hash_image, Manifest, ScanOptions};
use vdisk::DiskImage;

use super::fixtures::Fixtures;

pub fn bench(c: &mut Criterion, fx: &Fixtures) {
    let same = fx.dir().join("same.raw");
    std::fs::copy(&fx.raw, &same).expect("copy");
    // 1 % of the 64 KiB blocks have one byte flipped.
    let changed = &fx.changed;
    let size = std::fs::metadata(changed).expect("stat").len();
    let old = vdisk::open(&fx.raw).expect("open");
    let opts = ScanOptions::new(vdisk::Granularity::DEFAULT);

    let mut g = c.benchmark_group("diff");
    // Bytes read: both images.
    g.throughput(Throughput::Bytes(2 * size));
    for (name, path, want) in [
        ("identical", &same, 0),
        (
            "one_percent_changed",
            changed,
            fx.changed_blocks.len() as u64,
        ),
    ] {
        let new = vdisk::open(path).expect("open");
        // The changes found are the blocks changed (checked once, before timing).
        let r = diff(&old, &new, &opts).expect("diff");
        assert_eq!(r.map.count(), want, "{name}: changed blocks");
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
    let new = vdisk::open(changed).expect("open");
    g.bench_function("diff_against_manifest", |b| {
        b.iter(|| diff_manifest(&m, &new, &opts).expect("diff"))
    });
    let r = diff_manifest(&m, &new, &opts).expect("diff");
    assert_eq!(r.map.count(), fx.changed_blocks.len() as u64);
    assert_eq!(new.size(), size);
    g.finish();
}
