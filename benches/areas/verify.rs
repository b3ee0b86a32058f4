//! Verifying a two-point folder repository (a full point of the 64 MiB fixture disk and a 1%
//! incremental): each point's files against their metadata checksums, the grains each stores
//! against its bitmap, and every stored grain (read once, from the file that holds it)
//! against its hash.

use criterion::{Criterion, Throughput};
use vdisk::chain::VerifyOptions;
use vdisk::Repository;

use super::fixtures::Fixtures;

pub fn bench(c: &mut Criterion, fx: &Fixtures) {
    let repo = Repository::open(fx.repository()).expect("open the repository");
    let opts = VerifyOptions::default();
    // Both points are sound (checked once, before timing).
    let reports = repo.verify(None, &opts).expect("verify");
    assert_eq!(reports.len(), 2);
    assert!(reports.iter().all(|r| r.sound()), "{reports:?}");
    let mut g = c.benchmark_group("verify");
    // Bytes of stored grains read and hashed.
    g.throughput(Throughput::Bytes(repo.verify_bytes(None)));
    g.bench_function("two_points", |b| {
        b.iter(|| repo.verify(None, &opts).expect("verify"))
    });
    g.finish();
}
