//! Changed-block maps: union, run walking, resampling and the on-disk form, on the maps of a
//! 2 TiB disk at 64 KiB (32 Mi blocks, a 4 MiB bitmap) with about 1% of blocks changed.
//! Needs no fixtures: the maps are made here.

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use vdisk_bitmap::ChangeMap;

const SIZE: u64 = 2 << 40;
const GRANULARITY: u64 = 64 << 10;

/// A map with about 1% of its blocks set, in short runs at random places (a fixed LCG, so
/// every run benches the same map).
fn random_map(seed: u64) -> ChangeMap {
    let mut m = ChangeMap::new(SIZE, GRANULARITY).expect("a 2 TiB map at 64 KiB");
    let blocks = m.block_count();
    let mut s = seed;
    let mut next = || {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        s >> 33
    };
    // Runs of 1..=8 blocks, 4.5 on average: blocks/100/4.5 runs set about 1%.
    for _ in 0..blocks / 450 {
        let first = next() % blocks;
        let len = 1 + next() % 8;
        m.set_blocks(first, (first + len).min(blocks));
    }
    m
}

pub fn bench(c: &mut Criterion) {
    let a = random_map(1);
    let b = random_map(2);
    let bytes = a.block_count() / 8;
    let encoded = a.encode();

    let mut g = c.benchmark_group("bitmap");
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("union_2TiB_64K", |bench| {
        bench.iter(|| black_box(&a).union(black_box(&b)).expect("same shape"))
    });
    g.bench_function("runs_2TiB_64K", |bench| {
        bench.iter(|| {
            black_box(&a)
                .runs()
                .fold(0u64, |acc, (first, n)| acc.wrapping_add(first ^ n))
        })
    });
    g.bench_function("resample_2TiB_64K_to_1M", |bench| {
        bench.iter(|| black_box(&a).resample(1 << 20).expect("coarser"))
    });
    g.bench_function("encode_2TiB_64K", |bench| {
        bench.iter(|| black_box(&a).encode())
    });
    g.bench_function("decode_2TiB_64K", |bench| {
        bench.iter(|| ChangeMap::decode(black_box(&encoded)).expect("valid"))
    });
    g.finish();
}
