//! Writing VHDX files: dynamic (blocks appended as data comes), fixed (every block
//! allocated in place) and differencing (blocks over a parent, with sector bitmaps).
//!
//! Layout of a new file: the header section (1 MiB), an empty 1 MiB log, the BAT, a 1 MiB
//! metadata region, then the payload and sector bitmap blocks. The log is left empty (log
//! GUID zero): the file is written once, front to back, and published whole by
//! [`SparseWriter::commit`], so there is nothing to journal. Metadata, the BAT and the
//! headers are written last.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use vdisk_core::{is_zero, Error, ErrorKind, ImageSink, Result};
use vdisk_io::{CreateOptions, OutputPolicy, SparseWriter};

use crate::bat::{
    Geometry, BITMAP_BLOCK_SIZE, PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_PARTIALLY_PRESENT,
    PAYLOAD_BLOCK_ZERO, SB_BLOCK_PRESENT,
};
use crate::guid::Guid;
use crate::header::{
    RawHeader, RawRegionEntry, RawRegionTable, BAT_GUID, FILE_SIGNATURE, HEADER1_OFFSET,
    HEADER2_OFFSET, HEADER_SECTION, METADATA_GUID, MIB, REGION_TABLE1_OFFSET, REGION_TABLE2_OFFSET,
};
use crate::metadata::{Metadata, ParentLocator, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, VHDX_LOCATOR_TYPE};

/// The block size of new files unless told otherwise (qemu's for large disks).
pub const DEFAULT_BLOCK_SIZE: u64 = 32 * MIB;
/// Granularity of the data a sink is handed: the sector bitmap of a differencing disk
/// records what was given at this grain.
const SINK_BLOCK: u64 = 4096;
/// Where the (empty) log lies.
const LOG_OFFSET: u64 = HEADER_SECTION;
/// Its length.
const LOG_LENGTH: u64 = MIB;
/// Length of the metadata region.
const METADATA_LENGTH: u64 = MIB;

/// The parent of a differencing disk being written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentLink {
    /// The parent's DataWriteGuid.
    pub linkage: Guid,
    /// The parent's name relative to the new file's folder.
    pub relative_path: String,
}

/// How a VHDX file is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOptions {
    /// Payload block size.
    pub block_size: u64,
    /// Logical sector size (512 or 4096).
    pub sector_size: u32,
    /// Allocate every block (a fixed disk).
    pub fixed: bool,
    /// Write a differencing disk on this parent.
    pub parent: Option<ParentLink>,
    /// The DataWriteGuid to give the file (a new random one otherwise).
    pub data_write_guid: Option<Guid>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            block_size: DEFAULT_BLOCK_SIZE,
            sector_size: 512,
            fixed: false,
            parent: None,
            data_write_guid: None,
        }
    }
}

impl WriteOptions {
    /// The options `opts` asks for: subformat `dynamic` (default) or `fixed`, block size from
    /// `cluster_size`, DataWriteGuid from a `link_id` of the VHDX kind.
    pub fn from_create(opts: &CreateOptions) -> Result<WriteOptions> {
        let bad = |m: String| Error::new(ErrorKind::InvalidArgument, m);
        let fixed = match opts.subformat.as_deref() {
            None | Some("dynamic") => false,
            Some("fixed") => true,
            Some(s) => {
                return Err(bad(format!(
                    "VHDX has no subformat \"{s}\" (dynamic or fixed)"
                )))
            }
        };
        if opts.compress {
            return Err(bad("a VHDX image cannot be compressed".into()));
        }
        let block_size = opts.cluster_size.unwrap_or(DEFAULT_BLOCK_SIZE);
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) || !block_size.is_power_of_two()
        {
            return Err(bad(format!(
                "VHDX block size {block_size} is not a power of two from 1 MiB to 256 MiB"
            )));
        }
        let data_write_guid = match &opts.link_id {
            Some(l) if l.kind == crate::image::LINK_KIND => Some(
                Guid::parse(&l.value)
                    .ok_or_else(|| bad(format!("\"{}\" is not a GUID", l.value)))?,
            ),
            _ => None,
        };
        Ok(WriteOptions {
            block_size,
            sector_size: 512,
            fixed,
            parent: None,
            data_write_guid,
        })
    }
}

