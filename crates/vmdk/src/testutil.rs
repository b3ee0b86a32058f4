//! Small VMDK files built byte by byte in memory, for the unit tests of the sparse extent
//! reader and of chains. Nothing here comes from the writer: the layouts are spelled out by
//! hand from the format description, so the reader is checked against an independent source.

use std::path::PathBuf;
use std::sync::Arc;

use crate::bytes::{Bytes, MemStore};
use crate::header::{HeaderFlags, RawSparseHeader};

/// Bytes per sector.
pub(crate) const S: usize = 512;
/// Grain size of the hand-made extents: 8 sectors (4 KiB), so that files stay tiny.
pub(crate) const GRAIN_SECTORS: u64 = 8;
/// Grain size in bytes.
pub(crate) const G: usize = GRAIN_SECTORS as usize * S;
/// Entries per grain table: 4, so that 8 grains need two tables.
pub(crate) const GTES: u32 = 4;
/// Grains of the virtual disk.
pub(crate) const GRAINS: usize = 8;
/// Virtual size in bytes: 32 KiB.
pub(crate) const DISK: usize = GRAINS * G;

/// Where the metadata of [`SparseFile::standard`] lies, in sectors.
pub(crate) const RGD: u64 = 1;
pub(crate) const RGT0: u64 = 2;
pub(crate) const RGT1: u64 = 3;
pub(crate) const GD: u64 = 4;
pub(crate) const GT0: u64 = 5;
pub(crate) const GT1: u64 = 6;
/// Sectors of metadata: the header, both directories and their tables, one spare sector.
pub(crate) const OVERHEAD: u64 = 8;

/// The fill byte of grain `g` where the standard extent stores data.
pub(crate) fn fill(g: usize) -> u8 {
    0xa0 + g as u8
}

/// A hosted sparse extent being put together byte by byte.
pub(crate) struct SparseFile {
    pub(crate) header: RawSparseHeader,
    pub(crate) bytes: Vec<u8>,
}

impl SparseFile {
    /// A version 2 extent of [`DISK`] bytes with zeroed grains allowed and a redundant
    /// directory, laid out as:
    ///
    /// ```text
    /// sector 0      header
    /// sector 1      redundant directory [2, 3]
    /// sectors 2, 3  redundant tables (copies of the primary ones)
    /// sector 4      directory [5, 6]
    /// sector 5      table 0: grain 0 at sector 8, grain 1 unallocated, grain 2 zeroed,
    ///               grain 3 at sector 16
    /// sector 6      table 1: grain 4 at sector 24, grains 5..8 unallocated
    /// sector 7      unused
    /// sectors 8..32 grains 0, 3 and 4, each filled with `fill(g)`
    /// ```
    pub(crate) fn standard() -> Self {
        let header = RawSparseHeader {
            version: 2,
            flags: HeaderFlags(
                HeaderFlags::NEWLINE_TEST | HeaderFlags::REDUNDANT_GD | HeaderFlags::ZEROED_GRAINS,
            ),
            capacity: DISK as u64 / S as u64,
            grain_size: GRAIN_SECTORS,
            descriptor_offset: 0,
            descriptor_size: 0,
            gtes_per_gt: GTES,
            rgd_offset: RGD,
            gd_offset: GD,
            overhead: OVERHEAD,
            unclean_shutdown: false,
            newline_bytes: *b"\n \r\n",
            compress_algorithm: 0,
        };
        let mut f = SparseFile {
            header,
            bytes: vec![0; 32 * S],
        };
        for (dir, tables) in [(RGD, [RGT0, RGT1]), (GD, [GT0, GT1])] {
            f.put(dir, 0, tables[0] as u32);
            f.put(dir, 1, tables[1] as u32);
            for (i, v) in [8u32, 0, 1, 16].into_iter().enumerate() {
                f.put(tables[0], i, v);
            }
            f.put(tables[1], 0, 24);
        }
        for (g, sector) in [(0, 8), (3, 16), (4, 24)] {
            f.bytes[sector * S..sector * S + G].fill(fill(g));
        }
        f
    }

    /// Set entry `index` of the directory or table at `sector` to `value`.
    pub(crate) fn put(&mut self, sector: u64, index: usize, value: u32) {
        let at = sector as usize * S + index * 4;
        self.bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }

    /// The file's bytes, with the header written in.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.bytes[..S].copy_from_slice(&self.header.to_bytes());
        self.bytes
    }

    /// The file as in-memory [`Bytes`] named `name`.
    pub(crate) fn into_bytes(self, name: &str) -> Bytes {
        Bytes::Owned(PathBuf::from(name), Arc::new(self.finish()))
    }
}

/// What [`standard_disk`] reads as without a parent: grains 0, 3, 4 filled, the rest zero.
pub(crate) fn standard_disk() -> Vec<u8> {
    let mut d = vec![0u8; DISK];
    for g in [0, 3, 4] {
        d[g * G..(g + 1) * G].fill(fill(g));
    }
    d
}

/// A text descriptor with the given CIDs, parent and extent lines.
pub(crate) fn descriptor(
    cid: u32,
    parent_cid: u32,
    parent: Option<&str>,
    extents: &str,
) -> Vec<u8> {
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

/// A store holding a flat base `base.vmdk` of [`DISK`] bytes of `base_fill` (CID 1), with
/// nothing above it yet.
pub(crate) fn store_with_base(base_fill: u8) -> MemStore {
    let mut store = MemStore::new();
    store.insert(
        "base.vmdk",
        descriptor(
            1,
            crate::NO_PARENT_CID,
            None,
            &format!("RW {} FLAT \"base-flat.vmdk\" 0", DISK / S),
        ),
    );
    store.insert("base-flat.vmdk", vec![base_fill; DISK]);
    store
}
