//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the corpus replay tests.
//! Each takes arbitrary bytes and must return without panicking, whatever they are.

use std::path::Path;

use vdisk_core::DiskImage;

use vdisk_io::{MemStore, OpenContext};

use crate::{
    CowdHeader, Descriptor, Marker, RawSparseHeader, SeSparseConstHeader, StreamReader, VmdkLayer,
};

/// Open `name` from `store` as a layer, as the registry would (no outside paths).
fn open_layer(store: &MemStore, name: &Path) -> vdisk_core::Result<VmdkLayer> {
    VmdkLayer::open_in(&OpenContext {
        files: store,
        path: name,
        allow_outside_paths: false,
    })
}

/// Parse and validate a sparse header.
pub fn sparse_header(data: &[u8]) {
    if let Ok(h) = RawSparseHeader::parse(data) {
        let _ = h.validate(data.len() as u64);
        let _ = h.gd_entries();
        assert_eq!(RawSparseHeader::parse(&h.to_bytes()).ok(), Some(h));
    }
}

/// Detect and parse a descriptor, and decode its names from its `encoding`.
pub fn descriptor(data: &[u8]) {
    let _ = crate::probe(&data[..data.len().min(4096)]);
    if let Ok(d) = Descriptor::parse(data) {
        let _ = d.total_sectors();
        for e in &d.extents {
            if let Some(f) = &e.file {
                let names = d.name_candidates(f);
                assert!(
                    names.last() == Some(f),
                    "the name as written is always tried"
                );
            }
        }
        if let Some(hint) = &d.parent_hint {
            let _ = d.decode_name(hint);
        }
    }
}

/// Parse every sector of `data` as a stream marker.
pub fn stream_markers(data: &[u8]) {
    for chunk in data.chunks(512) {
        let _ = Marker::parse(chunk);
    }
}

/// Open `data` as a one-file image held in memory and read all of it, and its map.
pub fn open_and_read(data: &[u8]) {
    let mut store = MemStore::new();
    let name = Path::new("fuzz.vmdk");
    store.insert(name, data.to_vec());
    let Ok(img) = open_layer(&store, name) else {
        return;
    };
    exercise(&img);
}

/// Open `data` as the SEsparse extent of a `seSparse` descriptor (both held in memory), then
/// check, read and map it.
pub fn sesparse(data: &[u8]) {
    let sectors = SeSparseConstHeader::parse(data).map_or(1 << 17, |h| h.capacity);
    esx_layer(data, "seSparse", "SESPARSE", sectors);
}

/// Open `data` as the COWD extent of a `vmfsSparse` descriptor (both held in memory), then
/// check, read and map it.
pub fn cowd(data: &[u8]) {
    let sectors = CowdHeader::parse(data).map_or(1 << 17, |h| u64::from(h.capacity));
    esx_layer(data, "vmfsSparse", "VMFSSPARSE", sectors);
}

fn esx_layer(data: &[u8], create_type: &str, kind: &str, sectors: u64) {
    // The descriptor's size is what the layer reads; keep it a valid extent line.
    let sectors = sectors.clamp(1, 1 << 41);
    let mut store = MemStore::new();
    let extent = "fuzz-extent.vmdk";
    store.insert(extent, data.to_vec());
    let name = Path::new("fuzz.vmdk");
    store.insert(
        name,
        crate::testing::esx_descriptor(create_type, 1, None, &[(sectors, kind, extent)])
            .into_bytes(),
    );
    if let Ok(img) = open_layer(&store, name) {
        exercise(&img);
    }
}

/// Check an image, read up to 64 MiB of it and map that much.
fn exercise(img: &VmdkLayer) {
    let _ = crate::check::check(img);
    let size = img.size();
    // Read at most 64 MiB of a hostile image in 1 MiB windows; a 200-byte input can declare
    // terabytes, and reading those would be a hang, not a finding.
    let limit = size.min(64 << 20);
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < limit {
        let n = (limit - off).min(buf.len() as u64) as usize;
        if img.read_at(&mut buf[..n], off).is_err() {
            break;
        }
        off += n as u64;
    }
    let _ = img.allocation(0, limit);
}

/// Read a streamOptimized image front to back from a pipe-like reader, as `vdisk convert -`
/// does, into a sink that keeps nothing but checks what it is given.
pub fn stream_reader(data: &[u8]) {
    let Ok(reader) = StreamReader::new(std::io::Cursor::new(data)) else {
        return;
    };
    let sink = CheckingSink {
        size: reader.capacity(),
        next: 0,
    };
    let _ = reader.copy_into(Box::new(sink), &vdisk_core::CopyOptions::default());
}

/// A sink that stores nothing and asserts the sink contract: blocks in increasing order,
/// inside the disk.
struct CheckingSink {
    size: u64,
    next: u64,
}

impl vdisk_core::ImageSink for CheckingSink {
    fn block_size(&self) -> u64 {
        4096
    }
    fn takes_runs(&self) -> bool {
        true
    }
    fn put(&mut self, blocks: &[(u64, &[u8])]) -> vdisk_core::Result<()> {
        for &(off, data) in blocks {
            assert!(off >= self.next, "blocks out of order");
            let end = off + data.len() as u64;
            assert!(end <= self.size, "block past the end of the disk");
            self.next = end;
        }
        Ok(())
    }
    fn finish(self: Box<Self>) -> vdisk_core::Result<()> {
        Ok(())
    }
}
