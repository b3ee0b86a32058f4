//! The repository's logic on a store held in memory: backups (full, by hashing, by a
//! changed-block map), what is refused, restores that check every grain, verify finding each
//! kind of damage, prune, sync and clean-up. No file system, qemu, strace or object store.

use std::sync::Arc;

use vdisk_bitmap::ChangeMap;
use vdisk_core::{CopyOptions, DiskImage, ErrorKind, MemImage};

use crate::layout2::meta::META_FILE;
use crate::layout2::verify::PointProblem;
use crate::layout2::{BackupOptions, PointKind, Repository, VerifyOptions, GRAIN};
use crate::store::memory::MemoryStore;
use crate::Source;

const G: usize = GRAIN as usize;

fn source(name: &str) -> Source {
    Source {
        identity: name.into(),
        unclean: false,
    }
}

/// A disk of `n` grains, grain `g` filled with `g + seed` (never zero).
fn disk(n: usize, seed: u8) -> Vec<u8> {
    (0..n * G).map(|i| (i / G) as u8 + seed).collect()
}

fn writable(store: &MemoryStore) -> Repository {
    Repository::open_or_create_in(Arc::new(store.clone())).unwrap()
}

fn readable(store: &MemoryStore) -> Repository {
    Repository::open_in(Arc::new(store.clone())).unwrap()
}

fn backup(store: &MemoryStore, bytes: &[u8]) -> crate::layout2::BackupSummary {
    writable(store)
        .backup_image(
            &MemImage::new(bytes.to_vec()),
            &source("vm1/disk0"),
            &BackupOptions::default(),
        )
        .unwrap()
}

fn read_point(repo: &Repository, n: u64) -> vdisk_core::Result<Vec<u8>> {
    let p = repo.checked_point(Some(n))?;
    let mut buf = vec![0u8; p.size() as usize];
    p.read_at(&mut buf, 0)?;
    Ok(buf)
}

fn verify(store: &MemoryStore) -> Vec<crate::layout2::PointReport> {
    readable(store)
        .verify(None, &VerifyOptions::default())
        .unwrap()
}

/// Flip a byte of the grain of point `n` that holds `fill` in every byte (found in the
/// point's extent by its content, wherever the layout put it).
fn flip_grain(store: &MemoryStore, n: u64, fill: u8) {
    let extent = file_of(store, n, "-s001.vmdk");
    let mut bytes = store.get(&extent).unwrap();
    let at = bytes
        .windows(4096)
        .position(|w| w.iter().all(|&b| b == fill))
        .unwrap_or_else(|| panic!("no grain of {fill:#x} in {extent}"));
    bytes[at + 100] ^= 1;
    store.set(&extent, bytes);
}

/// The descriptor of point `n`.
fn descriptor_of(n: u64) -> String {
    format!("point-{n:06}.vmdk")
}

/// The name of the (first) file of point `n` whose name ends with `suffix`.
fn file_of(store: &MemoryStore, n: u64, suffix: &str) -> String {
    let prefix = format!("point-{n:06}");
    store
        .names()
        .into_iter()
        .find(|f| f.starts_with(&prefix) && f.ends_with(suffix))
        .unwrap_or_else(|| panic!("no {suffix} file of point {n}: {:?}", store.names()))
}

#[test]
fn a_first_backup_is_a_full_point_that_restores_exactly() {
    let store = MemoryStore::new("r");
    let d = disk(16, 1);
    let s = backup(&store, &d);
    assert_eq!((s.point, s.kind, s.points), (1, PointKind::Full, 1));
    assert_eq!(s.bytes_read, d.len() as u64);
    assert!(read_point(&readable(&store), 1).unwrap() == d);
}

#[test]
fn an_unchanged_disk_makes_an_empty_incremental() {
    let store = MemoryStore::new("r");
    let d = disk(8, 1);
    backup(&store, &d);
    let s = backup(&store, &d);
    assert_eq!((s.point, s.kind), (2, PointKind::Incremental));
    assert_eq!(readable(&store).points()[1].changed_bytes, 0);
    assert!(read_point(&readable(&store), 2).unwrap() == d);
}

#[test]
fn a_hashed_incremental_stores_only_the_changed_grains() {
    let store = MemoryStore::new("r");
    let mut d = disk(16, 1);
    backup(&store, &d);
    d[3 * G + 17] ^= 0xff;
    d[9 * G..10 * G].fill(0); // zeroed: stored as a zeroed grain
    backup(&store, &d);
    let repo = readable(&store);
    assert_eq!(repo.points()[1].changed_bytes, 2 * GRAIN);
    assert!(read_point(&repo, 2).unwrap() == d);
    // The first point still reads as it was.
    assert!(read_point(&repo, 1).unwrap() == disk(16, 1));
}

