//! Checksums of the metadata of a point's files, wherever the format keeps it (for a VMDK:
//! the whole descriptor, and each sparse extent's header, embedded descriptor, grain
//! directory and tables), so that any flipped byte of metadata is found by verify.

use std::collections::HashMap;

use vdisk_core::{Error, Result};
use vdisk_io::{Bytes, Layer};

use crate::layout2::meta::{Covers, FileCheck};
use crate::store::{name_in, Store, StoreFiles};

/// Largest descriptor file read.
const MAX_DESCRIPTOR: u64 = 16 << 20;

/// Where the metadata of the point whose main file is `image` lies: file name in the store
/// to `(offset, length)` ranges; a range to `u64::MAX` covers the whole file.
pub(crate) type Regions = Vec<(String, Vec<(u64, u64)>)>;

/// The metadata regions of the point whose main file is `image` (its own files only, not its
/// parents').
pub(crate) fn regions(store: &dyn Store, image: &str) -> Result<Regions> {
    let files = StoreFiles(store);
    let layer: Box<dyn Layer> =
        vdisk_image::open_layer(&files, &store.path(image), &Default::default())?.0;
    layer
        .metadata()
        .into_iter()
        .map(|r| Ok((name_in(store.root(), &r.file)?.to_string(), r.ranges)))
        .collect()
}

/// Whether `ranges` cover a whole file (a descriptor of its own).
fn whole(ranges: &[(u64, u64)]) -> bool {
    matches!(ranges, [(0, u64::MAX)])
}

/// Checksums of the files of the point whose main file is `image` in `store`, its main file
/// (when it is a file of its own) first.
pub(crate) fn file_checks(store: &dyn Store, image: &str) -> Result<Vec<FileCheck>> {
    regions(store, image)?
        .into_iter()
        .map(|(name, ranges)| {
            if whole(&ranges) {
                let text = store.read(&name, MAX_DESCRIPTOR)?;
                let len = text.len() as u64;
                return Ok(FileCheck {
                    name,
                    bytes: len,
                    crc32: crc32fast::hash(&text),
                    length: len,
                    covers: Covers::Prefix,
                });
            }
            let (bytes, crc32, length) = ranges_crc(store, &name, &ranges)?;
            Ok(FileCheck {
                name,
                bytes,
                crc32,
                length,
                covers: Covers::SparseMetadata,
            })
        })
        .collect()
}

/// The checksum of `ranges` of file `name` ([`Covers::SparseMetadata`]): (bytes covered,
/// crc32, file length). Read by range, so that a file on an object store costs its metadata,
/// not its data.
fn ranges_crc(store: &dyn Store, name: &str, ranges: &[(u64, u64)]) -> Result<(u64, u32, u64)> {
    let path = store.path(name);
    let bytes = match store.local_dir() {
        // Metadata is a few scattered sectors: a local file is read without read-ahead
        // (which would pull in megabytes of data around them, and break a paced run's pace).
        Some(_) => Bytes::File(vdisk_io::MappedFile::open_with(
            &path,
            vdisk_io::ReadAhead::Off,
        )?),
        None => store.load(&path)?,
    };
    let len = bytes.len();
    let mut crc = crc32fast::Hasher::new();
    let mut covered = 0u64;
    let mut buf = Vec::new();
    for &(start, n) in ranges {
        let end = start.checked_add(n).filter(|&e| e <= len).ok_or_else(|| {
            Error::corrupt("metadata lies past the end of the file").with_path(&path)
        })?;
        // Bounded by the file's length.
        buf.resize((end - start) as usize, 0);
        bytes.read_at(&mut buf, start)?;
        crc.update(&buf);
        covered += end - start;
    }
    Ok((covered, crc.finalize(), len))
}

/// Whether `f`'s metadata still matches its checksum.
pub(crate) fn check_file(
    store: &dyn Store,
    f: &FileCheck,
    regions: &HashMap<String, Vec<(u64, u64)>>,
) -> Result<bool> {
    Ok(match f.covers {
        Covers::Prefix => {
            let path = store.path(&f.name);
            let bytes = store.load(&path)?;
            if bytes.len() < f.bytes {
                return Err(
                    Error::corrupt("file is shorter than its recorded metadata").with_path(&path)
                );
            }
            // Read a piece at a time: the prefix is bounded by the file, not by memory.
            let mut crc = crc32fast::Hasher::new();
            let mut buf = vec![0u8; (1 << 20).min(f.bytes as usize)];
            let mut at = 0u64;
            while at < f.bytes {
                let n = (f.bytes - at).min(buf.len() as u64) as usize;
                bytes.read_at(&mut buf[..n], at)?;
                crc.update(&buf[..n]);
                at += n as u64;
            }
            crc.finalize() == f.crc32
        }
        Covers::SparseMetadata => {
            let ranges = regions.get(&f.name).ok_or_else(|| {
                Error::corrupt("is no longer a file of its point (damaged or altered descriptor)")
                    .with_path(store.path(&f.name))
            })?;
            let (bytes, crc, _) = ranges_crc(store, &f.name, ranges)?;
            bytes == f.bytes && crc == f.crc32
        }
    })
}
