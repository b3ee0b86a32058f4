//! Changed-block maps: union, run walking, resampling and the on-disk form, on the maps of a
//! 2 TiB disk at 64 KiB (32 Mi blocks, a 4 MiB bitmap) with about 1% of blocks changed; and
//! on a thin 64 TiB disk at 64 KiB (1 Gi blocks) with 10 000 short runs changed, where the
//! cost must follow the runs, not the 128 MiB a dense bitmap would take. Needs no fixtures:
//! the maps are made here.

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use vdisk_bitmap::ChangeMap;

const SIZE: u64 = 2 << 40;
const SPARSE_SIZE: u64 = 64 << 40;
const GRANULARITY: u64 = 64 << 10;
const SPARSE_RUNS: u64 = 10_000;

/// A map of `size` bytes with `runs` runs of 1..=8 blocks at random places (a fixed LCG, so
/// every run benches the same map).
fn random_map(size: u64, runs: u64, seed: u64) -> ChangeMap {
    let mut m = ChangeMap::new(size, GRANULARITY).expect("a map at 64 KiB");
    let blocks = m.block_count();
    let mut s = seed;
    let mut next = || {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        s >> 33
    };
    for _ in 0..runs {
        let first = next() % blocks;
        let len = 1 + next() % 8;
        m.set_blocks(first, (first + len).min(blocks));
    }
    m
}

/// About 1% of a 2 TiB disk: runs of 4.5 blocks on average, blocks/100/4.5 of them.
fn one_percent(seed: u64) -> ChangeMap {
    let blocks = SIZE / GRANULARITY;
    random_map(SIZE, blocks / 450, seed)
}

pub fn bench(c: &mut Criterion) {
    let a = one_percent(1);
    let b = one_percent(2);
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

    let a = random_map(SPARSE_SIZE, SPARSE_RUNS, 3);
    let b = random_map(SPARSE_SIZE, SPARSE_RUNS, 4);
    let encoded = a.encode();
    let in_order: Vec<u64> = a.runs().flat_map(|(first, n)| first..first + n).collect();
    let mut g = c.benchmark_group("bitmap_sparse");
    g.throughput(Throughput::Elements(SPARSE_RUNS));
    g.bench_function("union_64TiB_64K_10k_runs", |bench| {
        bench.iter(|| black_box(&a).union(black_box(&b)).expect("same shape"))
    });
    g.bench_function("runs_64TiB_64K_10k_runs", |bench| {
        bench.iter(|| {
            black_box(&a)
                .runs()
                .fold(0u64, |acc, (first, n)| acc.wrapping_add(first ^ n))
        })
    });
    g.bench_function("set_in_order_64TiB_64K_10k_runs", |bench| {
        bench.iter(|| {
            let mut m = ChangeMap::new(SPARSE_SIZE, GRANULARITY).expect("64 TiB at 64 KiB");
            for &block in black_box(&in_order) {
                m.set(block);
            }
            m
        })
    });
    g.bench_function("resample_64TiB_64K_to_4K", |bench| {
        bench.iter(|| black_box(&a).resample(4096).expect("finer"))
    });
    g.bench_function("encode_64TiB_64K_10k_runs", |bench| {
        bench.iter(|| black_box(&a).encode())
    });
    g.bench_function("decode_64TiB_64K_10k_runs", |bench| {
        bench.iter(|| ChangeMap::decode(black_box(&encoded)).expect("valid"))
    });
    g.finish();
    let full = {
        let mut m = ChangeMap::new(SPARSE_SIZE, GRANULARITY).expect("64 TiB at 64 KiB");
        m.set_blocks(0, m.block_count());
        m
    };
    let mut g = c.benchmark_group("bitmap_full");
    g.bench_function("difference_64TiB_64K_full_minus_10k_runs", |bench| {
        bench.iter(|| {
            black_box(&full)
                .difference(black_box(&a))
                .expect("same shape")
        })
    });
    g.finish();
}
