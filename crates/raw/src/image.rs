use std::path::Path;

use vdisk_core::{check_range, Advice, Allocation, DiskImage, Extent, FileId, Result};
use vdisk_io::{Bytes, Cache, Layer, MappedFile, ReadAhead};

/// A raw disk image: the file's bytes are the disk's bytes.
#[derive(Debug)]
pub struct RawImage {
    bytes: Bytes,
}

impl RawImage {
    /// Open `path` as a raw image.
    ///
    /// ```
    /// use std::os::unix::fs::FileExt;
    /// use vdisk_core::{Allocation, DiskImage};
    /// use vdisk_raw::RawImage;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("disk.raw");
    /// let file = std::fs::File::create(&path)?;
    /// file.set_len(4 << 20)?; // a 4 MiB hole
    /// file.write_all_at(&[0xab; 4096], 1 << 20)?;
    /// drop(file);
    ///
    /// let img = RawImage::open(&path)?;
    /// assert_eq!(img.size(), 4 << 20);
    /// let mut buf = [0u8; 8];
    /// img.read_at(&mut buf, (1 << 20) - 4)?;
    /// assert_eq!(buf, [0, 0, 0, 0, 0xab, 0xab, 0xab, 0xab]);
    /// // The allocation map comes from the file system: the written block is data.
    /// let map = img.allocation(0, img.size())?;
    /// let data: Vec<_> = map.iter().filter(|e| e.allocation == Allocation::Data).collect();
    /// assert!(data.iter().any(|e| e.start <= 1 << 20 && e.end() >= (1 << 20) + 4096));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, ReadAhead::On)
    }

    /// Open `path` as a raw image, with read-ahead as `read_ahead` says.
    pub fn open_with(path: &Path, read_ahead: ReadAhead) -> Result<Self> {
        Self::open_with_cache(path, read_ahead, Cache::Keep)
    }

    /// Open `path` as a raw image, with read-ahead as `read_ahead` says and `cache` as its
    /// page-cache policy for data read once.
    pub fn open_with_cache(path: &Path, read_ahead: ReadAhead, cache: Cache) -> Result<Self> {
        let file = MappedFile::open_with(path, read_ahead)?.with_cache(cache);
        Self::from_bytes(Bytes::File(file))
    }

    /// The raw image whose bytes are `bytes` (a file, a member of an archive, an object).
    pub fn from_bytes(bytes: Bytes) -> Result<Self> {
        vdisk_core::check_disk_size(bytes.len()).map_err(|e| e.with_path(bytes.path()))?;
        Ok(RawImage { bytes })
    }

    /// The bytes behind the image.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

impl DiskImage for RawImage {
    fn size(&self) -> u64 {
        self.bytes.len()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.size(), offset, buf.len() as u64)
            .map_err(|e| e.with_path(self.bytes.path()))?;
        self.bytes.read_at(buf, offset)
    }

    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        check_range(self.size(), offset, length).map_err(|e| e.with_path(self.bytes.path()))?;
        let end = offset + length;
        let mut map = Vec::new();
        let mut pos = offset;
        let mut push = |start: u64, len: u64, allocation| {
            vdisk_core::coalesce(
                &mut map,
                Extent {
                    start,
                    length: len,
                    allocation,
                    depth: 0,
                },
            )
        };
        for (start, len) in self.bytes.data_ranges(offset, end) {
            push(pos, start - pos, Allocation::Unallocated);
            push(start, len, Allocation::Data);
            pos = start + len;
        }
        push(pos, end - pos, Allocation::Unallocated);
        Ok(map)
    }

    fn format_name(&self) -> &'static str {
        "raw"
    }

    fn mapped(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let bytes = self.bytes.slice()?;
        let end = offset.checked_add(len)?;
        bytes.get(usize::try_from(offset).ok()?..usize::try_from(end).ok()?)
    }

    fn advise(&self, offset: u64, len: u64, advice: Advice) {
        self.bytes.advise(offset, len, advice)
    }

    fn files(&self) -> Vec<FileId> {
        self.bytes.id().into_iter().collect()
    }

    fn next_data(&self, offset: u64) -> Result<Option<u64>> {
        Ok(self.bytes.next_data(offset))
    }
}

impl Layer for RawImage {
    fn path(&self) -> &Path {
        self.bytes.path()
    }

    fn disk_usage(&self) -> u64 {
        self.bytes.disk_usage()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn map_covers_range_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(16 << 20).unwrap();
        f.write_all_at(&[7u8; 65536], 4 << 20).unwrap();
        drop(f);
        let img = RawImage::open(&path).unwrap();
        assert_eq!(img.size(), 16 << 20);
        let map = img.allocation(0, img.size()).unwrap();
        assert_eq!(map.first().unwrap().start, 0);
        assert_eq!(map.last().unwrap().end(), 16 << 20);
        for w in map.windows(2) {
            assert_eq!(w[0].end(), w[1].start);
        }
        let mut buf = vec![0u8; 65536];
        img.read_at(&mut buf, 4 << 20).unwrap();
        assert!(buf.iter().all(|&b| b == 7));
        assert!(img.read_at(&mut buf, (16 << 20) - 10).is_err());
    }
}
