//! Hosted sparse extents: monolithicSparse, the pieces of twoGbMaxExtentSparse, delta links.

use std::collections::BTreeMap;
use std::path::PathBuf;

use vdisk_core::{is_zero, Error, ImageSink, Result, SECTOR};
use vdisk_io::SparseWriter;

use super::{
    extent_line, new_descriptor, ExtentCursor, ExtentFile, Layout, OutputFiles, WriteOptions,
    GRAIN_SECTORS, SPLIT_SECTORS,
};
use crate::descriptor::{Descriptor, ExtentType};
use crate::header::{HeaderFlags, RawSparseHeader};

const GTES: u64 = 512;
/// Sectors of one grain table (512 entries of 4 bytes).
const GT_SECTORS: u64 = GTES * 4 / SECTOR;
/// Sectors reserved for an embedded descriptor, as qemu-img and VMware reserve.
const DESCRIPTOR_SECTORS: u64 = 20;
/// Writeback of appended grains is started in pieces of this many bytes.
const WRITEBACK: u64 = 8 << 20;

/// Writes one sparse extent in the layout qemu-img and VMware use: header, embedded
/// descriptor, redundant directory and tables, directory and tables (all tables reserved up
/// front, as holes until used), then grains appended in the order they come.
pub(crate) struct SparseExtentWriter {
    file: SparseWriter,
    header: RawSparseHeader,
    descriptor: Option<String>,
    gt_base: u64,
    rgt_base: u64,
    gd_entries: u64,
    next_sector: u64,
    /// Grain tables that hold entries, by directory slot (the rest stay zero).
    tables: BTreeMap<u64, Vec<u32>>,
    /// First sector of the grains written since writeback was last started.
    unflushed_sector: u64,
}

impl SparseExtentWriter {
    /// Start an extent of `capacity` sectors in `file`. `descriptor` is embedded when given;
    /// `zeroed_grains` allows [`SparseExtentWriter::put_zero`] (version 2 with flag 0x4).
    pub(crate) fn create(
        file: SparseWriter,
        capacity: u64,
        descriptor: Option<String>,
        zeroed_grains: bool,
    ) -> Result<Self> {
        let grains = capacity.div_ceil(GRAIN_SECTORS);
        let gd_entries = grains.div_ceil(GTES);
        let gd_sectors = (gd_entries * 4).div_ceil(SECTOR);
        let desc_sectors = match &descriptor {
            Some(d) => DESCRIPTOR_SECTORS.max((d.len() as u64).div_ceil(SECTOR)),
            None => 0,
        };
        let rgd = 1 + desc_sectors;
        let rgt_base = rgd + gd_sectors;
        let gd = rgt_base + gd_entries * GT_SECTORS;
        let gt_base = gd + gd_sectors;
        let overhead = (gt_base + gd_entries * GT_SECTORS).div_ceil(GRAIN_SECTORS) * GRAIN_SECTORS;
        if overhead > u64::from(u32::MAX) {
            return Err(Error::unsupported("disk too large for one sparse extent"));
        }
        let mut flags = HeaderFlags::NEWLINE_TEST | HeaderFlags::REDUNDANT_GD;
        if zeroed_grains {
            flags |= HeaderFlags::ZEROED_GRAINS;
        }
        let header = RawSparseHeader {
            version: if zeroed_grains { 2 } else { 1 },
            flags: HeaderFlags(flags),
            capacity,
            grain_size: GRAIN_SECTORS,
            // An empty disk's header names no descriptor (the text stays at sector 1, where
            // qemu reads it): qemu takes a zero-capacity sparse file that names one for an ESX
            // descriptor file and refuses its createType (see writer::stream).
            descriptor_offset: if descriptor.is_some() && capacity > 0 {
                1
            } else {
                0
            },
            descriptor_size: if capacity > 0 { desc_sectors } else { 0 },
            gtes_per_gt: GTES as u32,
            rgd_offset: rgd,
            gd_offset: gd,
            overhead,
            unclean_shutdown: false,
            newline_bytes: *b"\n \r\n",
            compress_algorithm: 0,
        };
        Ok(SparseExtentWriter {
            file,
            header,
            descriptor,
            gt_base,
            rgt_base,
            gd_entries,
            next_sector: overhead,
            tables: BTreeMap::new(),
            unflushed_sector: overhead,
        })
    }

