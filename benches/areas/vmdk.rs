//! VMDK reading: grain-table lookups and whole-image reads.

use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput};
use vdisk::vmdk::{GrainEntry, VmdkLayer};
use vdisk::DiskImage;

use super::fixtures::{assert_same, disk_bytes, read_whole, Fixtures, CHUNK};

pub fn bench(c: &mut Criterion, fx: &Fixtures) {
    grain_lookup(c, fx);
    let want = std::fs::read(&fx.raw).expect("read the fixture disk");
    read_whole_image(c, "monolithicSparse", &fx.sparse, &want);
    read_whole_image(c, "streamOptimized", &fx.stream, &want);
}

/// `SparseExtent::grain` over every grain of a 16 GiB image, in order and shuffled.
fn grain_lookup(c: &mut Criterion, fx: &Fixtures) {
    let layer = VmdkLayer::open(&fx.lookup).expect("open lookup image");
    let ext = layer.first_sparse().expect("a sparse extent");
    let grains = ext.capacity() / ext.grain_bytes();
    let in_order: Vec<u64> = (0..grains).collect();
    let mut shuffled = in_order.clone();
    // Fisher-Yates with a fixed LCG: the same order every run.
    let mut s = 0x2545_f491_4f6c_dd1du64;
    for i in (1..shuffled.len()).rev() {
        s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        shuffled.swap(i, ((s >> 33) % (i as u64 + 1)) as usize);
    }
    let allocated = in_order
        .iter()
        .filter(|&&g| matches!(ext.grain(g), GrainEntry::Data(_)))
        .count();
    assert!(allocated > 1000, "only {allocated} grains allocated");

    let mut g = c.benchmark_group("vmdk/grain_lookup");
    g.throughput(Throughput::Elements(grains));
    for (name, order) in [("in_order", &in_order), ("shuffled", &shuffled)] {
        g.bench_with_input(BenchmarkId::from_parameter(name), order, |b, order| {
            b.iter(|| {
                let mut data = 0u64;
                for &i in order {
                    if let GrainEntry::Data(off) = ext.grain(black_box(i)) {
                        data = data.wrapping_add(off);
                    }
                }
                data
            })
        });
    }
    g.finish();
}

/// The whole image through `read_at` in 4 MiB chunks, one thread.
fn read_whole_image(c: &mut Criterion, name: &str, path: &Path, want: &[u8]) {
    let img = vdisk::open(path).expect("open image");
    // It reads as the raw disk it was made from (checked once, before timing).
    assert_same(name, want, &disk_bytes(&img));
    let mut buf = vec![0u8; CHUNK];
    let mut g = c.benchmark_group("vmdk/read_4MiB_chunks");
    g.throughput(Throughput::Bytes(img.size()));
    g.bench_function(name, |b| b.iter(|| read_whole(&img, &mut buf)));
    g.finish();
}
