//! The clustered layout of backup points: a descriptor and sparse extents cut along the data,
//! so that a point costs its data plus metadata in proportion to it, whatever the disk's size.
//!
//! - Where the point stores grains, a *data extent* (64 KiB grains) covers the cluster of
//!   them: extents start and end on 64 MiB boundaries, and a run of at least 1 GiB without
//!   grains ends one. Its grain tables are written right after their last grain (only tables
//!   that hold entries exist: the directory entries of the others are 0, which qemu and
//!   VMware read as "no table": unallocated), and the grain directory last, at the end. There
//!   is no redundant directory. The header, at the start, is written last.
//! - Between clusters, an *empty extent* with 1 GiB grains and no tables: its directory costs
//!   4 bytes per 512 GiB, so a gap of any size is a file of one or two sectors.
//!
//! Every file but the header sector is written front to back, so an extent can be streamed
//! (the header, with a few megabytes of grains, can be sent last).
//!
//! The descriptor's createType is twoGbMaxExtentSparse (a descriptor file naming hosted sparse
//! extents), although extents are larger than 2 GiB: qemu-img reads extents of any size, and
//! VMware's format takes the size of each extent from its line and header.

use std::path::PathBuf;

use vdisk_core::{is_zero, Error, ImageSink, Result, SECTOR};

use super::{extent_line, new_descriptor, WriteOptions, GRAIN_SECTORS};
use crate::descriptor::ExtentType;
use crate::header::{HeaderFlags, RawSparseHeader};
use vdisk_io::{ImageOutput, OutputFile};

const GTES: u64 = 512;
/// Data starts here in a data extent (4 KiB in: grains stay aligned to file-system blocks).
const DATA_START: u64 = 8;
/// Extents start and end on multiples of this many grains (64 MiB).
const ALIGN_GRAINS: u64 = 1024;
/// A run of at least this many grains without data ends a data extent (1 GiB).
const GAP_GRAINS: u64 = 16 * 1024;
/// Largest data extent, in grains (1 TiB: its file stays far below the 2 TiB that 32-bit
/// sector offsets can address).
const MAX_DATA_GRAINS: u64 = 16 << 20;
/// After this many data extents, gaps no longer end one (the files of a point stay few
/// whatever the pattern of its data).
const MAX_SPLITS: usize = 256;
/// Grain size of empty extents: 1 GiB, the largest qemu-img accepts (2^21 sectors).
const EMPTY_GRAIN_SECTORS: u64 = 1 << 21;
/// Writeback of appended grains is started in pieces of this many bytes.
const WRITEBACK: u64 = 8 << 20;

fn flags(zeroed: bool) -> HeaderFlags {
    let mut f = HeaderFlags::NEWLINE_TEST;
    if zeroed {
        f |= HeaderFlags::ZEROED_GRAINS;
    }
    HeaderFlags(f)
}

fn header(
    capacity: u64,
    grain: u64,
    zeroed: bool,
    gd_offset: u64,
    overhead: u64,
) -> RawSparseHeader {
    RawSparseHeader {
        version: if zeroed { 2 } else { 1 },
        flags: flags(zeroed),
        capacity,
        grain_size: grain,
        descriptor_offset: 0,
        descriptor_size: 0,
        gtes_per_gt: GTES as u32,
        rgd_offset: 0,
        gd_offset,
        overhead,
        unclean_shutdown: false,
        newline_bytes: *b"\n \r\n",
        compress_algorithm: 0,
    }
}

fn words(entries: &[u32]) -> Vec<u8> {
    let mut v: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    v.resize(
        (v.len() as u64).div_ceil(SECTOR) as usize * SECTOR as usize,
        0,
    );
    v
}

/// One data extent being written: grains appended, each table after its last grain.
struct DataExtent {
    file: Box<dyn OutputFile>,
    /// First disk grain of the extent.
    first: u64,
    /// Last disk grain stored.
    last: u64,
    zeroed: bool,
    next_sector: u64,
    /// Sector of each table written so far, by directory slot (0: none).
    gd: Vec<u32>,
    /// The table being filled: its slot and entries.
    table: Option<(u64, Vec<u32>)>,
    unflushed: u64,
}

impl DataExtent {
    fn new(file: Box<dyn OutputFile>, first: u64, zeroed: bool) -> Self {
        DataExtent {
            file,
            first,
            last: first,
            zeroed,
            next_sector: DATA_START,
            gd: Vec::new(),
            table: None,
            unflushed: DATA_START,
        }
    }

