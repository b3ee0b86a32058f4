//! Garbage collection, in two phases separated by a grace period, in bounded memory.
//!
//! *Mark*: every point's disks are walked (each distinct leaf once) and every id they reach
//! goes into a Bloom filter sized to the index (16 bits an entry, at most 128 MiB): a live id
//! is always found; a dead one is taken for live now and then (it stays until a later run,
//! whose filter is seeded differently). *Sweep*: the index tables are read page by page and
//! each pack's live and dead bytes added up.
//!
//! *Condemn* (phase B): packs with nothing live, packs mostly dead (their live blobs are
//! first copied, sealed as they are and checked, into new packs), and packs no table lists
//! that are older than the grace period (what killed runs left) are written into a
//! `condemned/ID` list with the time, together with the index tables that list them; a
//! replacement table listing every other entry of those tables is written first. Nothing is
//! deleted yet.
//!
//! *Delete* (phase A of a later run): a list older than the grace period is carried out only
//! when no writer is registered (a running backup may have referenced a condemned block it
//! found through an old table): a pack some live point now needs and no surviving table
//! lists is kept (and a table written for it); the list's tables go first, then its packs,
//! then the list. Readers that opened the repository before the packs went find blocks that
//! moved by loading the index again; the grace period keeps deleted points' blocks readable
//! for a while to anyone still reading them.
//!
//! Every step writes new objects before anything refers to them, and deletes only what
//! nothing refers to any more: a run killed at any instant leaves a sound repository.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::io::Write;

use serde::{Deserialize, Serialize};
use vdisk_core::{Error, ErrorKind, Result};

use crate::backup::BlobWriter;
use crate::clock::now_secs;
use crate::crypto::{BlockId, Kind};
use crate::index::{IndexEntry, IndexSet, IndexTable, IndexWriter, PackId, MAX_TABLE_ENTRIES};
use crate::locks::{registrations, stale_secs, Registration};
use crate::pack::{pack_id_of, pack_name, PACK_TARGET};
use crate::repository::{err_at, Repository};
use crate::tree::{decode_leaf, Shape, TreeReader};

/// Seconds condemned objects wait before they are deleted (`VDISK_GC_GRACE_SECS`).
pub fn grace_secs() -> u64 {
    std::env::var("VDISK_GC_GRACE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6 * 3600)
}

/// Temporary files older than this are removed.
const LEFTOVER_AGE: u64 = 3600;
/// Stale registrations older than this are removed (an expired lease).
const LOCK_EXPIRY: u64 = 7 * 86_400;
/// Tables a repository may have before a prune merges them.
const MAX_TABLES: usize = 16;

/// What garbage collection did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcSummary {
    /// Packs in the repository.
    pub packs: u64,
    /// Bytes of packs.
    pub pack_bytes: u64,
    /// Bytes of live blobs.
    pub live_bytes: u64,
    /// Packs condemned now (deleted by a later prune after the grace period).
    pub condemned_packs: u64,
    /// Their bytes.
    pub condemned_bytes: u64,
    /// Blobs copied out of mostly-dead packs.
    pub repacked_blobs: u64,
    /// Their bytes.
    pub repacked_bytes: u64,
    /// Packs deleted now (condemned by an earlier prune).
    pub deleted_packs: u64,
    /// Bytes freed now.
    pub freed_bytes: u64,
    /// Condemned packs whose deletion waits: for the grace period, or for running writers.
    pub waiting_packs: u64,
    /// Whether deletion was put off because writers are running.
    pub writers_running: bool,
    /// Index tables written.
    pub tables_written: u64,
    /// Leftovers removed (temporary files of killed runs, registrations of dead runs).
    pub leftovers_removed: u64,
}

/// A list of condemned objects.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Condemned {
    time: u64,
    packs: Vec<String>,
    tables: Vec<String>,
}

/// A Bloom filter of live ids.
struct LiveSet {
    bits: Vec<u64>,
    seed: u64,
}

