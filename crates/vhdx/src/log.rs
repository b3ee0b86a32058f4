//! The log: finding the active sequence and replaying it in memory, as an overlay of 4 KiB
//! sectors over the file's bytes ([`FileView`]). The file itself is never written.

use std::collections::BTreeMap;

use byteorder::{ByteOrder, LittleEndian as LE};
use vdisk_core::{Error, Result};
use vdisk_io::Bytes;

use crate::crc32c::Crc32c;
use crate::guid::Guid;
use crate::header::{Header, HEADER_SECTION, MIB};

/// Every log structure is made of 4 KiB sectors.
pub const LOG_SECTOR: u64 = 4096;
/// Sectors read while searching a log, per sector of log, before giving up on it: a log of
/// valid-looking entries with bad checksums at every sector could otherwise cost time
/// quadratic in its size.
const SEARCH_BUDGET_PER_SECTOR: u64 = 64;

/// What one descriptor of a log entry asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Descriptor {
    /// Zero `length` bytes at `offset`.
    Zero { offset: u64, length: u64 },
    /// Write a 4 KiB sector at `offset`: the first 8 and last 4 bytes come from the
    /// descriptor, the rest from the entry's next data sector.
    Data {
        offset: u64,
        leading: [u8; 8],
        trailing: [u8; 4],
    },
}

/// A valid log entry (its header and descriptors; data sectors are read again on replay).
#[derive(Debug, Clone)]
struct Entry {
    /// Where it starts, from the start of the log.
    pos: u64,
    /// Its length in bytes.
    length: u64,
    /// The start of the oldest entry not yet applied, when this one was written.
    tail: u64,
    sequence: u64,
    flushed_file_offset: u64,
    last_file_offset: u64,
    descriptors: Vec<Descriptor>,
}

/// What one overlay range holds.
#[derive(Debug, Clone)]
enum Piece {
    Zero,
    Data(Box<[u8]>),
}

/// Sectors the log replays over the file: non-overlapping, 4 KiB-aligned ranges keyed by
/// their start, each zero or one 4 KiB data sector.
#[derive(Debug, Clone, Default)]
pub struct Overlay {
    pieces: BTreeMap<u64, (u64, Piece)>,
}

impl Overlay {
    /// Put `piece` over `[start, end)`, cutting the ranges it covers.
    fn put(&mut self, start: u64, end: u64, piece: Piece) {
        if start >= end {
            return;
        }
        // Ranges that start before `start` and reach into it: keep their head.
        let before: Vec<u64> = self
            .pieces
            .range(..start)
            .next_back()
            .filter(|(_, (e, _))| *e > start)
            .map(|(s, _)| *s)
            .into_iter()
            .collect();
        for s in before {
            // Data pieces are exactly one aligned sector, so only zero ranges get cut.
            if let Some((e, Piece::Zero)) = self.pieces.remove(&s) {
                self.pieces.insert(s, (start, Piece::Zero));
                if e > end {
                    self.pieces.insert(end, (e, Piece::Zero));
                }
            }
        }
        let inside: Vec<u64> = self.pieces.range(start..end).map(|(s, _)| *s).collect();
        for s in inside {
            if let Some((e, Piece::Zero)) = self.pieces.remove(&s) {
                if e > end {
                    self.pieces.insert(end, (e, Piece::Zero));
                }
            }
        }
        self.pieces.insert(start, (end, piece));
    }

    /// Apply the overlay to `buf`, which holds the file's bytes at `offset`.
    pub fn apply(&self, buf: &mut [u8], offset: u64) {
        let end = offset.saturating_add(buf.len() as u64);
        let first = self
            .pieces
            .range(..=offset)
            .next_back()
            .map_or(offset, |(s, _)| *s);
        for (&s, (e, piece)) in self.pieces.range(first..end) {
            let (from, to) = (s.max(offset), (*e).min(end));
            if from >= to {
                continue;
            }
            let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
            match piece {
                Piece::Zero => dst.fill(0),
                Piece::Data(d) => dst.copy_from_slice(&d[(from - s) as usize..(to - s) as usize]),
            }
        }
    }