    fn set_entry(&mut self, grain: u64, value: u32) -> Result<()> {
        if grain >= self.header.capacity.div_ceil(GRAIN_SECTORS) {
            return Err(Error::invalid(format!(
                "grain {grain} is past the end of the extent"
            )));
        }
        let table = self
            .tables
            .entry(grain / GTES)
            .or_insert_with(|| vec![0; GTES as usize]);
        table[(grain % GTES) as usize] = value;
        Ok(())
    }

    /// Store `data` (at most one grain; shorter is padded with zeros) as grain `grain`.
    pub(crate) fn put_grain(&mut self, grain: u64, data: &[u8]) -> Result<()> {
        let sector = self.next_sector;
        let end = sector + GRAIN_SECTORS;
        if end > u64::from(u32::MAX) {
            return Err(Error::unsupported(
                "sparse extent holds more than 2 TiB of grains (32-bit sector offsets)",
            ));
        }
        self.set_entry(grain, sector as u32)?;
        let gb = (GRAIN_SECTORS * SECTOR) as usize;
        // Written straight from the caller's bytes (often a slice of the source's map): a
        // grain shorter than a grain reads as zero after its end, as the file's tail does.
        // write_at leaves all-zero 4 KiB blocks inside grains as holes.
        self.file
            .write_at(&data[..data.len().min(gb)], sector * SECTOR)?;
        self.next_sector = end;
        if (self.next_sector - self.unflushed_sector) * SECTOR >= WRITEBACK {
            self.flush();
        }
        Ok(())
    }

    /// Record grain `grain` as a zeroed grain (reads as zero, masks the parent).
    pub(crate) fn put_zero(&mut self, grain: u64) -> Result<()> {
        if !self.header.flags.zeroed_grains() {
            return Err(Error::invalid(
                "this extent was not created with zeroed grains",
            ));
        }
        self.set_entry(grain, 1)
    }

    /// Start writing back the grains appended since the last call, without waiting: the
    /// final fsync then has little left to do, instead of flushing the whole image at once.
    fn flush(&mut self) {
        let at = self.unflushed_sector * SECTOR;
        let len = (self.next_sector - self.unflushed_sector) * SECTOR;
        if len > 0 {
            self.file.start_writeback(at, len);
        }
        self.unflushed_sector = self.next_sector;
    }

    /// Write tables, directories, descriptor and header; return the complete file, synced
    /// by the caller's commit.
    pub(crate) fn finish(mut self) -> Result<SparseWriter> {
        self.flush();
        let table_bytes = |t: &[u32]| t.iter().flat_map(|e| e.to_le_bytes()).collect::<Vec<u8>>();
        for (slot, table) in &self.tables {
            let bytes = table_bytes(table);
            self.file
                .write_raw(&bytes, (self.gt_base + slot * GT_SECTORS) * SECTOR)?;
            self.file
                .write_raw(&bytes, (self.rgt_base + slot * GT_SECTORS) * SECTOR)?;
        }
        // Every directory entry points at its reserved table, as qemu-img and VMware expect.
        let dir = |base: u64| {
            (0..self.gd_entries)
                .map(|i| (base + i * GT_SECTORS) as u32)
                .collect::<Vec<u32>>()
        };
        self.file.write_raw(
            &table_bytes(&dir(self.gt_base)),
            self.header.gd_offset * SECTOR,
        )?;
        self.file.write_raw(
            &table_bytes(&dir(self.rgt_base)),
            self.header.rgd_offset * SECTOR,
        )?;
        if let Some(d) = &self.descriptor {
            self.file.write_raw(d.as_bytes(), SECTOR)?;
        }
        self.file.write_raw(&self.header.to_bytes(), 0)?;
        self.file
            .file()
            .set_len(self.next_sector * SECTOR)
            .map_err(|e| Error::io("cannot size", e))?;
        Ok(self.file)
    }
}

/// Grains per extent of the split subformat.
const GRAINS_PER_SPLIT: u64 = SPLIT_SECTORS / GRAIN_SECTORS;

/// A sparse VMDK being written: one file with the descriptor embedded (monolithicSparse), or a
/// descriptor file and extents of at most 2 GiB (twoGbMaxExtentSparse), written one at a time
/// so only one is open however large the disk. Optionally a delta link (parent CID and hint,
/// zeroed grains allowed).
pub(crate) struct SparseImage {
    files: OutputFiles,
    spec: ExtentSpec,
    extents: ExtentCursor<SparseExtentWriter>,
}