#[test]
fn a_changed_block_map_is_trusted_and_only_its_blocks_are_read() {
    let store = MemoryStore::new("r");
    let mut d = disk(16, 1);
    backup(&store, &d);
    d[5 * G] = 0xee;
    let mut cbt = ChangeMap::new(d.len() as u64, GRAIN).unwrap();
    cbt.mark_bytes((5 * G) as u64, 1).unwrap();
    let opts = BackupOptions {
        changed: Some(cbt),
        ..Default::default()
    };
    let s = writable(&store)
        .backup_image(&MemImage::new(d.clone()), &source("vm1/disk0"), &opts)
        .unwrap();
    assert_eq!(s.bytes_read, GRAIN);
    assert!(read_point(&readable(&store), 2).unwrap() == d);
}

#[test]
fn a_change_the_map_does_not_list_is_not_backed_up_but_verify_still_holds() {
    // The map is a promise from the hypervisor: a change it misses is missed (this is why
    // it must be a superset); what was stored still verifies.
    let store = MemoryStore::new("r");
    let mut d = disk(4, 1);
    backup(&store, &d);
    d[G] = 0;
    let opts = BackupOptions {
        changed: Some(ChangeMap::new(d.len() as u64, GRAIN).unwrap()),
        ..Default::default()
    };
    writable(&store)
        .backup_image(&MemImage::new(d), &source("vm1/disk0"), &opts)
        .unwrap();
    assert!(read_point(&readable(&store), 2).unwrap() == disk(4, 1));
    assert!(verify(&store).iter().all(|r| r.sound()));
}

#[test]
fn a_bitmap_of_another_size_is_refused_and_nothing_is_written() {
    let store = MemoryStore::new("r");
    let d = disk(4, 1);
    backup(&store, &d);
    let before = store.names();
    let opts = BackupOptions {
        changed: Some(ChangeMap::new(2 * d.len() as u64, GRAIN).unwrap()),
        ..Default::default()
    };
    let e = writable(&store)
        .backup_image(&MemImage::new(d), &source("vm1/disk0"), &opts)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message().contains("another disk"), "{e}");
    assert_eq!(store.names(), before);
}

#[test]
fn another_disk_is_refused_unless_forced() {
    let store = MemoryStore::new("r");
    backup(&store, &disk(4, 1));
    let e = writable(&store)
        .backup_image(
            &MemImage::new(disk(4, 2)),
            &source("vm2/disk0"),
            &BackupOptions::default(),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsafe);
    let forced = BackupOptions {
        force: true,
        ..Default::default()
    };
    let s = writable(&store)
        .backup_image(&MemImage::new(disk(4, 2)), &source("vm2/disk0"), &forced)
        .unwrap();
    assert_eq!(s.point, 2);
}

#[test]
fn an_unclean_source_is_refused_unless_forced() {
    let store = MemoryStore::new("r");
    let unclean = Source {
        identity: "vm1/disk0".into(),
        unclean: true,
    };
    let e = writable(&store)
        .backup_image(
            &MemImage::new(disk(2, 1)),
            &unclean,
            &BackupOptions::default(),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsafe);
    assert!(store.get(META_FILE).is_none(), "nothing committed");
}

#[test]
fn a_disk_that_grows_and_shrinks_restores_at_each_size() {
    let store = MemoryStore::new("r");
    let small = disk(4, 1);
    backup(&store, &small);
    let mut big = disk(4, 1);
    big.extend(disk(3, 50));
    backup(&store, &big);
    let mut shrunk = big[..5 * G + 1000].to_vec();
    shrunk[100] = 0x99;
    backup(&store, &shrunk);
    let repo = readable(&store);
    assert!(read_point(&repo, 1).unwrap() == small);
    assert!(read_point(&repo, 2).unwrap() == big);
    assert!(read_point(&repo, 3).unwrap() == shrunk);
}

#[test]
fn a_disk_of_odd_size_restores_exactly() {
    let store = MemoryStore::new("r");
    let mut d = vec![0u8; 1_000_000];
    d[999_999] = 7;
    d[0] = 1;
    backup(&store, &d);
    assert!(read_point(&readable(&store), 1).unwrap() == d);
}

