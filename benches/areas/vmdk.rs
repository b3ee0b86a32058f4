//! VMDK reading: grain-table lookups and whole-image reads.

use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput};
use vdisk::vmdk::{GrainEntry, VmdkImage};
use vdisk::DiskImage;

use super::fixtures::Fixtures;

/// Bytes per `read_at` call: the chunk `convert` reads with.
const CHUNK: usize = 4 << 20;

pub fn bench(c: &mut Criterion, fx: &Fixtures) {
    grain_lookup(c, fx);
    read_whole(c, "monolithicSparse", &fx.sparse);
    read_whole(c, "streamOptimized", &fx.stream);
}

/// `SparseExtent::grain` over every grain of a 16 GiB image, in order and shuffled.
fn grain_lookup(c: &mut Criterion, fx: &Fixtures) {
    let img = VmdkImage::open(&fx.lookup).expect("open lookup image");
    let ext = img.layers()[0].first_sparse().expect("a sparse extent");
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
fn read_whole(c: &mut Criterion, name: &str, path: &Path) {
    let img = VmdkImage::open(path).expect("open image");
    let size = img.size();
    let mut buf = vec![0u8; CHUNK];
    let mut g = c.benchmark_group("vmdk/read_4MiB_chunks");
    g.throughput(Throughput::Bytes(size));
    g.bench_function(name, |b| {
        b.iter(|| {
            let mut off = 0;
            while off < size {
                let n = (size - off).min(CHUNK as u64) as usize;
                img.read_at(&mut buf[..n], off).expect("read");
                black_box(&buf[..n]);
                off += n as u64;
            }
        })
    });
    g.finish();
}