impl SparseImage {
    /// Start writing a sparse image of `sectors` at the destination of `files`.
    pub(crate) fn create(
        mut files: OutputFiles,
        sectors: u64,
        layout: Layout,
        opts: &WriteOptions,
        parent: Option<(u32, PathBuf)>,
    ) -> Result<Self> {
        let zeroed = parent.is_some();
        if layout == Layout::Clustered {
            return Err(Error::invalid(
                "the clustered layout has a writer of its own",
            ));
        }
        let split = layout == Layout::Split;
        let (create_type, extents) = if split {
            let count = sectors.div_ceil(SPLIT_SECTORS).max(1);
            let suffixes: Vec<String> = (0..count).map(|i| format!("-s{:03}", i + 1)).collect();
            let extents = files
                .extent_names(&suffixes)
                .into_iter()
                .zip(0..count)
                .map(|(name, i)| {
                    let len = sectors.saturating_sub(i * SPLIT_SECTORS).min(SPLIT_SECTORS);
                    extent_line(len, ExtentType::Sparse, name)
                })
                .collect();
            ("twoGbMaxExtentSparse", extents)
        } else {
            let name = PathBuf::from(files.dst().file_name().unwrap_or_default());
            (
                "monolithicSparse",
                vec![extent_line(sectors, ExtentType::Sparse, name)],
            )
        };
        let descriptor = new_descriptor(create_type, extents, sectors, opts, parent);
        Ok(SparseImage {
            files,
            spec: ExtentSpec {
                descriptor,
                split,
                zeroed,
            },
            extents: ExtentCursor::new(),
        })
    }

    /// The extent writer for disk grain `grain` and the grain's index inside it.
    fn extent_for(&mut self, grain: u64) -> Result<(&mut SparseExtentWriter, u64)> {
        let (index, local) = if self.spec.split {
            (grain / GRAINS_PER_SPLIT, grain % GRAINS_PER_SPLIT)
        } else {
            (0, grain)
        };
        if index >= self.spec.descriptor.extents.len() as u64 {
            return Err(Error::invalid(format!(
                "grain {grain} is past the end of the image"
            )));
        }
        let spec = &self.spec;
        let ext = self
            .extents
            .get(index, &mut self.files, &|files, i| spec.open(files, i))?;
        Ok((ext, local))
    }

    /// Store `data` as disk grain `grain` (grains in increasing order).
    pub(crate) fn put_grain(&mut self, grain: u64, data: &[u8]) -> Result<()> {
        let (ext, local) = self.extent_for(grain)?;
        ext.put_grain(local, data)
    }

    /// Store disk grain `grain` as a zeroed grain (links only).
    pub(crate) fn put_zero(&mut self, grain: u64) -> Result<()> {
        let (ext, local) = self.extent_for(grain)?;
        ext.put_zero(local)
    }

    /// Finish every extent, write the descriptor (split images), rename everything into place.
    pub(crate) fn finish_image(self) -> Result<()> {
        let SparseImage {
            mut files,
            spec,
            mut extents,
        } = self;
        if !spec.split {
            // The one extent is the destination itself.
            let ext = match extents.take() {
                Some(ext) => ext,
                None => spec.open(&files, 0)?,
            };
            return files.commit(ext.finish()?);
        }
        let count = spec.descriptor.extents.len() as u64;
        extents.finish_before(count, &mut files, &|files, i| spec.open(files, i))?;
        let text = spec.descriptor.render();
        let main = files.open(None, text.len() as u64)?;
        main.write_raw(text.as_bytes(), 0)?;
        files.commit(main)
    }
}

/// What a [`SparseImage`]'s extents are made from: the descriptor, split or not, link or not.
struct ExtentSpec {
    descriptor: Descriptor,
    split: bool,
    /// A delta link: zeroed grains allowed.
    zeroed: bool,
}

impl ExtentSpec {
    /// Create extent `index`: a piece of a split image, or the one file with the descriptor
    /// embedded.
    fn open(&self, files: &OutputFiles, index: u64) -> Result<SparseExtentWriter> {
        let line = &self.descriptor.extents[index as usize];
        if self.split {
            let file = files.open(line.file.as_deref(), 0)?;
            SparseExtentWriter::create(file, line.sectors, None, self.zeroed)
        } else {
            let file = files.open(None, 0)?;
            SparseExtentWriter::create(
                file,
                line.sectors,
                Some(self.descriptor.render()),
                self.zeroed,
            )
        }
    }
}

impl ExtentFile for SparseExtentWriter {
    fn finish_file(self) -> Result<SparseWriter> {
        self.finish()
    }
}

impl ImageSink for SparseImage {
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
