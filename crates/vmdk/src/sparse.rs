//! One hosted sparse extent: header, grain directory, grain tables and grains.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use byteorder::{ByteOrder, LittleEndian as LE};
use flate2::{Decompress, FlushDecompress, Status};
use vdisk_core::{Error, Result, SECTOR};

use crate::findings::Problem;
use crate::header::{RawSparseHeader, SparseHeader, GD_AT_END};
use crate::marker::{Marker, MarkerType};
use vdisk_io::Bytes;

/// Directory slot whose table lies outside the file (and has no usable redundant copy).
const BAD_TABLE: u32 = u32::MAX;
/// Bytes at the end of a VMware streamOptimized file: footer marker, footer, end-of-stream.
const FOOTER_TAIL: u64 = 3 * SECTOR;
/// Grain tables of a file read by range kept in memory at most (2 KiB each for 512-entry
/// tables: 64 MiB); past this the cache starts over.
const MAX_CACHED_TABLES: usize = 32 << 10;

/// What a grain table entry says about one grain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrainEntry {
    /// Not allocated: zero, or the parent's data in a delta link.
    Unallocated,
    /// A zeroed grain (entry 1 with the zeroed-grain flag): reads as zero, masks the parent.
    Zero,
    /// Grain data at this byte offset of the file (for compressed extents: the grain marker,
    /// or the deflate stream when there are no markers).
    Data(u64),
    /// An entry that points outside the file or into its header: raw entry value.
    Invalid(u32),
    /// The grain's table itself lies outside the file.
    BadTable,
}

/// A run of the extent as the read path sees it.
#[derive(Debug)]
pub(crate) enum Run {
    /// Stored bytes at this offset of the file (bytes past the end of a cut-off file read
    /// as zero).
    Stored(u64),
    /// A compressed grain: (grain index, offset of the run inside the grain).
    Compressed(u64, u64),
    /// Reads as zero, masking any parent.
    Zero,
    /// Not stored here.
    Unallocated,
}

/// A hosted sparse extent (monolithicSparse, a twoGbMaxExtentSparse piece, streamOptimized).
#[derive(Debug)]
pub struct SparseExtent {
    bytes: Bytes,
    header: SparseHeader,
    /// Sector of the grain directory in use (resolved through the footer).
    gd_offset: u64,
    /// Sector of each grain table, 0 for none, [`BAD_TABLE`] for one outside the file.
    tables: Vec<u32>,
    /// The other directory's table for each slot, when it differs and is usable: entries
    /// that are damaged in one copy are read from the other.
    alternates: Vec<u32>,
    /// Grains may not start before this byte (the header and the declared metadata).
    data_start: u64,
    /// Problems met while opening that did not stop the open (for `check`).
    pub(crate) open_notes: Vec<Problem>,
    /// Unique among the extents of this process: the key of the per-thread inflated grain.
    id: u64,
    /// Tables read so far, by sector, when the file is read by range (a mapped file is read
    /// in place).
    ranged_tables: Mutex<HashMap<u32, Arc<Vec<u32>>>>,
    /// The file's data ranges in a window of it, `(start, end, ranges)`: grain tables that lie
    /// in a hole read as all zero, so they are answered as unallocated without touching them
    /// (writers that reserve every table up front, qemu-img and ours, leave the empty ones as
    /// holes: 256 MiB of them for a 4 TiB disk).
    hole_window: Mutex<Option<HoleWindow>>,
}

/// A window of a file, `(start, end)`, and the data ranges in it (offset, length).
type HoleWindow = (u64, u64, Vec<(u64, u64)>);

/// Bytes of a file's table area looked up at once for holes (a 64 MiB window covers 32,768
/// tables: 1 TiB of disk with 64 KiB grains).
const HOLE_WINDOW: u64 = 64 << 20;

/// Source of [`SparseExtent`] ids.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

impl SparseExtent {
    /// Parse and validate a sparse extent held in `bytes`.
    pub fn open(bytes: Bytes) -> Result<Self> {
        let path = bytes.path().to_path_buf();
        Self::open_inner(bytes).map_err(|e| e.with_path(path))
    }

