//! Backing up into a folder repository: a full backup of the 64 MiB fixture disk into a
//! fresh repository, and incrementals of the same disk with 1% of its 64 KiB blocks changed,
//! found by hashing the disk against the full point's manifest, or taken from a
//! changed-block map (CBT). Each iteration starts from a fresh folder (a copy of a repository
//! holding the full point, for the incrementals), made outside the timing; the timing covers
//! opening the repository, reading, hashing, writing the point's files, their fsyncs and the
//! metadata commit.

use std::path::Path;

use criterion::{BatchSize, Criterion, SamplingMode, Throughput};
use tempfile::TempDir;
use vdisk::bitmap::ChangeMap;
use vdisk::chain::PointKind;
use vdisk::{BackupOptions, BackupSummary, DiskImage, Repository};

use super::fixtures::{assert_same, copy_dir, disk_bytes, Fixtures, BLOCK};

/// Back up `img` into the repository at `repo` (made if missing).
fn backup(repo: &Path, img: &dyn DiskImage, opts: &BackupOptions<'_>) -> BackupSummary {
    Repository::open_or_create(repo)
        .expect("open the repository")
        .backup_image(img, &Fixtures::source(), opts)
        .expect("back up")
}

/// The newest point of the repository at `repo`, read whole (every grain checked).
fn newest(repo: &Path) -> Vec<u8> {
    let r = Repository::open(repo).expect("open the repository");
    disk_bytes(&r.checked_point(None).expect("the newest point"))
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
    let s = backup(&pristine.path().join("repo"), &raw, &full);
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
                backup(&d.path().join("repo"), &raw, &full);
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
        changed: Some(cbt),
        ..BackupOptions::default()
    };
    let changed_bytes = fx.changed_blocks.len() as u64 * BLOCK;
    let want = disk_bytes(&changed);
    for (name, opts) in [
        ("incremental_hash_1pct", &full),
        ("incremental_cbt_1pct", &cbt),
    ] {
        // The point stores the changed blocks and nothing else, and reads back as the
        // changed disk; the CBT one reads only them (checked once, before timing).
        let d = copy();
        let repo = d.path().join("repo");
        let s = backup(&repo, &changed, opts);
        assert_eq!((s.point, s.kind), (2, PointKind::Incremental), "{name}");
        let points = Repository::open(&repo).expect("open").points().to_vec();
        assert_eq!(points[1].changed_bytes, changed_bytes, "{name}");
        if opts.changed.is_some() {
            assert_eq!(s.bytes_read, changed_bytes, "{name}: bytes read");
        }
        assert_same(name, &want, &newest(&repo));
        g.bench_function(name, |b| {
            b.iter_batched(
                copy,
                |d: TempDir| {
                    backup(&d.path().join("repo"), &changed, opts);
                    d
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}