    fn append(&mut self, sectors: u64) -> Result<u64> {
        let at = self.next_sector;
        let end = at + sectors;
        if end > u64::from(u32::MAX) {
            return Err(Error::unsupported(
                "sparse extent holds more than 2 TiB (32-bit sector offsets)",
            ));
        }
        self.next_sector = end;
        Ok(at)
    }

    fn flush_table(&mut self) -> Result<()> {
        if let Some((slot, entries)) = self.table.take() {
            let at = self.append(GTES * 4 / SECTOR)?;
            self.file.write_raw(&words(&entries), at * SECTOR)?;
            if self.gd.len() <= slot as usize {
                self.gd.resize(slot as usize + 1, 0);
            }
            self.gd[slot as usize] = at as u32;
        }
        Ok(())
    }

    /// Set the entry of disk grain `g` (grains in increasing order).
    fn set(&mut self, g: u64, value: u32) -> Result<()> {
        let local = g - self.first;
        let slot = local / GTES;
        if self.table.as_ref().is_some_and(|t| t.0 != slot) {
            self.flush_table()?;
        }
        let t = self
            .table
            .get_or_insert_with(|| (slot, vec![0; GTES as usize]));
        t.1[(local % GTES) as usize] = value;
        self.last = g;
        Ok(())
    }

    fn put_grain(&mut self, g: u64, data: &[u8]) -> Result<()> {
        let gb = (GRAIN_SECTORS * SECTOR) as usize;
        let at = self.append(GRAIN_SECTORS)?;
        // A grain shorter than a grain reads as zero after its end, as the file's tail does.
        self.file.write(&data[..data.len().min(gb)], at * SECTOR)?;
        if (self.next_sector - self.unflushed) * SECTOR >= WRITEBACK {
            self.file.start_writeback(
                self.unflushed * SECTOR,
                (self.next_sector - self.unflushed) * SECTOR,
            );
            self.unflushed = self.next_sector;
        }
        self.set(g, at as u32)
    }

    fn put_zero(&mut self, g: u64) -> Result<()> {
        if !self.zeroed {
            return Err(Error::invalid("only a delta link stores zeroed grains"));
        }
        self.set(g, 1)
    }

    /// Write the last table, the directory and the header for a capacity of `sectors`.
    fn finish(mut self, sectors: u64) -> Result<Box<dyn OutputFile>> {
        self.flush_table()?;
        let entries = sectors.div_ceil(GRAIN_SECTORS).div_ceil(GTES);
        if self.gd.len() as u64 > entries {
            return Err(Error::invalid("a grain lies past the end of its extent"));
        }
        self.gd.resize(entries as usize, 0);
        let bytes = words(&self.gd);
        let gd_at = self.append(bytes.len() as u64 / SECTOR)?;
        self.file.write_raw(&bytes, gd_at * SECTOR)?;
        let h = header(sectors, GRAIN_SECTORS, self.zeroed, gd_at, DATA_START);
        self.file.write_raw(&h.to_bytes(), 0)?;
        self.file.set_len(self.next_sector * SECTOR)?;
        Ok(self.file)
    }
}

/// A sparse image in the clustered layout (see the module docs), written front to back.
pub(crate) struct ClusteredImage {
    files: Box<dyn ImageOutput>,
    /// Disk size in sectors.
    sectors: u64,
    zeroed: bool,
    opts: WriteOptions,
    parent: Option<(u32, PathBuf)>,
    /// Extents decided so far: (sectors, file name).
    lines: Vec<(u64, PathBuf)>,
    /// Grains before this one belong to decided extents.
    decided: u64,
    current: Option<DataExtent>,
    data_extents: usize,
}

impl ClusteredImage {
    pub(crate) fn create(
        files: Box<dyn ImageOutput>,
        sectors: u64,
        opts: &WriteOptions,
        parent: Option<(u32, PathBuf)>,
    ) -> Result<Self> {
        Ok(ClusteredImage {
            files,
            sectors,
            zeroed: parent.is_some(),
            opts: opts.clone(),
            parent,
            lines: Vec::new(),
            decided: 0,
            current: None,
            data_extents: 0,
        })
    }

    fn grains(&self) -> u64 {
        self.sectors.div_ceil(GRAIN_SECTORS)
    }

    /// The name of the next extent file; one that exists is refused, never replaced (the
    /// clustered layout writes new images only: backup points, under fresh names).
    fn next_name(&self) -> Result<PathBuf> {
        let stem = self
            .files
            .dst()
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy();
        let name = PathBuf::from(format!("{stem}-s{:03}.vmdk", self.lines.len() + 1));
        if self.files.exists(&name)? {
            return Err(Error::new(
                vdisk_core::ErrorKind::AlreadyExists,
                "already exists (an extent of the new image would replace it)",
            )
            .with_path(self.files.dst().with_file_name(&name)));
        }
        Ok(name)
    }

