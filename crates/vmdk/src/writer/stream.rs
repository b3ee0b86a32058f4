//! streamOptimized the way VMware writes it: header version 3 with the directory at the end,
//! compressed grains behind grain markers, then GT and GD markers with their tables, a footer
//! marker and footer (the header again, with the real directory offset), and an end-of-stream
//! marker. Grains are compressed in parallel; the file is written strictly front to back.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use flate2::write::ZlibEncoder;
use flate2::Compression;
use rayon::prelude::*;
use vdisk_core::{is_zero, Error, ImageSink, Result, SECTOR};
use vdisk_io::SparseWriter;

use super::{extent_line, new_descriptor, OutputFiles, WriteOptions, GRAIN_SECTORS};
use crate::descriptor::ExtentType;
use crate::header::{HeaderFlags, RawSparseHeader, GD_AT_END};
use crate::marker::{Marker, MarkerType};

const GTES: u64 = 512;
/// Grains start at 64 KiB, after the header and the descriptor, as VMware writes them.
const OVERHEAD: u64 = 128;

pub(crate) struct StreamImage {
    files: OutputFiles,
    file: SparseWriter,
    header: RawSparseHeader,
    /// Bytes written so far (always a whole number of sectors).
    pos: u64,
    tables: BTreeMap<u64, Vec<u32>>,
    staging: Vec<u8>,
    last_grain: Option<u64>,
}

/// Compress one grain (padded to a whole grain, as VMware compresses the last one too).
///
/// Data that does not compress (already compressed or encrypted) is stored in deflate's
/// uncompressed blocks: searching it for matches would cost half the CPU of a typical disk
/// and gain nothing. A sample of the grain decides.
fn deflate(data: &[u8]) -> Vec<u8> {
    let gb = (GRAIN_SECTORS * SECTOR) as usize;
    let level = if incompressible(data) {
        Compression::none()
    } else {
        Compression::default()
    };
    let mut z = ZlibEncoder::new(Vec::with_capacity(gb / 2), level);
    // Writing into a Vec cannot fail.
    let _ = z.write_all(data);
    if data.len() < gb {
        let _ = z.write_all(&vec![0u8; gb - data.len()]);
    }
    z.finish().unwrap_or_default()
}

/// Whether a fast compression of the grain's first 4 KiB saves less than 3 %.
fn incompressible(data: &[u8]) -> bool {
    let sample = &data[..data.len().min(4096)];
    if sample.len() < 4096 {
        return false;
    }
    let mut z = ZlibEncoder::new(Vec::with_capacity(4200), Compression::fast());
    let _ = z.write_all(sample);
    let n = z.finish().map(|v| v.len()).unwrap_or(0);
    n * 100 > sample.len() * 97
}

fn pad_to_sector(v: &mut Vec<u8>) {
    let r = v.len() % SECTOR as usize;
    if r != 0 {
        v.resize(v.len() + SECTOR as usize - r, 0);
    }
}

fn meta_sector(kind: MarkerType, value: u64) -> Vec<u8> {
    let mut m = Marker::Meta { kind, value }.to_bytes();
    m.resize(SECTOR as usize, 0);
    m
}

impl StreamImage {
    pub(crate) fn create(files: OutputFiles, sectors: u64, opts: &WriteOptions) -> Result<Self> {
        let name = PathBuf::from(files.dst().file_name().unwrap_or_default());
        let d = new_descriptor(
            "streamOptimized",
            vec![extent_line(sectors, ExtentType::Sparse, name)],
            sectors,
            opts,
            None,
        );
        let text = d.render();
        let desc_sectors = (text.len() as u64).div_ceil(SECTOR);
        if 1 + desc_sectors > OVERHEAD {
            return Err(Error::invalid(
                "descriptor too large for a streamOptimized header area",
            ));
        }
        let header = RawSparseHeader {
            version: 3,
            flags: HeaderFlags(
                HeaderFlags::NEWLINE_TEST | HeaderFlags::COMPRESSED | HeaderFlags::MARKERS,
            ),
            capacity: sectors,
            grain_size: GRAIN_SECTORS,
            // qemu opens a zero-capacity sparse file that names a descriptor as an ESX
            // descriptor file, and refuses it ("Unsupported image type 'streamOptimized'",
            // even for the files qemu-img itself creates at size 0). An empty disk's header
            // names none; the text stays at sector 1, where qemu and vdisk find it.
            descriptor_offset: if sectors == 0 { 0 } else { 1 },
            descriptor_size: if sectors == 0 { 0 } else { desc_sectors },
            gtes_per_gt: GTES as u32,
            rgd_offset: 0,
            gd_offset: GD_AT_END,
            overhead: OVERHEAD,
            unclean_shutdown: false,
            newline_bytes: *b"\n \r\n",
            compress_algorithm: 1,
        };
        let file = files.open(None, 0)?;
        let mut head = header.to_bytes().to_vec();
        head.extend_from_slice(text.as_bytes());
        head.resize((OVERHEAD * SECTOR) as usize, 0);
        file.write_raw(&head, 0)?;
        Ok(StreamImage {
            files,
            file,
            header,
            pos: OVERHEAD * SECTOR,
            tables: BTreeMap::new(),
            staging: Vec::new(),
            last_grain: None,
        })
    }