impl LiveSet {
    fn new(entries: u64) -> Result<Self> {
        let bits = (entries.saturating_mul(16)).clamp(1 << 16, 1 << 30);
        Ok(LiveSet {
            bits: vec![0; (bits / 64) as usize],
            seed: u64::from_le_bytes(crate::crypto::random_bytes()?),
        })
    }

    fn positions(&self, id: &BlockId) -> impl Iterator<Item = u64> + '_ {
        let n = self.bits.len() as u64 * 64;
        let a = u64::from_le_bytes(id.0[0..8].try_into().unwrap_or([0; 8])) ^ self.seed;
        let b = u64::from_le_bytes(id.0[8..16].try_into().unwrap_or([0; 8])) | 1;
        (0..7u64).map(move |i| a.wrapping_add(i.wrapping_mul(b)) % n)
    }

    fn insert(&mut self, id: &BlockId) {
        let pos: Vec<u64> = self.positions(id).collect();
        for p in pos {
            self.bits[(p / 64) as usize] |= 1 << (p % 64);
        }
    }

    fn contains(&self, id: &BlockId) -> bool {
        self.positions(id)
            .all(|p| self.bits[(p / 64) as usize] & (1 << (p % 64)) != 0)
    }
}

#[derive(Debug, Default, Clone)]
struct PackStat {
    live: u64,
    live_bytes: u64,
    total: u64,
    total_bytes: u64,
    tables: Vec<u32>,
}

