//! Backing chains opened by the registry: loops, depth, links, confinement, and reads that
//! fall through to the parents, on hand-made VMDK descriptors held in memory.

use std::path::Path;

use vdisk_core::{Allocation, DiskImage, ErrorKind, Result};
use vdisk_image::{open_chain, Image, OpenOptions, MAX_CHAIN_DEPTH};
use vdisk_io::MemStore;
use vdisk_vmdk::testing::{descriptor, store_with_base};
use vdisk_vmdk::NO_PARENT_CID;

/// Bytes of every disk here: 8 grains of 64 KiB.
const G: usize = 64 << 10;
const DISK: usize = 8 * G;

/// A link whose only extent is a ZERO extent (no files needed): enough to make chains.
fn add_zero_link(store: &mut MemStore, name: &str, cid: u32, parent: &str, parent_cid: u32) {
    let line = format!("RW {} ZERO", DISK / 512);
    store.insert(name, descriptor(cid, parent_cid, Some(parent), &line));
}

/// A link storing grains `[first, first + n)` as `fill` in a flat file of its own (a flat
/// extent maps as data; the rest is a ZERO extent, which masks the parent).
fn add_flat_link(store: &mut MemStore, name: &str, cid: u32, parent: &str, parent_cid: u32) {
    let flat = format!("{}-flat.vmdk", name.trim_end_matches(".vmdk"));
    let lines = format!(
        "RW {} FLAT \"{flat}\" 0\nRW {} ZERO",
        G / 512,
        (DISK - G) / 512
    );
    store.insert(name, descriptor(cid, parent_cid, Some(parent), &lines));
    store.insert(flat, vec![0x77; G]);
}

fn open(store: &MemStore, name: &str, opts: &OpenOptions) -> Result<Image> {
    open_chain(store, Path::new(name), opts)
}

#[test]
fn a_link_naming_itself_is_a_loop() {
    let mut store = MemStore::new();
    add_zero_link(&mut store, "self.vmdk", 7, "self.vmdk", 7);
    let e = open(&store, "self.vmdk", &OpenOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ChainLoop);
    assert!(e.message().contains("self.vmdk"), "{e}");
}

#[test]
fn a_two_link_cycle_is_a_loop_from_either_end() {
    let mut store = MemStore::new();
    add_zero_link(&mut store, "a.vmdk", 0xa, "b.vmdk", 0xb);
    add_zero_link(&mut store, "b.vmdk", 0xb, "a.vmdk", 0xa);
    for start in ["a.vmdk", "b.vmdk"] {
        let e = open(&store, start, &OpenOptions::default()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ChainLoop, "from {start}");
    }
    // A loop is found whatever the links say.
    let opts = OpenOptions {
        check_links: false,
        ..OpenOptions::default()
    };
    let mut store = MemStore::new();
    add_zero_link(&mut store, "a.vmdk", 1, "b.vmdk", 2);
    add_zero_link(&mut store, "b.vmdk", 3, "c.vmdk", 4);
    add_zero_link(&mut store, "c.vmdk", 5, "b.vmdk", 6);
    let e = open(&store, "a.vmdk", &opts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ChainLoop);
}

/// `n` links `l1.vmdk` (top) … `ln.vmdk` on the flat base, CIDs consistent.
fn chain_of(n: u32) -> MemStore {
    let mut store = store_with_base(0x11, DISK);
    for i in 1..=n {
        let parent = if i == n {
            "base.vmdk".to_string()
        } else {
            format!("l{}.vmdk", i + 1)
        };
        let parent_cid = if i == n { 1 } else { 100 + i + 1 };
        add_zero_link(
            &mut store,
            &format!("l{i}.vmdk"),
            100 + i,
            &parent,
            parent_cid,
        );
    }
    store
}

