//! Writing VHDs: fixed disks (raw data and a footer, sized for Azure), dynamic disks and
//! differencing disks.

use std::path::{Path, PathBuf};

use vdisk_core::{is_zero, Error, ErrorKind, ImageSink, Result, SECTOR};
use vdisk_io::{OutputPolicy, SparseWriter};

use crate::bat::mark;
use crate::footer::{
    DiskType, Geometry, RawFooter, FEATURE_RESERVED, FOOTER_SIZE, FORMAT_VERSION, MAX_SECTORS,
    NO_DATA_OFFSET, VHD_EPOCH,
};
use crate::header::{
    ParentLocator, Platform, RawDynamicHeader, DEFAULT_BLOCK_SIZE, HEADER_SIZE, HEADER_VERSION,
    LOCATORS, UNALLOCATED,
};
use crate::locator::{parent_name_field, utf16le, windows_relative};
use crate::uuid::Uuid;

/// Azure takes fixed disks whose virtual size is a whole number of MiB.
pub const AZURE_ALIGNMENT: u64 = 1 << 20;
/// The largest disk written: 2040 GiB, the most qemu and Hyper-V open.
pub const MAX_SIZE: u64 = MAX_SECTORS * SECTOR;
/// Block sizes a new dynamic disk may have: powers of two from 64 KiB to 256 MiB (Hyper-V
/// writes 512 KiB and 2 MiB; qemu reads any power of two).
pub const BLOCK_SIZES: std::ops::RangeInclusive<u64> = (64 << 10)..=(256 << 20);
/// Writeback of written data is started in pieces of this many bytes.
const WRITEBACK: u64 = 8 << 20;
/// Data of new blocks starts at multiples of this, so that the file system's blocks and the
/// disk's line up (zeros stay holes, reads stay aligned): the sector bitmap sits in the
/// last bytes of a 4 KiB slot before the data.
const DATA_ALIGN: u64 = 4096;
/// The block size of the sinks: data comes in runs of whole 4 KiB blocks.
const SINK_BLOCK: u64 = 4096;
/// The block size of a differencing disk's sink.
const DELTA_BLOCK: u64 = 64 << 10;

/// What a new VHD's footer says of its maker, as qemu-img writes with `force_size=on`:
/// "qem2" with the largest geometry, so that qemu (and Hyper-V, and Azure) size the disk by
/// the current size, which is exact, rather than by a geometry, which rounds.
fn new_footer(disk_type: DiskType, size: u64, unique_id: Uuid) -> RawFooter {
    RawFooter {
        features: FEATURE_RESERVED,
        format_version: FORMAT_VERSION,
        data_offset: if disk_type.is_sparse() {
            FOOTER_SIZE as u64
        } else {
            NO_DATA_OFFSET
        },
        timestamp: vhd_now(),
        creator_app: *b"qem2",
        // Virtual PC 2007's version, which qemu-img writes too.
        creator_version: 0x0005_0003,
        creator_os: *b"Wi2k",
        original_size: size,
        current_size: size,
        geometry: Geometry::MAX,
        disk_type: disk_type.code(),
        checksum: 0,
        unique_id,
        saved_state: 0,
    }
    .sealed()
}

/// Now, in seconds since 2000-01-01 UTC.
fn vhd_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs().saturating_sub(VHD_EPOCH) as u32)
}

/// A time as seconds since 2000-01-01 UTC (0 before it).
pub(crate) fn vhd_time_of(t: std::time::SystemTime) -> u32 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| {
        d.as_secs().saturating_sub(VHD_EPOCH).min(u32::MAX.into()) as u32
    })
}

fn check_size(size: u64, dst: &Path) -> Result<()> {
    if size > MAX_SIZE {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("a VHD holds at most 2040 GiB ({MAX_SIZE} bytes); the disk is {size} bytes"),
        )
        .with_path(dst));
    }
    Ok(())
}

