//! Checksums of the metadata of a point's files: the whole descriptor, and each sparse
//! extent's header, embedded descriptor, grain directory and tables, so that any flipped byte
//! of metadata is found by verify.

use std::path::Path;

use vdisk_core::{Error, Result, SECTOR};
use vdisk_vmdk::{Bytes, Descriptor, SparseExtent};

use crate::meta::{Covers, FileCheck};

/// Checksums of the files of the point whose descriptor is `image` in `dir`.
pub(crate) fn file_checks(dir: &Path, image: &str) -> Result<Vec<FileCheck>> {
    let dpath = dir.join(image);
    let text = std::fs::read(&dpath).map_err(|e| Error::io("cannot read", e).with_path(&dpath))?;
    let len = text.len() as u64;
    let mut out = vec![FileCheck {
        name: image.to_string(),
        bytes: len,
        crc32: crc32fast::hash(&text),
        length: len,
        covers: Covers::Prefix,
    }];
    let d = Descriptor::parse(&text).map_err(|e| e.with_path(&dpath))?;
    for e in &d.extents {
        let Some(file) = &e.file else { continue };
        let name = file.to_string_lossy().into_owned();
        let path = dir.join(&name);
        let (bytes, crc32, length) = sparse_metadata(&path)?;
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
/// (bytes covered, crc32, file length).
pub(crate) fn sparse_metadata(path: &Path) -> Result<(u64, u32, u64)> {
    // Metadata is a few scattered sectors: read without read-ahead (which would pull in
    // megabytes of grains around them, and break a paced run's pace).
    let file = vdisk_raw::MappedFile::open_with(path, vdisk_raw::ReadAhead::Off)?;
    let x = SparseExtent::open(Bytes::File(file))?;
    let data = x.bytes().require_slice()?;
    let mut crc = crc32fast::Hasher::new();
    let mut covered = 0u64;
    let mut add = |range: std::ops::Range<u64>| -> Result<()> {
        let slice = data
            .get(range.start as usize..range.end as usize)
            .ok_or_else(|| {
                Error::corrupt("metadata lies past the end of the file").with_path(path)
            })?;
        crc.update(slice);
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
                return Err(Error::corrupt("a grain table lies outside the file").with_path(path))
            }
        }
    }
    Ok((covered, crc.finalize(), data.len() as u64))
}

/// The first `n` bytes of a file (an error if it is shorter).
pub(crate) fn read_prefix(path: &Path, n: u64) -> Result<Vec<u8>> {
    let buf = vdisk_raw::read_head(path, usize::try_from(n).unwrap_or(usize::MAX))?;
    if (buf.len() as u64) < n {
        return Err(Error::corrupt("file is shorter than its recorded metadata").with_path(path));
    }
    Ok(buf)
}

/// Whether `f`'s metadata still matches its checksum.
pub(crate) fn check_file(dir: &Path, f: &FileCheck) -> Result<bool> {
    let path = dir.join(&f.name);
    Ok(match f.covers {
        Covers::Prefix => crc32fast::hash(&read_prefix(&path, f.bytes)?) == f.crc32,
        Covers::SparseMetadata => {
            let (bytes, crc, _) = sparse_metadata(&path)?;
            bytes == f.bytes && crc == f.crc32
        }
    })
}
