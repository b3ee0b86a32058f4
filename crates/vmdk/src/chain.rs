//! A chain of layers: the image that was opened and its parents, followed through
//! parentFileNameHint with loop detection, a depth limit and parentCID checks.

use std::collections::HashSet;
use std::path::Path;

use vdisk_core::{Error, ErrorKind, Result};

use crate::bytes::{FileStore, FsStore};
use crate::layer::{parent_dir, resolve_name, Layer};

/// Deepest chain of delta links vdisk follows. VMware allows at most 255 redo logs on one
/// disk (and recommends far fewer); a deeper chain is damaged or hostile.
pub const MAX_CHAIN_DEPTH: usize = 256;

/// How to open an image.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Follow extent and parent paths that are absolute or leave the descriptor's folder
    /// (`--allow-outside-paths`). Off by default: a descriptor from an untrusted source must
    /// not make vdisk read arbitrary files.
    pub allow_outside_paths: bool,
    /// Deepest chain to follow.
    pub max_depth: usize,
    /// Refuse a link whose parentCID differs from its parent's CID (as qemu-img does).
    pub check_parent_cid: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            allow_outside_paths: false,
            max_depth: MAX_CHAIN_DEPTH,
            check_parent_cid: true,
        }
    }
}

/// A VMDK image with its chain of parents: `layers()[0]` is the image that was opened, each
/// next one the previous one's parent.
#[derive(Debug)]
pub struct VmdkImage {
    pub(crate) layers: Vec<Layer>,
}

impl VmdkImage {
    /// Open `path` from the file system with default options.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(&FsStore::default(), path, &OpenOptions::default())
    }

    /// Open `path` through `store`, following parents.
    ///
    /// A [`crate::MemStore`] holds the files of a whole chain in memory; here, the fixture
    /// chain of the repository (three links: a flat base, two sparse links):
    ///
    /// ```
    /// use vdisk_core::{Allocation, DiskImage};
    /// use vdisk_vmdk::{MemStore, OpenOptions, VmdkImage};
    ///
    /// let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/chain");
    /// let mut store = MemStore::new();
    /// for name in ["top.vmdk", "mid.vmdk", "base.vmdk", "base-flat.vmdk"] {
    ///     store.insert(name, std::fs::read(format!("{fixtures}/{name}"))?);
    /// }
    /// let img = VmdkImage::open_with(&store, "top.vmdk".as_ref(), &OpenOptions::default())?;
    /// assert_eq!(img.layers().len(), 3);
    /// assert_eq!(img.size(), 256 << 10);
    ///
    /// // fixtures/README.md: 0x42 from the base, 0x4d from mid, 0x54 from top, then a
    /// // zeroed grain of top that masks the base.
    /// let mut disk = vec![0u8; 256 << 10];
    /// img.read_at(&mut disk, 0)?;
    /// for (i, want) in [0x42u8, 0x4d, 0x54, 0].into_iter().enumerate() {
    ///     let grain = &disk[i << 16..(i + 1) << 16];
    ///     assert!(grain.iter().all(|&b| b == want), "grain {i}");
    /// }
    /// // The map says which link holds each grain.
    /// let map = img.allocation(0, img.size())?;
    /// let depths: Vec<_> = map.iter().map(|e| (e.allocation, e.depth)).collect();
    /// assert_eq!(
    ///     depths,
    ///     [
    ///         (Allocation::Data, 2),
    ///         (Allocation::Data, 1),
    ///         (Allocation::Data, 0),
    ///         (Allocation::Zero, 0)
    ///     ]
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_with(store: &dyn FileStore, path: &Path, opts: &OpenOptions) -> Result<Self> {
        let mut layers: Vec<Layer> = Vec::new();
        let mut seen = HashSet::new();
        let mut current = path.to_path_buf();
        loop {
            let id = store.identity(&current)?;
            if !seen.insert(id) {
                let child = layers.last().map(|l| l.path.clone()).unwrap_or_default();
                return Err(Error::new(
                    ErrorKind::ChainLoop,
                    format!(
                        "parent chain loops: \"{}\" is already in the chain",
                        current.display()
                    ),
                )
                .with_path(child));
            }
            if layers.len() >= opts.max_depth {
                return Err(Error::new(
                    ErrorKind::ChainTooDeep,
                    format!(
                        "chain of delta links is deeper than {} links",
                        opts.max_depth
                    ),
                )
                .with_path(path));
            }
            let layer = Layer::open(store, &current, opts)?;
            if let Some(child) = layers.last() {
                let want = child.descriptor.parent_cid;
                let have = layer.descriptor.cid;
                if opts.check_parent_cid && want != have {
                    return Err(Error::new(
                        ErrorKind::ParentMismatch,
                        format!(
                            "parentCID {} does not match the CID {} of parent \"{}\" (the parent changed after the link was made)",
                            fmt_cid(want),
                            fmt_cid(have),
                            layer.path.display()
                        ),
                    )
                    .with_path(&child.path));
                }
            }
            let next = match &layer.descriptor.parent_hint {
                Some(hint) => Some(
                    resolve_name(
                        store,
                        &layer.descriptor,
                        parent_dir(&current),
                        hint,
                        opts,
                        "parent",
                    )
                    .map_err(|e| e.with_path(&current))?,
                ),
                None => None,
            };
            layers.push(layer);
            match next {
                Some(p) => current = p,
                None => break,
            }
        }
        Ok(VmdkImage { layers })
    }

    /// The layers, the opened image first and the base last.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }
}

