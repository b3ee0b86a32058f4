//! Checksums of the metadata of a point's files: the whole descriptor, and each sparse
//! extent's header, embedded descriptor, grain directory and tables, so that any flipped byte
//! of metadata is found by verify.

use vdisk_core::{Error, Result, SECTOR};
use vdisk_vmdk::{Bytes, Descriptor, SparseExtent};

use crate::meta::{Covers, FileCheck};
use crate::store::Store;

/// Largest descriptor file read.
const MAX_DESCRIPTOR: u64 = 16 << 20;

/// Checksums of the files of the point whose descriptor is `image` in `store`.
pub(crate) fn file_checks(store: &dyn Store, image: &str) -> Result<Vec<FileCheck>> {
    let text = store.read(image, MAX_DESCRIPTOR)?;
    let len = text.len() as u64;
    let mut out = vec![FileCheck {
        name: image.to_string(),
        bytes: len,
        crc32: crc32fast::hash(&text),
        length: len,
        covers: Covers::Prefix,
    }];
    let d = Descriptor::parse(&text).map_err(|e| e.with_path(store.path(image)))?;
    for e in &d.extents {
        let Some(file) = &e.file else { continue };
        let name = file.to_string_lossy().into_owned();
        let (bytes, crc32, length) = sparse_metadata(store, &name)?;
        out.push(FileCheck {
            name,
            bytes,
            crc32,
            length,
            covers: Covers::SparseMetadata,
        });
    }
    Ok(out)
}

/// The checksum of a sparse extent's metadata wherever it lies ([`Covers::SparseMetadata`]):
/// (bytes covered, crc32, file length). Read by range, so that an extent on an object store
/// costs its metadata, not its grains.
pub(crate) fn sparse_metadata(store: &dyn Store, name: &str) -> Result<(u64, u32, u64)> {
    let path = store.path(name);
    let bytes = match store.local_dir() {
        // Metadata is a few scattered sectors: a local file is read without read-ahead
        // (which would pull in megabytes of grains around them, and break a paced run's
        // pace).
        Some(_) => Bytes::File(vdisk_raw::MappedFile::open_with(
            &path,
            vdisk_raw::ReadAhead::Off,
        )?),
        None => store.load(&path)?,
    };
    let x = SparseExtent::open(bytes)?;
    let bytes = x.bytes();
    let len = bytes.len();
    let mut crc = crc32fast::Hasher::new();
    let mut covered = 0u64;
    let mut buf = Vec::new();
    let mut add = |range: std::ops::Range<u64>| -> Result<()> {
        if range.end > len || range.start > range.end {
            return Err(Error::corrupt("metadata lies past the end of the file").with_path(&path));
        }
        // Bounded by the file's length, which the header's validation bounds too.
        buf.resize((range.end - range.start) as usize, 0);
        bytes.read_at(&mut buf, range.start)?;
        crc.update(&buf);
        covered += range.end - range.start;
        Ok(())
    };
    // Everything before the first grain (header, embedded descriptor, padding), then the
    // directory's whole sectors.
    let h = x.header();
    add(0..h.overhead.max(1) * SECTOR)?;
    let gd = x.gd_offset() * SECTOR;
    add(gd..(gd + x.directory_len() as u64 * 4).next_multiple_of(SECTOR))?;
    let table_bytes = u64::from(h.gtes_per_gt) * 4;
    for slot in 0..x.directory_len() {
        match x.table_sector(slot) {
            Some(0) => {}
            Some(t) => {
                let at = u64::from(t) * SECTOR;
                add(at..at + table_bytes)?;
            }
            None => {
                return Err(Error::corrupt("a grain table lies outside the file").with_path(&path))
            }
        }
    }
    Ok((covered, crc.finalize(), len))
}

/// Whether `f`'s metadata still matches its checksum.
pub(crate) fn check_file(store: &dyn Store, f: &FileCheck) -> Result<bool> {
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
            let (bytes, crc, _) = sparse_metadata(store, &f.name)?;
            bytes == f.bytes && crc == f.crc32
        }
    })
}
