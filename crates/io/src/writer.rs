//! Output files that appear only when complete: written without a name (`O_TMPFILE`) or under
//! a temporary one, synced, then linked or renamed into place.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use vdisk_core::{is_zero, Error, ErrorKind, Result};

use crate::interrupt::{publishing, TempName};
use crate::output::{Destination, Existing, OutputPolicy};
use crate::sys;

/// The block size holes are made at: zero runs shorter than this are written as data.
const HOLE_BLOCK: usize = 4096;

/// Sealed files still without a name that may hold a descriptor open at once; past this, a
/// sealed file is given its temporary name right away (an image of tens of thousands of
/// extents must not run out of file descriptors).
const MAX_UNNAMED_SEALED: usize = 1000;
static UNNAMED_SEALED: AtomicUsize = AtomicUsize::new(0);

/// The temporary name an output is given on file systems without `O_TMPFILE`, and for the
/// instant between linking a replacement and renaming it over the old file:
/// `.NAME.vdisk-partial` beside it. The name is fixed, so whatever a killed run left there is
/// removed by the next run that writes NAME.
pub fn partial_path(dst: &Path) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(dst.file_name().unwrap_or_default());
    name.push(".vdisk-partial");
    dst.with_file_name(name)
}

/// Write a small file (a bitmap, a manifest, metadata) atomically: complete and synced before
/// it appears under its name.
pub fn write_file(path: &Path, bytes: &[u8], policy: &OutputPolicy) -> Result<()> {
    let w = SparseWriter::create(path, 0, policy)?;
    w.write_raw(bytes, 0)?;
    w.commit()
}

/// Write `path` atomically through a buffered stream filled by `fill` (a manifest, a report):
/// complete and synced before it appears under its name.
pub fn write_stream<T>(
    path: &Path,
    policy: &OutputPolicy,
    fill: impl FnOnce(&mut (dyn std::io::Write + Send)) -> Result<T>,
) -> Result<T> {
    use std::io::Write;
    let w = SparseWriter::create(path, 0, policy)?;
    let value = {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, w.file());
        let value = fill(&mut out).map_err(|e| e.with_path(path))?;
        out.flush()
            .map_err(|e| Error::io("cannot write", e).with_path(path))?;
        value
    };
    w.commit()?;
    Ok(value)
}

/// How a file being written is reached until it is committed.
#[derive(Debug)]
enum Temp {
    /// An `O_TMPFILE` inode: no name at all, so a killed run leaves nothing behind.
    Unnamed,
    /// A temporary name (file systems without `O_TMPFILE`), removed by an interrupt.
    Named(TempName),
}

/// Writes an image file that leaves holes wherever the data is zero.
///
/// Nothing appears at the destination until [`SparseWriter::commit`]: the data is written to
/// an unnamed file where the file system allows it (`O_TMPFILE`; a killed run then leaves
/// nothing behind), otherwise to [`partial_path`]. Commit fsyncs the file and links or renames
/// it into place; dropping the writer without committing leaves no trace.
///
/// Writes take `&self` and are positional, so threads may write disjoint ranges at once.
///
/// ```
/// use vdisk_io::{OutputPolicy, SparseWriter};
///
/// let dir = tempfile::tempdir()?;
/// let dst = dir.path().join("out.raw");
/// let w = SparseWriter::create(&dst, 1 << 20, &OutputPolicy::new())?;
/// w.write_at(b"head", 0)?;
/// w.write_at(&[0u8; 65536], 4096)?; // all zero: stays a hole
/// w.write_at(b"tail", (1 << 20) - 4)?;
/// assert!(!dst.exists()); // nothing under the name until the commit
/// w.commit()?;
///
/// let bytes = std::fs::read(&dst)?;
/// assert_eq!(bytes.len(), 1 << 20);
/// assert_eq!(&bytes[..4], b"head");
/// assert_eq!(&bytes[(1 << 20) - 4..], b"tail");
/// assert!(bytes[4..(1 << 20) - 4].iter().all(|&b| b == 0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct SparseWriter {
    file: File,
    temp: Temp,
    dst: PathBuf,
    replace: bool,
    committed: bool,
}

