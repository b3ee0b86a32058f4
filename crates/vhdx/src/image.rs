//! A VHDX file opened as a [`Layer`]: headers, log replay, region table, metadata and BAT
//! validated at open; then positional reads from `&self`, safe to run in parallel.

use std::path::PathBuf;

use vdisk_core::{
    check_range, coalesce, Advice, Allocation, DiskImage, Error, Extent, FileId, Result,
};
use vdisk_io::{Backing, Bytes, LinkId};

use crate::bat::{BlockAllocationTable, BlockState, Geometry};
use crate::guid::Guid;
use crate::header::{
    check_identifier, creator, Header, Region, RegionTable, HEADER1_OFFSET, HEADER2_OFFSET,
    HEADER_SECTION, HEADER_SIZE, REGION_TABLE1_OFFSET, REGION_TABLE2_OFFSET, REGION_TABLE_SIZE,
};
use crate::log::FileView;
use crate::metadata::Metadata;

/// The kind of [`LinkId`] a VHDX offers and records: its header's DataWriteGuid, which a
/// differencing child stores as its parent_linkage.
pub const LINK_KIND: &str = "vhdx-data-write-guid";

/// What kind of VHDX a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subformat {
    /// Every block allocated (LeaveBlockAllocated set).
    Fixed,
    /// Blocks allocated as written.
    Dynamic,
    /// Blocks over a parent VHDX.
    Differencing,
}

impl Subformat {
    /// The name `info` shows and `create` takes.
    pub fn name(self) -> &'static str {
        match self {
            Subformat::Fixed => "fixed",
            Subformat::Dynamic => "dynamic",
            Subformat::Differencing => "differencing",
        }
    }
}

/// An opened VHDX file (one layer: a differencing disk's parent is opened by the registry).
#[derive(Debug)]
pub struct VhdxImage {
    pub(crate) view: FileView,
    pub(crate) path: PathBuf,
    pub(crate) header: Header,
    pub(crate) regions: RegionTable,
    meta: Metadata,
    pub(crate) bat: BlockAllocationTable,
    creator: String,
    pub(crate) backing: Option<Backing>,
}

impl VhdxImage {
    /// Open the VHDX file whose bytes are `bytes`. Errors name the file.
    pub fn open(bytes: Bytes) -> Result<VhdxImage> {
        let path = bytes.path().to_path_buf();
        Self::open_inner(bytes).map_err(|e| e.with_path(&path))
    }

    fn open_inner(bytes: Bytes) -> Result<VhdxImage> {
        let path = bytes.path().to_path_buf();
        let file_len = bytes.len();
        let mut ident = vec![0u8; 520];
        bytes.read_at(&mut ident, 0)?;
        check_identifier(&ident)?;
        if file_len < HEADER_SECTION {
            return Err(Error::corrupt(format!(
                "is {file_len} bytes, shorter than the 1 MiB header section"
            )));
        }
        let mut h1 = vec![0u8; HEADER_SIZE];
        let mut h2 = vec![0u8; HEADER_SIZE];
        bytes.read_at(&mut h1, HEADER1_OFFSET)?;
        bytes.read_at(&mut h2, HEADER2_OFFSET)?;
        let header = Header::select(&h1, &h2)?;
        let view = FileView::open(bytes, &header)?;
        let t1 = view.read_vec(REGION_TABLE1_OFFSET, REGION_TABLE_SIZE)?;
        let t2 = view.read_vec(REGION_TABLE2_OFFSET, REGION_TABLE_SIZE)?;
        let log = (header.raw.log_length > 0).then_some(Region {
            offset: header.raw.log_offset,
            length: u64::from(header.raw.log_length),
        });
        let regions = RegionTable::parse(&t1, &t2, file_len, log)?;
        // The region lies inside the file (checked), so this is bounded by its size.
        let md = view.read_vec(regions.metadata.offset, regions.metadata.length as usize)?;
        let meta = Metadata::parse(&md, regions.metadata)?;
        let geometry = Geometry::new(&meta);
        if geometry.bat_entries.saturating_mul(8) > regions.bat.length {
            return Err(Error::corrupt(format!(
                "BAT region of {} bytes cannot hold the {} entries a {}-byte disk of {}-byte blocks needs",
                regions.bat.length, geometry.bat_entries, meta.virtual_size, meta.block_size
            ))
            .at(REGION_TABLE1_OFFSET));
        }
        let raw = view.read_vec(regions.bat.offset, (geometry.bat_entries * 8) as usize)?;
        let entries: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        let mut taken: Vec<Region> = vec![regions.bat, regions.metadata];
        taken.extend(log);
        taken.extend(regions.unknown.iter().map(|(_, r)| *r));
        let bat =
            BlockAllocationTable::new(geometry, entries, view.len(), &taken, regions.bat.offset)?;
        let backing = meta.parent.as_ref().map(|p| Backing {
            names: p.parent_names().into_iter().map(PathBuf::from).collect(),
            format: Some("vhdx".into()),
            link: meta.parent_linkage.map(|g| LinkId {
                kind: LINK_KIND,
                value: g.braced(),
            }),
        });
        Ok(VhdxImage {
            view,
            path,
            header,
            regions,
            meta,
            bat,
            creator: creator(&ident),
            backing,
        })
    }

