//! (Layout 2, the earlier repository layout, whose writer stays for library users.)
//! A source that fails part-way through a hash-based incremental: the scan and the link
//! writer run at the same time, so the failure must stop both, leave no file of the failed
//! point behind, and leave the repository as it was (the next run succeeds).

use std::collections::BTreeSet;
use std::path::Path;

use vdisk_chain::layout2::{BackupOptions, Repository, VerifyOptions};
use vdisk_chain::Source;
use vdisk_core::{DiskImage, MemImage};

const MIB: usize = 1 << 20;

fn disk(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| ((i / 4096) as u8).wrapping_mul(31) ^ seed ^ (i as u8))
        .collect()
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != vdisk_chain::layout2::LOCK_FILE)
        .collect()
}

fn info() -> Source {
    Source {
        identity: "mem".into(),
        unclean: false,
    }
}

fn read_all(img: &dyn DiskImage) -> Vec<u8> {
    let mut out = vec![0u8; img.size() as usize];
    img.read_at(&mut out, 0).unwrap();
    out
}

#[test]
fn a_source_failing_mid_scan_leaves_the_repository_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    // 200 MiB: several 64 MiB scan windows, so the writer has grains in hand when the
    // scan fails in the fourth window.
    let base = disk(200 * MIB, 1);
    let mut repo = Repository::open_or_create(&repo_dir).unwrap();
    let src = MemImage::new(base.clone());
    repo.backup_image(&src, &info(), &BackupOptions::default())
        .unwrap();
    let before = names(&repo_dir);

    // Changes in every window; reads fail from 190 MiB on.
    let mut changed = base.clone();
    for at in (0..changed.len()).step_by(3 * MIB + 4096) {
        changed[at] ^= 0xff;
    }
    let failing = MemImage::new(changed.clone()).failing_from(190 * MIB as u64);
    let err = repo
        .backup_image(&failing, &info(), &BackupOptions::default())
        .unwrap_err();
    assert!(
        err.to_string().contains("told to fail here"),
        "the scan's error is reported, not the writer's: {err}"
    );
    drop(repo);
    assert_eq!(
        names(&repo_dir),
        before,
        "no file of the failed point is left"
    );

    let mut repo = Repository::open_writable(&repo_dir).unwrap();
    let sound = |repo: &Repository| {
        repo.verify(None, &VerifyOptions::default())
            .unwrap()
            .iter()
            .all(|r| r.sound())
    };
    assert!(sound(&repo));
    let ok = MemImage::new(changed.clone());
    let summary = repo
        .backup_image(&ok, &info(), &BackupOptions::default())
        .unwrap();
    assert_eq!(summary.point, 2);
    assert!(sound(&repo));
    let p1 = repo.open_point(repo.point(Some(1)).unwrap()).unwrap();
    let p2 = repo.open_point(repo.point(Some(2)).unwrap()).unwrap();
    assert!(read_all(&p1) == base, "point 1 still reads as the base");
    assert!(
        read_all(&p2) == changed,
        "point 2 reads as the changed disk"
    );
}