#[test]
fn a_chain_deeper_than_max_depth_is_refused() {
    // 5 links and the base: 6 layers.
    let store = chain_of(5);
    let opts = |max_depth| OpenOptions {
        max_depth,
        ..OpenOptions::default()
    };
    assert_eq!(open(&store, "l1.vmdk", &opts(6)).unwrap().layers().len(), 6);
    let e = open(&store, "l1.vmdk", &opts(5)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ChainTooDeep);
    assert!(e.message().contains("deeper than 5"), "{e}");
    assert_eq!(e.path(), Some(Path::new("l1.vmdk")));
    // Starting lower in the chain, the same limit is enough.
    assert_eq!(open(&store, "l2.vmdk", &opts(5)).unwrap().layers().len(), 5);
    // The default limit is far above any real chain, but it is there.
    let deep = chain_of(MAX_CHAIN_DEPTH as u32);
    let e = open(&deep, "l1.vmdk", &OpenOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ChainTooDeep);
    assert!(open(&deep, "l2.vmdk", &OpenOptions::default()).is_ok());
}

#[test]
fn a_parent_cid_that_differs_is_a_mismatch_unless_told_otherwise() {
    let mut store = store_with_base(0x11, DISK);
    add_flat_link(&mut store, "link.vmdk", 0x20, "base.vmdk", 0xdead_beef);
    let e = open(&store, "link.vmdk", &OpenOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ParentMismatch);
    assert!(e.message().contains("deadbeef"), "{e}");
    assert!(e.message().contains("00000001"), "{e}");
    assert_eq!(e.path(), Some(Path::new("link.vmdk")));

    let lenient = OpenOptions {
        check_links: false,
        ..OpenOptions::default()
    };
    let img = open(&store, "link.vmdk", &lenient).unwrap();
    assert_eq!(img.layers().len(), 2);
}

#[test]
fn reads_fall_through_what_a_link_does_not_store_and_stop_at_what_it_zeroes() {
    // The link stores grain 0 (0x77) and zeroes the rest with a ZERO extent: over a base of
    // 0x11 the disk is one grain of 0x77, then zeros.
    let mut store = store_with_base(0x11, DISK);
    add_flat_link(&mut store, "link.vmdk", 0x20, "base.vmdk", 1);
    let img = open(&store, "link.vmdk", &OpenOptions::default()).unwrap();
    let mut disk = vec![0u8; DISK];
    img.read_at(&mut disk, 0).unwrap();
    assert!(disk[..G].iter().all(|&b| b == 0x77));
    assert!(disk[G..].iter().all(|&b| b == 0));
    let map: Vec<_> = img
        .allocation(0, DISK as u64)
        .unwrap()
        .iter()
        .map(|e| {
            (
                e.start as usize / G,
                e.length as usize / G,
                e.allocation,
                e.depth,
            )
        })
        .collect();
    assert_eq!(
        map,
        [(0, 1, Allocation::Data, 0), (1, 7, Allocation::Zero, 0)]
    );

    // A link of ZERO extents over the same base masks all of it; one with an unallocated
    // (sparse, empty) extent would fall through: the map says which layer holds each range.
    let mut store = store_with_base(0x11, DISK);
    let line = format!("RW {} ZERO", DISK / 512);
    store.insert("z.vmdk", descriptor(0x30, 1, Some("base.vmdk"), &line));
    let img = open(&store, "z.vmdk", &OpenOptions::default()).unwrap();
    assert_eq!(img.layers().len(), 2);
    let mut b = [9u8; 16];
    img.read_at(&mut b, 100).unwrap();
    assert_eq!(b, [0; 16]);
}