impl Repository {
    /// Collect garbage (see the module docs); `dry` only counts. Runs under `_reg`, this
    /// run's registration (a prune's).
    pub(crate) fn collect_garbage(
        &self,
        _reg: &Registration,
        dry: bool,
        removed: &HashSet<String>,
    ) -> Result<GcSummary> {
        let mut sum = GcSummary::default();
        let now = now_secs();
        let grace = grace_secs();
        let (index, damaged) = self.load_index()?;
        if let Some((name, e)) = damaged.first() {
            return Err(err_at(
                self.location(),
                ErrorKind::Corrupt,
                format!("{name} cannot be read ({}); nothing was deleted (verify says what else is damaged)", e.message()),
            ));
        }
        let points = self.points()?;
        if let Some((key, why)) = points.unreadable.first() {
            return Err(err_at(
                self.location(),
                ErrorKind::Corrupt,
                format!("{key} is not a valid point ({why}); a prune deletes nothing while a point it cannot read may need data"),
            ));
        }
        // Mark.
        let total: u64 = index.tables().iter().map(IndexTable::entries).sum();
        let mut live = LiveSet::new(total)?;
        let bs = self.block_size();
        let max = self.max_blob();
        let mut seen_leaves: HashSet<BlockId> = HashSet::new();
        for p in points.points.iter().filter(|p| !removed.contains(&p.key)) {
            for d in &p.record.disks {
                let shape = Shape::new(d.size, bs)?;
                let mut t = TreeReader::new(shape.clone(), d.root_id(), |id: &BlockId| {
                    self.read_blob(id, max)
                });
                for k in 1..shape.levels.len() {
                    for j in 0..shape.levels[k] {
                        let id = t.chunk_id(k, j)?;
                        if !id.is_zero() {
                            live.insert(&id);
                        }
                    }
                }
                for j in 0..shape.leaves() {
                    let id = t.chunk_id(0, j)?;
                    if id.is_zero() || !seen_leaves.insert(id) {
                        continue;
                    }
                    live.insert(&id);
                    for e in decode_leaf(&self.read_blob(&id, max)?, shape.items(0, j))? {
                        if !e.is_zero() {
                            live.insert(&e.id);
                        }
                    }
                }
            }
        }
        drop(seen_leaves);
        // Sweep.
        let mut stats: HashMap<PackId, PackStat> = HashMap::new();
        for (ti, t) in index.tables().iter().enumerate() {
            for pg in 0..t.pages() {
                for e in t
                    .page(pg)
                    .map_err(|e| e.with_path(self.location().join(format!("index/{}", t.id))))?
                {
                    let s = stats.entry(e.at.pack).or_default();
                    s.total += 1;
                    s.total_bytes += u64::from(e.at.len);
                    if live.contains(&e.id) {
                        s.live += 1;
                        s.live_bytes += u64::from(e.at.len);
                    }
                    if s.tables.last() != Some(&(ti as u32)) {
                        s.tables.push(ti as u32);
                    }
                }
            }
        }
        let packs: HashMap<PackId, (u64, u64)> = self
            .store()
            .list("data/")?
            .into_iter()
            .filter_map(|o| Some((PackId::parse(pack_id_of(&o.name)?)?, (o.len, o.modified))))
            .collect();
        sum.packs = packs.len() as u64;
        sum.pack_bytes = packs.values().map(|v| v.0).sum();
        sum.live_bytes = stats.values().map(|s| s.live_bytes).sum();
        // Earlier lists.
        let mut lists: Vec<(String, Condemned)> = Vec::new();
        for o in self.store().list("condemned/")? {
            let Ok(bytes) = self.store().read(&o.name, 256 << 20) else {
                continue;
            };
            let Ok(plain) = self.keys().open(Kind::Condemned, o.name.as_bytes(), &bytes) else {
                continue;
            };
            if let Ok(mut c) = serde_json::from_slice::<Condemned>(&plain) {
                // The store's clock says when it was written (a host's clock may be off).
                if o.modified > 0 {
                    c.time = c.time.min(o.modified);
                }
                lists.push((o.name, c));
            }
        }
        let me = _reg.key.clone();
        let writers = registrations(self)?
            .iter()
            .any(|r| r.key != me && r.live(now));
        sum.writers_running = writers;
        let due: Vec<&(String, Condemned)> = lists
            .iter()
            .filter(|(_, c)| now.saturating_sub(c.time) >= grace)
            .collect();
        let pending_packs: HashSet<&str> = lists
            .iter()
            .flat_map(|(_, c)| c.packs.iter().map(String::as_str))
            .collect();
        let pending_tables: HashSet<&str> = lists
            .iter()
            .flat_map(|(_, c)| c.tables.iter().map(String::as_str))
            .collect();
        sum.waiting_packs = pending_packs.len() as u64;
        // Phase A: carry out lists that are due, when no writer runs.
        let mut gone_tables: HashSet<String> = HashSet::new();
        let mut gone_packs: HashSet<String> = HashSet::new();
        if !dry && !writers && !due.is_empty() {
            let due_tables: HashSet<&str> = due
                .iter()
                .flat_map(|(_, c)| c.tables.iter().map(String::as_str))
                .collect();
            let surviving = IndexSet::new(
                index
                    .tables()
                    .iter()
                    .filter(|t| !due_tables.contains(format!("index/{}", t.id).as_str()))
                    .map(|t| self.open_table(&format!("index/{}", t.id), &t.id))
                    .collect::<Result<Vec<_>>>()?,
            );
            let mut rescue: Vec<IndexEntry> = Vec::new();
            let mut keep_packs: HashSet<String> = HashSet::new();
            for (_, c) in &due {
                for p in &c.packs {
                    let Some(pid) = PackId::parse(p) else {
                        continue;
                    };
                    if !packs.contains_key(&pid) || stats.get(&pid).is_none_or(|s| s.live == 0) {
                        continue;
                    }
                    // Still needed? Only if a live blob of it is nowhere else.
                    let entries = self.pack_entries(p)?;
                    let mut needed = Vec::new();
                    for e in &entries {
                        if live.contains(&e.id) && surviving.lookup(&e.id)?.is_none() {
                            needed.push(IndexEntry {
                                id: e.id,
                                at: crate::index::Location {
                                    pack: pid,
                                    offset: e.offset,
                                    len: e.len,
                                },
                            });
                        }
                    }
                    if !needed.is_empty() {
                        keep_packs.insert(p.clone());
                        rescue.extend(entries.iter().map(|e| IndexEntry {
                            id: e.id,
                            at: crate::index::Location {
                                pack: pid,
                                offset: e.offset,
                                len: e.len,
                            },
                        }));
                    }
                }
            }
            if !rescue.is_empty() {
                rescue.sort_unstable_by_key(|e| e.id);
                rescue.dedup_by_key(|e| e.id);
                self.write_tables_from(
                    rescue.len() as u64,
                    &mut rescue.into_iter().map(Ok),
                    &mut sum,
                )?;
            }
            for (_, c) in &due {
                for t in &c.tables {
                    self.store().delete(t)?;
                    gone_tables.insert(t.clone());
                }
            }
            for (_, c) in &due {
                for p in &c.packs {
                    if keep_packs.contains(p) {
                        continue;
                    }
                    if let Some(pid) = PackId::parse(p) {
                        if let Some((len, _)) = packs.get(&pid) {
                            self.store().delete(&pack_name(p))?;
                            sum.deleted_packs += 1;
                            sum.freed_bytes += len;
                        }
                    }
                    gone_packs.insert(p.clone());
                }
            }
            for (name, _) in &due {
                self.store().delete(name)?;
            }
        }
        // Phase B: condemn what is garbage now.
        let mut condemn: Vec<String> = Vec::new();
        let mut sparse: Vec<String> = Vec::new();
        let mut small: Vec<String> = Vec::new();
        for (pid, (len, modified)) in &packs {
            let hex = pid.hex();
            if pending_packs.contains(hex.as_str()) || gone_packs.contains(&hex) {
                continue;
            }
            match stats.get(pid) {
                None => {
                    if now.saturating_sub(*modified) >= grace {
                        condemn.push(hex);
                        sum.condemned_bytes += len;
                    }
                }
                Some(s) if s.live == 0 => {
                    condemn.push(hex);
                    sum.condemned_bytes += len;
                }
                Some(s) if s.live_bytes * 2 < s.total_bytes => sparse.push(hex),
                Some(s) if s.total_bytes < (PACK_TARGET / 8) as u64 => small.push(hex),
                Some(_) => {}
            }
        }
        if small.len() >= 4 {
            sparse.extend(small);
        }
        if dry {
            sum.condemned_packs = (condemn.len() + sparse.len()) as u64;
            for p in &sparse {
                if let Some(s) = PackId::parse(p).and_then(|pid| stats.get(&pid)) {
                    sum.repacked_bytes += s.live_bytes;
                    sum.repacked_blobs += s.live;
                    sum.condemned_bytes += s.total_bytes;
                }
            }
            return Ok(sum);
        }
        // Copy the live blobs of sparse packs into new packs (checked on the way).
        if !sparse.is_empty() {
            let mut w = BlobWriter::fresh(self)?;
            for p in &sparse {
                let entries = self.pack_entries(p)?;
                let pid = PackId::parse(p).unwrap_or_default();
                for e in entries {
                    if !live.contains(&e.id) {
                        continue;
                    }
                    let sealed = self.read_sealed(&crate::index::Location {
                        pack: pid,
                        offset: e.offset,
                        len: e.len,
                    })?;
                    crate::pack::check_blob(self.keys(), &e.id, &sealed, max).map_err(|err| {
                        err_at(
                            self.location(),
                            ErrorKind::Corrupt,
                            format!(
                                "pack {p}: a block cannot be copied: {}; nothing was deleted",
                                err.message()
                            ),
                        )
                    })?;
                    sum.repacked_blobs += 1;
                    sum.repacked_bytes += sealed.len() as u64;
                    w.put_sealed(e.id, &sealed)?;
                }
                if let Some(s) = stats.get(&pid) {
                    sum.condemned_bytes += s.total_bytes;
                }
            }
            w.write_table()?;
            sum.tables_written += w.tables_written;
            condemn.extend(sparse);
        }
        // Tables that list condemned packs (or all, when there are too many) are replaced by
        // one listing their other entries.
        let condemned_now: HashSet<PackId> =
            condemn.iter().filter_map(|p| PackId::parse(p)).collect();
        let dropped: HashSet<PackId> = condemned_now
            .iter()
            .copied()
            .chain(pending_packs.iter().filter_map(|p| PackId::parse(p)))
            .chain(gone_packs.iter().filter_map(|p| PackId::parse(p)))
            .collect();
        let live_tables: Vec<usize> = (0..index.tables().len())
            .filter(|&ti| {
                let name = format!("index/{}", index.tables()[ti].id);
                !pending_tables.contains(name.as_str()) && !gone_tables.contains(&name)
            })
            .collect();
        let mut replace: Vec<usize> = if live_tables.len() > MAX_TABLES {
            live_tables.clone()
        } else {
            let touched: HashSet<u32> = condemned_now
                .iter()
                .filter_map(|p| stats.get(p))
                .flat_map(|s| s.tables.iter().copied())
                .collect();
            live_tables
                .iter()
                .copied()
                .filter(|t| touched.contains(&(*t as u32)))
                .collect()
        };
        replace.sort_unstable();
        if !replace.is_empty() {
            let tables: Vec<&IndexTable> = replace.iter().map(|&t| &index.tables()[t]).collect();
            let keep =
                |e: &IndexEntry| !dropped.contains(&e.at.pack) && packs.contains_key(&e.at.pack);
            let count = merged(&tables, &keep).try_fold(0u64, |n, e| e.map(|_| n + 1))?;
            self.write_tables_from(count, &mut merged(&tables, &keep), &mut sum)?;
        }
        sum.condemned_packs = condemn.len() as u64;
        if !condemn.is_empty() || !replace.is_empty() {
            let list = Condemned {
                time: now,
                packs: condemn,
                tables: replace
                    .iter()
                    .map(|&t| format!("index/{}", index.tables()[t].id))
                    .collect(),
            };
            let name = format!("condemned/{}", crate::crypto::random_id()?);
            let json = serde_json::to_vec(&list).map_err(|e| Error::invalid(e.to_string()))?;
            let sealed = self.keys().seal(Kind::Condemned, name.as_bytes(), &json)?;
            self.store().create(&name, &sealed)?;
        }
        // Leftovers: temporary files of killed runs; registrations of dead runs.
        for o in self.store().leftovers()? {
            if now.saturating_sub(o.modified) >= LEFTOVER_AGE {
                self.store().delete_leftover(&o.name)?;
                sum.leftovers_removed += 1;
            }
        }
        for r in registrations(self)? {
            if r.key == me {
                continue;
            }
            let expired = match &r.body {
                Some(b) => {
                    b.proven_dead()
                        || now.saturating_sub(b.refreshed) > LOCK_EXPIRY.max(stale_secs())
                }
                None => now.saturating_sub(r.modified) > LOCK_EXPIRY,
            };
            if expired {
                self.store().delete(&r.key)?;
                sum.leftovers_removed += 1;
            }
        }
        Ok(sum)
    }