/// Where the structures of a new file go.
#[derive(Debug, Clone, Copy)]
struct Layout {
    bat: u64,
    bat_len: u64,
    metadata: u64,
    data: u64,
}

/// The payload block being received (blocks arrive in order, so one at a time).
#[derive(Debug, Clone, Copy)]
struct OpenBlock {
    block: u64,
    /// Where it was put, once some of it held data.
    file: Option<u64>,
    /// Bytes of it given so far.
    given: u64,
    /// Whether any given byte was non-zero.
    nonzero: bool,
}

/// A piece of a run that lies in one payload block.
struct Piece<'a> {
    block: u64,
    in_block: u64,
    data: &'a [u8],
    /// Byte ranges of `data` holding something other than zeros, in whole 4 KiB blocks (the
    /// rest is left as holes in the file).
    nonzero: Vec<(usize, usize)>,
}

/// The ranges of `data` (which starts 4 KiB-aligned in the file) whose 4 KiB blocks are not
/// all zero, joined: found in one pass, so the bytes are scanned once.
fn nonzero_runs(data: &[u8]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, block) in data.chunks(SINK_BLOCK as usize).enumerate() {
        if is_zero(block) {
            continue;
        }
        let (s, e) = (
            i * SINK_BLOCK as usize,
            i * SINK_BLOCK as usize + block.len(),
        );
        match runs.last_mut() {
            Some(r) if r.1 == s => r.1 = e,
            _ => runs.push((s, e)),
        }
    }
    runs
}

/// A VHDX being written: the sink `create` and `create_delta` return.
pub struct VhdxSink {
    w: SparseWriter,
    dst: PathBuf,
    g: Geometry,
    layout: Layout,
    opts: WriteOptions,
    /// BAT entries set so far, by index (memory grows with the blocks written, not the disk).
    bat: BTreeMap<u64, u64>,
    /// Where the next block goes.
    next_free: u64,
    open: Option<OpenBlock>,
    /// The sector bitmap of the chunk being received (differencing disks): chunk, bits, and
    /// whether a block of it is partially present.
    bitmap: Option<(u64, Vec<u8>, bool)>,
    /// End of the last byte given, to refuse blocks out of order.
    given_end: u64,
}

impl std::fmt::Debug for VhdxSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhdxSink")
            .field("dst", &self.dst)
            .field("geometry", &self.g)
            .finish()
    }
}

