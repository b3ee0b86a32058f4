//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the corpus replay tests.
//! Each takes arbitrary bytes and must return without panicking, whatever they are.

use std::path::Path;

use vdisk_core::DiskImage;
use vdisk_io::{FileStore, Layer, MemStore, ProbeBytes};

use crate::{RawVdiHeader, VdiImage};

/// Probe `data`, open it as a VDI held in memory, then check it, read up to 64 MiB of it in
/// 1 MiB pieces, map that much and take its info and metadata. A parsed header encodes back
/// to what it was parsed from.
pub fn open_and_read(data: &[u8]) {
    let _ = crate::probe(&ProbeBytes {
        head: &data[..data.len().min(4096)],
        tail: &data[data.len().saturating_sub(512)..],
        len: data.len() as u64,
    });
    if let Ok(h) = RawVdiHeader::parse(data) {
        let _ = h.validate(data.len() as u64);
        assert_eq!(RawVdiHeader::parse(&h.to_bytes()).ok(), Some(h));
    }
    let mut store = MemStore::new();
    let name = Path::new("fuzz.vdi");
    store.insert(name, data.to_vec());
    let Ok(bytes) = store.load(name) else {
        return;
    };
    let Ok(img) = VdiImage::from_bytes(bytes) else {
        return;
    };
    let _ = img.check();
    let _ = img.info();
    let _ = img.metadata();
    let limit = img.size().min(64 << 20);
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
