//! Whole-image conversion to a sparse raw file.

use std::path::Path;

use criterion::{Criterion, Throughput};
use vdisk::{ConvertOptions, CreateOptions, DiskImage, OutputPolicy};

use super::fixtures::{assert_same, Fixtures};

pub fn bench(c: &mut Criterion, fx: &Fixtures) {
    let mut g = c.benchmark_group("convert/to_raw");
    let want = std::fs::read(&fx.raw).expect("read source");
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
        let have = std::fs::read(&dst).expect("read output");
        assert_same(&format!("{name} converted to raw"), &want, &have);
        g.bench_function(name, |b| b.iter(|| convert(&img, &dst)));
    }
    g.finish();
}

/// `vdisk convert IMG DST -O raw`, replacing `dst`.
pub fn convert(img: &dyn DiskImage, dst: &Path) {
    let opts = ConvertOptions {
        create: CreateOptions {
            policy: OutputPolicy::replacing(),
            ..CreateOptions::default()
        },
        ..ConvertOptions::default()
    };
    let raw = vdisk::image::registry::require("raw").expect("raw is registered");
    vdisk::convert(img, dst, raw, &opts).expect("convert");
}
