//! The block index: which pack holds each blob, in sorted tables read a page at a time, so
//! that a repository of any size is looked up in bounded memory.
//!
//! An index object (`index/ID`) is a table of entries `(block id, pack id, offset, length)`
//! sorted by block id and cut into pages of [`PAGE_ENTRIES`], each page sealed on its own
//! (with the index's id and the page's number); then a blocked Bloom filter of the ids (12
//! bits an entry: a miss, the common case when a backup stores new data, costs one 64-byte
//! read and no page); then the *fences*, the first 8 bytes of each page's first id, sealed;
//! then a trailer (magic `VDINDX03`, entries, pages, filter blocks, sealed fences' length).
//!
//! A lookup reads the filter's block, then finds the page by the fences (held in memory: 8
//! bytes a page, 12.5 MB for 10^8 blocks) and reads and opens that page. Local tables are read
//! with positional reads (the page cache keeps them, not the process); tables of an object
//! store are read from a local cached copy. Nothing but the fences is held whole.
//!
//! The filter is not sealed: a damaged filter can only make a lookup miss a block it holds
//! (a backup then stores it again) or read a page for nothing; what a lookup returns always
//! comes from a sealed page.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use vdisk_core::{Error, Result};

use crate::crypto::{unhex, BlockId, Keys, Kind, ID_LEN};

/// Entries in a page.
pub const PAGE_ENTRIES: usize = 64;
/// Bytes of an entry: id, pack id, offset, length.
pub const ENTRY_LEN: usize = ID_LEN + 16 + 8;
/// The magic of an index table's trailer.
const INDEX_MAGIC: &[u8; 8] = b"VDINDX03";
/// Bytes of the trailer.
const TRAILER: usize = 40;
/// Filter bits an entry.
const FILTER_BITS: u64 = 12;
/// Bits set per id in the filter.
const FILTER_PROBES: usize = 8;
/// Most entries one index table holds (its writer keeps its filter in memory: 24 MiB).
pub const MAX_TABLE_ENTRIES: u64 = 1 << 24;
/// Pages of tables kept opened in memory, over all tables.
const PAGE_CACHE: usize = 4096;

/// A pack's id: 128 bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct PackId(pub [u8; 16]);

impl PackId {
    /// The id as 32 hex digits.
    pub fn hex(&self) -> String {
        crate::crypto::hex(&self.0)
    }

    /// The id written as 32 hex digits.
    pub fn parse(s: &str) -> Option<PackId> {
        unhex(s).and_then(|v| v.try_into().ok()).map(PackId)
    }
}

/// Where a blob is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Location {
    /// The pack.
    pub pack: PackId,
    /// Its first byte in the pack.
    pub offset: u32,
    /// Its sealed length.
    pub len: u32,
}

/// One entry of an index table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct IndexEntry {
    /// The blob's id.
    pub id: BlockId,
    /// Where it is.
    pub at: Location,
}

impl IndexEntry {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&self.at.pack.0);
        out.extend_from_slice(&self.at.offset.to_le_bytes());
        out.extend_from_slice(&self.at.len.to_le_bytes());
    }

    fn decode(b: &[u8]) -> IndexEntry {
        let mut pack = [0u8; 16];
        pack.copy_from_slice(&b[ID_LEN..ID_LEN + 16]);
        let word = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]));
        IndexEntry {
            id: BlockId::from_slice(&b[..ID_LEN]).unwrap_or_default(),
            at: Location {
                pack: PackId(pack),
                offset: word(ID_LEN + 16),
                len: word(ID_LEN + 20),
            },
        }
    }
}

/// The filter's block of `id` and its bit positions.
fn probes(id: &BlockId, blocks: u64) -> (u64, [u16; FILTER_PROBES]) {
    let b = u64::from_le_bytes(id.0[8..16].try_into().unwrap_or([0; 8])) % blocks.max(1);
    let bits = u128::from_le_bytes(id.0[16..32].try_into().unwrap_or([0; 16]));
    let mut out = [0u16; FILTER_PROBES];
    for (i, o) in out.iter_mut().enumerate() {
        *o = ((bits >> (i * 9)) & 511) as u16;
    }
    (b, out)
}

/// Blocks of 64 bytes of the filter of `entries` ids.
fn filter_blocks(entries: u64) -> u64 {
    (entries * FILTER_BITS).div_ceil(512).max(1)
}

/// Sealed bytes of a page of `n` entries.
fn page_len(n: usize, keys: &Keys) -> u64 {
    (n * ENTRY_LEN + keys.overhead()) as u64
}

