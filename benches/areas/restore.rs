//! Checked restore: the newest point of a two-point folder repository (a full point and a 1%
//! incremental) as a [`vdisk::chain::PointImage`], every block opened and checked (its seal,
//! and its bytes against its id) as it is read, copied into a sparse raw file
//! (`vdisk_image::convert`: parallel reads, hole detection, positional writes, fsync). The
//! timing covers selecting the point (listing and opening the points) and reading its index.

use criterion::{Criterion, Throughput};
use vdisk::{DiskImage, Repository};

use super::convert::convert;
use super::fixtures::{assert_same, Fixtures, NAME};

pub fn bench(c: &mut Criterion, fx: &Fixtures) {
    let repo = Repository::open(fx.repository(), &Default::default()).expect("open the repository");
    let dst = fx.dir().join("restored.raw");
    let restore = || {
        let point = repo.select(Some(NAME), None).expect("the newest point");
        let image = repo.point_image(&point, None).expect("its disk");
        convert(&image, &dst);
        image.size()
    };
    // The restored disk is the changed disk the point was made from (checked once, before
    // timing).
    let size = restore();
    assert_eq!(repo.select(Some(NAME), None).expect("newest").record.seq, 2);
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