    /// Sectors of grains `[a, b)`, the last extent ending at the disk's end.
    fn span(&self, a: u64, b: u64) -> u64 {
        (b * GRAIN_SECTORS).min(self.sectors) - a * GRAIN_SECTORS
    }

    /// An empty extent over grains `[a, b)`.
    fn push_empty(&mut self, a: u64, b: u64) -> Result<()> {
        let sectors = self.span(a, b);
        let name = self.next_name()?;
        let mut file = self.files.create(Some(&name))?;
        let entries = sectors.div_ceil(EMPTY_GRAIN_SECTORS).div_ceil(GTES);
        let gd = words(&vec![0u32; entries as usize]);
        file.write_raw(&gd, SECTOR)?;
        let h = header(sectors, EMPTY_GRAIN_SECTORS, self.zeroed, 1, 1);
        file.write_raw(&h.to_bytes(), 0)?;
        self.files.keep(file.seal()?)?;
        self.lines.push((sectors, name));
        self.decided = b;
        Ok(())
    }

    fn close_current(&mut self) -> Result<()> {
        if let Some(cur) = self.current.take() {
            let limit = (cur.first + MAX_DATA_GRAINS).min(self.grains());
            let end = (cur.last + 1).next_multiple_of(ALIGN_GRAINS).min(limit);
            let sectors = self.span(cur.first, end);
            let name = self.next_name()?;
            let file = cur.finish(sectors)?;
            self.files.keep(file.seal()?)?;
            self.lines.push((sectors, name));
            self.decided = end;
        }
        Ok(())
    }

    /// The data extent that grain `g` (in increasing order) goes to.
    fn extent_for(&mut self, g: u64) -> Result<&mut DataExtent> {
        if g >= self.grains() {
            return Err(Error::invalid(format!(
                "grain {g} is past the end of the image"
            )));
        }
        if let Some(cur) = &self.current {
            let too_far = g >= cur.first + MAX_DATA_GRAINS;
            let gap = g - cur.last > GAP_GRAINS && self.data_extents < MAX_SPLITS;
            if too_far || gap {
                self.close_current()?;
            }
        }
        if self.current.is_none() {
            if g < self.decided {
                return Err(Error::invalid("grains must come in increasing order"));
            }
            let start = (g / ALIGN_GRAINS * ALIGN_GRAINS).max(self.decided);
            if start > self.decided {
                self.push_empty(self.decided, start)?;
            }
            let name = self.next_name()?;
            let file = self.files.create(Some(&name))?;
            self.current = Some(DataExtent::new(file, start, self.zeroed));
            self.data_extents += 1;
        }
        match &mut self.current {
            Some(cur) => Ok(cur),
            None => Err(Error::invalid("no extent open")),
        }
    }

    pub(crate) fn put_grain(&mut self, g: u64, data: &[u8]) -> Result<()> {
        self.extent_for(g)?.put_grain(g, data)
    }

    pub(crate) fn put_zero(&mut self, g: u64) -> Result<()> {
        self.extent_for(g)?.put_zero(g)
    }

    /// Close the last extents, write the descriptor and publish everything.
    pub(crate) fn finish_image(mut self) -> Result<()> {
        self.close_current()?;
        let total = self.grains();
        if self.decided < total || self.lines.is_empty() {
            self.push_empty(self.decided, total)?;
        }
        let extents = self
            .lines
            .iter()
            .map(|(sectors, name)| extent_line(*sectors, ExtentType::Sparse, name.clone()))
            .collect();
        let d = new_descriptor(
            "twoGbMaxExtentSparse",
            extents,
            self.sectors,
            &self.opts,
            self.parent.take(),
        );
        let text = d.render();
        let mut main = self.files.create(None)?;
        main.write_raw(text.as_bytes(), 0)?;
        self.files.commit(main.seal()?)
    }
}

impl ImageSink for ClusteredImage {
    fn block_size(&self) -> u64 {
        GRAIN_SECTORS * SECTOR
    }
    fn put(&mut self, blocks: &[(u64, &[u8])]) -> Result<()> {
        let gb = GRAIN_SECTORS * SECTOR;
        for &(off, data) in blocks {
            if !is_zero(data) {
                self.put_grain(off / gb, data)?;
            }
        }
        Ok(())
    }
    fn finish(self: Box<Self>) -> Result<()> {
        (*self).finish_image()
    }
}
