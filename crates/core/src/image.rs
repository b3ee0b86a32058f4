use crate::{Error, ErrorKind, Extent, Result};

/// A virtual disk that can be read at any offset, from many threads at once.
///
/// Implementations hold only immutable state after opening (memory maps, validated tables), so
/// `&self` reads are safe to run in parallel with rayon.
///
/// Code above the formats takes `&dyn DiskImage` and works the same on a raw file, a VMDK
/// chain or a [`crate::MemImage`]. Here, the bytes that are stored, read by walking the
/// allocation map instead of the whole disk:
///
/// ```
/// use vdisk_core::{for_each_extent, Allocation, DiskImage, MemImage};
///
/// fn stored_bytes(img: &dyn DiskImage) -> vdisk_core::Result<Vec<(u64, Vec<u8>)>> {
///     let mut out = Vec::new();
///     for_each_extent(img, |e| {
///         if e.allocation == Allocation::Data {
///             let mut buf = vec![0u8; e.length as usize];
///             img.read_at(&mut buf, e.start)?;
///             out.push((e.start, buf));
///         }
///         Ok(())
///     })?;
///     Ok(out)
/// }
///
/// let mut disk = vec![0u8; 64 << 10];
/// disk[8192..8200].copy_from_slice(b"vdisk!!!");
/// let img = MemImage::new(disk);
/// let stored = stored_bytes(&img)?;
/// // MemImage stores in 4 KiB blocks: only the block holding the text is data.
/// assert_eq!(stored.len(), 1);
/// assert_eq!(stored[0].0, 8192);
/// assert_eq!(&stored[0].1[..8], b"vdisk!!!");
/// assert!(stored[0].1[8..].iter().all(|&b| b == 0));
/// // Reads past the end are refused, not clipped.
/// let mut past = [0u8; 2];
/// assert_eq!(
///     img.read_at(&mut past, img.size() - 1).unwrap_err().kind(),
///     vdisk_core::ErrorKind::OutOfBounds
/// );
/// # Ok::<(), vdisk_core::Error>(())
/// ```
pub trait DiskImage: Send + Sync {
    /// The virtual size of the disk in bytes.
    fn size(&self) -> u64;

    /// Fill `buf` with the disk's bytes starting at `offset`.
    ///
    /// The whole range must lie inside the disk ([`ErrorKind::OutOfBounds`] otherwise).
    /// Unallocated and zeroed ranges read as zero, or from a parent where the image has one.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// The allocation map of `length` bytes from `offset`, sorted, covering the range exactly,
    /// with touching runs of the same kind joined.
    ///
    /// For a chain, ranges are resolved through the parents: [`crate::Allocation::Unallocated`]
    /// means no link stores the range, and `depth` says which link does.
    /// Callers walking a large disk should ask in windows (say 1 GiB), since a hostile image can
    /// describe one extent per grain.
    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>>;

    /// Short format name: `"raw"`, `"vmdk"`.
    fn format_name(&self) -> &'static str;

    /// The disk's bytes at `offset` as a slice of a memory map, when the image can hand them
    /// out without copying (a mapped raw image). Compare engines use it to avoid a copy.
    fn mapped(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let _ = (offset, len);
        None
    }

    /// Where the next range holding data starts at or after `offset`, or `None` when nothing
    /// from `offset` to the end holds data: scans use it to pass over empty stretches of a
    /// thin disk in one step. The default walks the allocation map; a raw file asks the file
    /// system (`SEEK_DATA`).
    fn next_data(&self, offset: u64) -> Result<Option<u64>> {
        let size = self.size();
        let mut off = offset;
        while off < size {
            let len = (size - off).min(MAP_WINDOW);
            for e in self.allocation(off, len)? {
                if e.allocation == crate::Allocation::Data {
                    return Ok(Some(e.start.max(offset)));
                }
            }
            off += len;
        }
        Ok(None)
    }

    /// A hint about how `len` bytes at `offset` are going to be read (or were): images that
    /// can act on it (memory maps, the page cache) do; the default ignores it.
    /// [`ReadOnce`] pairs [`Advice::ReadOnce`] with [`Advice::Forget`].
    fn advise(&self, offset: u64, len: u64, advice: Advice) {
        let _ = (offset, len, advice);
    }

    /// The files this image reads (every file of a chain: descriptors, extents, parents), by
    /// identity. Writers refuse an output that is one of them, whatever its name.
    fn files(&self) -> Vec<FileId> {
        Vec::new()
    }

    /// Whether the image says it was not closed cleanly (a VMDK's uncleanShutdown flag): its
    /// contents were probably not quiesced.
    fn unclean_shutdown(&self) -> bool {
        false
    }
}

/// How a range of an image is going to be read, or was ([`DiskImage::advise`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Advice {
    /// The range is about to be read through [`DiskImage::mapped`]: a mapped image maps its
    /// pages in one call instead of faulting them in one by one.
    Populate,
    /// The range will not be read again soon: a mapped image drops those pages from its
    /// resident set (the page cache keeps them), so a scan's memory does not grow with the
    /// image.
    Release,
    /// The range is about to be read once (a backup, a hash, a restore): the image notes which
    /// of the pages behind it the host caches already, so that [`Advice::Forget`] drops only
    /// what this read brings in. Images opened to keep the cache do nothing.
    ReadOnce,
    /// The range read once is done: drop from the host's page cache the pages this read
    /// brought in, keeping what was cached before.
    Forget,
    /// Reads of the whole image (whatever the range) are about to be paced (`--io-limit`):
    /// stop the kernel's read-ahead and prefetching on its files, so that what the disk reads
    /// is what vdisk asks for and the pace holds in every second, not just on average.
    Paced,
}

