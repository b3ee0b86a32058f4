//! Whole-image conversion to a sparse raw file.

use std::path::Path;

use criterion::{Criterion, Throughput};
use vdisk::{ConvertOptions, DiskImage, OutputPolicy, Target};

use super::fixtures::Fixtures;

pub fn bench(c: &mut Criterion, fx: &Fixtures) {
    let mut g = c.benchmark_group("convert/to_raw");
    for (name, src) in [
        ("monolithicSparse", &fx.sparse),
        ("streamOptimized", &fx.stream),
    ] {
        let img = vdisk::open(src).expect("open image");
        let dst = fx.dir().join(format!("out-{name}.raw"));
        g.throughput(Throughput::Bytes(img.size()));
        // The output matches the raw the VMDKs were made from (checked once, before timing,
        // so that the check holds when a filter leaves this benchmark out).
        convert(&img, &dst);
        let want = std::fs::read(&fx.raw).expect("read source");
        let have = std::fs::read(&dst).expect("read output");
        assert!(
            want == have,
            "{name}: converted output differs from the source"
        );
        g.bench_function(name, |b| b.iter(|| convert(&img, &dst)));
    }
    g.finish();
}

fn convert(img: &dyn DiskImage, dst: &Path) {
    let opts = ConvertOptions {
        policy: OutputPolicy::replacing(),
        ..ConvertOptions::default()
    };
    vdisk::convert_with(img, dst, Target::Raw, &opts).expect("convert");
}
