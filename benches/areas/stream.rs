//! The stream reader: `vdisk::convert_stream` of the fixture disk as a streamOptimized VMDK,
//! read front to back from an in-memory `std::io::Cursor` (what `vdisk convert - out.raw`
//! does with standard input: markers parsed in order, grains inflated, no seeking), into a
//! sparse raw file (fsync included).

use std::io::Cursor;

use criterion::{Criterion, Throughput};
use vdisk::{ConvertOptions, CreateOptions, OutputPolicy};

use super::fixtures::{assert_same, Fixtures, IMAGE_SIZE};

pub fn bench(c: &mut Criterion, fx: &Fixtures) {
    let stream = std::fs::read(&fx.stream).expect("read the streamOptimized VMDK");
    let dst = fx.dir().join("from-stream.raw");
    let raw = vdisk::image::registry::require("raw").expect("raw is registered");
    let opts = ConvertOptions {
        create: CreateOptions {
            policy: OutputPolicy::replacing(),
            ..CreateOptions::default()
        },
        ..ConvertOptions::default()
    };
    let convert =
        || vdisk::convert_stream(Cursor::new(&stream[..]), &dst, raw, &opts).expect("convert");
    // The output is the raw disk the VMDK was made from (checked once, before timing).
    let stats = convert();
    assert_eq!(stats.size, IMAGE_SIZE);
    let want = std::fs::read(&fx.raw).expect("read the disk");
    assert_same(
        "the stream converted to raw",
        &want,
        &std::fs::read(&dst).expect("read the output"),
    );
    let mut g = c.benchmark_group("stream");
    g.throughput(Throughput::Bytes(IMAGE_SIZE));
    g.bench_function("convert_stream_to_raw", |b| b.iter(convert));
    g.finish();
}