    /// The entries of pack `id`, from its header.
    pub(crate) fn pack_entries(&self, id: &str) -> Result<Vec<crate::pack::PackEntry>> {
        let name = pack_name(id);
        let len = self
            .store()
            .list(&format!("data/{}/", &id[..2]))?
            .into_iter()
            .find(|o| o.name == name)
            .map(|o| o.len)
            .ok_or_else(|| {
                Error::new(ErrorKind::NotFound, "pack is gone")
                    .with_path(self.location().join(&name))
            })?;
        let tl = crate::pack::trailer_len();
        if len < tl {
            return Err(Error::corrupt("is not a pack").with_path(self.location().join(&name)));
        }
        let trailer = self.store().read_range(&name, len - tl, tl)?;
        let (start, n) = crate::pack::header_range(&trailer, len)
            .map_err(|e| e.with_path(self.location().join(&name)))?;
        let sealed = self.store().read_range(&name, start, n)?;
        crate::pack::decode_header(self.keys(), id, &sealed, start)
            .map_err(|e| e.with_path(self.location().join(&name)))
    }

    /// Write `count` sorted entries from `entries` as tables of at most
    /// [`MAX_TABLE_ENTRIES`], streamed.
    fn write_tables_from(
        &self,
        count: u64,
        entries: &mut dyn Iterator<Item = Result<IndexEntry>>,
        sum: &mut GcSummary,
    ) -> Result<()> {
        let mut left = count;
        while left > 0 {
            let n = left.min(MAX_TABLE_ENTRIES);
            let id = crate::crypto::random_id()?;
            let name = format!("index/{id}");
            let keys = self.keys().clone();
            self.store()
                .create_streamed(&name, &mut |out: &mut dyn Write| {
                    let mut w = IndexWriter::new(out, &keys, &id, n)?;
                    for _ in 0..n {
                        let e = entries
                            .next()
                            .ok_or_else(|| Error::invalid("fewer entries than counted"))??;
                        w.push(e)?;
                    }
                    w.finish().map(|_| ())
                })?;
            sum.tables_written += 1;
            left -= n;
        }
        Ok(())
    }
}

