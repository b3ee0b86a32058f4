//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the corpus replay tests.
//! Each takes arbitrary bytes and must return without panicking, whatever they are.

use std::path::Path;

use vdisk_core::{for_each_extent, DiskImage};
use vdisk_io::{FileStore, Layer, MemStore};

use crate::header::{Header, RawRegionTable, HEADER_SIZE, REGION_TABLE_SIZE};
use crate::metadata::{Metadata, ParentLocator};
use crate::VhdxImage;

/// Open `data` as a VHDX file held in memory; read all of it in chunks, walk its map, run
/// `check` and `info`.
pub fn open_and_read(data: &[u8]) {
    let mut store = MemStore::new();
    let name = Path::new("fuzz.vhdx");
    store.insert(name, data.to_vec());
    let Ok(bytes) = store.load(name) else {
        return;
    };
    let Ok(img) = VhdxImage::open(bytes) else {
        return;
    };
    exercise(&img);
}

/// Read, map, check and describe an opened image (bounded: at most 64 MiB are read).
pub fn exercise(img: &VhdxImage) {
    let _ = img.check();
    let _ = img.info();
    let _ = img.backing();
    let _ = img.link_id();
    let _ = img.metadata();
    let size = img.size();
    let mut extents = 0usize;
    let _ = for_each_extent(img, |e| {
        extents += 1;
        assert!(e.length > 0 && e.end() <= size);
        Ok(())
    });
    let chunk = 1 << 20;
    let mut buf = vec![0u8; chunk];
    let mut off = 0u64;
    let mut budget = 64u64 << 20;
    while off < size && budget > 0 {
        let n = (size - off).min(chunk as u64) as usize;
        let _ = img.read_at(&mut buf[..n], off);
        off += n as u64;
        budget = budget.saturating_sub(n as u64);
    }
    // Reads that straddle block edges and start mid-sector.
    if size > 1000 {
        let mut b = vec![0u8; 777];
        let _ = img.read_at(&mut b, size / 2 - 300);
        let _ = img.read_at(&mut b, size - 777);
    }
    let _ = img.mapped(0, 4096.min(size));
}

/// Parse the bytes as the two headers and the two region tables, and the metadata region.
pub fn structures(data: &[u8]) {
    let h = |i: usize| data.get(i * HEADER_SIZE..(i + 1) * HEADER_SIZE).unwrap_or(&[]);
    let _ = Header::select(h(0), h(1));
    let t = RawRegionTable::parse(data);
    if data.len() >= REGION_TABLE_SIZE {
        let _ = crate::header::RegionTable::parse(data, data, data.len() as u64 * 4, None);
    }
    let _ = t.entries.len();
    let region = crate::header::Region {
        offset: 1 << 20,
        length: data.len() as u64,
    };
    let _ = Metadata::parse(data, region);
    if let Ok(p) = ParentLocator::parse(data) {
        let _ = p.parent_names();
        let _ = ParentLocator::parse(&p.to_bytes());
    }
}
