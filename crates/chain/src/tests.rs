//! Layout 3 on a store held in memory: backups (full, by fingerprints, by a changed-block
//! map, several disks, several NAMEs), restores that check every block, tampering of every
//! kind of object, encryption, retention and garbage collection (with readers and writers
//! running), sync (same key, other keys, resumed), and the crafted objects of the issue.

use std::sync::Arc;

use vdisk_bitmap::ChangeMap;
use vdisk_core::{DiskImage, ErrorKind, MemImage};

use crate::store::memory::MemoryStore;
use crate::store::objects::{MemoryObjects, Objects};
use crate::{
    Access, BackupOptions, DiskSource, InitOptions, PruneOptions, Repository, Retention, Source,
    VerifyOptions,
};

const B: usize = 64 << 10;

fn fast_kdf() {
    std::env::set_var("VDISK_KDF_MEMORY_KIB", "8192");
}

fn repo_on(store: &MemoryObjects, password: Option<&str>) -> Repository {
    fast_kdf();
    let opts = InitOptions {
        password: password.map(str::to_string),
        ..Default::default()
    };
    Repository::init_in(Arc::new(store.clone()), &MemoryStore::new("legacy"), &opts).unwrap()
}

fn new_repo(password: Option<&str>) -> (MemoryObjects, Repository) {
    let s = MemoryObjects::new("r");
    let r = repo_on(&s, password);
    (s, r)
}

fn reopen(store: &MemoryObjects, password: Option<&str>) -> vdisk_core::Result<Repository> {
    fast_kdf();
    let pw = password.map(str::to_string);
    let f = move |_: &std::path::Path| Ok(pw.clone().unwrap_or_default());
    Repository::open_in(Arc::new(store.clone()), &Access { password: Some(&f) })
}

/// `n` blocks of random-looking bytes, block `i` drawn from `seed + i` (never zero, all
/// different, incompressible).
fn disk(n: usize, seed: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * B);
    for b in 0..n {
        let mut x = u64::from(seed + b as u32).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for _ in 0..B / 8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out
}

fn src<'a>(img: &'a MemImage, id: &str) -> DiskSource<'a> {
    DiskSource {
        image: img,
        source: Source {
            identity: id.into(),
            unclean: false,
        },
        label: id.rsplit('/').next().unwrap_or(id).into(),
    }
}

fn backup(r: &Repository, name: &str, bytes: &[u8]) -> crate::BackupSummary {
    let img = MemImage::new(bytes.to_vec());
    r.backup(
        name,
        &[src(&img, &format!("/{name}.raw"))],
        &BackupOptions::default(),
    )
    .unwrap()
}

fn restored(r: &Repository, name: &str, seq: Option<u64>) -> vdisk_core::Result<Vec<u8>> {
    let p = r.select(Some(name), seq)?;
    let img = r.point_image(&p, None)?;
    let mut out = vec![0u8; img.size() as usize];
    img.read_at(&mut out, 0)?;
    Ok(out)
}

fn sound(r: &Repository) -> bool {
    r.verify(None, None, &VerifyOptions::default())
        .unwrap()
        .iter()
        .all(|x| x.sound())
}