#[test]
fn a_second_writer_is_refused_while_one_holds_the_lock() {
    let store = MemoryStore::new("r");
    backup(&store, &disk(2, 1));
    let first = Repository::open_or_create_in(Arc::new(store.clone())).unwrap();
    let e = Repository::open_or_create_in(Arc::new(store.clone())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InUse);
    // Readers take no lock.
    assert_eq!(readable(&store).points().len(), 1);
    drop(first);
    assert!(Repository::open_or_create_in(Arc::new(store)).is_ok());
}

#[test]
fn a_reader_cannot_write() {
    let store = MemoryStore::new("r");
    backup(&store, &disk(2, 1));
    let mut r = readable(&store);
    let e = r
        .backup_image(
            &MemImage::new(disk(2, 1)),
            &source("vm1/disk0"),
            &BackupOptions::default(),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn a_store_with_foreign_files_and_no_repository_is_refused() {
    let store = MemoryStore::new("r");
    store.set("holiday.jpg", vec![1, 2, 3]);
    let e = Repository::open_or_create_in(Arc::new(store)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused);
}

#[test]
fn leftovers_of_a_killed_run_are_removed_by_the_next_writer() {
    let store = MemoryStore::new("r");
    backup(&store, &disk(2, 1));
    store.set("point-000009.vmdk", b"half written".to_vec());
    store.set("point-000009-s001.vmdk", vec![0; 100]);
    store.set("notes.txt", b"the user's".to_vec());
    drop(writable(&store));
    let names = store.names();
    assert!(
        !names.iter().any(|n| n.starts_with("point-000009")),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n == "notes.txt"), "foreign files stay");
}

#[test]
fn a_flipped_byte_in_a_stored_grain_is_found_by_verify_and_refused_by_restore() {
    let store = MemoryStore::new("r");
    let d = disk(8, 1);
    backup(&store, &d);
    flip_grain(&store, 1, 8); // grain 7
    let reports = verify(&store);
    assert!(!reports[0].sound());
    assert!(
        reports[0]
            .problems
            .iter()
            .any(|p| matches!(p, PointProblem::GrainMismatch { .. })),
        "{:?}",
        reports[0].problems
    );
    let e = read_point(&readable(&store), 1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(e.message().contains("does not match the hash"), "{e}");
}

#[test]
fn damage_to_a_point_marks_the_points_after_it_as_affected() {
    let store = MemoryStore::new("r");
    let mut d = disk(8, 1);
    backup(&store, &d);
    d[0] = 0x55;
    backup(&store, &d);
    flip_grain(&store, 1, 4); // grain 3
    let reports = verify(&store);
    assert!(!reports[0].sound());
    assert_eq!(reports[1].depends_on_damaged, Some(1));
}

#[test]
fn a_changed_descriptor_fails_its_metadata_checksum() {
    let store = MemoryStore::new("r");
    backup(&store, &disk(4, 1));
    let desc = descriptor_of(1);
    let text = String::from_utf8_lossy(&store.get(&desc).unwrap()).into_owned();
    store.set(
        &desc,
        text.replace("ddb.adapterType", "ddb.adapterTypo")
            .into_bytes(),
    );
    let reports = verify(&store);
    assert!(
        reports[0]
            .problems
            .iter()
            .any(|p| matches!(p, PointProblem::MetadataChecksum { .. })),
        "{:?}",
        reports[0].problems
    );
}

#[test]
fn a_truncated_extent_is_found_by_its_length() {
    let store = MemoryStore::new("r");
    backup(&store, &disk(4, 1));
    let extent = file_of(&store, 1, "-s001.vmdk");
    let mut bytes = store.get(&extent).unwrap();
    bytes.truncate(bytes.len() - 512);
    store.set(&extent, bytes);
    let reports = verify(&store);
    assert!(
        reports[0]
            .problems
            .iter()
            .any(|p| matches!(p, PointProblem::FileLength { .. })),
        "{:?}",
        reports[0].problems
    );
}

#[test]
fn a_missing_manifest_makes_a_point_unreadable_not_a_crash() {
    let store = MemoryStore::new("r");
    backup(&store, &disk(4, 1));
    let hashes = file_of(&store, 1, ".hashes");
    store.set(&hashes, Vec::new());
    let reports = verify(&store);
    assert!(!reports[0].sound());
    assert!(read_point(&readable(&store), 1).is_err());
}

#[test]
fn verify_of_a_sound_repository_is_sound_and_reads_every_stored_grain() {
    let store = MemoryStore::new("r");
    let mut d = disk(8, 1);
    backup(&store, &d);
    d[2 * G] = 0;
    backup(&store, &d);
    let repo = readable(&store);
    let total = repo.verify_bytes(None);
    assert_eq!(total, 8 * GRAIN + GRAIN);
    assert!(verify(&store).iter().all(|r| r.sound()));
}

#[test]
fn prune_folds_the_oldest_points_and_every_kept_point_restores_as_before() {
    let store = MemoryStore::new("r");
    let mut states = Vec::new();
    let mut d = disk(8, 1);
    for i in 0..4u8 {
        d[usize::from(i) * G] = 0xa0 + i;
        backup(&store, &d);
        states.push(d.clone());
    }
    let mut repo = Repository::open_writable_in(Arc::new(store.clone())).unwrap();
    let s = repo.prune(2, &CopyOptions::default()).unwrap();
    assert_eq!(s.folded, 2);
    drop(repo);
    let repo = readable(&store);
    let kept: Vec<(u64, PointKind)> = repo.points().iter().map(|p| (p.point, p.kind)).collect();
    assert_eq!(kept, [(3, PointKind::Full), (4, PointKind::Incremental)]);
    assert!(read_point(&repo, 3).unwrap() == states[2]);
    assert!(read_point(&repo, 4).unwrap() == states[3]);
    assert!(verify(&store).iter().all(|r| r.sound()));
    // The folded points' files are gone.
    assert!(!store.names().iter().any(|n| n.starts_with("point-000001")));
}

#[test]
fn prune_keeps_at_least_one_point_and_does_nothing_when_there_is_little() {
    let store = MemoryStore::new("r");
    backup(&store, &disk(2, 1));
    let mut repo = Repository::open_writable_in(Arc::new(store.clone())).unwrap();
    let e = repo.prune(0, &CopyOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert_eq!(repo.prune(5, &CopyOptions::default()).unwrap().folded, 0);
}

#[test]
fn a_damaged_point_is_never_folded_into_a_new_full() {
    let store = MemoryStore::new("r");
    let mut d = disk(4, 1);
    backup(&store, &d);
    d[0] = 9;
    backup(&store, &d);
    flip_grain(&store, 1, 2); // grain 1, which point 2 does not replace
    let before = store.get(META_FILE);
    let mut repo = Repository::open_writable_in(Arc::new(store.clone())).unwrap();
    assert!(repo.prune(1, &CopyOptions::default()).is_err());
    drop(repo);
    assert_eq!(store.get(META_FILE), before, "the metadata is as it was");
}

#[test]
fn sync_copies_what_the_destination_lacks_then_nothing() {
    let a = MemoryStore::new("a");
    let b = MemoryStore::new("b");
    let mut d = disk(8, 1);
    backup(&a, &d);
    d[G] = 3;
    backup(&a, &d);
    let src = readable(&a);
    let mut dst = writable(&b);
    let s = dst.sync_from(&src, &VerifyOptions::default()).unwrap();
    assert_eq!((s.points, s.points_copied), (2, 2));
    assert!(read_point(&readable(&b), 2).unwrap() == d);
    let again = dst.sync_from(&src, &VerifyOptions::default()).unwrap();
    assert_eq!((again.files_copied, again.bytes_copied), (0, 0));
}

#[test]
fn sync_refuses_a_destination_of_another_disk() {
    let a = MemoryStore::new("a");
    let b = MemoryStore::new("b");
    backup(&a, &disk(4, 1));
    writable(&b)
        .backup_image(
            &MemImage::new(disk(4, 1)),
            &source("other/disk"),
            &BackupOptions::default(),
        )
        .unwrap();
    let e = writable(&b)
        .sync_from(&readable(&a), &VerifyOptions::default())
        .unwrap_err();
    assert_ne!(e.kind(), ErrorKind::Io, "{e}");
}

#[test]
fn the_metadata_lists_the_points_with_their_files_and_sizes() {
    let store = MemoryStore::new("r");
    let d = disk(4, 1);
    backup(&store, &d);
    backup(&store, &d);
    let repo = readable(&store);
    let p = &repo.points()[1];
    assert_eq!((p.point, p.size, p.parent), (2, d.len() as u64, Some(1)));
    for f in &p.files {
        assert_eq!(store.get(&f.name).map(|b| b.len() as u64), Some(f.length));
    }
    assert!(repo.usage() > 0);
}

#[test]
fn a_point_that_names_a_file_outside_the_repository_is_refused() {
    let store = MemoryStore::new("r");
    backup(&store, &disk(4, 1));
    let desc = descriptor_of(1);
    let text = String::from_utf8_lossy(&store.get(&desc).unwrap()).into_owned();
    store.set(
        &desc,
        text.replace("\"point-000001", "\"../elsewhere/point-000001")
            .into_bytes(),
    );
    let e = read_point(&readable(&store), 1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(e.message().contains("outside the repository"), "{e}");
}
