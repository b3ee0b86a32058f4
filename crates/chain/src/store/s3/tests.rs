//! The object-store repository on `object_store`'s in-memory store: conditional commits, the
//! lease, multipart uploads read back by range, clean-up, and a whole backup, restore and
//! verify, with no server.

use std::sync::Arc;

use object_store::memory::InMemory;
use object_store::multipart::MultipartStore;
use object_store::path::Path as Key;
use object_store::ObjectStoreExt;
use vdisk_core::{DiskImage, ErrorKind, MemImage};

use super::{meta_name, S3Store, LEASE, UPLOAD_MARKER};
use crate::layout2::meta::{DiskIdentity, RepoMeta};
use crate::layout2::{BackupOptions, Repository, VerifyOptions};
use crate::store::Store;
use crate::Source;

/// A store on a fresh in-memory backend, under a bucket name of its own (the host lock is
/// named after it: tests running at once must not share it).
fn store(bucket: &str) -> (Arc<InMemory>, S3Store) {
    let backend = Arc::new(InMemory::new());
    let s =
        S3Store::with_backend(backend.clone(), bucket, "vm1/disk0", vec!["s3cr3t".into()]).unwrap();
    (backend, s)
}

/// Metadata that differs by `next` (a retried commit of the very same bytes counts as done).
fn meta(next: u64) -> RepoMeta {
    let mut m = RepoMeta::new(
        DiskIdentity {
            source: "vm1/disk0".into(),
            size: 1 << 20,
        },
        64 << 10,
    );
    m.next_point = next;
    m
}

#[test]
fn a_commit_never_replaces_a_newer_state() {
    let (backend, a) = store("commit-test");
    let b = S3Store::with_backend(backend, "commit-test", "vm1/disk0", vec![]).unwrap();
    assert!(a.load_meta().unwrap().is_none());
    a.commit_meta(&meta(1)).unwrap();
    // Both have seen state 1; b commits 2 first, so a's 2 is refused.
    assert!(b.load_meta().unwrap().is_some());
    b.commit_meta(&meta(2)).unwrap();
    let e = a.commit_meta(&meta(3)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InUse);
    assert!(a.list().unwrap().iter().any(|f| f.name == meta_name(2)));
}

#[test]
fn a_live_lease_of_another_host_refuses_a_writer_and_an_expired_one_is_taken_over() {
    let (backend, s) = store("lease-test");
    let lease = |host: &str, expires: u64| {
        format!(
            r#"{{"format":"vdisk-lease","host":"{host}","boot":"b","pid":1,"token":"t","expires":{expires}}}"#
        )
    };
    let key = Key::from(format!("vm1/disk0/{LEASE}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let far = super::unix_now() + 3600;
    rt.block_on(backend.put(&key, lease("elsewhere", far).into()))
        .unwrap();
    let e = s.lock().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InUse);
    assert!(e.message().contains("elsewhere"), "{e}");
    rt.block_on(backend.put(&key, lease("elsewhere", 1).into()))
        .unwrap();
    let held = s.lock().unwrap();
    held.check().unwrap();
    drop(held);
}

#[test]
fn an_object_of_many_parts_reads_back_by_range() {
    let (_, s) = store("upload-test");
    // 40 MiB: a head part kept for last, then 16 MiB parts, then a short one.
    let data: Vec<u8> = (0..40u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut out = s.create_stream("point-000001-s001.vmdk").unwrap();
    for chunk in data.chunks(3 << 20) {
        out.writer().write_all(chunk).unwrap();
    }
    assert_eq!(out.finish().unwrap(), data.len() as u64);
    assert_eq!(s.len("point-000001-s001.vmdk").unwrap(), data.len() as u64);
    let bytes = s.load(&s.path("point-000001-s001.vmdk")).unwrap();
    for (at, n) in [
        (0u64, 100usize),
        (8 << 20, 1 << 20),
        ((16 << 20) - 7, 20),
        ((40 << 20) - 5, 5),
    ] {
        let mut buf = vec![0u8; n];
        bytes.read_at(&mut buf, at).unwrap();
        assert!(buf[..] == data[at as usize..at as usize + n], "at {at}");
    }
}

#[test]
fn a_small_object_is_one_put() {
    let (_, s) = store("small-test");
    let mut out = s.create_stream("point-000001.hashes").unwrap();
    out.writer().write_all(b"tiny").unwrap();
    out.finish().unwrap();
    assert_eq!(s.read("point-000001.hashes", 100).unwrap(), b"tiny");
    // Nothing else was left behind (no upload marker).
    let names: Vec<String> = s.list().unwrap().into_iter().map(|f| f.name).collect();
    assert_eq!(names, ["point-000001.hashes"]);
}

#[test]
fn clean_up_aborts_marked_uploads_and_removes_leftovers() {
    let (backend, s) = store("cleanup-test");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key = Key::from("vm1/disk0/point-000009-s001.vmdk");
    let id = rt.block_on(backend.create_multipart(&key)).unwrap();
    s.put(
        &format!("{UPLOAD_MARKER}0123456789abcdef"),
        format!("{key}\n{id}\n").as_bytes(),
    )
    .unwrap();
    s.put("point-000009.vmdk", b"left by a killed run").unwrap();
    s.put("notes.txt", b"someone else's").unwrap();
    s.clean_up(&Default::default()).unwrap();
    let names: Vec<String> = s.list().unwrap().into_iter().map(|f| f.name).collect();
    assert_eq!(names, ["notes.txt"]);
    // The upload is gone: completing it fails.
    assert!(rt
        .block_on(backend.complete_multipart(&key, &id, vec![]))
        .is_err());
}

#[test]
fn messages_never_show_the_secret() {
    let (_, s) = store("secret-test");
    let text = s
        .inner
        .clean("SignatureDoesNotMatch for key s3cr3t <?xml version=\"1.0\"?><Error>");
    assert!(
        !text.contains("s3cr3t") && !text.contains("<?xml"),
        "{text}"
    );
}

#[test]
fn a_whole_repository_backs_up_restores_and_verifies_on_the_object_store() {
    let (_, s) = store("repo-test");
    let s: Arc<dyn Store> = Arc::new(s);
    let source = Source {
        identity: "vm1/disk0".into(),
        unclean: false,
    };
    let mut disk: Vec<u8> = (0..(3 << 20) + 4096)
        .map(|i| (i / 65536) as u8 + 1)
        .collect();
    let mut repo = Repository::open_or_create_in(Arc::clone(&s)).unwrap();
    repo.backup_image(
        &MemImage::new(disk.clone()),
        &source,
        &BackupOptions::default(),
    )
    .unwrap();
    disk[70_000] = 0xee;
    let second = repo
        .backup_image(
            &MemImage::new(disk.clone()),
            &source,
            &BackupOptions::default(),
        )
        .unwrap();
    assert_eq!(second.point, 2);
    drop(repo);
    let repo = Repository::open_in(s).unwrap();
    let point = repo.checked_point(None).unwrap();
    let mut back = vec![0u8; point.size() as usize];
    point.read_at(&mut back, 0).unwrap();
    assert!(back == disk);
    let reports = repo.verify(None, &VerifyOptions::default()).unwrap();
    assert!(reports.iter().all(|r| r.sound()));
}