    fn open_inner(bytes: Bytes) -> Result<Self> {
        let len = bytes.len();
        let header = match bytes.slice() {
            Some(data) => {
                let header = RawSparseHeader::parse(data)?.validate(len)?;
                if header.gd_offset == GD_AT_END {
                    read_footer(data, &header)?
                } else {
                    header
                }
            }
            None => {
                // Read by range: the header sector now, the directory below, tables and
                // grains when they are needed.
                let mut head = vec![0u8; (RawSparseHeader::SIZE as u64).min(len) as usize];
                bytes.read_at(&mut head, 0)?;
                let header = RawSparseHeader::parse(&head)?.validate(len)?;
                if header.gd_offset == GD_AT_END || header.flags.compressed() {
                    return Err(Error::unsupported(
                        "compressed (streamOptimized) extents are read from local files only",
                    ));
                }
                header
            }
        };
        let mut notes = Vec::new();
        let gtes = u64::from(header.gtes_per_gt);
        let n = header.gd_entries();
        // n <= MAX_GD_ENTRIES, so these products cannot overflow.
        let table_bytes = gtes * 4;
        // Directory entries whose table lies outside the file are marked unusable.
        let load = |sector: u64| -> Result<Option<Vec<u32>>> {
            if sector == 0 {
                return Ok(None);
            }
            let raw = match bytes.slice() {
                Some(data) => read_u32s(data, sector, n),
                None => read_u32s_ranged(&bytes, sector, n)?,
            };
            let Some(raw) = raw else { return Ok(None) };
            Ok(Some(
                raw.into_iter()
                    .map(|t| {
                        let ok = u64::from(t) * SECTOR + table_bytes <= len;
                        match t {
                            0 => 0,
                            _ if ok => t,
                            _ => BAD_TABLE,
                        }
                    })
                    .collect(),
            ))
        };
        let primary = load(header.gd_offset)?;
        let redundant = if header.flags.redundant_gd() && header.rgd_offset != GD_AT_END {
            load(header.rgd_offset)?
        } else {
            None
        };
        let (tables, alternates) = match (primary, redundant) {
            (Some(p), Some(r)) => {
                let mut tables = p;
                let mut alternates = vec![0u32; tables.len()];
                for (i, (t, &rt)) in tables.iter_mut().zip(&r).enumerate() {
                    let r_usable = rt != 0 && rt != BAD_TABLE;
                    if (*t == 0 || *t == BAD_TABLE) && r_usable {
                        notes.push(Problem::EntryFromRedundant {
                            entry: i as u64,
                            empty: *t == 0,
                        });
                        *t = rt;
                    } else if r_usable && rt != *t {
                        alternates[i] = rt;
                    }
                }
                (tables, alternates)
            }
            (Some(p), None) => {
                let n = p.len();
                (p, vec![0; n])
            }
            (None, Some(r)) => {
                notes.push(Problem::DirectoryFromRedundant);
                let n = r.len();
                (r, vec![0; n])
            }
            (None, None) => {
                return Err(Error::corrupt(format!(
                    "grain directory (sector {}, {n} entries) lies outside the file",
                    header.gd_offset
                )))
            }
        };
        let data_start = header.overhead.max(1) * SECTOR;
        let gd_offset = header.gd_offset;
        Ok(SparseExtent {
            bytes,
            header,
            gd_offset,
            tables,
            alternates,
            data_start,
            open_notes: notes,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            ranged_tables: Mutex::new(HashMap::new()),
            hole_window: Mutex::new(None),
        })
    }