    fn flush(&mut self) -> Result<()> {
        if !self.staging.is_empty() {
            self.file.write_raw(&self.staging, self.pos)?;
            self.file
                .start_writeback(self.pos, self.staging.len() as u64);
            self.pos += self.staging.len() as u64;
            self.staging.clear();
        }
        Ok(())
    }

    /// Append `bytes` (whole sectors) and return the sector they start at.
    fn append(&mut self, bytes: &[u8]) -> Result<u64> {
        let sector = (self.pos + self.staging.len() as u64) / SECTOR;
        self.staging.extend_from_slice(bytes);
        Ok(sector)
    }
}

impl ImageSink for StreamImage {
    fn block_size(&self) -> u64 {
        GRAIN_SECTORS * SECTOR
    }

    fn put(&mut self, blocks: &[(u64, &[u8])]) -> Result<()> {
        let compressed: Vec<Option<Vec<u8>>> = blocks
            .par_iter()
            .map(|&(_, data)| (!is_zero(data)).then(|| deflate(data)))
            .collect();
        for (&(off, _), comp) in blocks.iter().zip(compressed) {
            let Some(comp) = comp else { continue };
            let grain = off / SECTOR / GRAIN_SECTORS;
            if self.last_grain.is_some_and(|g| g >= grain) {
                return Err(Error::invalid(
                    "streamOptimized grains must come in increasing order",
                ));
            }
            self.last_grain = Some(grain);
            let sector = (self.pos + self.staging.len() as u64) / SECTOR;
            if sector > u64::from(u32::MAX) {
                return Err(Error::unsupported(
                    "stream larger than 2 TiB (32-bit sector offsets)",
                ));
            }
            self.tables
                .entry(grain / GTES)
                .or_insert_with(|| vec![0; GTES as usize])[(grain % GTES) as usize] = sector as u32;
            let size = u32::try_from(comp.len())
                .map_err(|_| Error::invalid("compressed grain too large"))?;
            self.staging.extend_from_slice(
                &Marker::Grain {
                    lba: grain * GRAIN_SECTORS,
                    size,
                }
                .to_bytes(),
            );
            self.staging.extend_from_slice(&comp);
            pad_to_sector(&mut self.staging);
        }
        if self.staging.len() >= 8 << 20 {
            self.flush()?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<()> {
        let mut me = *self;
        let gd_entries = me.header.capacity.div_ceil(GRAIN_SECTORS).div_ceil(GTES);
        let mut gd = vec![0u32; gd_entries as usize];
        let tables = std::mem::take(&mut me.tables);
        for (slot, table) in tables {
            me.append(&meta_sector(MarkerType::GrainTable, GTES * 4 / SECTOR))?;
            let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
            gd[slot as usize] = me.append(&bytes)? as u32;
        }
        let mut gd_bytes: Vec<u8> = gd.iter().flat_map(|e| e.to_le_bytes()).collect();
        pad_to_sector(&mut gd_bytes);
        me.append(&meta_sector(
            MarkerType::GrainDirectory,
            gd_bytes.len() as u64 / SECTOR,
        ))?;
        let gd_offset = me.append(&gd_bytes)?;
        me.append(&meta_sector(MarkerType::Footer, 1))?;
        let footer = RawSparseHeader {
            gd_offset,
            ..me.header
        };
        me.append(&footer.to_bytes())?;
        me.append(&meta_sector(MarkerType::EndOfStream, 0))?;
        me.flush()?;
        let file = me.file;
        me.files.commit(file)
    }
}