/// The virtual size of a fixed disk written for a disk of `size` bytes: rounded up to a
/// whole MiB, as Azure requires (the file is that plus the 512-byte footer).
pub fn fixed_size(size: u64) -> u64 {
    size.next_multiple_of(AZURE_ALIGNMENT)
}

/// A fixed VHD being written: the disk's data at its own offsets, zeros left as holes, and
/// the footer after it. The size is rounded up to a whole MiB (see [`fixed_size`]).
#[derive(Debug)]
pub struct FixedSink {
    file: SparseWriter,
    size: u64,
    footer: RawFooter,
    unflushed: u64,
}

impl FixedSink {
    /// Start a fixed VHD at `dst` for a disk of `size` bytes; `unique_id` when it must keep
    /// one.
    pub fn create(
        dst: &Path,
        size: u64,
        policy: &OutputPolicy,
        unique_id: Option<Uuid>,
    ) -> Result<Self> {
        let size = fixed_size(size);
        check_size(size, dst)?;
        let file = SparseWriter::create(dst, size + FOOTER_SIZE as u64, policy)?;
        Ok(FixedSink {
            file,
            size,
            footer: new_footer(
                DiskType::Fixed,
                size,
                unique_id.unwrap_or_else(Uuid::random),
            ),
            unflushed: 0,
        })
    }

    /// The virtual size the disk will have.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl ImageSink for FixedSink {
    fn block_size(&self) -> u64 {
        SINK_BLOCK
    }
    fn takes_runs(&self) -> bool {
        true
    }
    fn put(&mut self, blocks: &[(u64, &[u8])]) -> Result<()> {
        for &(off, data) in blocks {
            let end = off
                .checked_add(data.len() as u64)
                .filter(|&e| e <= self.size);
            if end.is_none() {
                return Err(past_the_end(off, self.size, self.file.destination()));
            }
            self.file.write_at(data, off)?;
            let end = off + data.len() as u64;
            if end.saturating_sub(self.unflushed) >= WRITEBACK {
                self.file
                    .start_writeback(self.unflushed, end - self.unflushed);
                self.unflushed = end;
            }
        }
        Ok(())
    }
    fn finish(self: Box<Self>) -> Result<()> {
        self.file.write_raw(&self.footer.to_bytes(), self.size)?;
        self.file.commit()
    }
}

fn past_the_end(off: u64, size: u64, dst: &Path) -> Error {
    Error::new(
        ErrorKind::InvalidArgument,
        format!("data at offset {off} runs past the end of the {size}-byte disk"),
    )
    .with_path(dst)
}

/// The parent of a differencing disk being written.
#[derive(Debug, Clone)]
pub struct NewParent {
    /// The parent's unique id (nil when the parent is not a VHD).
    pub unique_id: Uuid,
    /// The parent's modification time, seconds since 2000-01-01 UTC.
    pub timestamp: u32,
    /// The parent as named relative to the child's folder (the W2ru locator), if it can be.
    pub relative: Option<PathBuf>,
    /// The parent's absolute path (the W2ku locator).
    pub absolute: PathBuf,
}

/// A dynamic or differencing VHD being written. Layout: footer copy, dynamic header, block
/// allocation table (and a differencing disk's parent locators) as qemu-img lays them out,
/// then the blocks in the order they come, each a sector bitmap and its data (the data at a
/// multiple of 4 KiB), then the footer.
///
/// A dynamic disk stores the blocks that hold data, with every sector marked in their
/// bitmaps (as qemu does); all-zero pieces of unallocated blocks are not stored. A
/// differencing disk stores every piece it is given, zeros included (they mask the parent),
/// and marks exactly the sectors given.
#[derive(Debug)]
pub struct DynamicSink {
    file: SparseWriter,
    size: u64,
    block_size: u64,
    bitmap_size: u64,
    /// Bytes before each block's data: its bitmap, at the end of a 4 KiB-aligned slot.
    slot: u64,
    footer: RawFooter,
    header: RawDynamicHeader,
    bat: Vec<u32>,
    /// Locator data: (file offset, bytes).
    locator_data: Vec<(u64, Vec<u8>)>,
    /// End of the metadata before the first block.
    meta_end: u64,
    /// Where the next block's slot starts.
    next: u64,
    delta: bool,
    /// A differencing disk's block being filled, and its bitmap.
    current: Option<(u64, Vec<u8>)>,
    unflushed: u64,
}