/// The entries of `tables` that `keep` keeps, merged in id order, each id once.
fn merged<'a>(
    tables: &'a [&'a IndexTable],
    keep: &'a dyn Fn(&IndexEntry) -> bool,
) -> impl Iterator<Item = Result<IndexEntry>> + 'a {
    struct Cursor<'t> {
        table: &'t IndexTable,
        page: u64,
        entries: Vec<IndexEntry>,
        at: usize,
    }
    let mut cursors: Vec<Cursor<'a>> = tables
        .iter()
        .map(|t| Cursor {
            table: t,
            page: 0,
            entries: Vec::new(),
            at: 0,
        })
        .collect();
    let mut heap: BinaryHeap<std::cmp::Reverse<(BlockId, usize)>> = BinaryHeap::new();
    let mut started = false;
    let mut last: Option<BlockId> = None;
    let mut failed = false;
    // Load the next entry of cursor `i` into the heap.
    fn advance(
        c: &mut Cursor<'_>,
        i: usize,
        heap: &mut BinaryHeap<std::cmp::Reverse<(BlockId, usize)>>,
    ) -> Result<()> {
        while c.at >= c.entries.len() {
            if c.page >= c.table.pages() {
                return Ok(());
            }
            c.entries = c.table.page(c.page)?;
            c.page += 1;
            c.at = 0;
        }
        heap.push(std::cmp::Reverse((c.entries[c.at].id, i)));
        Ok(())
    }
    std::iter::from_fn(move || loop {
        if failed {
            return None;
        }
        if !started {
            started = true;
            for (i, c) in cursors.iter_mut().enumerate() {
                if let Err(e) = advance(c, i, &mut heap) {
                    failed = true;
                    return Some(Err(e));
                }
            }
        }
        let std::cmp::Reverse((id, i)) = heap.pop()?;
        let c = &mut cursors[i];
        let e = c.entries[c.at];
        c.at += 1;
        if let Err(err) = advance(c, i, &mut heap) {
            failed = true;
            return Some(Err(err));
        }
        if last == Some(id) || !keep(&e) {
            continue;
        }
        last = Some(id);
        return Some(Ok(e));
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_set_never_misses_a_live_id() {
        let mut s = LiveSet::new(1000).unwrap();
        let ids: Vec<BlockId> = (0..1000u32)
            .map(|i| BlockId(*blake3::hash(&i.to_le_bytes()).as_bytes()))
            .collect();
        for id in &ids {
            s.insert(id);
        }
        assert!(ids.iter().all(|id| s.contains(id)));
        let false_hits = (1000..11_000u32)
            .filter(|i| s.contains(&BlockId(*blake3::hash(&i.to_le_bytes()).as_bytes())))
            .count();
        assert!(false_hits < 100, "{false_hits}");
    }
}