    /// Fixed, dynamic or differencing.
    pub fn subformat(&self) -> Subformat {
        if self.meta.has_parent {
            Subformat::Differencing
        } else if self.meta.leave_blocks_allocated {
            Subformat::Fixed
        } else {
            Subformat::Dynamic
        }
    }

    /// The validated metadata items.
    pub fn metadata_items(&self) -> &Metadata {
        &self.meta
    }

    /// The current header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The header's DataWriteGuid: what a differencing child records as parent_linkage.
    pub fn data_write_guid(&self) -> Guid {
        self.header.raw.data_write_guid
    }

    /// The block allocation table.
    pub fn bat(&self) -> &BlockAllocationTable {
        &self.bat
    }

    /// The region table.
    pub fn regions(&self) -> &RegionTable {
        &self.regions
    }

    /// The file's bytes, log replayed.
    pub fn view(&self) -> &FileView {
        &self.view
    }

    /// The creator string of the file type identifier.
    pub fn creator(&self) -> &str {
        &self.creator
    }

    /// Runs `(start, end, present)` of sectors of partially present block `block` (payload at
    /// `_payload`, chunk bitmap at `bitmap`) over bytes `[from, to)` of the block.
    fn sector_runs(
        &self,
        block: u64,
        bitmap: u64,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, u64, bool)>> {
        let ss = self.bat.geometry.sector_size;
        let (bits_at, _) = self.bat.bitmap_bytes(block, bitmap);
        let first = from / ss;
        let last = (to - 1) / ss;
        let bytes = self
            .view
            .read_vec(bits_at + first / 8, (last / 8 - first / 8 + 1) as usize)?;
        let mut runs: Vec<(u64, u64, bool)> = Vec::new();
        for s in first..=last {
            let bit = s - (first / 8) * 8;
            let present = bytes[(bit / 8) as usize] >> (bit % 8) & 1 == 1;
            let (a, b) = ((s * ss).max(from), ((s + 1) * ss).min(to));
            match runs.last_mut() {
                Some(r) if r.2 == present && r.1 == a => r.1 = b,
                _ => runs.push((a, b, present)),
            }
        }
        Ok(runs)
    }

    /// Call `f(block, state, from, to)` for each payload block piece of `[offset, end)`, with
    /// `from`/`to` inside the block.
    fn for_blocks(
        &self,
        offset: u64,
        end: u64,
        mut f: impl FnMut(u64, BlockState, u64, u64) -> Result<()>,
    ) -> Result<()> {
        let bs = self.bat.geometry.block_size;
        let mut pos = offset;
        while pos < end {
            let block = pos / bs;
            let start = block * bs;
            let stop = (start + bs).min(end);
            f(block, self.bat.state(block), pos - start, stop - start)?;
            pos = stop;
        }
        Ok(())
    }
}

