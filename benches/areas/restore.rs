//! Checked restore: the newest point of a two-point folder repository (a full point and a
//! 1% incremental on it) as a [`vdisk::chain::CheckedPoint`], every grain hashed and
//! compared with the point's manifest as it is read, copied into a sparse raw file
//! (`vdisk_image::convert`: parallel reads, hole detection, positional writes, fsync).

use criterion::{Criterion, Throughput};
use vdisk::{DiskImage, Repository};

use super::convert::convert;
use super::fixtures::{assert_same, Fixtures};

pub fn bench(c: &mut Criterion, fx: &Fixtures) {
    let repo = Repository::open(fx.repository()).expect("open the repository");
    let dst = fx.dir().join("restored.raw");
    let restore = || {
        let point = repo.checked_point(None).expect("the newest point");
        convert(&point, &dst);
        point.size()
    };
    // The restored disk is the changed disk the point was made from (checked once, before
    // timing).
    let size = restore();
    assert_eq!(repo.checked_point(None).expect("newest").point(), 2);
    let want = std::fs::read(&fx.changed).expect("read the changed disk");
    assert_same(
        "the restored point",
        &want,
        &std::fs::read(&dst).expect("read the restored disk"),
    );
    let mut g = c.benchmark_group("restore");
    g.throughput(Throughput::Bytes(size));
    g.bench_function("checked_to_raw_64MiB", |b| b.iter(restore));
    g.finish();
}
