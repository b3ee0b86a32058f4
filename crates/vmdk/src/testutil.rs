//! Small VMDK files built byte by byte in memory, for the unit tests of the sparse extent
//! reader and of chains. Nothing here comes from the writer: the layouts are spelled out by
//! hand from the format description, so the reader is checked against an independent source.

use std::path::PathBuf;
use std::sync::Arc;

use crate::header::{HeaderFlags, RawSparseHeader};
use vdisk_io::Bytes;

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

/// Open `name` from `store` as one layer (no parent), as the registry would.
pub(crate) fn open_layer(
    store: &dyn vdisk_io::FileStore,
    name: &std::path::Path,
) -> vdisk_core::Result<crate::VmdkLayer> {
    crate::VmdkLayer::open_in(&vdisk_io::OpenContext {
        files: store,
        path: name,
        allow_outside_paths: false,
    })
}

/// A chain of VMDK layers read the way the registry reads chains (the registry, a crate
/// above this one, is not available here): the opened file first, parents after, found
/// through their parentFileNameHint beside the child.
pub(crate) struct TestChain(pub(crate) Vec<crate::VmdkLayer>);

impl TestChain {
    /// Open `name` and its parents from `store` (at most 16 links).
    pub(crate) fn open(
        store: &dyn vdisk_io::FileStore,
        name: &std::path::Path,
    ) -> vdisk_core::Result<Self> {
        use vdisk_io::Layer;
        let mut layers = vec![open_layer(store, name)?];
        while let Some(b) = layers.last().and_then(|l| l.backing().cloned()) {
            assert!(layers.len() < 16, "test chains are short");
            let dir = layers
                .last()
                .and_then(|l| l.path().parent())
                .unwrap_or(std::path::Path::new(""));
            layers.push(open_layer(store, &dir.join(&b.names[0]))?);
        }
        Ok(TestChain(layers))
    }

    /// Read the whole disk through the chain.
    pub(crate) fn read_all(&self) -> Vec<u8> {
        use vdisk_core::{Allocation, DiskImage};
        let size = self.0[0].size();
        let mut out = vec![0u8; size as usize];
        for (depth, l) in self.0.iter().enumerate().rev() {
            let map = l.allocation(0, l.size().min(size)).unwrap();
            for e in map {
                if e.allocation == Allocation::Unallocated && depth + 1 < self.0.len() {
                    continue; // keeps what the parents below gave
                }
                let s = e.start as usize;
                let buf = &mut out[s..s + e.length as usize];
                l.read_at(buf, e.start).unwrap();
            }
        }
        out
    }
}

impl vdisk_core::DiskImage for TestChain {
    fn size(&self) -> u64 {
        self.0[0].size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vdisk_core::Result<()> {
        let all = self.read_all();
        let s = offset as usize;
        buf.copy_from_slice(&all[s..s + buf.len()]);
        Ok(())
    }
    fn allocation(&self, offset: u64, length: u64) -> vdisk_core::Result<Vec<vdisk_core::Extent>> {
        use vdisk_core::Allocation;
        fn resolve(
            layers: &[crate::VmdkLayer],
            depth: usize,
            offset: u64,
            length: u64,
            out: &mut Vec<vdisk_core::Extent>,
        ) {
            let l = &layers[depth];
            let own = length.min(l.size().saturating_sub(offset));
            let mut map = if own > 0 {
                l.allocation(offset, own).unwrap()
            } else {
                Vec::new()
            };
            if own < length {
                map.push(vdisk_core::Extent {
                    start: offset + own,
                    length: length - own,
                    allocation: Allocation::Unallocated,
                    depth: 0,
                });
            }
            for mut e in map {
                if e.allocation == Allocation::Unallocated && depth + 1 < layers.len() {
                    resolve(layers, depth + 1, e.start, e.length, out);
                } else {
                    e.depth = depth as u32;
                    vdisk_core::coalesce(out, e);
                }
            }
        }
        let mut out = Vec::new();
        resolve(&self.0, 0, offset, length, &mut out);
        Ok(out)
    }
    fn format_name(&self) -> &'static str {
        "vmdk"
    }
}