fn folder_of(dst: &Path) -> &Path {
    match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Make `file` visible at `dst`: link an unnamed file, or rename a named one. An existing
/// `dst` is replaced only when `replace` is set.
fn publish(file: Option<&File>, temp: &Temp, dst: &Path, replace: bool) -> Result<()> {
    let _publishing = publishing();
    let exists = || std::fs::symlink_metadata(dst).is_ok();
    let already = || {
        Error::new(
            ErrorKind::AlreadyExists,
            "already exists (appeared while it was written)",
        )
        .with_path(dst)
    };
    match (temp, file) {
        (Temp::Unnamed, Some(f)) => match sys::link_unnamed(f, dst) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && replace => {
                // Link under the temporary name, then rename over the old file: the old file
                // stays whole until the rename, which is atomic.
                let tmp = TempName::new(partial_path(dst));
                let tmp = tmp.path();
                remove_stale(tmp);
                sys::link_unnamed(f, tmp)
                    .map_err(|e| Error::io("cannot link the new file", e).with_path(tmp))?;
                std::fs::rename(tmp, dst).map_err(|e| {
                    let _ = std::fs::remove_file(tmp);
                    Error::io("cannot rename into place", e).with_path(dst)
                })?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(already()),
            Err(e) => return Err(Error::io("cannot link the new file", e).with_path(dst)),
        },
        (Temp::Named(tmp), _) => {
            if !replace && exists() {
                return Err(already());
            }
            std::fs::rename(tmp.path(), dst)
                .map_err(|e| Error::io("cannot rename into place", e).with_path(dst))?;
        }
        (Temp::Unnamed, None) => {
            return Err(Error::invalid(
                "an unnamed file was closed before it was linked",
            ))
        }
    }
    if let Ok(d) = File::open(folder_of(dst)) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Remove a temporary file a killed run left at `tmp` (never a folder, never through a link).
fn remove_stale(tmp: &Path) {
    if let Ok(m) = std::fs::symlink_metadata(tmp) {
        if !m.is_dir() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

impl SparseWriter {
    /// Start writing `dst` as a file of `size` bytes that reads as zero until written.
    ///
    /// An existing `dst` is refused unless the policy replaces it, and refused always when it
    /// is one of the policy's protected inputs or a device (devices are written in place by
    /// [`crate::DeviceWriter`]). A symbolic link at `dst` is replaced, never followed.
    pub fn create(dst: &Path, size: u64, policy: &OutputPolicy) -> Result<Self> {
        if dst.file_name().is_none() {
            return Err(Error::new(ErrorKind::InvalidArgument, "not a file name").with_path(dst));
        }
        policy.protected.check(dst)?;
        match std::fs::symlink_metadata(dst) {
            Ok(m) if m.file_type().is_dir() => {
                return Err(
                    Error::new(ErrorKind::InvalidArgument, "is a folder, not a file")
                        .with_path(dst),
                )
            }
            Ok(_) if Destination::of(dst)?.is_device() => {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "is a device: only a raw image can be written onto it, in place",
                )
                .with_path(dst))
            }
            Ok(_) if policy.existing == Existing::Refuse => {
                return Err(Error::new(ErrorKind::AlreadyExists, "already exists").with_path(dst))
            }
            _ => {}
        }
        let dir = folder_of(dst);
        // A run killed between linking and renaming a replacement left this; it is ours.
        remove_stale(&partial_path(dst));
        let unnamed = OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o644)
            .custom_flags(sys::flags::O_TMPFILE)
            .open(dir);
        let (file, temp) = match unnamed {
            Ok(f) => (f, Temp::Unnamed),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(sys::errno::EOPNOTSUPP | sys::errno::EISDIR | sys::errno::EINVAL)
                ) =>
            {
                let tmp = TempName::new(partial_path(dst));
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .custom_flags(sys::flags::O_NOFOLLOW)
                    .open(tmp.path())
                    .map_err(|e| Error::io("cannot create", e).with_path(tmp.path()))?;
                (f, Temp::Named(tmp))
            }
            Err(e) => return Err(Error::io("cannot create a file in", e).with_path(dir)),
        };
        file.set_len(size)
            .map_err(|e| Error::io("cannot size", e).with_path(dst))?;
        Ok(SparseWriter {
            file,
            temp,
            dst: dst.to_path_buf(),
            replace: policy.existing == Existing::Replace,
            committed: false,
        })
    }

    /// The file being written (not yet visible under its name).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The destination it will appear at.
    pub fn destination(&self) -> &Path {
        &self.dst
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
            .map_err(|e| Error::io("cannot write", e).with_path(&self.dst).at(offset))
    }

    /// Start writing `len` bytes at `offset` back to disk now, without waiting: the final
    /// fsync then has little left to do, instead of flushing the whole image at once.
    pub fn start_writeback(&self, offset: u64, len: u64) {
        sys::start_writeback(&self.file, offset, len)
    }

    /// Make the output durable and visible: fsync the data, link or rename it to the
    /// destination, and fsync the folder so the new name survives a crash.
    pub fn commit(self) -> Result<()> {
        self.seal()?.commit()
    }

    /// Fsync the file, still without its final name, to be published later with
    /// [`SealedFile::commit`] (an image of many files publishes them all at the end).
    pub fn seal(mut self) -> Result<SealedFile> {
        self.file
            .sync_all()
            .map_err(|e| Error::io("cannot sync", e).with_path(&self.dst))?;
        self.committed = true; // the SealedFile owns the file from here
        let temp = std::mem::replace(&mut self.temp, Temp::Unnamed);
        let unnamed = matches!(temp, Temp::Unnamed);
        let mut sealed = SealedFile {
            file: None,
            temp,
            dst: std::mem::take(&mut self.dst),
            replace: self.replace,
            committed: false,
        };
        if unnamed {
            if UNNAMED_SEALED.fetch_add(1, Ordering::Relaxed) < MAX_UNNAMED_SEALED {
                let f = self.file.try_clone().map_err(|e| {
                    UNNAMED_SEALED.fetch_sub(1, Ordering::Relaxed);
                    Error::io("cannot keep the file open", e).with_path(&sealed.dst)
                })?;
                sealed.file = Some(f);
            } else {
                // Too many open: give it its temporary name now and close it.
                UNNAMED_SEALED.fetch_sub(1, Ordering::Relaxed);
                let tmp = TempName::new(partial_path(&sealed.dst));
                remove_stale(tmp.path());
                sys::link_unnamed(&self.file, tmp.path())
                    .map_err(|e| Error::io("cannot link the new file", e).with_path(tmp.path()))?;
                sealed.temp = Temp::Named(tmp);
            }
        }
        Ok(sealed)
    }
}

