//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the corpus replay tests.
//! Each takes arbitrary bytes and must return without panicking, whatever they are.

use std::path::Path;

use vdisk_core::{walk_map, DiskImage, COPY_CHUNK};
use vdisk_io::{Layer, MemStore, OpenContext};

use crate::Qcow2Image;

/// Bytes of disk read at most per input.
const READ_LIMIT: u64 = 64 << 20;

/// Open `data` as a qcow2 file held in memory (an external data file it names is looked for
/// in memory too, and is the same bytes when named `data.raw`), then read up to 64 MiB of
/// the disk in chunks, take the map, check it, list and read its bitmaps, and ask for info.
pub fn open_and_read(data: &[u8]) {
    let mut store = MemStore::new();
    let name = Path::new("fuzz.qcow2");
    store.insert(name, data.to_vec());
    store.insert("data.raw", data.to_vec());
    let Ok(bytes) = vdisk_io::FileStore::load(&store, name) else {
        return;
    };
    let cx = OpenContext {
        files: &store,
        path: name,
        allow_outside_paths: false,
    };
    let Ok(img) = Qcow2Image::from_bytes(bytes, &cx) else {
        return;
    };
    exercise(&img);
}

/// Everything a reader does with an opened layer.
pub fn exercise(img: &Qcow2Image) {
    let size = img.size();
    let mut buf = vec![0u8; COPY_CHUNK as usize];
    let mut off = 0;
    while off < size.min(READ_LIMIT) {
        let n = (size - off).min(COPY_CHUNK);
        if img.read_at(&mut buf[..n as usize], off).is_err() {
            break;
        }
        off += n;
    }
    // A read that straddles the last cluster, and one past the end.
    if size > 3 {
        let _ = img.read_at(&mut buf[..3], size - 3);
    }
    assert!(img.read_at(&mut buf[..2], size.saturating_sub(1)).is_err() || size == 0);
    let mut covered = 0u64;
    let mut last_end = 0u64;
    let walked = walk_map(
        size.min(16 << 30),
        |o, l| img.allocation(o, l),
        |e| {
            assert_eq!(e.start, last_end, "map runs touch");
            assert!(e.length > 0);
            last_end = e.end();
            covered += e.length;
            Ok(())
        },
    );
    if walked.is_ok() {
        assert_eq!(covered, size.min(16 << 30));
    }
    let _ = img.next_data(0);
    let _ = img.mapped(0, 4096.min(size));
    let _ = img.check();
    let _ = img.info();
    let _ = img.metadata();
    for b in img.bitmaps() {
        let mut last = 0u64;
        let _ = img.read_bitmap(&b.name, &mut |o, l| {
            assert!(
                o >= last && l > 0 && o + l <= size,
                "bitmap ranges in order"
            );
            last = o + l;
            Ok(())
        });
    }
    let _ = img.read_bitmap("no such bitmap", &mut |_, _| Ok(()));
}
