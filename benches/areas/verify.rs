//! Verifying a two-point folder repository (a full point of the 64 MiB fixture disk and a 1%
//! incremental), all of it: every index table (its pages and filter), every pack's header,
//! every chunk of the points' indexes, and every distinct block (read once however many
//! points hold it) opened and checked against its id and its seal.

use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, Throughput};
use vdisk::chain::VerifyOptions;
use vdisk::Repository;

use super::fixtures::Fixtures;

pub fn bench(c: &mut Criterion, fx: &Fixtures) {
    let repo = Repository::open(fx.repository(), &Default::default()).expect("open the repository");
    let opts = VerifyOptions::default();
    // Both points are sound, and nothing else is reported (checked once, before timing);
    // meanwhile, count the bytes of blocks read and checked.
    let checked = AtomicU64::new(0);
    let count = |n: u64| {
        checked.fetch_add(n, Ordering::Relaxed);
    };
    let counting = VerifyOptions {
        progress: Some(&count),
        ..VerifyOptions::default()
    };
    let reports = repo.verify(None, None, &counting).expect("verify");
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert!(reports.iter().all(|r| r.sound()), "{reports:?}");
    let mut g = c.benchmark_group("verify");
    // Bytes of distinct blocks read and checked.
    g.throughput(Throughput::Bytes(checked.into_inner()));
    g.bench_function("two_points", |b| {
        b.iter(|| repo.verify(None, None, &opts).expect("verify"))
    });
    g.finish();
}