/// A complete, synced output file, not yet under its name. Dropping it without
/// [`SealedFile::commit`] removes it.
#[derive(Debug)]
pub struct SealedFile {
    /// The open unnamed file (until it is linked).
    file: Option<File>,
    temp: Temp,
    dst: PathBuf,
    replace: bool,
    committed: bool,
}

impl SealedFile {
    /// Publish the file under its name and fsync the folder so the name survives a crash.
    pub fn commit(mut self) -> Result<()> {
        publish(self.file.as_ref(), &self.temp, &self.dst, self.replace)?;
        self.committed = true;
        Ok(())
    }

    /// The destination it will appear at.
    pub fn destination(&self) -> &Path {
        &self.dst
    }
}

impl Drop for SealedFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            UNNAMED_SEALED.fetch_sub(1, Ordering::Relaxed);
        }
        if let (false, Temp::Named(tmp)) = (self.committed, &self.temp) {
            let _ = std::fs::remove_file(tmp.path());
        }
    }
}

impl Drop for SparseWriter {
    fn drop(&mut self) {
        if let (false, Temp::Named(tmp)) = (self.committed, &self.temp) {
            let _ = std::fs::remove_file(tmp.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn zero_blocks_stay_holes_and_output_appears_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("out.raw");
        let w = SparseWriter::create(&dst, 64 << 20, &OutputPolicy::new()).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        buf[5000] = 1; // one non-zero byte in the second 4 KiB block
        w.write_at(&buf, 32 << 20).unwrap();
        assert!(!dst.exists());
        w.commit().unwrap();
        assert_eq!(leftovers(dir.path()), ["out.raw"]);
        let meta = std::fs::metadata(&dst).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        assert!(meta.blocks() * 512 <= 64 << 10, "{} blocks", meta.blocks());
        let data = std::fs::read(&dst).unwrap();
        assert_eq!(data[(32 << 20) + 5000], 1);
        assert_eq!(data.iter().filter(|&&b| b != 0).count(), 1);
    }

    #[test]
    fn existing_destination_is_refused_unless_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("out.raw");
        std::fs::write(&dst, b"keep me").unwrap();
        let e = SparseWriter::create(&dst, 10, &OutputPolicy::new()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&dst).unwrap(), b"keep me");
        let w = SparseWriter::create(&dst, 3, &OutputPolicy::replacing()).unwrap();
        w.write_raw(b"new", 0).unwrap();
        // The old file stays whole until the commit.
        assert_eq!(std::fs::read(&dst).unwrap(), b"keep me");
        w.commit().unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), b"new");
        assert_eq!(leftovers(dir.path()), ["out.raw"]);
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("out.raw");
        let w = SparseWriter::create(&dst, 10, &OutputPolicy::new()).unwrap();
        w.write_at(b"abc", 0).unwrap();
        let sealed = SparseWriter::create(&dir.path().join("b"), 10, &OutputPolicy::new())
            .unwrap()
            .seal()
            .unwrap();
        drop(w);
        drop(sealed);
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn a_symbolic_link_at_the_destination_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("target"), b"untouched").unwrap();
        let dst = dir.path().join("link");
        std::os::unix::fs::symlink("target", &dst).unwrap();
        let w = SparseWriter::create(&dst, 2, &OutputPolicy::replacing()).unwrap();
        w.write_raw(b"ok", 0).unwrap();
        w.commit().unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("target")).unwrap(),
            b"untouched"
        );
        assert!(!std::fs::symlink_metadata(&dst)
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