impl DynamicSink {
    /// Start a dynamic disk (`parent` `None`) or a differencing disk at `dst` for a disk of
    /// `size` bytes (rounded up to a whole sector), in blocks of `block_size` bytes (2 MiB
    /// when `None`).
    pub fn create(
        dst: &Path,
        size: u64,
        block_size: Option<u64>,
        policy: &OutputPolicy,
        unique_id: Option<Uuid>,
        parent: Option<&NewParent>,
    ) -> Result<Self> {
        let size = size.next_multiple_of(SECTOR);
        check_size(size, dst)?;
        let block_size = block_size.unwrap_or(u64::from(DEFAULT_BLOCK_SIZE));
        if !block_size.is_power_of_two() || !BLOCK_SIZES.contains(&block_size) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("VHD block size {block_size} is not a power of two from 64 KiB to 256 MiB"),
            )
            .with_path(dst));
        }
        let entries = size.div_ceil(block_size);
        let bitmap_size = (block_size / SECTOR).div_ceil(8).next_multiple_of(SECTOR);
        let table_offset = (FOOTER_SIZE + HEADER_SIZE) as u64;
        let mut meta_end = table_offset + (entries * 4).next_multiple_of(SECTOR);
        let mut header = RawDynamicHeader {
            data_offset: u64::MAX,
            table_offset,
            header_version: HEADER_VERSION,
            max_table_entries: entries as u32,
            block_size: block_size as u32,
            checksum: 0,
            parent_unique_id: Uuid::NIL,
            parent_timestamp: 0,
            parent_name: [0; 512],
            locators: [ParentLocator::default(); LOCATORS],
        };
        let mut locator_data = Vec::new();
        if let Some(p) = parent {
            header.parent_unique_id = p.unique_id;
            header.parent_timestamp = p.timestamp;
            header.parent_name = parent_name_field(&p.absolute);
            // Absolute then relative, as VirtualBox writes them; Hyper-V writes both too.
            let mut names = vec![(Platform::W2ku, utf16le(&p.absolute.to_string_lossy()))];
            if let Some(r) = &p.relative {
                names.push((Platform::W2ru, utf16le(&windows_relative(r))));
            }
            for (slot, (platform, data)) in names.into_iter().enumerate() {
                // Space in bytes, as Virtual PC and Hyper-V count it (the specification's
                // sectors are not what they write): at least 512 UTF-16 units.
                let space = (data.len() as u64).max(1024).next_multiple_of(SECTOR);
                header.locators[slot] = ParentLocator {
                    platform_code: platform.code(),
                    data_space: u32::try_from(space).unwrap_or(u32::MAX),
                    data_length: data.len() as u32,
                    reserved: 0,
                    data_offset: meta_end,
                };
                locator_data.push((meta_end, data));
                meta_end += space;
            }
        }
        let disk_type = if parent.is_some() {
            DiskType::Differencing
        } else {
            DiskType::Dynamic
        };
        let file = SparseWriter::create(dst, meta_end, policy)?;
        let slot = bitmap_size.next_multiple_of(DATA_ALIGN);
        Ok(DynamicSink {
            file,
            size,
            block_size,
            bitmap_size,
            slot,
            footer: new_footer(disk_type, size, unique_id.unwrap_or_else(Uuid::random)),
            header: header.sealed(),
            bat: vec![UNALLOCATED; entries as usize],
            locator_data,
            meta_end,
            next: meta_end.next_multiple_of(DATA_ALIGN),
            delta: parent.is_some(),
            current: None,
            unflushed: meta_end,
        })
    }

    /// The new disk's unique id.
    pub fn unique_id(&self) -> Uuid {
        self.footer.unique_id
    }

    /// File offset of block `i`'s data, allocating it (and, in a dynamic disk, writing its
    /// all-marked bitmap) if it is new.
    fn data_of(&mut self, i: u64) -> Result<u64> {
        let entry = self.bat[i as usize];
        if entry != UNALLOCATED {
            return Ok(u64::from(entry) * SECTOR + self.bitmap_size);
        }
        let data = self.next + self.slot;
        let bitmap_at = data - self.bitmap_size;
        let sector = bitmap_at / SECTOR;
        if sector >= u64::from(UNALLOCATED) {
            return Err(Error::unsupported(
                "the VHD's blocks run past what 32-bit sector numbers address",
            )
            .with_path(self.file.destination()));
        }
        self.bat[i as usize] = sector as u32;
        self.next = data + self.block_size;
        if !self.delta {
            self.file
                .write_raw(&vec![0xff; self.bitmap_size as usize], bitmap_at)?;
        }
        Ok(data)
    }

    /// Write out the bitmap of the differencing disk's block being filled.
    fn close_current(&mut self) -> Result<()> {
        if let Some((i, bitmap)) = self.current.take() {
            let at = u64::from(self.bat[i as usize]) * SECTOR;
            self.file.write_raw(&bitmap, at)?;
        }
        Ok(())
    }

    fn put_piece(&mut self, off: u64, data: &[u8]) -> Result<()> {
        let i = off / self.block_size;
        let in_block = off % self.block_size;
        if self.delta {
            match &self.current {
                Some((c, _)) if *c == i => {}
                _ => {
                    if self.bat[i as usize] != UNALLOCATED {
                        return Err(Error::invalid(format!(
                            "blocks given out of order (block {i} again)"
                        ))
                        .with_path(self.file.destination()));
                    }
                    self.close_current()?;
                    self.current = Some((i, vec![0u8; self.bitmap_size as usize]));
                }
            }
        } else if self.bat[i as usize] == UNALLOCATED && is_zero(data) {
            return Ok(());
        }
        let at = self.data_of(i)?;
        self.file.write_at(data, at + in_block)?;
        if let Some((_, bitmap)) = &mut self.current {
            let first = in_block / SECTOR;
            mark(
                bitmap,
                first,
                (in_block + data.len() as u64).div_ceil(SECTOR),
            );
        }
        Ok(())
    }
}

