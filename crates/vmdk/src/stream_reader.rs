//! Reading a streamOptimized image front to back from any `Read` (a pipe, standard input),
//! without seeking: the header, then markers one after another until the end of the stream.
//! Works for VMware's layout (tables after the grains, behind markers, then an end-of-stream
//! marker) and qemu-img's (tables before the grains, in the header area, and no markers
//! after the last grain).
//!
//! A stream that stops early is an error, never a disk with missing data: VMware's layout
//! must end with its end-of-stream marker, and qemu's must hold every grain its tables list.

use std::io::Read;

use byteorder::{ByteOrder, LittleEndian as LE};
use rayon::prelude::*;
use vdisk_core::{CopyOptions, CopyStats, Error, ImageSink, Result, SECTOR};

use crate::header::{RawSparseHeader, SparseHeader, GD_AT_END};
use crate::marker::{Marker, MarkerType};
use crate::sparse::inflate_grain;

/// Largest metadata payload skipped after a metadata marker, in sectors: a directory for the
/// largest disk qemu-img accepts (32 Mi entries) is 256 Ki sectors.
const MAX_META_SECTORS: u64 = 1 << 18;
/// Bytes of the header area read at once.
const AREA_CHUNK: usize = 64 << 10;
/// Grains inflated in parallel per step of [`StreamReader::copy_into`]...
const BATCH: usize = 256;
/// ...and at most this many bytes of them: a stream's grains may claim up to 128 MiB each.
const BATCH_BYTES: u64 = 64 << 20;

/// A streamOptimized image being read front to back.
pub struct StreamReader<R: Read> {
    input: R,
    header: SparseHeader,
    /// Bytes consumed so far.
    pos: u64,
    /// One past the last grain seen, in grains (grains must come in increasing order).
    next_grain: u64,
    /// Grains read so far.
    grains_seen: u64,
    /// Grains the tables in the header area list (qemu's layout), when they could be read.
    grains_listed: Option<u64>,
    done: bool,
}

/// What the header area of qemu's layout says: the grain directory as it streams past, then
/// the number of grains its tables list.
struct AreaTables {
    gd_start: u64,
    gd_end: u64,
    gd: Vec<u8>,
    /// Byte offsets of the tables after the directory, sorted (known once the directory is).
    tables: Option<Vec<u64>>,
    table_bytes: u64,
    /// Entries at or past this sector are grains (entries point at grain markers).
    first_grain_sector: u64,
    listed: u64,
}

impl AreaTables {
    /// Look at `chunk`, the bytes of the header area at `at`.
    fn feed(&mut self, chunk: &[u8], at: u64) {
        let end = at + chunk.len() as u64;
        if at < self.gd_end && end > self.gd_start {
            let s = self.gd_start.max(at);
            let e = self.gd_end.min(end);
            self.gd
                .extend_from_slice(&chunk[(s - at) as usize..(e - at) as usize]);
        }
        if self.tables.is_none() && end >= self.gd_end {
            let mut t: Vec<u64> = self
                .gd
                .chunks_exact(4)
                .map(LE::read_u32)
                .filter(|&s| s != 0)
                .map(|s| u64::from(s) * SECTOR)
                .filter(|&o| o >= self.gd_end)
                .collect();
            t.sort_unstable();
            self.tables = Some(t);
            self.gd = Vec::new();
        }
        let Some(tables) = &self.tables else { return };
        // Tables overlapping this chunk (table offsets are whole sectors, chunk edges are
        // multiples of 4 bytes: entries never straddle two chunks).
        let first = tables.partition_point(|&t| t + self.table_bytes <= at);
        for &t in &tables[first..] {
            if t >= end {
                break;
            }
            let s = t.max(at);
            let e = (t + self.table_bytes).min(end);
            self.listed += chunk[(s - at) as usize..(e - at) as usize]
                .chunks_exact(4)
                .filter(|c| u64::from(LE::read_u32(c)) >= self.first_grain_sector)
                .count() as u64;
        }
    }
}

