//! Writing VMDKs: raw -> monolithicSparse and raw -> streamOptimized (parallel deflate).

use criterion::{Criterion, Throughput};
use vdisk::convert::{convert, ConvertOptions, Target};
use vdisk::vmdk::writer::Subformat;
use vdisk::DiskImage;

use super::fixtures::Fixtures;

pub fn bench(c: &mut Criterion, fx: &Fixtures) {
    let mut g = c.benchmark_group("convert/to_vmdk");
    let img = vdisk::open(&fx.raw).expect("open raw");
    g.throughput(Throughput::Bytes(img.size()));
    for sub in [Subformat::MonolithicSparse, Subformat::StreamOptimized] {
        let dst = fx.dir().join(format!("out-{}.vmdk", sub.name()));
        let opts = ConvertOptions {
            overwrite: true,
            ..ConvertOptions::default()
        };
        g.bench_function(sub.name(), |b| {
            b.iter(|| convert(&img, &dst, Target::Vmdk(sub), &opts).expect("convert"))
        });
        // What was written reads back as the source.
        let back = vdisk::open(&dst).expect("open output");
        let mut a = vec![0u8; img.size() as usize];
        let mut b = vec![0u8; img.size() as usize];
        img.read_at(&mut a, 0).expect("read source");
        back.read_at(&mut b, 0).expect("read output");
        assert!(a == b, "{}: output differs from the source", sub.name());
    }
    g.finish();
}
