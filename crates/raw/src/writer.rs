use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use vdisk_core::{is_zero, Error, ErrorKind, Result};

/// The block size holes are made at: zero runs shorter than this are written as data.
const HOLE_BLOCK: usize = 4096;

/// The temporary name an output is written under until it is complete: `.NAME.vdisk-partial`
/// beside it. The name is fixed so that a run that was killed leaves at most one such file,
/// which the next run to the same destination reuses.
pub fn partial_path(dst: &Path) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(dst.file_name().unwrap_or_default());
    name.push(".vdisk-partial");
    dst.with_file_name(name)
}

/// Write a small file (a bitmap, a manifest, metadata) atomically: under its temporary name,
/// synced, then renamed into place. An existing file is refused unless `overwrite`.
pub fn write_file(path: &Path, bytes: &[u8], overwrite: bool) -> Result<()> {
    let w = SparseWriter::create(path, 0, overwrite)?;
    w.write_raw(bytes, 0)?;
    w.commit()
}

/// Writes an image file that leaves holes wherever the data is zero.
///
/// Data goes to [`partial_path`] of the destination; [`SparseWriter::commit`] fsyncs it and
/// renames it into place, so the destination never holds a partial image. Dropping the writer
/// without committing removes the temporary file.
///
/// Writes take `&self` and are positional, so threads may write disjoint ranges at once.
#[derive(Debug)]
pub struct SparseWriter {
    file: File,
    tmp: PathBuf,
    dst: PathBuf,
    committed: bool,
}

impl SparseWriter {
    /// Start writing `dst` as a file of `size` bytes that reads as zero until written.
    ///
    /// An existing `dst` is refused unless `overwrite` is set. The temporary file is opened
    /// without following symbolic links.
    pub fn create(dst: &Path, size: u64, overwrite: bool) -> Result<Self> {
        if dst.file_name().is_none() {
            return Err(Error::new(ErrorKind::InvalidArgument, "not a file name").with_path(dst));
        }
        if !overwrite && std::fs::symlink_metadata(dst).is_ok() {
            return Err(Error::new(
                ErrorKind::Refused,
                "already exists (pass --force to replace it)",
            )
            .with_path(dst));
        }
        let tmp = partial_path(dst);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| Error::io("cannot create", e).with_path(&tmp))?;
        file.set_len(size)
            .map_err(|e| Error::io("cannot size", e).with_path(&tmp))?;
        Ok(SparseWriter {
            file,
            tmp,
            dst: dst.to_path_buf(),
            committed: false,
        })
    }

    /// The file being written (still under its temporary name).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Write `buf` at `offset`, skipping every 4 KiB block that is all zero (it stays a hole).
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let mut run_start: Option<usize> = None;
        let mut pos = 0;
        while pos < buf.len() {
            // Align blocks to the file, not to the buffer, so holes land on file-system blocks.
            let abs = offset + pos as u64;
            let to_boundary = HOLE_BLOCK - (abs % HOLE_BLOCK as u64) as usize;
            let end = (pos + to_boundary).min(buf.len());
            let zero = is_zero(&buf[pos..end]);
            match (zero, run_start) {
                (false, None) => run_start = Some(pos),
                (true, Some(s)) => {
                    self.write_raw(&buf[s..pos], offset + s as u64)?;
                    run_start = None;
                }
                _ => {}
            }
            pos = end;
        }
        if let Some(s) = run_start {
            self.write_raw(&buf[s..], offset + s as u64)?;
        }
        Ok(())
    }

    /// Write `buf` at `offset` as it is, zeros included.
    pub fn write_raw(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| Error::io("cannot write", e).with_path(&self.tmp).at(offset))
    }

    /// Start writing `len` bytes at `offset` back to disk now, without waiting: the final
    /// fsync then has little left to do, instead of flushing the whole image at once.
    pub fn start_writeback(&self, offset: u64, len: u64) {
        use std::os::unix::io::AsRawFd;
        let (Ok(off), Ok(n)) = (
            libc::off64_t::try_from(offset),
            libc::off64_t::try_from(len),
        ) else {
            return;
        };
        // SAFETY: sync_file_range only schedules writeback of our own file's pages; failure
        // (an unsupported file system) is harmless, the final fsync covers everything.
        let _ = unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE)
        };
    }

    /// Make the output durable and visible: fsync the data, rename it to the destination, and
    /// fsync the folder so the rename survives a crash.
    pub fn commit(self) -> Result<()> {
        self.seal()?.commit()
    }

    /// Fsync and close the file, still under its temporary name, to be renamed later with
    /// [`SealedFile::commit`] (an image of many files renames them all at the end without
    /// holding a descriptor open for each).
    pub fn seal(mut self) -> Result<SealedFile> {
        self.file
            .sync_all()
            .map_err(|e| Error::io("cannot sync", e).with_path(&self.tmp))?;
        self.committed = true; // the SealedFile owns the temporary name from here
        Ok(SealedFile {
            tmp: std::mem::take(&mut self.tmp),
            dst: std::mem::take(&mut self.dst),
            committed: false,
        })
    }
}

/// A complete, synced output file under its temporary name.
/// Dropping it without [`SealedFile::commit`] removes it.
#[derive(Debug)]
pub struct SealedFile {
    tmp: PathBuf,
    dst: PathBuf,
    committed: bool,
}

impl SealedFile {
    /// Rename the file into place and fsync the folder so the rename survives a crash.
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.dst)
            .map_err(|e| Error::io("cannot rename into place", e).with_path(&self.dst))?;
        self.committed = true;
        let dir = match self.dst.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for SealedFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl Drop for SparseWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zero_blocks_stay_holes_and_output_appears_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("out.raw");
        let w = SparseWriter::create(&dst, 64 << 20, false).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        buf[5000] = 1; // one non-zero byte in the second 4 KiB block
        w.write_at(&buf, 32 << 20).unwrap();
        assert!(!dst.exists());
        assert!(partial_path(&dst).exists());
        w.commit().unwrap();
        assert!(!partial_path(&dst).exists());
        let meta = std::fs::metadata(&dst).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        assert!(meta.blocks() * 512 <= 64 << 10, "{} blocks", meta.blocks());
        let data = std::fs::read(&dst).unwrap();
        assert_eq!(data[(32 << 20) + 5000], 1);
        assert_eq!(data.iter().filter(|&&b| b != 0).count(), 1);
    }

    #[test]
    fn existing_destination_is_refused_without_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("out.raw");
        std::fs::write(&dst, b"keep me").unwrap();
        let e = SparseWriter::create(&dst, 10, false).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Refused);
        assert!(e.to_string().contains("--force"));
        assert_eq!(std::fs::read(&dst).unwrap(), b"keep me");
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("out.raw");
        let w = SparseWriter::create(&dst, 10, false).unwrap();
        w.write_at(b"abc", 0).unwrap();
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
