//! Checksums of the metadata of a point's files: the whole descriptor, and each sparse
//! extent's header, descriptor area, directories and tables (all before its first grain),
//! so that any flipped byte of metadata is found by verify.

use std::path::Path;

use vdisk_core::{Error, Result};
use vdisk_vmdk::{Descriptor, RawSparseHeader};

use crate::meta::FileCheck;

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
    }];
    let d = Descriptor::parse(&text).map_err(|e| e.with_path(&dpath))?;
    for e in &d.extents {
        let Some(file) = &e.file else { continue };
        let name = file.to_string_lossy().into_owned();
        let path = dir.join(&name);
        let head = read_prefix(&path, 512)?;
        let h = RawSparseHeader::parse(&head).map_err(|e| e.with_path(&path))?;
        let bytes = h.overhead * 512;
        let data = read_prefix(&path, bytes)?;
        let length = std::fs::metadata(&path)
            .map_err(|e| Error::io("cannot stat", e).with_path(&path))?
            .len();
        out.push(FileCheck {
            name,
            bytes,
            crc32: crc32fast::hash(&data),
            length,
        });
    }
    Ok(out)
}

/// The first `n` bytes of a file (an error if it is shorter).
pub(crate) fn read_prefix(path: &Path, n: u64) -> Result<Vec<u8>> {
    let buf = vdisk_raw::read_head(path, usize::try_from(n).unwrap_or(usize::MAX))?;
    if (buf.len() as u64) < n {
        return Err(Error::corrupt("file is shorter than its recorded metadata").with_path(path));
    }
    Ok(buf)
}