fn names(s: &MemoryObjects, prefix: &str) -> Vec<String> {
    s.names()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[test]
fn full_hash_and_cbt_points_restore_exactly_and_store_only_changes() {
    for pw in [None, Some("pw")] {
        let (_, r) = new_repo(pw);
        let mut d = disk(40, 1);
        // Zero blocks are stored nowhere.
        d[5 * B..8 * B].fill(0);
        let s1 = backup(&r, "vm", &d);
        assert_eq!((s1.point, s1.kind.name()), (1, "full"));
        // 37 data blocks, one leaf.
        assert_eq!(s1.blobs_added, 37 + 1);
        let v1 = d.clone();
        // By fingerprints: two blocks change.
        d[3 * B + 9] ^= 1;
        d[30 * B] ^= 1;
        let s2 = backup(&r, "vm", &d);
        assert_eq!(
            (s2.point, s2.kind.name(), s2.blobs_added),
            (2, "incremental", 3)
        );
        let v2 = d.clone();
        // By a changed-block map: only marked blocks are read.
        d[20 * B + 100] ^= 0xff;
        let mut cbt = ChangeMap::new(d.len() as u64, 4096).unwrap();
        cbt.mark_bytes(20 * B as u64 + 100, 1).unwrap();
        let img = MemImage::new(d.clone());
        let opts = BackupOptions {
            changed: vec![Some(cbt)],
            ..Default::default()
        };
        let s3 = r.backup("vm", &[src(&img, "/vm.raw")], &opts).unwrap();
        assert_eq!((s3.point, s3.bytes_read, s3.blobs_added), (3, B as u64, 2));
        for (n, want) in [(1, &v1), (2, &v2), (3, &d)] {
            assert_eq!(&restored(&r, "vm", Some(n)).unwrap(), want, "point {n}");
        }
        assert!(sound(&r));
    }
}

#[test]
fn a_clone_vm_and_a_second_disk_cost_almost_nothing_and_restore_by_disk() {
    let (_, r) = new_repo(None);
    let template = disk(64, 7);
    let s1 = backup(&r, "web01", &template);
    let mut clone = template.clone();
    clone[10 * B] ^= 1;
    let s2 = backup(&r, "web02", &clone);
    assert_eq!(s2.point, 1);
    assert!(
        s2.bytes_added * 20 < s1.bytes_added,
        "{} vs {}",
        s2.bytes_added,
        s1.bytes_added
    );
    // A point of two disks.
    let a = MemImage::new(disk(3, 100));
    let b = MemImage::new(disk(5, 200));
    r.backup(
        "db",
        &[src(&a, "/vm/a.raw"), src(&b, "/vm/b.raw")],
        &BackupOptions::default(),
    )
    .unwrap();
    let p = r.select(Some("db"), None).unwrap();
    assert_eq!(
        r.point_image(&p, None).unwrap_err().kind(),
        ErrorKind::Ambiguous
    );
    for (which, want) in [("0", &a), ("b.raw", &b)] {
        let img = r.point_image(&p, Some(which)).unwrap();
        let mut out = vec![0u8; img.size() as usize];
        img.read_at(&mut out, 0).unwrap();
        let mut exp = vec![0u8; want.size() as usize];
        want.read_at(&mut exp, 0).unwrap();
        assert_eq!(out, exp);
    }
    assert_eq!(
        r.point_image(&p, Some("c.raw")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // Which NAME: the only one, or given.
    assert_eq!(
        r.select(None, None).unwrap_err().kind(),
        ErrorKind::Ambiguous
    );
    // The identity check stays per NAME and disk.
    let other = MemImage::new(disk(3, 100));
    let e = r
        .backup(
            "db",
            &[src(&other, "/elsewhere/a.raw"), src(&b, "/vm/b.raw")],
            &BackupOptions::default(),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsafe);
    let e = r
        .backup("db", &[src(&b, "/vm/b.raw")], &BackupOptions::default())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsafe);
}

#[test]
fn odd_sizes_growth_and_shrinking_restore_exactly() {
    let (_, r) = new_repo(None);
    let mut d: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8 + 1).collect();
    backup(&r, "a", &d);
    assert_eq!(restored(&r, "a", None).unwrap(), d);
    d.extend(std::iter::repeat_n(9u8, 300_000));
    let s = backup(&r, "a", &d);
    assert_eq!(s.kind.name(), "incremental");
    assert_eq!(restored(&r, "a", None).unwrap(), d);
    d.truncate(500_001);
    backup(&r, "a", &d);
    assert_eq!(restored(&r, "a", None).unwrap(), d);
    assert_eq!(restored(&r, "a", Some(1)).unwrap().len(), 1_000_000);
    // Reads of parts of blocks, across blocks.
    let p = r.select(Some("a"), None).unwrap();
    let img = r.point_image(&p, None).unwrap();
    let mut part = vec![0u8; 70_000];
    img.read_at(&mut part, 100_000).unwrap();
    assert_eq!(part, d[100_000..170_000]);
}

#[test]
fn encryption_hides_data_and_names_and_a_wrong_password_is_refused() {
    let (s, r) = new_repo(Some("correct horse"));
    let secret = b"TOP-SECRET-PAYLOAD-".repeat(4000);
    let mut d = disk(4, 1);
    d[..secret.len()].copy_from_slice(&secret);
    backup(&r, "payroll-server", &d);
    for n in s.names() {
        let bytes = s.get(&n).unwrap();
        assert!(
            !bytes.windows(10).any(|w| w == &secret[..10]),
            "{n} holds plaintext"
        );
        assert!(
            !bytes.windows(14).any(|w| w == b"payroll-server"),
            "{n} holds the name"
        );
        assert!(!n.contains("payroll"));
    }
    let e = reopen(&s, Some("wrong")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused);
    assert!(e.to_string().contains("wrong password"), "{e}");
    let r2 = reopen(&s, Some("correct horse")).unwrap();
    assert_eq!(restored(&r2, "payroll-server", None).unwrap(), d);
    // A new password: the old one no longer opens it, the new one does.
    r2.change_password("battery staple").unwrap();
    assert_eq!(names(&s, "keys/").len(), 1);
    assert!(reopen(&s, Some("correct horse")).is_err());
    assert_eq!(
        restored(
            &reopen(&s, Some("battery staple")).unwrap(),
            "payroll-server",
            None
        )
        .unwrap(),
        d
    );
}

/// Flipped, swapped, truncated and replayed packs, tables and points: an error naming what is
/// damaged, never other bytes.
#[test]
fn tampering_with_any_object_is_found_never_returned() {
    for pw in [None, Some("pw")] {
        let (s, r) = new_repo(pw);
        let d = disk(8, 3);
        backup(&r, "vm", &d);
        let pack = names(&s, "data/")[0].clone();
        let mut d2 = d.clone();
        d2[B] ^= 1;
        backup(&r, "vm", &d2);
        let orig = s.get(&pack).unwrap();
        // A flipped byte in a block.
        let mut b = orig.clone();
        b[100] ^= 1;
        s.set(&pack, b);
        let r = reopen(&s, pw).unwrap();
        let e = restored(&r, "vm", Some(1)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(e.to_string().contains("point 1"), "{e}");
        assert!(!sound(&r));
        // Two blocks swapped within the pack.
        let entries =
            crate::pack::parse_pack(r.keys(), crate::pack::pack_id_of(&pack).unwrap(), &orig)
                .unwrap();
        let (x, y) = (entries[0], entries[1]);
        assert_eq!(x.len, y.len);
        let mut b = orig.clone();
        let (xs, ys) = (x.offset as usize, y.offset as usize);
        let xb = orig[xs..xs + x.len as usize].to_vec();
        b[xs..xs + x.len as usize].copy_from_slice(&orig[ys..ys + y.len as usize]);
        b[ys..ys + y.len as usize].copy_from_slice(&xb);
        s.set(&pack, b);
        let r = reopen(&s, pw).unwrap();
        assert!(restored(&r, "vm", Some(1)).is_err());
        // Truncated.
        s.set(&pack, orig[..orig.len() / 2].to_vec());
        let r = reopen(&s, pw).unwrap();
        assert!(restored(&r, "vm", Some(1)).is_err());
        s.set(&pack, orig.clone());
        let r = reopen(&s, pw).unwrap();
        assert_eq!(restored(&r, "vm", Some(1)).unwrap(), d);
        // An index table flipped: lookups fail, never point elsewhere.
        let table = names(&s, "index/")[0].clone();
        let t = s.get(&table).unwrap();
        let mut b = t.clone();
        b[10] ^= 1;
        s.set(&table, b);
        let r = reopen(&s, pw).unwrap();
        assert!(restored(&r, "vm", Some(1)).is_err() || restored(&r, "vm", Some(1)).unwrap() == d);
        s.set(&table, t);
        // A point replayed under a higher number, or another NAME's: refused.
        let p1 = names(&s, "points/")[0].clone();
        let p3 = p1.replace("-0000000001", "-0000000003");
        s.set(&p3, s.get(&p1).unwrap());
        let r = reopen(&s, pw).unwrap();
        let list = r.points().unwrap();
        assert_eq!(list.points.len(), 2);
        assert_eq!(list.unreadable.len(), 1);
        assert!(!sound(&r));
        // ... and the next backup goes on, numbered past it, nothing lost.
        let s4 = backup(&r, "vm", &d);
        assert_eq!(s4.point, 4);
        assert_eq!(restored(&r, "vm", Some(2)).unwrap(), d2);
    }
}

#[test]
fn two_backups_of_one_name_cannot_both_commit_and_a_foreign_object_never_blocks() {
    let (s, r) = new_repo(None);
    let d = disk(4, 1);
    backup(&r, "vm", &d);
    // Something foreign where point 2 goes: stepped over.
    let tag = r.keys().name_tag("vm");
    s.set(&crate::point::point_key(&tag, 2), b"garbage".to_vec());
    let s2 = backup(&r, "vm", &d);
    assert_eq!(s2.point, 3);
    assert_eq!(restored(&r, "vm", Some(3)).unwrap(), d);
    // A live registration of another backup of the NAME refuses a second one.
    let held = crate::locks::Registration::register(&r, "backup", Some("vm")).unwrap();
    let img = MemImage::new(d.clone());
    let e = r
        .backup("vm", &[src(&img, "/vm.raw")], &BackupOptions::default())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InUse);
    // Another NAME goes on at the same time.
    backup(&r, "other", &d);
    drop(held);
    assert!(names(&s, "locks/").is_empty());
    backup(&r, "vm", &d);
}

#[test]
fn prune_keeps_what_the_policy_says_and_gc_frees_space_after_the_grace_period() {
    std::env::set_var("VDISK_GC_GRACE_SECS", "3600");
    let (s, r) = new_repo(None);
    let mut versions = Vec::new();
    for i in 0..4u32 {
        let d = disk(32, 1000 * i);
        backup(&r, "vm", &d);
        versions.push(d);
    }
    let before: u64 = s
        .names()
        .iter()
        .filter(|n| n.starts_with("data/"))
        .map(|n| s.get(n).unwrap().len() as u64)
        .sum();
    let opts = PruneOptions {
        retention: Retention {
            last: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    let dry = r
        .prune(&PruneOptions {
            dry_run: true,
            ..opts.clone()
        })
        .unwrap();
    assert_eq!(dry.removed.len(), 2);
    assert_eq!(r.points().unwrap().points.len(), 4);
    let p = r.prune(&opts).unwrap();
    assert_eq!(p.removed, [("vm".to_string(), 1), ("vm".to_string(), 2)]);
    assert!(p.gc.condemned_packs > 0);
    assert_eq!(p.gc.deleted_packs, 0);
    // A reader that opened before still reads a kept point while packs go.
    let reader = reopen(&s, None).unwrap();
    let kept = reader.select(Some("vm"), Some(4)).unwrap();
    let img = reader.point_image(&kept, None).unwrap();
    let mut first = vec![0u8; B];
    img.read_at(&mut first, 0).unwrap();
    // Within the grace period, nothing is deleted.
    let again = r.prune(&opts).unwrap();
    assert_eq!(again.gc.deleted_packs, 0);
    s.age(7200);
    let later = r.prune(&opts).unwrap();
    assert!(later.gc.deleted_packs > 0);
    let after: u64 = s
        .names()
        .iter()
        .filter(|n| n.starts_with("data/"))
        .map(|n| s.get(n).unwrap().len() as u64)
        .sum();
    assert!(after * 3 < before * 2, "{after} of {before}");
    let mut all = vec![0u8; img.size() as usize];
    img.read_at(&mut all, 0).unwrap();
    assert_eq!(all, versions[3]);
    for (n, v) in [(3, &versions[2]), (4, &versions[3])] {
        assert_eq!(&restored(&r, "vm", Some(n)).unwrap(), v);
    }
    assert!(sound(&r));
    assert!(names(&s, "condemned/").is_empty());
}

#[test]
fn gc_never_deletes_while_a_writer_is_registered_nor_what_it_referenced() {
    std::env::set_var("VDISK_GC_GRACE_SECS", "3600");
    let (s, r) = new_repo(None);
    let a = disk(16, 1);
    let b = disk(16, 500);
    backup(&r, "vm", &a);
    backup(&r, "vm", &b);
    let opts = PruneOptions {
        retention: Retention {
            last: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    r.prune(&opts).unwrap(); // point 1's blocks condemned
    s.age(7200);
    // A backup runs (registered) and references point 1's condemned blocks.
    let held = crate::locks::Registration::register(&r, "backup", Some("another")).unwrap();
    let g = r.prune(&opts).unwrap();
    assert!(g.gc.writers_running);
    assert_eq!(g.gc.deleted_packs, 0);
    backup(&r, "late", &a);
    drop(held);
    // Condemned, but live again: kept, and indexed.
    let g = r.prune(&opts).unwrap();
    assert_eq!(g.gc.deleted_packs, 0, "{g:?}");
    s.age(7200);
    r.prune(&opts).unwrap();
    let r = reopen(&s, None).unwrap();
    assert_eq!(restored(&r, "late", None).unwrap(), a);
    assert!(sound(&r));
}

#[test]
fn sync_copies_what_is_missing_reseals_for_other_keys_and_resumes() {
    let (_, a) = new_repo(None);
    let d1 = disk(20, 1);
    let mut d2 = d1.clone();
    d2[5 * B] ^= 1;
    backup(&a, "vm", &d1);
    backup(&a, "vm", &d2);
    backup(&a, "db", &disk(3, 99));
    // Same key (a copy made by sync): sealed blobs move as they are.
    let b = copy_of(&a, &MemoryObjects::new("b"));
    let s = b.sync_from(&a, None, &VerifyOptions::default()).unwrap();
    assert_eq!((s.points, s.points_copied), (3, 3));
    assert_eq!(restored(&b, "vm", Some(1)).unwrap(), d1);
    assert_eq!(restored(&b, "vm", Some(2)).unwrap(), d2);
    let again = b.sync_from(&a, None, &VerifyOptions::default()).unwrap();
    assert_eq!((again.points_present, again.blobs_copied), (3, 0));
    // Other keys (an encrypted destination): blocks are hashed and sealed anew.
    let (cs, c) = new_repo(Some("pw"));
    let s = c
        .sync_from(&a, Some("vm"), &VerifyOptions::default())
        .unwrap();
    assert_eq!(s.points_copied, 2);
    assert_eq!(restored(&c, "vm", Some(2)).unwrap(), d2);
    assert!(c.select(Some("db"), None).is_err());
    // Resume: a sync killed after its first point left it committed and its blobs indexed.
    let ds = MemoryObjects::new("d");
    let d = repo_on(&ds, Some("pw"));
    d.sync_from(&a, Some("db"), &VerifyOptions::default())
        .unwrap();
    let s = d.sync_from(&a, None, &VerifyOptions::default()).unwrap();
    assert_eq!((s.points_copied, s.points_present), (2, 1));
    assert!(names(&cs, "data/").len() <= names(&ds, "data/").len());
}

/// A destination that is a copy of `a` (same keys: sealed blobs move as they are).
fn copy_of(a: &Repository, store: &MemoryObjects) -> Repository {
    let objects: Arc<dyn Objects> = Arc::new(store.clone());
    let config = crate::config::Config::copy_of(&a.inner.config, &a.inner.master).unwrap();
    objects.create("config", &config.encode()).unwrap();
    Repository::open_in(objects, &Access::default()).unwrap()
}

#[test]
fn sync_refuses_a_damaged_or_forged_block_and_commits_nothing() {
    let (s, a) = new_repo(None);
    let d = disk(6, 5);
    backup(&a, "vm", &d);
    let pack = names(&s, "data/")[0].clone();
    let orig = s.get(&pack).unwrap();
    let entries =
        crate::pack::parse_pack(a.keys(), crate::pack::pack_id_of(&pack).unwrap(), &orig).unwrap();
    // A flipped byte: its seal fails at the source, which the error names.
    let mut b = orig.clone();
    b[entries[0].offset as usize + 40] ^= 1;
    s.set(&pack, b);
    // A sync of the repository as it now is into a fresh copy: refused, nothing committed.
    let refused = |why: &str| {
        let src = reopen(&s, None).unwrap();
        let ds = MemoryObjects::new("d");
        let e = copy_of(&src, &ds)
            .sync_from(&src, None, &VerifyOptions::default())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        assert!(e.to_string().contains(why), "{e}");
        assert!(names(&ds, "points/").is_empty());
    };
    refused("does not authenticate");
    // A block whose seal is valid but whose bytes are another block's (sealed again with
    // the public key of an unencrypted repository): found on arrival, nothing committed.
    let x = entries[0];
    let mut other = d[..B].to_vec();
    other[7] ^= 1;
    let forged = crate::pack::seal_blob(a.keys(), &x.id, &other).unwrap();
    assert_eq!(
        forged.len(),
        x.len as usize,
        "incompressible blocks seal to one length"
    );
    let mut b = orig.clone();
    b.splice(
        x.offset as usize..(x.offset + x.len) as usize,
        forged.iter().copied(),
    );
    s.set(&pack, b);
    refused("did not arrive whole");
    // Mended, the same sync copies it all.
    s.set(&pack, orig);
    let a4 = reopen(&s, None).unwrap();
    let ds = MemoryObjects::new("d3");
    let dst = copy_of(&a4, &ds);
    dst.sync_from(&a4, None, &VerifyOptions::default()).unwrap();
    assert_eq!(names(&ds, "points/").len(), 1);
    assert_eq!(restored(&dst, "vm", Some(1)).unwrap(), d);
}

#[test]
fn the_issues_crafted_points_are_refused_and_lose_nothing() {
    let (s, r) = new_repo(None);
    let d = disk(4, 1);
    backup(&r, "vm", &d);
    let tag = r.keys().name_tag("vm");
    let good = r.select(Some("vm"), Some(1)).unwrap().record;
    let forge = |p: &crate::PointRecord, seq: u64| {
        let key = crate::point::point_key(&tag, seq);
        // Sealed with the (public) key of an unencrypted repository: valid seals, crafted
        // contents.
        let json = serde_json::to_vec(p).unwrap();
        s.set(
            &key,
            r.keys()
                .seal(crate::crypto::Kind::Point, key.as_bytes(), &json)
                .unwrap(),
        );
    };
    let mut empty = good.clone();
    empty.disks.clear();
    empty.seq = 2;
    forge(&empty, 2);
    let mut huge = good.clone();
    huge.seq = 3;
    huge.disks[0].size = 1 << 63;
    forge(&huge, 3);
    let mut many = good.clone();
    many.seq = 4;
    many.disks = vec![good.disks[0].clone(); 5000];
    forge(&many, 4);
    let list = r.points().unwrap();
    assert_eq!(list.points.len(), 1);
    assert_eq!(list.unreadable.len(), 3);
    // Verify says damaged; prune refuses to delete anything; the next backup goes on.
    assert!(!sound(&r));
    let opts = PruneOptions {
        retention: Retention {
            last: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(r.prune(&opts).unwrap_err().kind(), ErrorKind::Corrupt);
    let n = backup(&r, "vm", &d);
    assert_eq!(n.point, 5);
    assert_eq!(restored(&r, "vm", Some(1)).unwrap(), d);
}

/// A thin disk of `size` bytes: data only in `pieces` (offset, bytes), zero elsewhere, and an
/// allocation map that says so.
struct Thin {
    size: u64,
    pieces: Vec<(u64, Vec<u8>)>,
}

impl DiskImage for Thin {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vdisk_core::Result<()> {
        vdisk_core::check_range(self.size, offset, buf.len() as u64)?;
        buf.fill(0);
        let end = offset + buf.len() as u64;
        for (at, bytes) in &self.pieces {
            let (s, e) = ((*at).max(offset), (at + bytes.len() as u64).min(end));
            if s < e {
                buf[(s - offset) as usize..(e - offset) as usize]
                    .copy_from_slice(&bytes[(s - at) as usize..(e - at) as usize]);
            }
        }
        Ok(())
    }
    fn allocation(&self, offset: u64, length: u64) -> vdisk_core::Result<Vec<vdisk_core::Extent>> {
        use vdisk_core::{coalesce, Allocation, Extent};
        let end = offset + length;
        let mut out = Vec::new();
        let mut at = offset;
        let ext = |start, end: u64, allocation| Extent {
            start,
            length: end - start,
            allocation,
            depth: 0,
        };
        for (p, bytes) in &self.pieces {
            let (s, e) = ((*p).max(at), (p + bytes.len() as u64).min(end));
            if s < e {
                coalesce(&mut out, ext(at, s, Allocation::Unallocated));
                coalesce(&mut out, ext(s, e, Allocation::Data));
                at = e;
            }
        }
        coalesce(&mut out, ext(at, end, Allocation::Unallocated));
        Ok(out)
    }
    fn format_name(&self) -> &'static str {
        "thin"
    }
}

/// A point of a thin disk maps its empty stretches as one hole each, skipped a chunk of its
/// index at a time (zero leaves, and zero nodes over 1024 of them), and reads back.
#[test]
fn a_thin_points_map_has_one_hole_per_empty_stretch() {
    let (_s, repo) = new_repo(None);
    let g = 1u64 << 30;
    let b = B as u64;
    // Data in the first block, in two blocks past a zero node (64 GiB of blocks), in the
    // last one; 200 GiB in all.
    let img = Thin {
        size: 200 * g,
        pieces: vec![
            (0, disk(1, 1)),
            (70 * g + 3 * b, disk(2, 5)),
            (200 * g - b, disk(1, 9)),
        ],
    };
    let src = DiskSource {
        image: &img,
        source: Source {
            identity: "/thin".into(),
            unclean: false,
        },
        label: "thin".into(),
    };
    repo.backup("thin", &[src], &BackupOptions::default())
        .unwrap();
    let point = repo.select(Some("thin"), None).unwrap();
    let p = repo.point_image(&point, None).unwrap();
    assert_eq!(p.allocation(0, img.size).unwrap().len(), 5);
    for (o, l) in [
        (0, img.size),
        (5 * g + 7, 66 * g),
        (70 * g + 3 * b + 1, b),
        (70 * g, 130 * g),
        (100 * g, 100 * g - 1),
        (64 * g, 1),
    ] {
        assert_eq!(
            p.allocation(o, l).unwrap(),
            img.allocation(o, l).unwrap(),
            "{o} +{l}"
        );
    }
    for (o, l) in [
        (70 * g + 2 * b + 5, 2 * b),
        (200 * g - 2 * b, 2 * b),
        (0, b + 1),
    ] {
        let (mut got, mut want) = (vec![0u8; l as usize], vec![0u8; l as usize]);
        p.read_at(&mut got, o).unwrap();
        img.read_at(&mut want, o).unwrap();
        assert!(got == want, "{o} +{l}");
    }
}