/// Print a CID as 8 hex digits (or `none`).
fn fmt_cid(cid: Option<u32>) -> String {
    match cid {
        Some(c) => format!("{c:08x}"),
        None => "(none)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use crate::MemStore;
    use vdisk_core::{Allocation, DiskImage};

    /// A link `name` of [`DISK`] bytes with CID `cid` on `parent` (expecting its CID to be
    /// `parent_cid`), whose one sparse extent `name-s.vmdk` is the standard hand-made one.
    fn add_link(store: &mut MemStore, name: &str, cid: u32, parent: &str, parent_cid: u32) {
        let extent = format!("{}-s.vmdk", name.trim_end_matches(".vmdk"));
        let line = format!("RW {} SPARSE \"{extent}\"", DISK / S);
        store.insert(name, descriptor(cid, parent_cid, Some(parent), &line));
        store.insert(extent, SparseFile::standard().finish());
    }

    /// A link whose only extent is a ZERO extent (no files needed): enough to make chains.
    fn add_zero_link(store: &mut MemStore, name: &str, cid: u32, parent: &str, parent_cid: u32) {
        let line = format!("RW {} ZERO", DISK / S);
        store.insert(name, descriptor(cid, parent_cid, Some(parent), &line));
    }

    fn open(store: &MemStore, name: &str, opts: &OpenOptions) -> Result<VmdkImage> {
        VmdkImage::open_with(store, Path::new(name), opts)
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
        // A loop is found whatever the CIDs say.
        let opts = OpenOptions {
            check_parent_cid: false,
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
        let mut store = store_with_base(0x11);
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
        let mut store = store_with_base(0x11);
        add_link(&mut store, "link.vmdk", 0x20, "base.vmdk", 0xdead_beef);
        let e = open(&store, "link.vmdk", &OpenOptions::default()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ParentMismatch);
        assert!(e.message().contains("deadbeef"), "{e}");
        assert!(e.message().contains("00000001"), "{e}");
        assert_eq!(e.path(), Some(Path::new("link.vmdk")));

        let lenient = OpenOptions {
            check_parent_cid: false,
            ..OpenOptions::default()
        };
        let img = open(&store, "link.vmdk", &lenient).unwrap();
        assert_eq!(img.layers().len(), 2);
        // It reads through to the parent all the same.
        let mut b = [0u8; 1];
        img.read_at(&mut b, G as u64).unwrap();
        assert_eq!(b, [0x11]);
    }

    #[test]
    fn reads_fall_through_unallocated_grains_and_stop_at_zeroed_ones() {
        let mut store = store_with_base(0x11);
        add_link(&mut store, "link.vmdk", 0x20, "base.vmdk", 1);
        let img = open(&store, "link.vmdk", &OpenOptions::default()).unwrap();
        assert_eq!(img.size(), DISK as u64);
        let mut disk = vec![0u8; DISK];
        img.read_at(&mut disk, 0).unwrap();
        // The link stores grains 0, 3, 4 and a zeroed grain 2; the rest is the base's.
        let mut want = vec![0x11u8; DISK];
        for g in [0, 3, 4] {
            want[g * G..(g + 1) * G].fill(fill(g));
        }
        want[2 * G..3 * G].fill(0);
        assert_eq!(disk, want);

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
            [
                (0, 1, Allocation::Data, 0),
                (1, 1, Allocation::Data, 1),
                (2, 1, Allocation::Zero, 0),
                (3, 2, Allocation::Data, 0),
                (5, 3, Allocation::Data, 1),
            ]
        );
        // The link alone: what it stores, nothing of the parent.
        let mut own = vec![0u8; DISK];
        img.read_layer_only(0, &mut own, 0).unwrap();
        assert_eq!(own, standard_disk());
    }

    #[test]
    fn three_links_resolve_each_grain_to_the_nearest_link_that_stores_it() {
        // top stores grain 1 only; mid is the standard extent; base is 0x11.
        let mut store = store_with_base(0x11);
        add_link(&mut store, "mid.vmdk", 0x20, "base.vmdk", 1);
        let mut top = SparseFile::standard();
        for (i, v) in [0u32, 8, 0, 0].into_iter().enumerate() {
            top.put(GT0, i, v);
            top.put(RGT0, i, v);
        }
        top.put(GT1, 0, 0);
        top.put(RGT1, 0, 0);
        store.insert("top-s.vmdk", top.finish());
        store.insert(
            "top.vmdk",
            descriptor(
                0x30,
                0x20,
                Some("mid.vmdk"),
                &format!("RW {} SPARSE \"top-s.vmdk\"", DISK / S),
            ),
        );
        let img = open(&store, "top.vmdk", &OpenOptions::default()).unwrap();
        assert_eq!(img.layers().len(), 3);
        let mut disk = vec![0u8; DISK];
        img.read_at(&mut disk, 0).unwrap();
        let mut want = vec![0x11u8; DISK];
        want[..G].fill(fill(0)); // mid
        want[G..2 * G].fill(fill(0)); // top: grain 1 stored at the sector mid uses for grain 0
        want[2 * G..3 * G].fill(0); // mid's zeroed grain
        want[3 * G..4 * G].fill(fill(3));
        want[4 * G..5 * G].fill(fill(4));
        assert_eq!(disk, want);
        let depths: Vec<_> = img
            .allocation(0, DISK as u64)
            .unwrap()
            .iter()
            .map(|e| e.depth)
            .collect();
        assert_eq!(depths, [1, 0, 1, 1, 2]);
    }

    #[test]
    fn a_missing_parent_is_not_found_and_an_outside_one_is_refused() {
        let mut store = MemStore::new();
        add_zero_link(&mut store, "link.vmdk", 2, "gone.vmdk", 1);
        let e = open(&store, "link.vmdk", &OpenOptions::default()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.path(), Some(Path::new("gone.vmdk")));

        let mut store = store_with_base(0x11);
        add_zero_link(&mut store, "dir/link.vmdk", 2, "../base.vmdk", 1);
        let e = open(&store, "dir/link.vmdk", &OpenOptions::default()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PathRefused);
        let allowed = OpenOptions {
            allow_outside_paths: true,
            ..OpenOptions::default()
        };
        // Allowed, the hint resolves against the link's folder: dir/../base.vmdk.
        store.insert("dir/../base.vmdk", store_base_descriptor());
        store.insert("dir/../base-flat.vmdk", vec![0x11; DISK]);
        assert_eq!(
            open(&store, "dir/link.vmdk", &allowed)
                .unwrap()
                .layers()
                .len(),
            2
        );
    }

    fn store_base_descriptor() -> Vec<u8> {
        descriptor(
            1,
            crate::NO_PARENT_CID,
            None,
            &format!("RW {} FLAT \"base-flat.vmdk\" 0", DISK / S),
        )
    }
}