#[test]
fn a_sparse_link_reads_its_grains_and_its_parents_elsewhere() {
    use vdisk_core::{copy_into, CopyOptions, MemImage};
    use vdisk_io::{CreateOptions, FsStore};
    // A base and a sparse link written by the VMDK writer, read through the registry from
    // the local file system, in another folder than the process's.
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let vmdk = vdisk_image::registry::require("vmdk").unwrap();
    let base: Vec<u8> = (0..DISK).map(|i| (i / G) as u8 + 1).collect();
    let sink = vdisk_image::create(
        &d.join("base.vmdk"),
        vmdk,
        DISK as u64,
        &CreateOptions::default(),
    )
    .unwrap();
    copy_into(&MemImage::new(base.clone()), sink, &CopyOptions::default()).unwrap();
    let parent = vdisk_image::open(d.join("base.vmdk")).unwrap();
    let mut new = base.clone();
    new[3 * G..4 * G].fill(0xee); // changed
    new[5 * G..6 * G].fill(0); // zeroed: must mask the base
    let stats = vdisk_image::write_delta(
        &parent,
        &MemImage::new(new.clone()),
        [((3 * G) as u64, G as u64), ((5 * G) as u64, G as u64)],
        &d.join("link.vmdk"),
        &Default::default(),
    )
    .unwrap();
    assert_eq!((stats.data_blocks, stats.zeroed_blocks), (1, 1));
    let img = open_chain(
        &FsStore::default(),
        &d.join("link.vmdk"),
        &OpenOptions::default(),
    )
    .unwrap();
    let mut disk = vec![0u8; DISK];
    img.read_at(&mut disk, 0).unwrap();
    assert!(disk == new);
    let depths: Vec<_> = img
        .allocation(0, DISK as u64)
        .unwrap()
        .iter()
        .map(|e| (e.start as usize / G, e.allocation, e.depth))
        .collect();
    assert_eq!(
        depths,
        [
            (0, Allocation::Data, 1),
            (3, Allocation::Data, 0),
            (4, Allocation::Data, 1),
            (5, Allocation::Zero, 0),
            (6, Allocation::Data, 1),
        ]
    );
    // The link names its parent relatively: the pair moves together.
    let link = img.layers()[0].backing().unwrap();
    assert_eq!(link.names.last().unwrap(), Path::new("base.vmdk"));
}

#[test]
fn a_missing_parent_is_not_found_and_an_outside_one_is_refused() {
    let mut store = MemStore::new();
    add_zero_link(&mut store, "link.vmdk", 2, "gone.vmdk", 1);
    let e = open(&store, "link.vmdk", &OpenOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(e.path(), Some(Path::new("gone.vmdk")));

    let mut store = store_with_base(0x11, DISK);
    add_zero_link(&mut store, "dir/link.vmdk", 2, "../base.vmdk", 1);
    let e = open(&store, "dir/link.vmdk", &OpenOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PathRefused);
    let allowed = OpenOptions {
        allow_outside_paths: true,
        ..OpenOptions::default()
    };
    // Allowed, the name resolves against the link's folder: dir/../base.vmdk.
    store.insert(
        "dir/../base.vmdk",
        descriptor(
            1,
            NO_PARENT_CID,
            None,
            &format!("RW {} FLAT \"base-flat.vmdk\" 0", DISK / 512),
        ),
    );
    store.insert("dir/../base-flat.vmdk", vec![0x11; DISK]);
    assert_eq!(
        open(&store, "dir/link.vmdk", &allowed)
            .unwrap()
            .layers()
            .len(),
        2
    );
}

#[test]
fn a_known_format_vdisk_does_not_read_is_refused_by_name_and_raw_can_be_forced() {
    let mut store = MemStore::new();
    let mut qed = vec![0u8; 4096];
    qed[..4].copy_from_slice(b"QED\0");
    store.insert("disk.qed", qed);
    let e = open(&store, "disk.qed", &OpenOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert_eq!(e.to_string(), "disk.qed: a QED image (not supported yet)");
    let raw = OpenOptions {
        format: Some("raw".into()),
        ..OpenOptions::default()
    };
    let img = open(&store, "disk.qed", &raw).unwrap();
    assert_eq!((img.format_name(), img.size()), ("raw", 4096));
    // A link whose parent is such a file is refused the same way, naming the parent.
    add_zero_link(&mut store, "link.vmdk", 2, "disk.qed", 1);
    let e = open(&store, "link.vmdk", &OpenOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert_eq!(e.path(), Some(Path::new("disk.qed")));
}