impl VhdxSink {
    /// Start writing a VHDX file of `size` bytes (rounded up to whole sectors) at `dst`.
    pub fn create(
        dst: &Path,
        size: u64,
        opts: &WriteOptions,
        policy: &OutputPolicy,
    ) -> Result<VhdxSink> {
        let ss = u64::from(opts.sector_size);
        if ss != 512 && ss != 4096 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("VHDX sector size {ss} (512 or 4096)"),
            )
            .with_path(dst));
        }
        let size = size.div_ceil(ss) * ss;
        vdisk_core::check_disk_size(size).map_err(|e| e.with_path(dst))?;
        let g = Geometry::of(size, opts.block_size, ss, opts.parent.is_some());
        let mut bat_len = g.bat_region_len();
        if g.data_blocks == 0 {
            // qemu counts the entries of an empty disk in 32 bits as 0 + (0 - 1) / chunk
            // ratio and refuses a BAT smaller than that: give it the room (a hole).
            let qemu_entries = u64::from(u32::MAX) / g.chunk_ratio;
            bat_len = (qemu_entries * 8).div_ceil(MIB) * MIB;
        }
        let layout = Layout {
            bat: LOG_OFFSET + LOG_LENGTH,
            bat_len,
            metadata: LOG_OFFSET + LOG_LENGTH + bat_len,
            data: LOG_OFFSET + LOG_LENGTH + bat_len + METADATA_LENGTH,
        };
        let initial = if opts.fixed {
            layout.data + g.data_blocks * g.block_size
        } else {
            layout.data
        };
        let w = SparseWriter::create(dst, initial, policy)?;
        Ok(VhdxSink {
            w,
            dst: dst.to_path_buf(),
            g,
            layout,
            opts: opts.clone(),
            bat: BTreeMap::new(),
            next_free: layout.data,
            open: None,
            bitmap: None,
            given_end: 0,
        })
    }

    /// Allocate `len` bytes at the end of the file.
    fn allocate(&mut self, len: u64) -> u64 {
        let at = self.next_free;
        self.next_free += len;
        at
    }

    /// Close the open block: record its BAT entry.
    fn close_block(&mut self) -> Result<()> {
        let Some(b) = self.open.take() else {
            return Ok(());
        };
        let index = self.g.payload_index(b.block);
        if self.opts.fixed {
            return Ok(());
        }
        if self.g.has_parent {
            let full = b.given >= self.g.block_len(b.block);
            let entry = if full && !b.nonzero {
                // Given whole and all zero: a ZERO block reads as zero and masks the parent.
                PAYLOAD_BLOCK_ZERO
            } else {
                let file = match b.file {
                    Some(f) => f,
                    None => self.allocate(self.g.block_size),
                };
                if full {
                    file | PAYLOAD_BLOCK_FULLY_PRESENT
                } else {
                    if let Some(bm) = &mut self.bitmap {
                        bm.2 = true;
                    }
                    file | PAYLOAD_BLOCK_PARTIALLY_PRESENT
                }
            };
            self.bat.insert(index, entry);
        } else if let Some(file) = b.file {
            self.bat.insert(index, file | PAYLOAD_BLOCK_FULLY_PRESENT);
        }
        Ok(())
    }

    /// Write out the sector bitmap of the chunk being received, if a block of it needs it.
    fn close_chunk(&mut self) -> Result<()> {
        let Some((chunk, bits, needed)) = self.bitmap.take() else {
            return Ok(());
        };
        if needed {
            let at = self.allocate(BITMAP_BLOCK_SIZE);
            self.w.write_at(&bits, at)?;
            self.bat
                .insert(self.g.bitmap_index(chunk), at | SB_BLOCK_PRESENT);
        }
        // Keep the buffer for the next chunk.
        let mut bits = bits;
        bits.fill(0);
        self.bitmap = Some((u64::MAX, bits, false));
        Ok(())
    }

    /// Mark `len` bytes at virtual offset `offset` as given in the chunk's sector bitmap.
    fn mark(&mut self, offset: u64, len: u64) -> Result<()> {
        let ss = self.g.sector_size;
        let sectors_per_chunk = self.g.chunk_ratio * (self.g.block_size / ss);
        let chunk = offset / ss / sectors_per_chunk;
        if self.bitmap.as_ref().is_none_or(|b| b.0 != chunk) {
            let reuse = self.bitmap.as_ref().is_some_and(|b| b.0 == u64::MAX);
            if !reuse {
                self.close_chunk()?;
            }
            match &mut self.bitmap {
                Some(b) if b.0 == u64::MAX => b.0 = chunk,
                _ => self.bitmap = Some((chunk, vec![0u8; BITMAP_BLOCK_SIZE as usize], false)),
            }
        }
        let bits = &mut self.bitmap.as_mut().expect("set above").1;
        let first = offset / ss - chunk * sectors_per_chunk;
        let last = (offset + len).div_ceil(ss) - chunk * sectors_per_chunk;
        let mut s = first;
        while s < last {
            if s.is_multiple_of(8) && last - s >= 8 {
                bits[(s / 8) as usize] = 0xff;
                s += 8;
            } else {
                bits[(s / 8) as usize] |= 1 << (s % 8);
                s += 1;
            }
        }
        Ok(())
    }

    /// The BAT entry at `index` in the finished file.
    fn entry(&self, index: u64) -> u64 {
        if self.opts.fixed {
            let cr = self.g.chunk_ratio;
            if index % (cr + 1) == cr {
                return 0;
            }
            let block = index - index / (cr + 1);
            return (self.layout.data + block * self.g.block_size) | PAYLOAD_BLOCK_FULLY_PRESENT;
        }
        self.bat.get(&index).copied().unwrap_or(0)
    }

    fn write_metadata(&self) -> Result<()> {
        let l = self.layout;
        // The BAT, a mebibyte at a time; runs of zero entries stay holes.
        let per_piece = MIB / 8;
        let mut piece = vec![0u8; MIB as usize];
        let mut first = 0;
        while first < self.g.bat_entries {
            let n = per_piece.min(self.g.bat_entries - first);
            piece.fill(0);
            let mut any = false;
            if self.opts.fixed {
                for i in 0..n {
                    let e = self.entry(first + i);
                    piece[(8 * i) as usize..(8 * i + 8) as usize].copy_from_slice(&e.to_le_bytes());
                }
                any = true;
            } else {
                for (&i, &e) in self.bat.range(first..first + n) {
                    let at = (8 * (i - first)) as usize;
                    piece[at..at + 8].copy_from_slice(&e.to_le_bytes());
                    any = true;
                }
            }
            if any {
                self.w
                    .write_at(&piece[..(8 * n) as usize], l.bat + 8 * first)?;
            }
            first += n;
        }
        let parent = self.opts.parent.as_ref().map(|p| ParentLocator {
            locator_type: VHDX_LOCATOR_TYPE,
            entries: vec![
                ("parent_linkage".into(), p.linkage.braced()),
                ("relative_path".into(), p.relative_path.replace('/', "\\")),
            ],
        });
        let meta = Metadata {
            block_size: self.g.block_size,
            leave_blocks_allocated: self.opts.fixed,
            has_parent: self.g.has_parent,
            virtual_size: self.g.virtual_size,
            logical_sector_size: self.g.sector_size as u32,
            physical_sector_size: self.g.sector_size.max(512) as u32,
            disk_id: Guid::random(),
            parent,
            parent_linkage: None,
            entries: Vec::new(),
        };
        self.w.write_raw(&meta.build(), l.metadata)?;
        let regions = [
            RawRegionEntry {
                guid: BAT_GUID,
                file_offset: l.bat,
                length: l.bat_len as u32,
                required: 1,
            },
            RawRegionEntry {
                guid: METADATA_GUID,
                file_offset: l.metadata,
                length: METADATA_LENGTH as u32,
                required: 1,
            },
        ];
        let table = RawRegionTable::build(&regions);
        self.w.write_raw(&table, REGION_TABLE1_OFFSET)?;
        self.w.write_raw(&table, REGION_TABLE2_OFFSET)?;
        let mut header = RawHeader {
            signature: *b"head",
            checksum: 0,
            sequence_number: 1,
            file_write_guid: Guid::random(),
            data_write_guid: self.opts.data_write_guid.unwrap_or_else(Guid::random),
            log_guid: Guid::ZERO,
            log_version: 0,
            version: 1,
            log_length: LOG_LENGTH as u32,
            log_offset: LOG_OFFSET,
        };
        self.w.write_raw(&header.to_bytes(), HEADER1_OFFSET)?;
        header.sequence_number = 2;
        self.w.write_raw(&header.to_bytes(), HEADER2_OFFSET)?;
        let mut ident = FILE_SIGNATURE.to_vec();
        for u in concat!("vdisk ", env!("CARGO_PKG_VERSION")).encode_utf16() {
            ident.extend_from_slice(&u.to_le_bytes());
        }
        self.w.write_raw(&ident, 0)?;
        Ok(())
    }
}