impl<R: Read> StreamReader<R> {
    /// Read and check the header, and read through the header area to the first grain.
    pub fn new(mut input: R) -> Result<Self> {
        let mut head = [0u8; 512];
        read_exact(&mut input, &mut head, 0)?;
        // The length is unknown: fields are checked against the largest possible file.
        let header = RawSparseHeader::parse(&head)?.validate(u64::MAX)?;
        if !(header.flags.compressed() && header.flags.markers()) {
            return Err(Error::unsupported(
                "only streamOptimized images (compressed grains with markers) can be read from a stream",
            ));
        }
        let mut me = StreamReader {
            input,
            header,
            pos: 512,
            next_grain: 0,
            grains_seen: 0,
            grains_listed: None,
            done: false,
        };
        let start = header.overhead.max(1).saturating_mul(SECTOR);
        me.read_header_area(start)?;
        Ok(me)
    }

    /// Read up to byte `start` (the first grain); in qemu's layout, count the grains the
    /// tables there list.
    fn read_header_area(&mut self, start: u64) -> Result<()> {
        let h = &self.header;
        let gd_start = h.gd_offset.saturating_mul(SECTOR);
        let gd_end = gd_start.saturating_add(h.gd_entries().saturating_mul(4));
        let mut tables =
            (h.gd_offset != GD_AT_END && gd_start >= 512 && gd_end <= start).then(|| AreaTables {
                gd_start,
                gd_end,
                gd: Vec::new(),
                tables: None,
                table_bytes: u64::from(h.gtes_per_gt) * 4,
                first_grain_sector: h.overhead.max(1),
                listed: 0,
            });
        let mut buf = vec![0u8; AREA_CHUNK];
        while self.pos < start {
            let n = (start - self.pos).min(AREA_CHUNK as u64) as usize;
            read_exact(&mut self.input, &mut buf[..n], self.pos)?;
            if let Some(t) = &mut tables {
                t.feed(&buf[..n], self.pos);
            }
            self.pos += n as u64;
        }
        self.grains_listed = tables.and_then(|t| t.tables.is_some().then_some(t.listed));
        Ok(())
    }

    /// The header at the start of the stream.
    pub fn header(&self) -> &SparseHeader {
        &self.header
    }

    /// The disk's size in bytes.
    pub fn capacity(&self) -> u64 {
        self.header.capacity * SECTOR
    }

