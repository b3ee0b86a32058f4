//! Backing up into a folder repository (layout 3): a full backup of the 64 MiB fixture disk
//! into a fresh repository, and incrementals of the same disk with 1% of its 64 KiB blocks
//! changed, found by fingerprints (every allocated block read and fingerprinted with xxh3,
//! only those whose fingerprint differs from the full point's hashed with BLAKE3 and
//! stored), or taken from a changed-block map (CBT: only the blocks it marks are read). Each
//! iteration starts from a fresh folder (a copy of a repository holding the full point, for
//! the incrementals), made outside the timing; the timing covers opening (or making) the
//! repository, reading, fingerprinting, hashing, compressing and sealing the new blocks,
//! writing their packs and index table, and the point's commit.

use criterion::{BatchSize, Criterion, SamplingMode, Throughput};
use tempfile::TempDir;
use vdisk::bitmap::ChangeMap;
use vdisk::chain::PointKind;
use vdisk::{BackupOptions, DiskImage, Repository};

use super::fixtures::{assert_same, copy_dir, disk_bytes, Fixtures, BLOCK, NAME};

/// The newest point of the repository at `repo`, read whole (every block checked).
fn newest(repo: &std::path::Path) -> Vec<u8> {
    let r = Repository::open(repo, &Default::default()).expect("open the repository");
    let point = r.select(Some(NAME), None).expect("the newest point");
    disk_bytes(&r.point_image(&point, None).expect("its disk"))
}

pub fn bench(c: &mut Criterion, fx: &Fixtures) {
    let raw = vdisk::open(&fx.raw).expect("open the disk");
    let changed = vdisk::open(&fx.changed).expect("open the changed disk");
    let scratch = fx.dir().join("backups");
    std::fs::create_dir_all(&scratch).expect("a folder for the repositories");
    let fresh = || tempfile::tempdir_in(&scratch).expect("a fresh folder");
    let full = BackupOptions::default();

    // The full point reads back as the disk (checked once, before timing). This repository
    // is the pristine one the incrementals start from.
    let pristine = fresh();
    let s = Fixtures::backup(pristine.path().join("repo"), &raw, &full);
    assert_eq!((s.point, s.kind), (1, PointKind::Full));
    assert_same(
        "the full point",
        &disk_bytes(&raw),
        &newest(&pristine.path().join("repo")),
    );

    let mut g = c.benchmark_group("backup");
    g.throughput(Throughput::Bytes(raw.size()));
    // Iterations of tens of milliseconds, each after a set-up as long: the same number of
    // iterations per sample, rather than 1, 2, … 10.
    g.sampling_mode(SamplingMode::Flat);
    g.bench_function("full_64MiB", |b| {
        b.iter_batched(
            fresh,
            |d: TempDir| {
                Fixtures::backup(d.path().join("repo"), &raw, &full);
                d // removed after the timing
            },
            BatchSize::PerIteration,
        )
    });

    // The incrementals: from a copy of the one-point repository each time.
    let copy = || {
        let d = fresh();
        copy_dir(&pristine.path().join("repo"), &d.path().join("repo"))
            .expect("copy the repository");
        d
    };
    let mut cbt = ChangeMap::new(changed.size(), BLOCK).expect("a map at 64 KiB");
    for &block in &fx.changed_blocks {
        cbt.set(block);
    }
    let cbt = BackupOptions {
        changed: vec![Some(cbt)],
        ..BackupOptions::default()
    };
    let changed_bytes = fx.changed_blocks.len() as u64 * BLOCK;
    let blobs = fx.incremental_blobs();
    let want = disk_bytes(&changed);
    for (name, opts) in [
        ("incremental_hash_1pct", &full),
        ("incremental_cbt_1pct", &cbt),
    ] {
        // The point stores the changed blocks (those the repository lacks) and its index,
        // nothing else, and reads back as the changed disk; the CBT one reads only the
        // changed blocks (checked once, before timing).
        let d = copy();
        let repo = d.path().join("repo");
        let s = Fixtures::backup(&repo, &changed, opts);
        assert_eq!((s.point, s.kind), (2, PointKind::Incremental), "{name}");
        assert_eq!(s.blobs_added, blobs, "{name}: blobs stored");
        if opts.changed.is_empty() {
            assert!(s.bytes_read > changed_bytes, "{name}: bytes read");
        } else {
            assert_eq!(s.bytes_read, changed_bytes, "{name}: bytes read");
        }
        assert_same(name, &want, &newest(&repo));
        g.bench_function(name, |b| {
            b.iter_batched(
                copy,
                |d: TempDir| {
                    Fixtures::backup(d.path().join("repo"), &changed, opts);
                    d
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}
