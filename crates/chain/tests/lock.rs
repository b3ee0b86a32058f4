//! (Layout 2, the earlier repository layout, whose writer stays for library users.)
//! The repository lock inside one process: a second writable handle is refused like another
//! run would be, dropping the refused handle does not unlock the holder, and readers need no
//! lock at all (the issue "Trust at the edges": two `Repository::open` in one process both
//! succeeded, and dropping one unlocked the other).

use vdisk_chain::layout2::{BackupOptions, Repository};
use vdisk_chain::Source;
use vdisk_core::{DiskImage, ErrorKind, MemImage};

fn source() -> Source {
    Source {
        identity: "mem".into(),
        unclean: false,
    }
}

#[test]
fn a_second_writer_in_the_same_process_is_refused_and_readers_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let disk = vec![7u8; 256 << 10];
    {
        let mut repo = Repository::open_or_create(&repo_dir).unwrap();
        repo.backup_image(
            &MemImage::new(disk.clone()),
            &source(),
            &BackupOptions::default(),
        )
        .unwrap();
    }

    let mut first = Repository::open_writable(&repo_dir).unwrap();
    let second = Repository::open_writable(&repo_dir).unwrap_err();
    assert_eq!(second.kind(), ErrorKind::InUse, "{second}");
    // open_or_create takes the same lock.
    let third = Repository::open_or_create(&repo_dir).unwrap_err();
    assert_eq!(third.kind(), ErrorKind::InUse, "{third}");
    // The refused attempts (dropped above) left the holder's lock in place.
    drop(second);
    drop(third);
    assert_eq!(
        Repository::open_writable(&repo_dir).unwrap_err().kind(),
        ErrorKind::InUse
    );

    // Readers take no lock: they open, list and read a checked point while the writer holds it.
    let reader = Repository::open(&repo_dir).unwrap();
    assert_eq!(reader.points().len(), 1);
    let point = reader.checked_point(None).unwrap();
    let mut back = vec![0u8; disk.len()];
    point.read_at(&mut back, 0).unwrap();
    assert_eq!(back, disk);
    let reader2 = Repository::open(&repo_dir).unwrap();
    drop(reader);
    drop(reader2);
    // Dropping readers did not unlock the writer either.
    assert_eq!(
        Repository::open_writable(&repo_dir).unwrap_err().kind(),
        ErrorKind::InUse
    );

    // The holder still writes, and once it is gone the next writer gets the lock.
    first
        .backup_image(
            &MemImage::new(vec![8u8; 256 << 10]),
            &source(),
            &BackupOptions::default(),
        )
        .unwrap();
    drop(first);
    let again = Repository::open_writable(&repo_dir).unwrap();
    assert_eq!(again.points().len(), 2);
}