impl ImageSink for DynamicSink {
    fn block_size(&self) -> u64 {
        // A delta stores what it is given in pieces of 64 KiB (the changed-block granularity
        // vdisk tracks, and the grain of its VMDK and qcow2 deltas): each piece given costs
        // a look at the parent, so 4 KiB pieces would cost 16 times as many. Sectors are
        // still marked one by one, so any piece size reads back right.
        if self.delta {
            DELTA_BLOCK.min(self.block_size)
        } else {
            SINK_BLOCK
        }
    }
    fn takes_runs(&self) -> bool {
        true
    }
    fn put(&mut self, blocks: &[(u64, &[u8])]) -> Result<()> {
        for &(off, data) in blocks {
            let end = off
                .checked_add(data.len() as u64)
                .filter(|&e| e <= self.size);
            let Some(end) = end else {
                return Err(past_the_end(off, self.size, self.file.destination()));
            };
            let mut pos = off;
            while pos < end {
                let n = (self.block_size - pos % self.block_size).min(end - pos);
                let piece = &data[(pos - off) as usize..(pos - off + n) as usize];
                self.put_piece(pos, piece)?;
                pos += n;
            }
        }
        if self.next - self.unflushed >= WRITEBACK {
            self.file
                .start_writeback(self.unflushed, self.next - self.unflushed);
            self.unflushed = self.next;
        }
        Ok(())
    }
    fn finish(mut self: Box<Self>) -> Result<()> {
        self.close_current()?;
        let footer = self.footer.to_bytes();
        let end = if self.bat.iter().all(|&e| e == UNALLOCATED) {
            self.meta_end
        } else {
            self.next
        };
        let table: Vec<u8> = self.bat.iter().flat_map(|e| e.to_be_bytes()).collect();
        self.file.write_raw(&table, self.header.table_offset)?;
        for (at, data) in &self.locator_data {
            self.file.write_raw(data, *at)?;
        }
        self.file
            .write_raw(&self.header.to_bytes(), FOOTER_SIZE as u64)?;
        self.file.write_raw(&footer, 0)?;
        self.file.write_raw(&footer, end)?;
        self.file
            .file()
            .set_len(end + FOOTER_SIZE as u64)
            .map_err(|e| Error::io("cannot size", e).with_path(self.file.destination()))?;
        self.file.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::VhdImage;
    use vdisk_core::{Allocation, DiskImage};
    use vdisk_io::Layer;

    fn read_all(img: &VhdImage) -> Vec<u8> {
        let mut v = vec![0u8; img.size() as usize];
        img.read_at(&mut v, 0).unwrap();
        v
    }

    #[test]
    fn dynamic_round_trip_skips_zero_blocks_and_aligns_data() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("d.vhd");
        let size = (5 << 20) + 1000; // rounded up to a sector
        let mut sink =
            DynamicSink::create(&dst, size, None, &OutputPolicy::new(), None, None).unwrap();
        let a = vec![0x61u8; 8192];
        let zeros = vec![0u8; 1 << 20];
        let tail = vec![0x62u8; 1000];
        sink.put(&[(4096, &a), (2 << 20, &zeros), (5 << 20, &tail)])
            .unwrap();
        Box::new(sink).finish().unwrap();
        let img = VhdImage::open(&dst).unwrap();
        assert_eq!(img.size(), (5 << 20) + 1024);
        assert_eq!(img.disk_type(), DiskType::Dynamic);
        assert!(img.check().is_empty(), "{:?}", img.check());
        let data = read_all(&img);
        assert!(data[4096..12288].iter().all(|&b| b == 0x61));
        assert!(data[5 << 20..(5 << 20) + 1000].iter().all(|&b| b == 0x62));
        assert_eq!(data.iter().filter(|&&b| b != 0).count(), 8192 + 1000);
        // Two blocks stored (0 and 2); the all-zero block 1 was not.
        let h = img.dynamic_header().unwrap();
        assert_eq!(h.raw.max_table_entries, 3);
        let map = img.allocation(0, img.size()).unwrap();
        assert!(map
            .iter()
            .filter(|e| e.allocation != Allocation::Unallocated)
            .all(|e| e.start < 2 << 20 || e.start >= 4 << 20));
        // Every block's data starts on a 4 KiB boundary of the file, its bitmap just before.
        let bytes = std::fs::read(&dst).unwrap();
        let table = &bytes[1536..1536 + 12];
        for e in table.chunks(4) {
            let e = u32::from_be_bytes(e.try_into().unwrap());
            if e != UNALLOCATED {
                assert_eq!((u64::from(e) * 512 + 512) % 4096, 0);
                let at = e as usize * 512;
                assert!(bytes[at..at + 512].iter().all(|&b| b == 0xff));
            }
        }
        assert_eq!(&bytes[..512], &bytes[bytes.len() - 512..]);
    }