/// A range of an image read once: [`Advice::ReadOnce`] when made, [`Advice::Forget`] when
/// dropped, so the pages the read brought into the host's cache leave with it.
///
/// ```
/// use vdisk_core::{DiskImage, MemImage, ReadOnce};
/// let img = MemImage::new(vec![1u8; 8192]);
/// let mut buf = vec![0u8; 4096];
/// {
///     let _once = ReadOnce::new(&img, 4096, 4096);
///     img.read_at(&mut buf, 4096)?;
/// } // forgotten here
/// assert_eq!(buf[0], 1);
/// # Ok::<(), vdisk_core::Error>(())
/// ```
#[must_use = "the range is forgotten when the guard is dropped"]
pub struct ReadOnce<'a> {
    img: &'a dyn DiskImage,
    offset: u64,
    len: u64,
}

impl<'a> ReadOnce<'a> {
    /// Note that `len` bytes of `img` at `offset` are about to be read once.
    pub fn new(img: &'a dyn DiskImage, offset: u64, len: u64) -> Self {
        img.advise(offset, len, Advice::ReadOnce);
        ReadOnce { img, offset, len }
    }
}

impl Drop for ReadOnce<'_> {
    fn drop(&mut self) {
        self.img.advise(self.offset, self.len, Advice::Forget);
    }
}

/// A file's identity on this machine, independent of the name used to reach it: the device
/// and inode of a file, or, for a device node, the device it gives access to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    /// The device holding the file (`st_dev`), or for a device node the device itself
    /// (`st_rdev`, with `ino` 0).
    pub dev: u64,
    /// The inode number (`st_ino`); 0 for a device node.
    pub ino: u64,
}

/// Check that `len` bytes at `offset` lie inside a disk of `size` bytes.
pub fn check_range(size: u64, offset: u64, len: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::new(
            ErrorKind::OutOfBounds,
            format!("range of {len} bytes at {offset} is past the end of the {size}-byte disk"),
        )),
    }
}

/// `DiskImage` for smart pointers to images, forwarding every method (defaults included, so
/// a mapped image stays mapped behind a `Box` or an `Arc`).
macro_rules! forward_disk_image {
    ($($ptr:ident)::+) => {
        impl<T: DiskImage + ?Sized> DiskImage for $($ptr)::+<T> {
            fn size(&self) -> u64 {
                (**self).size()
            }
            fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
                (**self).read_at(buf, offset)
            }
            fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
                (**self).allocation(offset, length)
            }
            fn format_name(&self) -> &'static str {
                (**self).format_name()
            }
            fn mapped(&self, offset: u64, len: u64) -> Option<&[u8]> {
                (**self).mapped(offset, len)
            }
            fn advise(&self, offset: u64, len: u64, advice: Advice) {
                (**self).advise(offset, len, advice)
            }
            fn next_data(&self, offset: u64) -> Result<Option<u64>> {
                (**self).next_data(offset)
            }
            fn files(&self) -> Vec<FileId> {
                (**self).files()
            }
            fn unclean_shutdown(&self) -> bool {
                (**self).unclean_shutdown()
            }
        }
    };
}

forward_disk_image!(Box);
forward_disk_image!(std::sync::Arc);

/// Window in which whole-disk walks ask for allocation maps: a hostile image can describe one
/// extent per 512-byte grain, so maps are never asked for all at once.
pub const MAP_WINDOW: u64 = 1 << 30;

/// Walk the allocation map of `img` from start to end in [`MAP_WINDOW`] windows, joining runs
/// across window edges, and hand each run to `f`.
pub fn for_each_extent(img: &dyn DiskImage, f: impl FnMut(Extent) -> Result<()>) -> Result<()> {
    walk_map(img.size(), |off, len| img.allocation(off, len), f)
}

/// The one windowed map walk: ask `map` for the runs of `[0, size)` in [`MAP_WINDOW`]
/// windows (a hostile image can describe one run per 512-byte grain, so a map is never asked
/// for whole), join touching runs of the same kind across window edges, and hand each run
/// to `f`. [`for_each_extent`] walks an image's map this way; a format walks one link's own
/// map the same way.
pub fn walk_map(
    size: u64,
    mut map: impl FnMut(u64, u64) -> Result<Vec<Extent>>,
    mut f: impl FnMut(Extent) -> Result<()>,
) -> Result<()> {
    let mut pending: Option<Extent> = None;
    let mut off = 0;
    while off < size {
        let len = (size - off).min(MAP_WINDOW);
        for e in map(off, len)? {
            match &mut pending {
                Some(p)
                    if p.end() == e.start && p.allocation == e.allocation && p.depth == e.depth =>
                {
                    p.length += e.length
                }
                _ => {
                    if let Some(p) = pending.replace(e) {
                        f(p)?;
                    }
                }
            }
        }
        off += len;
    }
    if let Some(p) = pending {
        f(p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_checks_overflow_and_end() {
        assert!(check_range(100, 0, 100).is_ok());
        assert!(check_range(100, 100, 0).is_ok());
        assert_eq!(
            check_range(100, 1, 100).unwrap_err().kind(),
            ErrorKind::OutOfBounds
        );
        assert!(check_range(u64::MAX, u64::MAX, 1).is_err());
    }
}
