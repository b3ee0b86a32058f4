//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the corpus replay tests.
//! Each takes arbitrary bytes and must return without panicking, whatever they are.

use std::path::Path;

use vdisk_core::DiskImage;
use vdisk_io::{FileStore, Layer, MemStore, ProbeBytes};

use crate::{RawDynamicHeader, RawFooter, VhdImage};

/// Probe `data`, open it as a VHD held in memory, then check it, read up to 64 MiB of it in
/// 1 MiB pieces, map that much and take its info and metadata.
pub fn open_and_read(data: &[u8]) {
    let tail = &data[data.len().saturating_sub(512)..];
    let _ = crate::probe(&ProbeBytes {
        head: &data[..data.len().min(4096)],
        tail,
        len: data.len() as u64,
    });
    let mut store = MemStore::new();
    let name = Path::new("fuzz.vhd");
    store.insert(name, data.to_vec());
    let Ok(bytes) = store.load(name) else {
        return;
    };
    let Ok(img) = VhdImage::from_bytes(bytes) else {
        return;
    };
    exercise(&img);
}

/// Parse `data` as a footer and as a dynamic header; a parsed structure encodes back to what
/// it was parsed from.
pub fn structures(data: &[u8]) {
    if let Ok(f) = RawFooter::parse(data) {
        let _ = f.validate();
        assert_eq!(RawFooter::parse(&f.to_bytes()).ok(), Some(f));
    }
    if let Ok(h) = RawDynamicHeader::parse(data) {
        let _ = h.validate(data.len() as u64 * 1024, data.len() as u64);
        let _ = h.parent_name();
        assert_eq!(RawDynamicHeader::parse(&h.to_bytes()).ok(), Some(h));
    }
}

/// Check, read (at most 64 MiB, in 1 MiB pieces), map, and describe an image.
pub(crate) fn exercise(img: &VhdImage) {
    let _ = img.check();
    let _ = img.info();
    let _ = img.metadata();
    let _ = img.backing();
    let size = img.size();
    let limit = size.min(64 << 20);
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < limit {
        let n = (limit - off).min(buf.len() as u64) as usize;
        if img.read_at(&mut buf[..n], off).is_err() {
            break;
        }
        let _ = img.mapped(off, n as u64);
        off += n as u64;
    }
    if let Ok(map) = img.allocation(0, limit) {
        let mut pos = 0;
        for e in &map {
            assert_eq!(e.start, pos, "the map covers the range in order");
            assert!(e.length > 0);
            pos = e.end();
        }
        assert_eq!(pos, limit);
    }
}