/// Writes an index table front to back: entries come in ascending id order; pages go out as
/// they fill.
pub struct IndexWriter<W: Write> {
    out: W,
    keys: Keys,
    id: String,
    expected: u64,
    written: u64,
    page: Vec<IndexEntry>,
    pages: u64,
    fences: Vec<u64>,
    filter: Vec<u8>,
    last: Option<BlockId>,
    buf: Vec<u8>,
}

impl<W: Write> IndexWriter<W> {
    /// A writer of table `id` that will hold exactly `entries` entries.
    pub fn new(out: W, keys: &Keys, id: &str, entries: u64) -> Result<Self> {
        if entries > MAX_TABLE_ENTRIES {
            return Err(Error::invalid("too many entries for one index table"));
        }
        Ok(IndexWriter {
            out,
            keys: keys.clone(),
            id: id.to_string(),
            expected: entries,
            written: 0,
            page: Vec::with_capacity(PAGE_ENTRIES),
            pages: 0,
            fences: Vec::new(),
            filter: vec![0u8; (filter_blocks(entries) * 64) as usize],
            last: None,
            buf: Vec::new(),
        })
    }

    fn io(e: std::io::Error) -> Error {
        Error::io("cannot write an index", e)
    }

    /// Add the next entry.
    pub fn push(&mut self, e: IndexEntry) -> Result<()> {
        if self.last.is_some_and(|l| l >= e.id) {
            return Err(Error::invalid("index entries out of order"));
        }
        if self.written == self.expected {
            return Err(Error::invalid("more index entries than announced"));
        }
        self.last = Some(e.id);
        let (b, bits) = probes(&e.id, filter_blocks(self.expected));
        for bit in bits {
            let byte = (b * 64) as usize + usize::from(bit / 8);
            self.filter[byte] |= 1 << (bit % 8);
        }
        self.page.push(e);
        self.written += 1;
        if self.page.len() == PAGE_ENTRIES {
            self.flush_page()?;
        }
        Ok(())
    }

    fn flush_page(&mut self) -> Result<()> {
        let Some(first) = self.page.first() else {
            return Ok(());
        };
        self.fences.push(first.id.prefix());
        self.buf.clear();
        for e in &self.page {
            e.encode(&mut self.buf);
        }
        let sealed = self
            .keys
            .seal(Kind::IndexPage, &page_ad(&self.id, self.pages), &self.buf)?;
        self.out.write_all(&sealed).map_err(Self::io)?;
        self.pages += 1;
        self.page.clear();
        Ok(())
    }

    /// Write the filter, the fences and the trailer; returns the sink.
    pub fn finish(mut self) -> Result<W> {
        self.flush_page()?;
        if self.written != self.expected {
            return Err(Error::invalid("fewer index entries than announced"));
        }
        self.out.write_all(&self.filter).map_err(Self::io)?;
        let blocks = filter_blocks(self.expected);
        let mut plain = Vec::with_capacity(24 + self.fences.len() * 8);
        for v in [self.expected, self.pages, blocks] {
            plain.extend_from_slice(&v.to_le_bytes());
        }
        for f in &self.fences {
            plain.extend_from_slice(&f.to_be_bytes());
        }
        let sealed = self
            .keys
            .seal(Kind::IndexFences, self.id.as_bytes(), &plain)?;
        self.out.write_all(&sealed).map_err(Self::io)?;
        let mut t = Vec::with_capacity(TRAILER);
        t.extend_from_slice(INDEX_MAGIC);
        for v in [self.expected, self.pages, blocks, sealed.len() as u64] {
            t.extend_from_slice(&v.to_le_bytes());
        }
        self.out.write_all(&t).map_err(Self::io)?;
        Ok(self.out)
    }
}

fn page_ad(id: &str, page: u64) -> Vec<u8> {
    let mut ad = id.as_bytes().to_vec();
    ad.extend_from_slice(&page.to_le_bytes());
    ad
}

/// The bytes of a table of `entries` (sorted, distinct ids) in memory.
pub fn encode_table(keys: &Keys, id: &str, entries: &[IndexEntry]) -> Result<Vec<u8>> {
    let mut w = IndexWriter::new(Vec::new(), keys, id, entries.len() as u64)?;
    for e in entries {
        w.push(*e)?;
    }
    w.finish()
}

/// Where a table's bytes are read from.
#[derive(Debug)]
pub enum TableBytes {
    /// A local file (a folder's object, or an object store's cached copy).
    File(File),
    /// Bytes in memory.
    Memory(Vec<u8>),
}