impl ImageSink for VhdxSink {
    fn block_size(&self) -> u64 {
        SINK_BLOCK
    }

    fn takes_runs(&self) -> bool {
        true
    }

    fn put(&mut self, blocks: &[(u64, &[u8])]) -> Result<()> {
        let bs = self.g.block_size;
        let size = self.g.virtual_size;
        // Cut the runs at payload block edges.
        let mut pieces: Vec<Piece<'_>> = Vec::new();
        for &(offset, data) in blocks {
            let end = offset
                .checked_add(data.len() as u64)
                .filter(|&e| e <= size && offset >= self.given_end)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidArgument,
                        format!(
                            "{} bytes at {offset} are out of order or past the end of the {size}-byte disk",
                            data.len()
                        ),
                    )
                    .with_path(&self.dst)
                })?;
            self.given_end = end;
            let mut pos = offset;
            while pos < end {
                let block = pos / bs;
                let stop = ((block + 1) * bs).min(end);
                pieces.push(Piece {
                    block,
                    in_block: pos - block * bs,
                    data: &data[(pos - offset) as usize..(stop - offset) as usize],
                    nonzero: Vec::new(),
                });
                pos = stop;
            }
        }
        // Which parts of the pieces hold data: a scan of every byte, done in parallel.
        pieces
            .par_iter_mut()
            .with_min_len(1)
            .for_each(|p| p.nonzero = nonzero_runs(p.data));
        // Place the pieces (in order: blocks are appended as they come).
        let mut writes: Vec<(u64, &[u8])> = Vec::with_capacity(pieces.len());
        for p in &pieces {
            if self.open.is_none_or(|b| b.block != p.block) {
                self.close_block()?;
                self.open = Some(OpenBlock {
                    block: p.block,
                    file: None,
                    given: 0,
                    nonzero: false,
                });
            }
            if self.g.has_parent {
                self.mark(p.block * bs + p.in_block, p.data.len() as u64)?;
            }
            let mut b = self.open.expect("opened above");
            b.given += p.data.len() as u64;
            if !p.nonzero.is_empty() {
                b.nonzero = true;
                let file = if self.opts.fixed {
                    self.layout.data + p.block * bs
                } else if let Some(f) = b.file {
                    f
                } else {
                    let f = self.allocate(bs);
                    b.file = Some(f);
                    f
                };
                for &(s, e) in &p.nonzero {
                    writes.push((file + p.in_block + s as u64, &p.data[s..e]));
                }
            }
            self.open = Some(b);
        }
        let w = &self.w;
        writes.par_iter().try_for_each(|&(at, data)| -> Result<()> {
            // Zero blocks are already left out: write what is left as it is.
            w.write_raw(data, at)?;
            w.start_writeback(at, data.len() as u64);
            Ok(())
        })
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.close_block()?;
        if self.g.has_parent {
            self.close_chunk()?;
        }
        self.write_metadata()?;
        let len = if self.opts.fixed {
            self.layout.data + self.g.data_blocks * self.g.block_size
        } else {
            self.next_free
        };
        self.w
            .file()
            .set_len(len)
            .map_err(|e| Error::io("cannot size", e).with_path(&self.dst))?;
        self.w.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdisk_io::LinkId;

    #[test]
    fn options_from_create_options() {
        let w = WriteOptions::from_create(&CreateOptions::default()).unwrap();
        assert_eq!(w, WriteOptions::default());
        assert_eq!(w.block_size, 32 << 20);
        let fixed = CreateOptions {
            subformat: Some("fixed".into()),
            cluster_size: Some(1 << 20),
            ..Default::default()
        };
        let w = WriteOptions::from_create(&fixed).unwrap();
        assert!(w.fixed && w.block_size == 1 << 20);
        for bad in [
            CreateOptions {
                subformat: Some("streamOptimized".into()),
                ..Default::default()
            },
            CreateOptions {
                cluster_size: Some(512 << 20),
                ..Default::default()
            },
            CreateOptions {
                cluster_size: Some(3 << 20),
                ..Default::default()
            },
            CreateOptions {
                compress: true,
                ..Default::default()
            },
        ] {
            let e = WriteOptions::from_create(&bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        }
        let g = Guid::random();
        let keep = CreateOptions {
            link_id: Some(LinkId {
                kind: crate::image::LINK_KIND,
                value: g.braced(),
            }),
            ..Default::default()
        };
        assert_eq!(
            WriteOptions::from_create(&keep).unwrap().data_write_guid,
            Some(g)
        );
        // Another format's identity is not ours to keep.
        let other = CreateOptions {
            link_id: Some(LinkId {
                kind: "vmdk-cid",
                value: "a1b2c3d4".into(),
            }),
            ..Default::default()
        };
        assert_eq!(
            WriteOptions::from_create(&other).unwrap().data_write_guid,
            None
        );
    }
}