impl DiskImage for VhdxImage {
    fn size(&self) -> u64 {
        self.meta.virtual_size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.size(), offset, buf.len() as u64).map_err(|e| e.with_path(&self.path))?;
        let end = offset + buf.len() as u64;
        self.for_blocks(offset, end, |block, state, from, to| {
            let at = (block * self.bat.geometry.block_size + from - offset) as usize;
            let dst = &mut buf[at..at + (to - from) as usize];
            match state {
                BlockState::Full(file) => self.view.read_at(dst, file + from),
                BlockState::Partial(file, bitmap) => {
                    for (a, b, present) in self.sector_runs(block, bitmap, from, to)? {
                        let d = &mut dst[(a - from) as usize..(b - from) as usize];
                        if present {
                            self.view.read_at(d, file + a)?;
                        } else {
                            d.fill(0);
                        }
                    }
                    Ok(())
                }
                BlockState::Zero | BlockState::NotPresent => {
                    dst.fill(0);
                    Ok(())
                }
            }
        })
        .map_err(|e| e.with_path(&self.path))
    }

    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        check_range(self.size(), offset, length).map_err(|e| e.with_path(&self.path))?;
        let mut map = Vec::new();
        let bs = self.bat.geometry.block_size;
        let push = |map: &mut Vec<Extent>, start: u64, len: u64, allocation| {
            coalesce(
                map,
                Extent {
                    start,
                    length: len,
                    allocation,
                    depth: 0,
                },
            )
        };
        // Fully present blocks that follow each other in the disk and in the file are asked
        // about together: holes in them (zeros never written) read as zero.
        let mut run: Option<(u64, u64, u64)> = None; // (virtual start, file start, length)
        let flush = |map: &mut Vec<Extent>, run: &mut Option<(u64, u64, u64)>| {
            if let Some((v, f, len)) = run.take() {
                let mut pos = v;
                for (d, l) in self.view.data_ranges(f, f + len) {
                    let at = v + (d - f);
                    push(map, pos, at - pos, Allocation::Zero);
                    push(map, at, l, Allocation::Data);
                    pos = at + l;
                }
                push(map, pos, v + len - pos, Allocation::Zero);
            }
        };
        self.for_blocks(offset, offset + length, |block, state, from, to| {
            let base = block * bs;
            if let BlockState::Full(file) = state {
                match &mut run {
                    Some((v, f, len)) if *v + *len == base + from && *f + *len == file + from => {
                        *len += to - from
                    }
                    _ => {
                        flush(&mut map, &mut run);
                        run = Some((base + from, file + from, to - from));
                    }
                }
                return Ok(());
            }
            flush(&mut map, &mut run);
            match state {
                BlockState::Full(_) => {}
                BlockState::Zero => push(&mut map, base + from, to - from, Allocation::Zero),
                BlockState::NotPresent => {
                    push(&mut map, base + from, to - from, Allocation::Unallocated)
                }
                BlockState::Partial(_, bitmap) => {
                    for (a, b, present) in self.sector_runs(block, bitmap, from, to)? {
                        let kind = if present {
                            Allocation::Data
                        } else {
                            Allocation::Unallocated
                        };
                        push(&mut map, base + a, b - a, kind);
                    }
                }
            }
            Ok(())
        })
        .map_err(|e| e.with_path(&self.path))?;
        flush(&mut map, &mut run);
        Ok(map)
    }

    fn format_name(&self) -> &'static str {
        "vhdx"
    }

    fn mapped(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let bs = self.bat.geometry.block_size;
        let end = offset.checked_add(len)?;
        if len == 0 || end > self.size() || offset / bs != (end - 1) / bs {
            return None;
        }
        match self.bat.state(offset / bs) {
            BlockState::Full(file) => self.view.slice(file + offset % bs, len),
            _ => None,
        }
    }

    fn advise(&self, offset: u64, len: u64, advice: Advice) {
        if advice == Advice::Paced {
            self.view.bytes().advise(0, self.view.bytes().len(), advice);
            return;
        }
        let end = offset.saturating_add(len).min(self.size());
        let _ = self.for_blocks(offset.min(end), end, |_, state, from, to| {
            if let BlockState::Full(file) | BlockState::Partial(file, _) = state {
                self.view.bytes().advise(file + from, to - from, advice);
            }
            Ok(())
        });
    }

    fn files(&self) -> Vec<FileId> {
        self.view.bytes().id().into_iter().collect()
    }
}
