//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the corpus replay tests.
//! Each takes arbitrary bytes and must return without panicking, whatever they are.

use std::path::Path;

use vdisk_core::{for_each_extent, DiskImage};
use vdisk_io::{FileStore, Layer, MemStore};

use crate::header::{Header, RawRegionTable, HEADER_SIZE, REGION_TABLE_SIZE};
use crate::metadata::{Metadata, ParentLocator};
use crate::VhdxImage;

/// Largest file [`expand`] builds.
pub const MAX_EXPANDED: usize = 32 << 20;

/// A VHDX file is megabytes of mostly zeros (its structures are 1 MiB-aligned), too big for a
/// fuzzer to mutate whole: inputs describe it compactly instead. The first 4 bytes are the
/// file's length in 4 KiB units (capped at [`MAX_EXPANDED`]); then records of a 4 KiB-unit
/// offset (u32 LE), a byte count (u16 LE) and that many bytes, placed at the offset.
/// Everything else is zero.
pub fn expand(data: &[u8]) -> Vec<u8> {
    let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    if data.len() < 4 {
        return Vec::new();
    }
    let len = (word(data) as usize).saturating_mul(4096).min(MAX_EXPANDED);
    let mut file = vec![0u8; len];
    let mut rest = &data[4..];
    while rest.len() >= 6 {
        let at = (word(rest) as usize).saturating_mul(4096);
        let n = u16::from_le_bytes([rest[4], rest[5]]) as usize;
        let bytes = &rest[6..6 + n.min(rest.len() - 6)];
        rest = &rest[6 + bytes.len()..];
        if let Some(dst) = file.get_mut(at..at.saturating_add(bytes.len())) {
            dst.copy_from_slice(bytes);
        }
    }
    file
}

/// The compact description [`expand`] turns back into `file` (its non-zero 4 KiB blocks).
pub fn compact(file: &[u8]) -> Vec<u8> {
    let mut out = (file.len().div_ceil(4096) as u32).to_le_bytes().to_vec();
    let mut i = 0;
    let blocks: Vec<&[u8]> = file.chunks(4096).collect();
    while i < blocks.len() {
        if blocks[i].iter().all(|&b| b == 0) {
            i += 1;
            continue;
        }
        // Join up to 15 neighbouring non-zero blocks into one record.
        let start = i;
        let mut bytes = Vec::new();
        while i < blocks.len() && i - start < 15 && blocks[i].iter().any(|&b| b != 0) {
            bytes.extend_from_slice(blocks[i]);
            i += 1;
        }
        // Trailing zeros need not be stored.
        while bytes.last() == Some(&0) {
            bytes.pop();
        }
        out.extend_from_slice(&(start as u32).to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

/// [`open_and_read`] of the file a compact input describes (see [`expand`]).
pub fn open_compact(data: &[u8]) {
    open_owned(expand(data));
}

/// Open `data` as a VHDX file held in memory; read all of it in chunks, walk its map, run
/// `check` and `info`.
pub fn open_and_read(data: &[u8]) {
    open_owned(data.to_vec());
}

fn open_owned(data: Vec<u8>) {
    let mut store = MemStore::new();
    let name = Path::new("fuzz.vhdx");
    store.insert(name, data);
    let Ok(bytes) = store.load(name) else {
        return;
    };
    let Ok(img) = VhdxImage::open(bytes) else {
        return;
    };
    exercise(&img);
}

/// Read, map, check and describe an opened image (bounded: at most 16 MiB are read, the
/// ranges the map says hold data first).
pub fn exercise(img: &VhdxImage) {
    let _ = img.check();
    let _ = img.info();
    let _ = img.backing();
    let _ = img.link_id();
    let _ = img.metadata();
    let size = img.size();
    let mut data = Vec::new();
    let _ = for_each_extent(img, |e| {
        assert!(e.length > 0 && e.end() <= size);
        if e.allocation == vdisk_core::Allocation::Data && data.len() < 1024 {
            data.push((e.start, e.length));
        }
        Ok(())
    });
    let chunk = 1u64 << 20;
    let mut buf = vec![0u8; chunk as usize];
    let mut budget = 16u64 << 20;
    // The data the map shows, then the disk from the start, until the budget is spent.
    data.push((0, size));
    for (start, len) in data {
        let mut off = start;
        while off < start + len && budget > 0 {
            let n = (start + len - off).min(chunk);
            let _ = img.read_at(&mut buf[..n as usize], off);
            off += n;
            budget = budget.saturating_sub(n);
        }
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
    let h = |i: usize| {
        data.get(i * HEADER_SIZE..(i + 1) * HEADER_SIZE)
            .unwrap_or(&[])
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_and_expand_round_trip() {
        let mut f = vec![0u8; 100_000];
        f[5] = 1;
        f[4096 * 3 + 7] = 2;
        f[99_999] = 3;
        let c = compact(&f);
        assert!(c.len() < 20_000);
        let mut e = expand(&c);
        e.truncate(f.len());
        assert_eq!(e, f);
        assert!(expand(&[]).is_empty());
        // Records past the end or cut short are ignored, not a panic.
        let _ = expand(&[1, 0, 0, 0, 9, 9, 9, 9, 5, 0, 1]);
        let _ = expand(&[255, 255, 255, 255, 0, 0, 0, 0, 255, 255, 1]);
    }
}