    /// The header in use (for streamOptimized images with the directory at the end: the
    /// footer's copy).
    pub fn header(&self) -> &SparseHeader {
        &self.header
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Sector of the grain directory in use.
    pub fn gd_offset(&self) -> u64 {
        self.gd_offset
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.header.capacity * SECTOR
    }

    /// Grain size in bytes.
    pub fn grain_bytes(&self) -> u64 {
        self.header.grain_bytes()
    }

    /// Number of grain directory slots.
    pub fn directory_len(&self) -> usize {
        self.tables.len()
    }

    /// The sector of grain table `slot` (0 for none), or `None` if it lies outside the file.
    pub fn table_sector(&self, slot: usize) -> Option<u32> {
        match self.tables.get(slot) {
            Some(&BAD_TABLE) => None,
            Some(&t) => Some(t),
            None => Some(0),
        }
    }

    /// The embedded descriptor's bytes, if the header declares one.
    pub fn embedded_descriptor(&self) -> Option<&[u8]> {
        let h = &self.header;
        if h.descriptor_offset == 0 || h.descriptor_size == 0 {
            // An empty disk whose header names no descriptor: qemu reads the descriptor at
            // sector 1 all the same, and vdisk writes empty streamOptimized disks so (qemu
            // takes a zero capacity with a descriptor offset for an ESX descriptor file,
            // and refuses its createType).
            if h.capacity == 0 {
                let data = self.bytes.slice()?;
                let end = (h.overhead.min(128) * SECTOR).min(data.len() as u64) as usize;
                let text = data.get(SECTOR as usize..end)?;
                return crate::descriptor::looks_like_descriptor(text).then_some(text);
            }
            return None;
        }
        // Validated against the file length by RawSparseHeader::validate.
        let data = self.bytes.slice()?;
        let start = (h.descriptor_offset * SECTOR) as usize;
        let end = start + (h.descriptor_size * SECTOR) as usize;
        data.get(start..end)
    }

    fn entry_at(&self, table: u32, index: u64) -> Result<u32> {
        let Some(data) = self.bytes.slice() else {
            let t = self.ranged_table(table)?;
            return Ok(t.get(index as usize).copied().unwrap_or(0));
        };
        // Table bounds were checked at open: table * 512 + gtes * 4 <= file length.
        let pos = (u64::from(table) * SECTOR + index * 4) as usize;
        Ok(LE::read_u32(&data[pos..pos + 4]))
    }

    /// Whether the grain table at `sector` lies in a hole of the file (reads as all zero).
    fn table_in_hole(&self, sector: u32) -> bool {
        if !matches!(self.bytes, Bytes::File(_)) {
            return false;
        }
        let start = u64::from(sector) * SECTOR;
        let end = start + u64::from(self.header.gtes_per_gt) * 4;
        let mut w = self.hole_window.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = match &*w {
            Some((ws, we, _)) => start < *ws || end > *we,
            None => true,
        };
        if fresh {
            let ws = start;
            let we = (start + HOLE_WINDOW).min(self.bytes.len()).max(end);
            *w = Some((ws, we, self.bytes.data_ranges(ws, we)));
        }
        let Some((_, _, data)) = &*w else {
            return false;
        };
        // Sorted and disjoint: the first range ending after `start` decides.
        let i = data.partition_point(|&(s, l)| s + l <= start);
        data.get(i).is_none_or(|&(s, _)| s >= end)
    }

    /// Grain table at `sector` of a file read by range, read once and kept.
    fn ranged_table(&self, sector: u32) -> Result<Arc<Vec<u32>>> {
        let lock = || self.ranged_tables.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = lock().get(&sector) {
            return Ok(Arc::clone(t));
        }
        let n = u64::from(self.header.gtes_per_gt);
        let t = read_u32s_ranged(&self.bytes, u64::from(sector), n)?
            .ok_or_else(|| Error::corrupt("a grain table lies outside the file"))?;
        let t = Arc::new(t);
        let mut cache = lock();
        if cache.len() >= MAX_CACHED_TABLES {
            cache.clear();
        }
        cache.insert(sector, Arc::clone(&t));
        Ok(t)
    }

    fn classify(&self, raw: u32) -> GrainEntry {
        match raw {
            0 => GrainEntry::Unallocated,
            1 if self.header.flags.zeroed_grains() => GrainEntry::Zero,
            _ => {
                let off = u64::from(raw) * SECTOR;
                if off < self.data_start || off >= self.bytes.len() {
                    GrainEntry::Invalid(raw)
                } else {
                    GrainEntry::Data(off)
                }
            }
        }
    }

    /// Look up grain `grain` (index from the start of the extent). A table that cannot be
    /// read (a file read by range whose read failed) counts as [`GrainEntry::BadTable`].
    pub fn grain(&self, grain: u64) -> GrainEntry {
        self.try_grain(grain).unwrap_or(GrainEntry::BadTable)
    }

    /// [`SparseExtent::grain`], with the error of a table that could not be read.
    pub fn try_grain(&self, grain: u64) -> Result<GrainEntry> {
        let gtes = u64::from(self.header.gtes_per_gt);
        let slot = grain / gtes;
        let Some(&table) = self.tables.get(slot as usize) else {
            return Ok(GrainEntry::Unallocated);
        };
        Ok(match table {
            0 => GrainEntry::Unallocated,
            BAD_TABLE => GrainEntry::BadTable,
            t => {
                let first = self.classify(self.entry_at(t, grain % gtes)?);
                if let GrainEntry::Invalid(_) = first {
                    let alt = self.alternates[slot as usize];
                    if alt != 0 {
                        let second = self.classify(self.entry_at(alt, grain % gtes)?);
                        if !matches!(second, GrainEntry::Invalid(_)) {
                            return Ok(second);
                        }
                    }
                }
                first
            }
        })
    }

    /// The run of the extent at byte `offset` (inside the capacity), at most `max` bytes long.
    pub(crate) fn run_at(&self, offset: u64, max: u64) -> Result<(u64, Run)> {
        let gb = self.grain_bytes();
        let grain = offset / gb;
        let within = offset % gb;
        let gtes = u64::from(self.header.gtes_per_gt);
        let slot = (grain / gtes) as usize;
        let table = self.tables.get(slot).copied().unwrap_or(0);
        if table == 0 || (table != BAD_TABLE && self.table_in_hole(table)) {
            // A whole table's span is unallocated at once.
            let span_end = (grain / gtes + 1) * gtes * gb;
            return Ok(((span_end - offset).min(max), Run::Unallocated));
        }
        let len = (gb - within).min(max);
        let entry = self
            .try_grain(grain)
            .map_err(|e| e.with_path(self.bytes.path()))?;
        // Neighbours of the same kind in the same table join the run: unallocated or zeroed
        // grains, and stored grains that follow each other in the file. A map of a sparse
        // extent then costs a step per run, not per grain (a table of 512 unallocated
        // entries is one step), and reads of consecutive grains are one read. A neighbour
        // whose table cannot be read ends the run; the next call reports it.
        let table_end = ((slot as u64 + 1) * gtes).min(self.capacity().div_ceil(gb));
        let extend = |same: &dyn Fn(u64, GrainEntry) -> bool| -> u64 {
            let mut n = len;
            let mut g = grain + 1;
            while n < max && g < table_end && same(g, self.grain(g)) {
                n += gb.min(max - n);
                g += 1;
            }
            n
        };
        let run = match entry {
            GrainEntry::Unallocated => {
                let n = extend(&|_, e| e == GrainEntry::Unallocated);
                return Ok((n, Run::Unallocated));
            }
            GrainEntry::Zero => {
                let n = extend(&|_, e| e == GrainEntry::Zero);
                return Ok((n, Run::Zero));
            }
            GrainEntry::Data(_) if self.header.flags.compressed() => Run::Compressed(grain, within),
            GrainEntry::Data(pos) => {
                let n = extend(&|g, e| e == GrainEntry::Data(pos + (g - grain) * gb));
                return Ok((n, Run::Stored(pos + within)));
            }
            GrainEntry::Invalid(raw) => {
                return Err(Error::corrupt(format!(
                    "grain {grain} points to sector {raw}, {}",
                    if u64::from(raw) * SECTOR >= self.bytes.len() {
                        "past the end of the file"
                    } else {
                        "inside the header or metadata"
                    }
                ))
                .with_path(self.bytes.path()))
            }
            GrainEntry::BadTable => {
                return Err(
                    Error::corrupt(format!("grain table {slot} lies outside the file"))
                        .with_path(self.bytes.path()),
                )
            }
        };
        Ok((len, run))
    }

    /// Inflate compressed grain `grain` and copy `dst.len()` bytes from `within` into `dst`.
    pub(crate) fn read_compressed(&self, grain: u64, within: u64, dst: &mut [u8]) -> Result<()> {
        let gb = self.grain_bytes() as usize;
        let GrainEntry::Data(pos) = self.grain(grain) else {
            return Err(Error::corrupt(format!("grain {grain} is not stored")));
        };
        let whole = within == 0 && dst.len() == gb;
        if whole {
            return self.inflate(grain, pos, dst);
        }
        // The last grain inflated on this thread, keyed by (extent id, grain): reading a grain
        // in pieces inflates it once, not once per piece (a 128 MiB grain read in 1 MiB pieces
        // would be inflated 128 times).
        type Inflated = (Option<(u64, u64)>, Vec<u8>);
        thread_local! {
            static SCRATCH: RefCell<Inflated> = const { RefCell::new((None, Vec::new())) };
        }
        SCRATCH.with(|s| {
            let (key, s) = &mut *s.borrow_mut();
            if *key != Some((self.id, grain)) {
                *key = None;
                s.resize(gb, 0);
                self.inflate(grain, pos, s)?;
                *key = Some((self.id, grain));
            }
            let w = within as usize;
            dst.copy_from_slice(&s[w..w + dst.len()]);
            Ok(())
        })
    }

    /// Where grain `grain`'s compressed bytes are: (offset, length, marker lba if any).
    pub(crate) fn compressed_span(&self, pos: u64) -> Result<(usize, usize, Option<u64>)> {
        let data = self.bytes.slice().unwrap_or(&[]);
        let p = pos as usize; // pos < file length, checked by classify
        if self.header.flags.markers() {
            let m =
                Marker::parse(&data[p..]).map_err(|e| e.with_path(self.bytes.path()).at(pos))?;
            match m {
                Marker::Grain { lba, size } => {
                    let start = p + Marker::GRAIN_HEADER;
                    let size = size as usize;
                    if size > data.len() - start.min(data.len()) {
                        return Err(Error::corrupt(format!(
                            "compressed grain of {size} bytes runs past the end of the file"
                        ))
                        .with_path(self.bytes.path())
                        .at(pos));
                    }
                    Ok((start, size, Some(lba)))
                }
                Marker::Meta { .. } => Err(Error::corrupt(
                    "grain table points at a metadata marker instead of a grain",
                )
                .with_path(self.bytes.path())
                .at(pos)),
            }
        } else {
            Ok((p, data.len() - p, None))
        }
    }

    fn inflate(&self, grain: u64, pos: u64, out: &mut [u8]) -> Result<()> {
        let data = self.bytes.slice().unwrap_or(&[]);
        let (start, size, _) = self.compressed_span(pos)?;
        inflate_grain(&data[start..start + size], out).map_err(|what| {
            Error::corrupt(format!("compressed grain {grain} {what}"))
                .with_path(self.bytes.path())
                .at(pos)
        })
    }
}

/// Inflate one zlib-compressed grain into `out` (one grain long); a stream that ends early
/// leaves the rest zero. Fails, with what went wrong, on a bad stream, one that is cut short,
/// or one that inflates to more than `out` holds.
pub(crate) fn inflate_grain(input: &[u8], out: &mut [u8]) -> std::result::Result<(), String> {
    let mut z = Decompress::new(true);
    let status = z
        .decompress(input, out, FlushDecompress::Finish)
        .map_err(|e| format!("does not inflate: {e}"))?;
    let produced = z.total_out() as usize;
    if status != Status::StreamEnd {
        if produced < out.len() {
            return Err("is truncated".into());
        }
        let mut probe = [0u8; 1];
        let consumed = z.total_in() as usize;
        let more = z
            .decompress(&input[consumed..], &mut probe, FlushDecompress::Finish)
            .map(|_| z.total_out() as usize > produced)
            .unwrap_or(true);
        if more {
            return Err("inflates past the grain size".into());
        }
    }
    out[produced..].fill(0);
    Ok(())
}

/// `n` little-endian u32 entries at `sector` of `data` (a grain directory or table), or `None`
/// when they do not lie inside it: the one loader of directories and tables, for reading
/// and for `check`.
pub(crate) fn read_u32s(data: &[u8], sector: u64, n: u64) -> Option<Vec<u32>> {
    let start = sector.checked_mul(SECTOR)?;
    let end = start.checked_add(n.checked_mul(4)?)?;
    let raw = data.get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)?;
    Some(raw.chunks_exact(4).map(LE::read_u32).collect())
}