    /// Whether any range touches `[offset, offset + len)`.
    pub fn touches(&self, offset: u64, len: u64) -> bool {
        let end = offset.saturating_add(len);
        self.pieces
            .range(..end)
            .next_back()
            .is_some_and(|(_, (e, _))| *e > offset)
    }

    /// End of the last data sector (what the replay extends the file to, at least).
    fn data_end(&self) -> u64 {
        self.pieces
            .iter()
            .rev()
            .find(|(_, (_, p))| matches!(p, Piece::Data(_)))
            .map_or(0, |(_, (e, _))| *e)
    }
}

/// What a replay did, for `info` and `check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayInfo {
    /// Entries replayed.
    pub entries: usize,
    /// Sequence number of the head entry.
    pub head_sequence: u64,
    /// Sectors written (data descriptors).
    pub data_sectors: usize,
    /// Zero descriptors.
    pub zero_ranges: usize,
}

/// A VHDX file's bytes as they read once the log is replayed.
#[derive(Debug)]
pub struct FileView {
    bytes: Bytes,
    overlay: Option<Overlay>,
    /// The file's length after replay (the log may extend it).
    len: u64,
    /// What was replayed.
    pub replay: Option<ReplayInfo>,
}

impl FileView {
    /// The file as it is, no log replayed.
    pub fn plain(bytes: Bytes) -> FileView {
        let len = bytes.len();
        FileView {
            bytes,
            overlay: None,
            len,
            replay: None,
        }
    }

    /// The bytes underneath.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The file's length after replay.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fill `buf` from `offset` (past the end reads zero).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.bytes.read_at(buf, offset)?;
        if let Some(o) = &self.overlay {
            o.apply(buf, offset);
        }
        Ok(())
    }

    /// `len` bytes at `offset` read into a new buffer.
    pub fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.read_at(&mut v, offset)?;
        Ok(v)
    }

    /// Ranges `(offset, length)` of `[start, end)` that may hold data: the file system's
    /// holes (and anything past the end of the file) read as zero. Ranges the log replays
    /// over count as data.
    pub fn data_ranges(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        if start >= end {
            return Vec::new();
        }
        if self
            .overlay
            .as_ref()
            .is_some_and(|o| o.touches(start, end - start))
        {
            return vec![(start, end - start)];
        }
        self.bytes.data_ranges(start, end)
    }

    /// The file's bytes at `offset` in place, when the file is mapped, the range lies inside
    /// it and no replayed sector covers it.
    pub fn slice(&self, offset: u64, len: u64) -> Option<&[u8]> {
        if self
            .overlay
            .as_ref()
            .is_some_and(|o| o.touches(offset, len))
        {
            return None;
        }
        let end = offset.checked_add(len)?;
        self.bytes
            .slice()?
            .get(usize::try_from(offset).ok()?..usize::try_from(end).ok()?)
    }

    /// Open `bytes` with `header` current: replay the log in memory when it holds entries.
    pub fn open(bytes: Bytes, header: &Header) -> Result<FileView> {
        if !header.log_present() {
            return Ok(FileView::plain(bytes));
        }
        let h = &header.raw;
        let log = Log {
            bytes: &bytes,
            offset: h.log_offset,
            length: u64::from(h.log_length),
            guid: h.log_guid,
        };
        if log.offset < HEADER_SECTION
            || !log.offset.is_multiple_of(MIB)
            || !log.length.is_multiple_of(MIB)
        {
            return Err(Error::corrupt(format!(
                "log ({} bytes at {}) is not 1 MiB-aligned after the header section",
                log.length, log.offset
            )));
        }
        if log
            .offset
            .checked_add(log.length)
            .is_none_or(|e| e > bytes.len())
        {
            return Err(Error::corrupt(format!(
                "log ({} bytes at {}) runs past the end of the file ({} bytes)",
                log.length,
                log.offset,
                bytes.len()
            )));
        }
        let sequence = log.active_sequence()?;
        let head = sequence.last().expect("an active sequence is never empty");
        if bytes.len() < head.flushed_file_offset {
            return Err(Error::corrupt(format!(
                "the log says the file was at least {} bytes, but it is {}: it was truncated",
                head.flushed_file_offset,
                bytes.len()
            )));
        }
        let mut overlay = Overlay::default();
        let mut info = ReplayInfo {
            entries: sequence.len(),
            head_sequence: head.sequence,
            data_sectors: 0,
            zero_ranges: 0,
        };
        for e in &sequence {
            log.replay(e, &mut overlay, &mut info)?;
        }
        let len = bytes
            .len()
            .max(head.last_file_offset)
            .max(overlay.data_end());
        Ok(FileView {
            bytes,
            overlay: Some(overlay),
            len,
            replay: Some(info),
        })
    }
}