    #[test]
    fn fixed_round_trip_is_raw_data_and_a_footer() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("f.vhd");
        let mut sink = FixedSink::create(&dst, 3000, &OutputPolicy::new(), None).unwrap();
        assert_eq!(sink.size(), 1 << 20);
        sink.put(&[(0, &[7u8; 3000][..])]).unwrap();
        assert!(sink.put(&[(1 << 20, &[1u8][..])]).is_err());
        Box::new(sink).finish().unwrap();
        let bytes = std::fs::read(&dst).unwrap();
        assert_eq!(bytes.len(), (1 << 20) + 512);
        assert!(bytes[..3000].iter().all(|&b| b == 7));
        let img = VhdImage::open(&dst).unwrap();
        assert_eq!(img.size(), 1 << 20);
        assert_eq!(read_all(&img)[..3000], bytes[..3000]);
        assert!(img.check().is_empty());
    }

    #[test]
    fn differencing_disks_mark_exactly_what_they_are_given() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("c.vhd");
        let parent = NewParent {
            unique_id: Uuid([9; 16]),
            timestamp: 1234,
            relative: Some("sub/base.vhd".into()),
            absolute: "/srv/vm/sub/base.vhd".into(),
        };
        let mut sink = DynamicSink::create(
            &dst,
            4 << 20,
            Some(64 << 10),
            &OutputPolicy::new(),
            Some(Uuid([3; 16])),
            Some(&parent),
        )
        .unwrap();
        sink.put(&[(0, &[0u8; 4096][..]), (8192, &[5u8; 4096][..])])
            .unwrap();
        sink.put(&[(1 << 20, &[6u8; 512][..])]).unwrap();
        // A block given again once another was started is out of order.
        assert!(sink.put(&[(4096, &[1u8; 4096][..])]).is_err());
        Box::new(sink).finish().unwrap();
        let img = VhdImage::open(&dst).unwrap();
        assert_eq!(img.disk_type(), DiskType::Differencing);
        assert_eq!(img.unique_id(), Uuid([3; 16]));
        let p = img.parent().unwrap();
        assert_eq!(p.unique_id, Uuid([9; 16]));
        assert_eq!(p.timestamp, 1234);
        assert_eq!(p.name, "base.vhd");
        let written: Vec<_> = p
            .locators
            .iter()
            .map(|(_, n)| n.clone().unwrap().written)
            .collect();
        assert_eq!(written, ["/srv/vm/sub/base.vhd", ".\\sub\\base.vhd"]);
        let b = img.backing().unwrap();
        let names: Vec<_> = b
            .names
            .iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        // Only the names that stay in the disk's folder, unless outside paths are allowed.
        assert_eq!(names, ["sub/base.vhd", "base.vhd"]);
        let bytes = vdisk_io::Bytes::Owned(
            dst.clone(),
            std::sync::Arc::new(std::fs::read(&dst).unwrap()),
        );
        let all = VhdImage::from_bytes_with(bytes, true).unwrap();
        let last = all.backing().unwrap().names.last().cloned();
        assert_eq!(last, Some("/srv/vm/sub/base.vhd".into()));
        let map = img.allocation(0, 2 << 20).unwrap();
        let kinds: Vec<_> = map
            .iter()
            .map(|e| (e.start, e.length, e.allocation))
            .collect();
        assert_eq!(
            kinds,
            [
                (0, 4096, Allocation::Zero),
                (4096, 4096, Allocation::Unallocated),
                (8192, 4096, Allocation::Data),
                (12288, (1 << 20) - 12288, Allocation::Unallocated),
                (1 << 20, 512, Allocation::Data),
                ((1 << 20) + 512, (1 << 20) - 512, Allocation::Unallocated),
            ]
        );
        assert!(img.check().is_empty(), "{:?}", img.check());
    }

    #[test]
    fn sizes_and_block_sizes_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("x.vhd");
        let policy = OutputPolicy::new();
        for bad in [4096, 3 << 20, 512 << 20] {
            let e = DynamicSink::create(&dst, 1 << 20, Some(bad), &policy, None, None).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}");
        }
        let e = DynamicSink::create(&dst, MAX_SIZE + 1, None, &policy, None, None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(FixedSink::create(&dst, MAX_SIZE + 1, &policy, None).is_err());
        assert_eq!(fixed_size(0), 0);
        assert_eq!(fixed_size(1), 1 << 20);
        assert_eq!(fixed_size(1 << 20), 1 << 20);
        assert!(!dst.exists());
    }
}
