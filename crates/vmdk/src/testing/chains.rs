//! Hand-made descriptors for chains held in memory (the registry's chain tests).

use vdisk_io::MemStore;

/// A text descriptor with the given CIDs, parent and extent lines.
pub fn descriptor(cid: u32, parent_cid: u32, parent: Option<&str>, extents: &str) -> Vec<u8> {
    let mut t = format!(
        "# Disk DescriptorFile\nversion=1\nCID={cid:08x}\nparentCID={parent_cid:08x}\n\
         createType=\"monolithicSparse\"\n"
    );
    if let Some(p) = parent {
        t.push_str(&format!("parentFileNameHint=\"{p}\"\n"));
    }
    t.push_str("\n# Extent description\n");
    t.push_str(extents);
    t.push('\n');
    t.into_bytes()
}

/// A store holding a flat base `base.vmdk` of `disk` bytes of `base_fill` (CID 1), with
/// nothing above it yet.
pub fn store_with_base(base_fill: u8, disk: usize) -> MemStore {
    let mut store = MemStore::new();
    store.insert(
        "base.vmdk",
        descriptor(
            1,
            crate::NO_PARENT_CID,
            None,
            &format!("RW {} FLAT \"base-flat.vmdk\" 0", disk / 512),
        ),
    );
    store.insert("base-flat.vmdk", vec![base_fill; disk]);
    store
}