/// The log region of a file being opened.
struct Log<'a> {
    bytes: &'a Bytes,
    offset: u64,
    length: u64,
    guid: Guid,
}

impl Log<'_> {
    /// The 4 KiB sector at `pos` (from the start of the log, wrapping around its end).
    fn sector(&self, pos: u64) -> Result<Vec<u8>> {
        let mut s = vec![0u8; LOG_SECTOR as usize];
        self.bytes
            .read_at(&mut s, self.offset + pos % self.length)?;
        Ok(s)
    }

    /// The valid entry starting at `pos`, if there is one. `budget` counts sectors read.
    fn entry_at(&self, pos: u64, budget: &mut u64) -> Result<Option<Entry>> {
        let first = self.sector(pos)?;
        *budget = budget.saturating_sub(1);
        if &first[0..4] != b"loge" {
            return Ok(None);
        }
        let checksum = LE::read_u32(&first[4..]);
        let length = u64::from(LE::read_u32(&first[8..]));
        let tail = u64::from(LE::read_u32(&first[12..]));
        let sequence = LE::read_u64(&first[16..]);
        let count = u64::from(LE::read_u32(&first[24..]));
        let guid = Guid::from_slice(&first[32..48]);
        let flushed_file_offset = LE::read_u64(&first[48..]);
        let last_file_offset = LE::read_u64(&first[56..]);
        if length == 0
            || length % LOG_SECTOR != 0
            || length > self.length
            || tail % LOG_SECTOR != 0
            || tail >= self.length
            || sequence == 0
            || guid != self.guid
        {
            return Ok(None);
        }
        // The header and 126 descriptors fill the first sector; 128 fit in each next one.
        let desc_sectors = (count + 2).div_ceil(128);
        let sectors = length / LOG_SECTOR;
        if desc_sectors > sectors {
            return Ok(None);
        }
        if *budget < sectors {
            return Err(Error::corrupt(
                "the log is too damaged to search for its active sequence",
            ));
        }
        let mut crc = Crc32c::new();
        crc.update(&first[..4]);
        crc.update_zeros(4);
        crc.update(&first[8..]);
        let mut desc_bytes = first;
        for i in 1..desc_sectors {
            let s = self.sector(pos + i * LOG_SECTOR)?;
            crc.update(&s);
            desc_bytes.extend_from_slice(&s);
        }
        let mut descriptors = Vec::with_capacity(count as usize);
        for i in 0..count as usize {
            let d = &desc_bytes[64 + 32 * i..96 + 32 * i];
            let offset = LE::read_u64(&d[16..]);
            if LE::read_u64(&d[24..]) != sequence || offset % LOG_SECTOR != 0 {
                return Ok(None);
            }
            match &d[0..4] {
                b"zero" => {
                    let length = LE::read_u64(&d[8..]);
                    if length % LOG_SECTOR != 0 || offset.checked_add(length).is_none() {
                        return Ok(None);
                    }
                    descriptors.push(Descriptor::Zero { offset, length });
                }
                b"desc" => {
                    if offset.checked_add(LOG_SECTOR).is_none() {
                        return Ok(None);
                    }
                    let mut leading = [0u8; 8];
                    leading.copy_from_slice(&d[8..16]);
                    let mut trailing = [0u8; 4];
                    trailing.copy_from_slice(&d[4..8]);
                    descriptors.push(Descriptor::Data {
                        offset,
                        leading,
                        trailing,
                    });
                }
                _ => return Ok(None),
            }
        }
        let data = descriptors
            .iter()
            .filter(|d| matches!(d, Descriptor::Data { .. }))
            .count() as u64;
        if desc_sectors + data != sectors {
            return Ok(None);
        }
        for i in 0..data {
            let s = self.sector(pos + (desc_sectors + i) * LOG_SECTOR)?;
            if &s[0..4] != b"data"
                || u64::from(LE::read_u32(&s[4..])) != sequence >> 32
                || u64::from(LE::read_u32(&s[4092..])) != sequence & 0xffff_ffff
            {
                return Ok(None);
            }
            crc.update(&s);
        }
        *budget = budget.saturating_sub(sectors - 1);
        if crc.finish() != checksum {
            return Ok(None);
        }
        Ok(Some(Entry {
            pos,
            length,
            tail,
            sequence,
            flushed_file_offset,
            last_file_offset,
            descriptors,
        }))
    }

    /// The active sequence: the newest valid, complete sequence of entries, from its tail
    /// entry to its head (the search of [MS-VHDX] 2.3.3).
    fn active_sequence(&self) -> Result<Vec<Entry>> {
        let mut budget = (self.length / LOG_SECTOR).saturating_mul(SEARCH_BUDGET_PER_SECTOR);
        let mut candidate: Option<Vec<Entry>> = None;
        let mut tail = 0u64;
        loop {
            let old_tail = tail;
            let mut current: Vec<Entry> = Vec::new();
            let mut pos = tail;
            let mut covered = 0u64;
            while let Some(e) = self.entry_at(pos, &mut budget)? {
                let follows = current
                    .last()
                    .is_none_or(|l| l.sequence.checked_add(1) == Some(e.sequence));
                if !follows || covered + e.length > self.length {
                    break;
                }
                covered += e.length;
                pos = (pos + e.length) % self.length;
                current.push(e);
            }
            // Valid when the head's tail is the start of one of the sequence's entries.
            let valid_from = current
                .last()
                .and_then(|head| current.iter().position(|e| e.pos == head.tail));
            match valid_from {
                Some(from) => {
                    let head = current.last().map(|h| h.sequence);
                    if candidate
                        .as_ref()
                        .is_none_or(|c| head > c.last().map(|h| h.sequence))
                    {
                        candidate = Some(current.split_off(from));
                    }
                    tail = pos;
                }
                None => tail = (tail + LOG_SECTOR) % self.length,
            }
            // Wrapped around (or a sequence filled the whole log): every start was tried.
            if tail <= old_tail {
                break;
            }
        }
        candidate.ok_or_else(|| {
            Error::corrupt(format!(
                "the header names log {{{}}} but the log holds no valid sequence of its entries: it cannot be replayed",
                self.guid
            ))
        })
    }

    /// Put the writes of entry `e` over `overlay`.
    fn replay(&self, e: &Entry, overlay: &mut Overlay, info: &mut ReplayInfo) -> Result<()> {
        let desc_sectors = (e.descriptors.len() as u64 + 2).div_ceil(128);
        let mut data_index = 0u64;
        for d in &e.descriptors {
            match d {
                Descriptor::Zero { offset, length } => {
                    overlay.put(*offset, offset + length, Piece::Zero);
                    info.zero_ranges += 1;
                }
                Descriptor::Data {
                    offset,
                    leading,
                    trailing,
                } => {
                    let mut s = self.sector(e.pos + (desc_sectors + data_index) * LOG_SECTOR)?;
                    data_index += 1;
                    s[0..8].copy_from_slice(leading);
                    s[4092..4096].copy_from_slice(trailing);
                    overlay.put(
                        *offset,
                        offset + LOG_SECTOR,
                        Piece::Data(s.into_boxed_slice()),
                    );
                    info.data_sectors += 1;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::RawHeader;

    enum D {
        Zero(u64, u64),
        Data(u64, u8),
    }

    /// The sectors of a log entry, checksum included.
    fn entry(seq: u64, tail: u64, guid: Guid, descs: &[D]) -> Vec<u8> {
        let desc_sectors = (descs.len() + 2).div_ceil(128);
        let data: Vec<&D> = descs.iter().filter(|d| matches!(d, D::Data(..))).collect();
        let len = (desc_sectors + data.len()) * 4096;
        let mut b = vec![0u8; len];
        b[0..4].copy_from_slice(b"loge");
        LE::write_u32(&mut b[8..], len as u32);
        LE::write_u32(&mut b[12..], tail as u32);
        LE::write_u64(&mut b[16..], seq);
        LE::write_u32(&mut b[24..], descs.len() as u32);
        b[32..48].copy_from_slice(&guid.0);
        LE::write_u64(&mut b[48..], 3 * MIB); // flushed file offset
        LE::write_u64(&mut b[56..], 3 * MIB); // last file offset
        let mut di = 0;
        for (i, d) in descs.iter().enumerate() {
            let at = 64 + 32 * i;
            match d {
                D::Zero(off, zlen) => {
                    b[at..at + 4].copy_from_slice(b"zero");
                    LE::write_u64(&mut b[at + 8..], *zlen);
                    LE::write_u64(&mut b[at + 16..], *off);
                }
                D::Data(off, fill) => {
                    b[at..at + 4].copy_from_slice(b"desc");
                    // The sector is all `fill`: leading and trailing bytes too.
                    b[at + 4..at + 8].fill(*fill);
                    b[at + 8..at + 16].fill(*fill);
                    LE::write_u64(&mut b[at + 16..], *off);
                    let s = (desc_sectors + di) * 4096;
                    di += 1;
                    b[s..s + 4].copy_from_slice(b"data");
                    LE::write_u32(&mut b[s + 4..], (seq >> 32) as u32);
                    b[s + 8..s + 4092].fill(*fill);
                    LE::write_u32(&mut b[s + 4092..], seq as u32);
                }
            }
            LE::write_u64(&mut b[at + 24..], seq);
        }
        let crc = crate::crc32c::checksum_with_field_zeroed(&b, 4);
        LE::write_u32(&mut b[4..], crc);
        b
    }

    /// A 3 MiB file, log at 1 MiB, with `entries` placed at their log positions (wrapping).
    fn file_with(entries: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut f = vec![0x55u8; 3 * MIB as usize];
        f[MIB as usize..2 * MIB as usize].fill(0);
        for (pos, e) in entries {
            for (i, sector) in e.chunks(4096).enumerate() {
                let at = MIB + (pos + i as u64 * 4096) % MIB;
                f[at as usize..at as usize + 4096].copy_from_slice(sector);
            }
        }
        f
    }

    fn header(guid: Guid) -> Header {
        Header {
            index: 0,
            other_valid: true,
            raw: RawHeader {
                signature: *b"head",
                checksum: 0,
                sequence_number: 1,
                file_write_guid: Guid::ZERO,
                data_write_guid: Guid::ZERO,
                log_guid: guid,
                log_version: 0,
                version: 1,
                log_length: MIB as u32,
                log_offset: MIB,
            },
        }
    }

    fn view(f: Vec<u8>, guid: Guid) -> Result<FileView> {
        FileView::open(
            Bytes::Owned("t.vhdx".into(), std::sync::Arc::new(f)),
            &header(guid),
        )
    }

    #[test]
    fn a_sequence_wrapping_the_log_end_replays_in_order() {
        let g = Guid([3; 16]);
        let tail = MIB - 4096;
        // Entry 1 (data sector at 2 MiB) wraps around the end of the log; entry 2 zeroes
        // 8 KiB at 2 MiB + 4 KiB and rewrites 2 MiB + 8 KiB.
        let e1 = entry(
            7,
            tail,
            g,
            &[D::Data(2 * MIB, 0xaa), D::Data(2 * MIB + 4096, 0xbb)],
        );
        let e2 = entry(
            8,
            tail,
            g,
            &[D::Zero(2 * MIB + 4096, 8192), D::Data(2 * MIB + 8192, 0xcc)],
        );
        let p2 = (tail + e1.len() as u64) % MIB;
        let v = view(file_with(&[(tail, e1), (p2, e2)]), g).unwrap();
        let r = v.replay.clone().unwrap();
        assert_eq!(
            (r.entries, r.head_sequence, r.data_sectors, r.zero_ranges),
            (2, 8, 3, 1)
        );
        let got = v.read_vec(2 * MIB - 4, 4 * 4096).unwrap();
        assert_eq!(&got[..4], &[0; 4]); // the end of the log itself
        assert!(got[4..4100].iter().all(|&b| b == 0xaa));
        assert!(got[4100..8196].iter().all(|&b| b == 0));
        assert!(got[8196..12292].iter().all(|&b| b == 0xcc));
        assert!(got[12292..].iter().all(|&b| b == 0x55));
        // The file underneath is untouched.
        assert!(v.bytes().slice().unwrap()[2 * MIB as usize..][..4096]
            .iter()
            .all(|&b| b == 0x55));
    }

    #[test]
    fn the_newest_sequence_wins_and_bad_entries_are_skipped() {
        let g = Guid([3; 16]);
        let old = entry(3, 0, g, &[D::Data(2 * MIB, 1)]);
        let new = entry(9, 64 << 10, g, &[D::Data(2 * MIB, 2)]);
        // A valid header but a broken checksum: ignored.
        let mut broken = entry(10, 128 << 10, g, &[D::Data(2 * MIB, 3)]);
        broken[5000] ^= 1;
        // Another log's entry: ignored.
        let other = entry(11, 192 << 10, Guid([4; 16]), &[D::Data(2 * MIB, 4)]);
        let f = file_with(&[
            (0, old),
            (64 << 10, new),
            (128 << 10, broken),
            (192 << 10, other),
        ]);
        let v = view(f, g).unwrap();
        assert_eq!(v.replay.as_ref().unwrap().head_sequence, 9);
        assert_eq!(v.read_vec(2 * MIB, 1).unwrap(), [2]);
    }

    #[test]
    fn no_valid_sequence_or_a_tail_outside_it_is_refused() {
        let g = Guid([3; 16]);
        // Its tail points at a sector that starts no entry of the sequence.
        let lost = entry(5, 4096 * 9, g, &[D::Data(2 * MIB, 1)]);
        let e = view(file_with(&[(0, lost)]), g).unwrap_err();
        assert!(e.message().contains("cannot be replayed"), "{e}");
        let e = view(file_with(&[]), g).unwrap_err();
        assert!(e.message().contains("log"), "{e}");
        // A log that claims to lie past the end of the file.
        let mut h = header(g);
        h.raw.log_offset = 8 * MIB;
        let f = Bytes::Owned("t.vhdx".into(), std::sync::Arc::new(file_with(&[])));
        assert!(FileView::open(f, &h).is_err());
    }

    fn read(o: &Overlay, base: &[u8], off: u64, len: usize) -> Vec<u8> {
        let mut b = base[off as usize..off as usize + len].to_vec();
        o.apply(&mut b, off);
        b
    }

    #[test]
    fn later_writes_win_and_zero_ranges_are_cut() {
        let base = vec![7u8; 64 << 10];
        let mut o = Overlay::default();
        o.put(0, 32 << 10, Piece::Zero);
        o.put(8192, 12288, Piece::Data(vec![1u8; 4096].into_boxed_slice()));
        o.put(4096, 8192, Piece::Data(vec![2u8; 4096].into_boxed_slice()));
        o.put(4096, 8192, Piece::Data(vec![3u8; 4096].into_boxed_slice()));
        let all = read(&o, &base, 0, 64 << 10);
        assert!(all[..4096].iter().all(|&b| b == 0));
        assert!(all[4096..8192].iter().all(|&b| b == 3));
        assert!(all[8192..12288].iter().all(|&b| b == 1));
        assert!(all[12288..32 << 10].iter().all(|&b| b == 0));
        assert!(all[32 << 10..].iter().all(|&b| b == 7));
        // A read in the middle of a range.
        assert_eq!(read(&o, &base, 8190, 4), vec![3, 3, 1, 1]);
        // A zero range over the data sectors wipes them.
        o.put(4096, 16384, Piece::Zero);
        let all = read(&o, &base, 0, 64 << 10);
        assert!(all[..32 << 10].iter().all(|&b| b == 0));
        assert!(o.touches(100, 1) && !o.touches(40 << 10, 4096));
        assert_eq!(o.data_end(), 0);
    }
}