impl TableBytes {
    fn len(&self) -> Result<u64> {
        match self {
            TableBytes::File(f) => f
                .metadata()
                .map(|m| m.len())
                .map_err(|e| Error::io("cannot read an index", e)),
            TableBytes::Memory(v) => Ok(v.len() as u64),
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match self {
            TableBytes::File(f) => f
                .read_exact_at(buf, offset)
                .map_err(|e| Error::io("cannot read an index", e)),
            TableBytes::Memory(v) => {
                let end = offset as usize + buf.len();
                buf.copy_from_slice(
                    v.get(offset as usize..end)
                        .ok_or_else(|| Error::corrupt("index read past its end"))?,
                );
                Ok(())
            }
        }
    }
}

/// An index table opened for lookups.
#[derive(Debug)]
pub struct IndexTable {
    /// The table's id.
    pub id: String,
    bytes: TableBytes,
    keys: Keys,
    entries: u64,
    pages: u64,
    filter_at: u64,
    filter_blocks: u64,
    fences: Vec<u64>,
}

impl IndexTable {
    /// Open table `id` from `bytes`: its trailer and fences are read and checked.
    pub fn open(keys: &Keys, id: &str, bytes: TableBytes) -> Result<Self> {
        let len = bytes.len()?;
        if len < TRAILER as u64 {
            return Err(Error::corrupt("index is too short to be one"));
        }
        let mut t = [0u8; TRAILER];
        bytes.read_at(&mut t, len - TRAILER as u64)?;
        if &t[..8] != INDEX_MAGIC {
            return Err(Error::corrupt("is not an index (no index trailer)"));
        }
        let word =
            |i: usize| u64::from_le_bytes(t[8 + i * 8..16 + i * 8].try_into().unwrap_or([0; 8]));
        let (entries, pages, blocks, fences_len) = (word(0), word(1), word(2), word(3));
        if entries > MAX_TABLE_ENTRIES
            || pages != entries.div_ceil(PAGE_ENTRIES as u64)
            || blocks != filter_blocks(entries)
            || fences_len != 24 + pages * 8 + keys.overhead() as u64
        {
            return Err(Error::corrupt("index trailer's numbers do not agree"));
        }
        let full = pages.saturating_sub(1) * page_len(PAGE_ENTRIES, keys);
        let last = if pages == 0 {
            0
        } else {
            page_len((entries - (pages - 1) * PAGE_ENTRIES as u64) as usize, keys)
        };
        let filter_at = full + last;
        let want = filter_at + blocks * 64 + fences_len + TRAILER as u64;
        if want != len {
            return Err(Error::corrupt(format!(
                "index is {len} bytes, its trailer says {want}"
            )));
        }
        let mut sealed = vec![0u8; fences_len as usize];
        bytes.read_at(&mut sealed, filter_at + blocks * 64)?;
        let plain = keys.open(Kind::IndexFences, id.as_bytes(), &sealed)?;
        let pw =
            |i: usize| u64::from_le_bytes(plain[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        if (pw(0), pw(1), pw(2)) != (entries, pages, blocks) {
            return Err(Error::corrupt(
                "index trailer does not match its sealed copy",
            ));
        }
        let fences: Vec<u64> = plain[24..]
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        if fences.windows(2).any(|w| w[0] > w[1]) {
            return Err(Error::corrupt("index fences are out of order"));
        }
        Ok(IndexTable {
            id: id.to_string(),
            bytes,
            keys: keys.clone(),
            entries,
            pages,
            filter_at,
            filter_blocks: blocks,
            fences,
        })
    }

    /// Entries in the table.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Pages in the table.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Whether the filter says `id` may be here.
    pub fn may_hold(&self, id: &BlockId) -> Result<bool> {
        let (b, bits) = probes(id, self.filter_blocks);
        let mut block = [0u8; 64];
        self.bytes.read_at(&mut block, self.filter_at + b * 64)?;
        Ok(bits
            .iter()
            .all(|&bit| block[usize::from(bit / 8)] & (1 << (bit % 8)) != 0))
    }

    /// Whether the filter is the one the table's entries make (verify reads every page).
    pub fn filter_matches(&self) -> Result<bool> {
        let mut want = vec![0u8; (self.filter_blocks * 64) as usize];
        for p in 0..self.pages {
            for e in self.page(p)? {
                let (b, bits) = probes(&e.id, self.filter_blocks);
                for bit in bits {
                    want[(b * 64) as usize + usize::from(bit / 8)] |= 1 << (bit % 8);
                }
            }
        }
        let mut have = vec![0u8; want.len()];
        self.bytes.read_at(&mut have, self.filter_at)?;
        Ok(have == want)
    }

    /// Page `p`, opened and checked (sorted, and where its fence says).
    pub fn page(&self, p: u64) -> Result<Vec<IndexEntry>> {
        if p >= self.pages {
            return Err(Error::corrupt("index page out of range"));
        }
        let n = if p + 1 == self.pages {
            (self.entries - p * PAGE_ENTRIES as u64) as usize
        } else {
            PAGE_ENTRIES
        };
        let mut sealed = vec![0u8; page_len(n, &self.keys) as usize];
        self.bytes
            .read_at(&mut sealed, p * page_len(PAGE_ENTRIES, &self.keys))?;
        let plain = self
            .keys
            .open(Kind::IndexPage, &page_ad(&self.id, p), &sealed)?;
        if plain.len() != n * ENTRY_LEN {
            return Err(Error::corrupt("index page has the wrong length"));
        }
        let entries: Vec<IndexEntry> = plain
            .chunks_exact(ENTRY_LEN)
            .map(IndexEntry::decode)
            .collect();
        if entries.windows(2).any(|w| w[0].id >= w[1].id)
            || entries.first().map(|e| e.id.prefix()) != self.fences.get(p as usize).copied()
            || entries.iter().any(|e| e.id.is_zero() || e.at.len == 0)
        {
            return Err(Error::corrupt(
                "index page is out of order or holds a bad entry",
            ));
        }
        Ok(entries)
    }

    /// The pages that may hold `id`, by the fences.
    fn candidate_pages(&self, id: &BlockId) -> std::ops::Range<u64> {
        let p = id.prefix();
        let lo = self.fences.partition_point(|&f| f < p);
        let hi = self.fences.partition_point(|&f| f <= p);
        (lo.saturating_sub(1) as u64)..(hi.max(1) as u64).min(self.pages)
    }
}

/// A cache of opened pages of every table of a set.
#[derive(Debug, Default)]
struct PageCache {
    pages: HashMap<(usize, u64), Arc<Vec<IndexEntry>>>,
    order: std::collections::VecDeque<(usize, u64)>,
}

/// The tables of a repository, plus the entries of the run in progress not yet in a table.
#[derive(Debug, Default)]
pub struct IndexSet {
    tables: Vec<IndexTable>,
    pending: HashMap<BlockId, Location>,
    cache: Mutex<PageCache>,
}

impl IndexSet {
    /// A set of `tables`.
    pub fn new(tables: Vec<IndexTable>) -> Self {
        IndexSet {
            tables,
            ..Default::default()
        }
    }

    /// The tables.
    pub fn tables(&self) -> &[IndexTable] {
        &self.tables
    }

    /// Add a table (one this run wrote).
    pub fn add_table(&mut self, t: IndexTable) {
        self.tables.push(t);
    }

    /// Note where a blob this run stored is, until its table is written.
    pub fn add_pending(&mut self, id: BlockId, at: Location) {
        self.pending.insert(id, at);
    }

    /// The run's entries not yet written, sorted; forgotten here.
    pub fn take_pending(&mut self) -> Vec<IndexEntry> {
        let mut v: Vec<IndexEntry> = self
            .pending
            .drain()
            .map(|(id, at)| IndexEntry { id, at })
            .collect();
        v.sort_unstable_by_key(|e| e.id);
        v
    }

    /// Entries of the run not yet in a table.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Where blob `id` is, if any table (newest first) or the run's own entries hold it.
    pub fn lookup(&self, id: &BlockId) -> Result<Option<Location>> {
        if let Some(at) = self.pending.get(id) {
            return Ok(Some(*at));
        }
        for (t, table) in self.tables.iter().enumerate().rev() {
            if !table.may_hold(id)? {
                continue;
            }
            for p in table.candidate_pages(id) {
                let page = self.cached_page(t, p)?;
                if let Ok(i) = page.binary_search_by_key(id, |e| e.id) {
                    return Ok(Some(page[i].at));
                }
            }
        }
        Ok(None)
    }

    fn cached_page(&self, t: usize, p: u64) -> Result<Arc<Vec<IndexEntry>>> {
        if let Some(page) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pages
            .get(&(t, p))
        {
            return Ok(Arc::clone(page));
        }
        let page = Arc::new(
            self.tables[t]
                .page(p)
                .map_err(|e| e.with_path(Path::new(&format!("index/{}", self.tables[t].id))))?,
        );
        let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if c.pages.insert((t, p), Arc::clone(&page)).is_none() {
            c.order.push_back((t, p));
        }
        while c.order.len() > PAGE_CACHE {
            if let Some(k) = c.order.pop_front() {
                c.pages.remove(&k);
            }
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    fn entries(keys: &Keys, n: u32) -> Vec<IndexEntry> {
        let mut v: Vec<IndexEntry> = (0..n)
            .map(|i| IndexEntry {
                id: keys.block_id(&i.to_le_bytes()),
                at: Location {
                    pack: PackId([i as u8; 16]),
                    offset: i * 10,
                    len: 7 + i,
                },
            })
            .collect();
        v.sort_unstable_by_key(|e| e.id);
        v
    }

    #[test]
    fn tables_find_every_entry_and_miss_the_rest() {
        for enc in [false, true] {
            let keys = Keys::derive(&MasterKey::generate().unwrap(), enc);
            for n in [0u32, 1, 63, 64, 65, 1000] {
                let es = entries(&keys, n);
                let bytes = encode_table(&keys, "t1", &es).unwrap();
                let t = IndexTable::open(&keys, "t1", TableBytes::Memory(bytes)).unwrap();
                assert_eq!(t.entries(), u64::from(n));
                let set = IndexSet::new(vec![t]);
                for e in &es {
                    assert_eq!(set.lookup(&e.id).unwrap(), Some(e.at));
                }
                let mut false_hits = 0;
                for i in n..n + 2000 {
                    let id = keys.block_id(&i.to_le_bytes());
                    assert_eq!(set.lookup(&id).unwrap(), None);
                    if set.tables()[0].may_hold(&id).unwrap() {
                        false_hits += 1;
                    }
                }
                assert!(n == 0 || false_hits < 100, "{false_hits} false hits");
            }
        }
    }

    #[test]
    fn damaged_or_misnamed_tables_are_refused() {
        let keys = Keys::derive(&MasterKey::generate().unwrap(), true);
        let es = entries(&keys, 200);
        let bytes = encode_table(&keys, "t1", &es).unwrap();
        assert!(IndexTable::open(&keys, "t2", TableBytes::Memory(bytes.clone())).is_err());
        for cut in [0, 10, bytes.len() - 1] {
            assert!(
                IndexTable::open(&keys, "t1", TableBytes::Memory(bytes[..cut].to_vec())).is_err()
            );
        }
        // A flipped byte in a page: that page fails to open, never a wrong answer.
        let mut b = bytes.clone();
        b[100] ^= 1;
        let t = IndexTable::open(&keys, "t1", TableBytes::Memory(b)).unwrap();
        assert!(t.page(0).is_err());
        assert!(t.page(1).is_ok());
        // Pages swapped: refused (each is sealed with its number).
        let pl = page_len(PAGE_ENTRIES, &keys) as usize;
        let mut b = bytes.clone();
        let (p0, p1) = (b[..pl].to_vec(), b[pl..2 * pl].to_vec());
        b[..pl].copy_from_slice(&p1);
        b[pl..2 * pl].copy_from_slice(&p0);
        let t = IndexTable::open(&keys, "t1", TableBytes::Memory(b)).unwrap();
        assert!(t.page(0).is_err() && t.page(1).is_err());
        // Out-of-order pushes are refused.
        let mut w = IndexWriter::new(Vec::new(), &keys, "t", 2).unwrap();
        w.push(es[1]).unwrap();
        assert!(w.push(es[0]).is_err());
    }

    #[test]
    fn the_newest_table_and_the_runs_own_entries_win() {
        let keys = Keys::derive(&MasterKey::generate().unwrap(), false);
        let es = entries(&keys, 10);
        let mut moved = es.clone();
        for e in &mut moved {
            e.at.offset += 1;
        }
        let t1 = IndexTable::open(
            &keys,
            "a",
            TableBytes::Memory(encode_table(&keys, "a", &es).unwrap()),
        )
        .unwrap();
        let t2 = IndexTable::open(
            &keys,
            "b",
            TableBytes::Memory(encode_table(&keys, "b", &moved).unwrap()),
        )
        .unwrap();
        let mut set = IndexSet::new(vec![t1, t2]);
        assert_eq!(set.lookup(&es[3].id).unwrap(), Some(moved[3].at));
        let fresh = keys.block_id(b"fresh");
        let at = Location {
            pack: PackId([9; 16]),
            offset: 1,
            len: 2,
        };
        set.add_pending(fresh, at);
        assert_eq!(set.lookup(&fresh).unwrap(), Some(at));
        assert_eq!(set.take_pending().len(), 1);
        assert_eq!(set.lookup(&fresh).unwrap(), None);
    }
}