    fn skip(&mut self, mut n: u64) -> Result<()> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            read_exact(&mut self.input, &mut buf[..k], self.pos)?;
            self.pos += k as u64;
            n -= k as u64;
        }
        Ok(())
    }

    /// The input ended at a marker boundary: the end of a complete stream, or a cut one.
    fn end_of_input(&mut self) -> Result<()> {
        if self.header.gd_offset == GD_AT_END {
            return Err(
                Error::corrupt("stream ends before its end-of-stream marker (truncated?)")
                    .at(self.pos),
            );
        }
        if let Some(listed) = self.grains_listed {
            if self.grains_seen < listed {
                return Err(Error::corrupt(format!(
                    "stream ends after {} of the {listed} grains its grain tables list (truncated?)",
                    self.grains_seen
                ))
                .at(self.pos));
            }
        }
        self.done = true;
        Ok(())
    }

    /// The next compressed grain: (grain index, compressed bytes), or `None` at the end.
    fn next_compressed(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
        let gb = self.header.grain_bytes();
        loop {
            if self.done {
                return Ok(None);
            }
            let mut m = [0u8; 12];
            let got = read_some(&mut self.input, &mut m, self.pos)?;
            if got == 0 {
                self.end_of_input()?;
                return Ok(None);
            }
            if got < m.len() {
                return Err(Error::corrupt("stream ends inside a marker").at(self.pos));
            }
            let at = self.pos;
            self.pos += 12;
            let mut full = [0u8; 16];
            full[..12].copy_from_slice(&m);
            let grain_marker = m[8..12] != [0, 0, 0, 0];
            if !grain_marker {
                // A metadata marker: the type is in the rest of its sector.
                let mut rest = [0u8; 500];
                read_exact(&mut self.input, &mut rest, self.pos)?;
                self.pos += 500;
                full[12..].copy_from_slice(&rest[..4]);
            }
            match Marker::parse(&full)? {
                Marker::Grain { lba, size } => {
                    let size = u64::from(size);
                    // Incompressible data grows by a few bytes per 16 KiB; anything far larger
                    // is damage, not a grain.
                    if size > gb + gb / 8 + 1024 {
                        return Err(Error::corrupt(format!("compressed grain of {size} bytes is larger than a grain could compress to")).at(at));
                    }
                    if lba % self.header.grain_size != 0 || lba >= self.header.capacity {
                        return Err(Error::corrupt(format!("grain marker for sector {lba}, which does not start a grain of the disk")).at(at));
                    }
                    let grain = lba / self.header.grain_size;
                    if grain < self.next_grain {
                        return Err(Error::corrupt("grains are not in increasing order, so the image cannot be read as a stream").at(at));
                    }
                    self.next_grain = grain + 1;
                    self.grains_seen += 1;
                    let mut data = vec![0u8; size as usize];
                    read_exact(&mut self.input, &mut data, self.pos)?;
                    self.pos += size;
                    // Grains start on sector boundaries.
                    self.skip(self.pos.next_multiple_of(SECTOR) - self.pos)?;
                    return Ok(Some((grain, data)));
                }
                Marker::Meta { kind, value } => match kind {
                    MarkerType::EndOfStream => self.done = true,
                    // Tables, the directory, the footer, and metadata VMware's tools add (ovftool
                    // writes type 4, which VirtualBox calls "unspecified"): `value` sectors follow,
                    // skipped by their size.
                    MarkerType::GrainTable
                    | MarkerType::GrainDirectory
                    | MarkerType::Footer
                    | MarkerType::Unknown(_) => {
                        if value > MAX_META_SECTORS {
                            return Err(Error::corrupt(format!(
                                "metadata marker of type {} declares {value} sectors",
                                kind.code()
                            ))
                            .at(at));
                        }
                        self.skip(value * SECTOR)?;
                    }
                },
            }
        }
    }

    /// Up to `max` next grains, inflated in parallel: (byte offset on the disk, data), the last
    /// grain of the disk cut to the disk's size. Empty at the end of the stream; an error if the
    /// stream stops before its end.
    pub fn next_grains(&mut self, max: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut compressed = Vec::new();
        while compressed.len() < max {
            match self.next_compressed()? {
                Some(g) => compressed.push(g),
                None => break,
            }
        }
        let gb = self.header.grain_bytes();
        let capacity = self.capacity();
        compressed
            .into_par_iter()
            .map(|(grain, input)| {
                let mut out = vec![0u8; gb as usize];
                inflate_grain(&input, &mut out)
                    .map_err(|what| Error::corrupt(format!("compressed grain {grain} {what}")))?;
                let off = grain * gb;
                out.truncate((capacity - off).min(gb) as usize);
                Ok((off, out))
            })
            .collect()
    }

    /// Copy the whole stream into `sink` (an output of [`StreamReader::capacity`] bytes) and
    /// finish it. A stream that stops before its end fails, and the sink is dropped
    /// unfinished, so nothing is published.
    pub fn copy_into<'s>(
        mut self,
        mut sink: Box<dyn ImageSink + 's>,
        opts: &CopyOptions<'_>,
    ) -> Result<CopyStats> {
        let mut bytes_read = 0;
        let batch = usize::try_from(BATCH_BYTES / self.header.grain_bytes())
            .unwrap_or(BATCH)
            .clamp(1, BATCH);
        loop {
            let grains = self.next_grains(batch)?;
            if grains.is_empty() {
                break;
            }
            let read: u64 = grains.iter().map(|g| g.1.len() as u64).sum();
            if let Some(t) = opts.throttle {
                t.take(read);
            }
            if let Some(p) = opts.progress {
                p.read(read);
            }
            bytes_read += read;
            // A sink that takes single blocks gets each grain cut into its blocks (a stream's
            // grains may be larger than the output's).
            let bs = if sink.takes_runs() {
                usize::MAX
            } else {
                sink.block_size() as usize
            };
            let blocks: Vec<(u64, &[u8])> = grains
                .iter()
                .flat_map(|(o, d)| {
                    let piece = bs.min(d.len()).max(1);
                    d.chunks(piece)
                        .enumerate()
                        .map(move |(i, p)| (o + (i * piece) as u64, p))
                })
                .collect();
            sink.put(&blocks)?;
        }
        sink.finish()?;
        Ok(CopyStats {
            size: self.capacity(),
            bytes_read,
        })
    }
}

fn read_some(r: &mut impl Read, buf: &mut [u8], at: u64) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("cannot read the stream", e).at(at)),
        }
    }
    Ok(n)
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], at: u64) -> Result<()> {
    if read_some(r, buf, at)? < buf.len() {
        return Err(Error::corrupt("stream ends early (truncated?)").at(at));
    }
    Ok(())
}
