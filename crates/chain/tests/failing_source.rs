//! A source that fails part-way through a hash-based incremental: the scan and the link
//! writer run at the same time, so the failure must stop both, leave no file of the failed
//! point behind, and leave the repository as it was (the next run succeeds).

use std::collections::BTreeSet;
use std::path::Path;

use vdisk_chain::{BackupOptions, Repository, SourceInfo};
use vdisk_core::{check_range, Allocation, DiskImage, Error, Extent, Result};

/// An in-memory disk whose reads fail at and after `fail_from`.
struct MemDisk {
    bytes: Vec<u8>,
    fail_from: Option<u64>,
}

impl DiskImage for MemDisk {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.size(), offset, buf.len() as u64)?;
        if let Some(f) = self.fail_from {
            if offset + buf.len() as u64 > f {
                return Err(Error::corrupt("injected read failure").at(offset));
            }
        }
        let at = offset as usize;
        buf.copy_from_slice(&self.bytes[at..at + buf.len()]);
        Ok(())
    }
    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        check_range(self.size(), offset, length)?;
        Ok(vec![Extent {
            start: offset,
            length,
            allocation: Allocation::Data,
            depth: 0,
        }])
    }
    fn format_name(&self) -> &'static str {
        "raw"
    }
}

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
        .filter(|n| n != vdisk_chain::LOCK_FILE)
        .collect()
}

fn info() -> SourceInfo {
    SourceInfo {
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
    let src = MemDisk {
        bytes: base.clone(),
        fail_from: None,
    };
    repo.backup(&src, &info(), &BackupOptions::default())
        .unwrap();
    let before = names(&repo_dir);

    // Changes in every window; reads fail from 190 MiB on.
    let mut changed = base.clone();
    for at in (0..changed.len()).step_by(3 * MIB + 4096) {
        changed[at] ^= 0xff;
    }
    let failing = MemDisk {
        bytes: changed.clone(),
        fail_from: Some(190 * MIB as u64),
    };
    let err = repo
        .backup(&failing, &info(), &BackupOptions::default())
        .unwrap_err();
    assert!(
        err.to_string().contains("injected read failure"),
        "the scan's error is reported, not the writer's: {err}"
    );
    drop(repo);
    assert_eq!(
        names(&repo_dir),
        before,
        "no file of the failed point is left"
    );

    let mut repo = Repository::open(&repo_dir).unwrap();
    assert!(repo.verify(None).unwrap().iter().all(|r| r.sound()));
    let ok = MemDisk {
        bytes: changed.clone(),
        fail_from: None,
    };
    let summary = repo
        .backup(&ok, &info(), &BackupOptions::default())
        .unwrap();
    assert_eq!(summary.point, 2);
    assert!(repo.verify(None).unwrap().iter().all(|r| r.sound()));
    let p1 = repo.open_point(repo.point(Some(1)).unwrap()).unwrap();
    let p2 = repo.open_point(repo.point(Some(2)).unwrap()).unwrap();
    assert!(read_all(&p1) == base, "point 1 still reads as the base");
    assert!(
        read_all(&p2) == changed,
        "point 2 reads as the changed disk"
    );
}