/// [`read_u32s`] for a file read by range: `None` when the entries do not lie inside it.
fn read_u32s_ranged(bytes: &Bytes, sector: u64, n: u64) -> Result<Option<Vec<u32>>> {
    let Some(start) = sector.checked_mul(SECTOR) else {
        return Ok(None);
    };
    let Some(len) = n.checked_mul(4) else {
        return Ok(None);
    };
    if start.checked_add(len).is_none_or(|end| end > bytes.len()) {
        return Ok(None);
    }
    // n <= MAX_GD_ENTRIES (checked by the header) and the range lies inside the file.
    let mut raw = vec![0u8; len as usize];
    bytes.read_at(&mut raw, start)?;
    Ok(Some(raw.chunks_exact(4).map(LE::read_u32).collect()))
}

/// Read the footer of a streamOptimized file whose header says the directory is at the end.
fn read_footer(data: &[u8], header: &SparseHeader) -> Result<SparseHeader> {
    let len = data.len() as u64;
    let missing = || {
        Error::corrupt(
            "streamOptimized image has no footer where its header says the grain directory is (truncated?)",
        )
    };
    if len < FOOTER_TAIL + SECTOR {
        return Err(missing());
    }
    let marker_at = (len - FOOTER_TAIL) as usize;
    match Marker::parse(&data[marker_at..marker_at + 512]) {
        Ok(Marker::Meta {
            kind: MarkerType::Footer,
            ..
        }) => {}
        _ => return Err(missing().at(marker_at as u64)),
    }
    let footer_at = marker_at + 512;
    let footer = RawSparseHeader::parse(&data[footer_at..footer_at + 512])
        .and_then(|raw| raw.validate(len))
        .map_err(|e| Error::corrupt(format!("footer: {}", e.message())).at(footer_at as u64))?;
    if footer.gd_offset == GD_AT_END {
        return Err(
            Error::corrupt("footer does not say where the grain directory is").at(footer_at as u64),
        );
    }
    if footer.capacity != header.capacity
        || footer.grain_size != header.grain_size
        || footer.gtes_per_gt != header.gtes_per_gt
    {
        return Err(
            Error::corrupt("footer disagrees with the header on capacity or grain layout")
                .at(footer_at as u64),
        );
    }
    Ok(footer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use crate::{HeaderFlags, VmdkLayer};
    use vdisk_core::{Allocation, DiskImage, ErrorKind};
    use vdisk_io::MemStore;

    /// `file` opened as a bare sparse extent (no descriptor), through the whole read path.
    fn image(file: SparseFile) -> vdisk_core::Result<VmdkLayer> {
        let mut store = MemStore::new();
        store.insert("disk.vmdk", file.finish());
        open_layer(&store, "disk.vmdk".as_ref())
    }

    fn read_all(img: &VmdkLayer) -> Vec<u8> {
        let mut buf = vec![0u8; img.size() as usize];
        img.read_at(&mut buf, 0).unwrap();
        buf
    }

    fn read_grain(img: &VmdkLayer, g: usize) -> vdisk_core::Result<Vec<u8>> {
        let mut buf = vec![0u8; G];
        img.read_at(&mut buf, (g * G) as u64).map(|()| buf)
    }

    #[test]
    fn unallocated_zeroed_and_data_entries_read_right() {
        let ext = SparseExtent::open(SparseFile::standard().into_bytes("disk.vmdk")).unwrap();
        assert_eq!(ext.capacity(), DISK as u64);
        assert_eq!(ext.grain_bytes(), G as u64);
        assert_eq!(ext.directory_len(), 2);
        assert_eq!(ext.gd_offset(), GD);
        assert_eq!(ext.grain(0), GrainEntry::Data(8 * S as u64));
        assert_eq!(ext.grain(1), GrainEntry::Unallocated);
        assert_eq!(ext.grain(2), GrainEntry::Zero);
        assert_eq!(ext.grain(3), GrainEntry::Data(16 * S as u64));
        assert_eq!(ext.grain(4), GrainEntry::Data(24 * S as u64));
        assert_eq!(ext.grain(7), GrainEntry::Unallocated);
        assert!(ext.open_notes.is_empty(), "{:?}", ext.open_notes);

        let img = image(SparseFile::standard()).unwrap();
        assert_eq!(read_all(&img), standard_disk());
        // A read across grains of every kind, starting and ending inside grains.
        let mut buf = vec![0u8; 3 * G];
        img.read_at(&mut buf, (G / 2) as u64).unwrap();
        assert_eq!(buf, standard_disk()[G / 2..G / 2 + 3 * G]);
        let map: Vec<_> = img
            .allocation(0, DISK as u64)
            .unwrap()
            .iter()
            .map(|e| (e.start as usize / G, e.length as usize / G, e.allocation))
            .collect();
        assert_eq!(
            map,
            [
                (0, 1, Allocation::Data),
                (1, 1, Allocation::Unallocated),
                (2, 1, Allocation::Zero),
                (3, 2, Allocation::Data),
                (5, 3, Allocation::Unallocated),
            ]
        );
    }

    #[test]
    fn entry_1_without_the_zeroed_grain_flag_points_into_the_header() {
        let mut f = SparseFile::standard();
        f.header.flags = HeaderFlags(HeaderFlags::NEWLINE_TEST | HeaderFlags::REDUNDANT_GD);
        f.header.version = 1;
        let img = image(f).unwrap();
        let e = read_grain(&img, 2).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(e.message().contains("inside the header"), "{e}");
        // The other grains still read.
        assert_eq!(read_grain(&img, 0).unwrap(), vec![fill(0); G]);
        assert_eq!(read_grain(&img, 1).unwrap(), vec![0; G]);
    }

    #[test]
    fn grain_pointers_into_the_metadata_or_past_the_end_are_errors_on_read() {
        // Sector 5 is the primary table 0 itself; sector 7 is still metadata (overhead 8);
        // sector 32 is the file's end. Both copies of the table agree, so no fallback.
        for (sector, what) in [
            (5u32, "inside the header"),
            (7, "inside the header"),
            (32, "past the end"),
        ] {
            let mut f = SparseFile::standard();
            f.put(GT0, 3, sector);
            f.put(RGT0, 3, sector);
            let ext = SparseExtent::open(f.into_bytes("disk.vmdk")).unwrap();
            assert_eq!(ext.grain(3), GrainEntry::Invalid(sector));

            let mut f = SparseFile::standard();
            f.put(GT0, 3, sector);
            f.put(RGT0, 3, sector);
            let img = image(f).unwrap();
            let e = read_grain(&img, 3).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupt, "sector {sector}");
            assert!(e.message().contains(what), "sector {sector}: {e}");
            assert_eq!(read_grain(&img, 0).unwrap(), vec![fill(0); G]);
        }
        // The first sector after the metadata is the first one a grain may use.
        let mut f = SparseFile::standard();
        f.put(GT0, 1, OVERHEAD as u32);
        f.put(RGT0, 1, OVERHEAD as u32);
        let img = image(f).unwrap();
        assert_eq!(read_grain(&img, 1).unwrap(), vec![fill(0); G]);
    }

    #[test]
    fn a_table_past_the_end_fails_the_reads_of_its_grains_not_the_open() {
        // The file is 32 sectors long: a table at sector 32 or later lies outside it. Sector
        // 7 (inside, all zero) is the control. u32::MAX is also the reader's own marker for
        // a bad table.
        for sector in [7u32, 32, 1000, u32::MAX - 1, u32::MAX] {
            let mut f = SparseFile::standard();
            f.put(GD, 1, sector);
            f.put(RGD, 1, sector);
            let inside = sector == 7;
            let ext = SparseExtent::open(f.into_bytes("disk.vmdk")).unwrap();
            assert_eq!(ext.table_sector(1), (inside).then_some(sector));
            if !inside {
                assert_eq!(ext.grain(4), GrainEntry::BadTable);
            }

            let mut f = SparseFile::standard();
            f.put(GD, 1, sector);
            f.put(RGD, 1, sector);
            let img = image(f).unwrap();
            // Table 0's grains read as before.
            assert_eq!(
                read_all_range(&img, 0, 4 * G).unwrap(),
                standard_disk()[..4 * G]
            );
            if inside {
                // Sector 7 is all zero: every grain of table 1 unallocated.
                assert_eq!(read_grain(&img, 4).unwrap(), vec![0; G]);
            } else {
                let e = read_grain(&img, 5).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::Corrupt);
                assert!(e.message().contains("grain table 1 lies outside"), "{e}");
                assert!(img.allocation(4 * G as u64, G as u64).is_err());
            }
        }
    }

    fn read_all_range(img: &VmdkLayer, start: usize, len: usize) -> vdisk_core::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        img.read_at(&mut buf, start as u64).map(|()| buf)
    }

    #[test]
    fn the_redundant_directory_stands_in_for_an_empty_or_outside_primary_entry() {
        for (primary, empty) in [(0u32, true), (1000, false)] {
            let mut f = SparseFile::standard();
            f.put(GD, 1, primary);
            let ext = SparseExtent::open(f.into_bytes("disk.vmdk")).unwrap();
            assert_eq!(ext.table_sector(1), Some(RGT1 as u32));
            assert_eq!(
                ext.open_notes,
                [Problem::EntryFromRedundant { entry: 1, empty }]
            );

            let mut f = SparseFile::standard();
            f.put(GD, 1, primary);
            // Without the fallback, grain 4 would read as zero (or fail).
            assert_eq!(read_all(&image(f).unwrap()), standard_disk());
        }
    }

    #[test]
    fn a_damaged_grain_entry_is_read_from_the_redundant_table() {
        let mut f = SparseFile::standard();
        f.put(GT0, 3, 5000); // past the end in the primary table only
        let img = image(f).unwrap();
        assert_eq!(read_all(&img), standard_disk());
    }

    #[test]
    fn the_redundant_directory_is_used_when_the_primary_lies_outside_the_file() {
        let mut f = SparseFile::standard();
        f.header.gd_offset = 10_000;
        let ext = SparseExtent::open(f.into_bytes("disk.vmdk")).unwrap();
        assert_eq!(ext.open_notes, [Problem::DirectoryFromRedundant]);
        assert_eq!(ext.table_sector(0), Some(RGT0 as u32));

        let mut f = SparseFile::standard();
        f.header.gd_offset = 10_000;
        assert_eq!(read_all(&image(f).unwrap()), standard_disk());

        // Without the redundant flag the copy is not trusted: nothing to read.
        let mut f = SparseFile::standard();
        f.header.gd_offset = 10_000;
        f.header.flags = HeaderFlags(HeaderFlags::NEWLINE_TEST | HeaderFlags::ZEROED_GRAINS);
        let e = SparseExtent::open(f.into_bytes("disk.vmdk")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(e.message().contains("grain directory"), "{e}");
        assert_eq!(e.path(), Some(std::path::Path::new("disk.vmdk")));
    }

    #[test]
    fn a_primary_table_that_differs_from_its_copy_wins_where_it_is_valid() {
        // Both tables are usable and disagree on grain 1: the primary is what is read
        // (`check` reports the disagreement).
        let mut f = SparseFile::standard();
        f.put(RGT0, 1, 16);
        let img = image(f).unwrap();
        assert_eq!(read_grain(&img, 1).unwrap(), vec![0; G]);
    }

    #[test]
    fn a_file_cut_inside_a_grain_reads_zero_after_the_cut() {
        let mut bytes = SparseFile::standard().finish();
        bytes.truncate(24 * S + 100); // grain 4 keeps 100 bytes
        let mut store = MemStore::new();
        store.insert("disk.vmdk", bytes);
        let img = open_layer(&store, "disk.vmdk".as_ref()).unwrap();
        let g4 = read_grain(&img, 4).unwrap();
        assert_eq!(g4[..100], [fill(4); 100]);
        assert!(g4[100..].iter().all(|&b| b == 0));
    }
}
