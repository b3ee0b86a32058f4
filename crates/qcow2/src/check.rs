//! `check`: every reference the image makes (header, L1 and L2 tables, data clusters,
//! snapshots, refcount structures, bitmaps) counted into a model of the file, one counter per
//! cluster, then compared with the refcounts the image stores.
//!
//! Findings are as qemu-img check reports them: leaked clusters are warnings, a refcount
//! lower than the references (clusters used twice, metadata overlapping data) and tables or
//! clusters outside the file are errors. Memory is bounded by the file's size; work by the
//! file's size and the L1 tables' lengths (an L2 table referenced many times is walked once).

use std::collections::BTreeMap;
use std::path::PathBuf;

use byteorder::{BigEndian, ByteOrder};
use vdisk_core::{Finding, Severity};

use crate::bitmap::Bitmaps;
use crate::header::{incompat, MAX_REFTABLE_BYTES};
use crate::image::Qcow2Image;
use crate::tables::{ClusterMapping, Mapping, COMPRESSED, COPIED, OFFSET_MASK};

/// Clusters of a file the model counts at most (256 MiB of counters).
const MAX_CLUSTERS: u64 = 1 << 27;
/// Snapshot L1 entries walked at most, all snapshots together.
const MAX_SNAPSHOT_L1_ENTRIES: u64 = 1 << 24;
/// Findings of one kind spelled out before they are only counted.
const MAX_EACH: usize = 10;

/// Kinds of finding, each reported [`MAX_EACH`] times then summed up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Table,
    Entry,
    Leak,
    TooLow,
    Copied,
}

struct Checker<'a> {
    img: &'a Qcow2Image,
    file: PathBuf,
    cs: u64,
    len: u64,
    /// References counted per cluster of the file.
    refs: Vec<u16>,
    /// Clusters holding metadata.
    meta: Vec<u64>,
    /// Findings by kind, and how many of each there were.
    found: BTreeMap<Kind, (Vec<Finding>, u64)>,
    /// Mismatches are expected: the image is dirty with lazy refcounts.
    stale: bool,
}

/// Check `img`'s metadata.
pub fn check(img: &Qcow2Image) -> Vec<Finding> {
    let h = &img.header;
    let file = img.bytes.path().to_path_buf();
    let mut out = Vec::new();
    if h.incompatible(incompat::CORRUPT) {
        out.push(Finding::error(
            &file,
            "the image is marked corrupt (incompatible feature bit 1): QEMU found damaged \
             metadata and will not write to it",
        ));
    }
    let dirty = h.incompatible(incompat::DIRTY);
    if dirty {
        out.push(Finding::warning(
            &file,
            if h.lazy_refcounts() {
                "the image is dirty with lazy refcounts (QEMU did not close it): refcounts may \
                 be stale; reads are not affected (`qemu-img check -r all` rebuilds them)"
            } else {
                "the image is dirty (QEMU did not close it): refcounts may be stale"
            },
        ));
    }
    match &img.bitmaps {
        Bitmaps::Unusable(why) => out.push(Finding::warning(&file, format!("bitmaps: {why}"))),
        Bitmaps::Directory(v) => {
            for b in v.iter().filter(|b| b.in_use()) {
                out.push(Finding::warning(
                    &file,
                    format!(
                        "bitmap {} is in use: its contents on disk are stale",
                        b.name
                    ),
                ));
            }
        }
        Bitmaps::None => {}
    }
    let cs = h.cluster_size;
    let len = img.bytes.len();
    let clusters = len.div_ceil(cs);
    if clusters > MAX_CLUSTERS {
        out.push(Finding::warning(
            &file,
            format!(
                "refcounts not checked: {clusters} clusters of {cs} bytes are more than vdisk \
                 models ({MAX_CLUSTERS})"
            ),
        ));
        return out;
    }
    let mut c = Checker {
        img,
        file,
        cs,
        len,
        refs: vec![0; clusters as usize],
        meta: vec![0; clusters.div_ceil(64) as usize],
        found: BTreeMap::new(),
        stale: dirty && h.lazy_refcounts(),
    };
    c.run();
    for (_, (list, n)) in c.found {
        let shown = list.len() as u64;
        let severity = list.first().map(|f| f.severity);
        out.extend(list);
        if n > shown {
            let more = format!("... and {} more like the above", n - shown);
            out.push(match severity {
                Some(Severity::Error) => Finding::error(&c.file, more),
                _ => Finding::warning(&c.file, more),
            });
        }
    }
    out
}

impl Checker<'_> {
    fn report(&mut self, kind: Kind, severity: Severity, msg: String) {
        let severity = if self.stale && matches!(kind, Kind::Leak | Kind::TooLow | Kind::Copied) {
            Severity::Warning
        } else {
            severity
        };
        let (list, n) = self.found.entry(kind).or_default();
        *n += 1;
        if list.len() < MAX_EACH {
            list.push(Finding {
                severity,
                file: self.file.clone(),
                message: msg,
            });
        }
    }

    /// Count `weight` references to every cluster of `[off, off + len)`; metadata is also
    /// marked. Returns false (after reporting) when the range is not in the file.
    fn count(&mut self, what: &str, off: u64, len: u64, weight: u32, meta: bool) -> bool {
        if len == 0 {
            return true;
        }
        let end = match off.checked_add(len) {
            Some(e) if e <= self.len.next_multiple_of(self.cs) => e,
            _ => {
                self.report(
                    Kind::Table,
                    Severity::Error,
                    format!("{what} ({len} bytes at offset {off}) lies past the end of the file"),
                );
                return false;
            }
        };
        for c in off / self.cs..end.div_ceil(self.cs) {
            let r = &mut self.refs[c as usize];
            *r = r.saturating_add(weight.min(u32::from(u16::MAX)) as u16);
            if meta {
                self.meta[(c / 64) as usize] |= 1 << (c % 64);
            }
        }
        true
    }

    fn is_meta(&self, off: u64) -> bool {
        let c = off / self.cs;
        self.meta
            .get((c / 64) as usize)
            .is_some_and(|w| w & (1 << (c % 64)) != 0)
    }

    fn aligned(&mut self, what: &str, off: u64) -> bool {
        if !off.is_multiple_of(self.cs) {
            self.report(
                Kind::Table,
                Severity::Error,
                format!("{what} at offset {off:#x} is not aligned to a cluster"),
            );
            return false;
        }
        true
    }

    fn read(&self, off: u64, len: u64) -> Vec<u8> {
        let mut v = vec![0u8; len as usize];
        let _ = self.img.bytes.read_at(&mut v, off);
        v
    }

    /// Add the L2 tables an L1 table of `entries` at `off` points at to `l2s`.
    fn walk_l1(&mut self, what: &str, off: u64, entries: u64, l2s: &mut BTreeMap<u64, u32>) {
        if !self.aligned(what, off) || !self.count(what, off, entries * 8, 1, true) {
            return;
        }
        let table = self.read(off, entries * 8);
        for (i, e) in table.chunks_exact(8).enumerate() {
            let l2 = BigEndian::read_u64(e) & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            if !l2.is_multiple_of(self.cs) {
                self.report(
                    Kind::Entry,
                    Severity::Error,
                    format!(
                        "{what} entry {i}: L2 table offset {l2:#x} is not aligned to a cluster"
                    ),
                );
                continue;
            }
            let w = l2s.entry(l2).or_default();
            *w = w.saturating_add(1);
        }
    }

    fn run(&mut self) {
        let img = self.img;
        let h = &img.header;
        let cs = self.cs;
        // The header cluster.
        self.count("header", 0, cs, 1, true);

        // L1 tables: the active one and every snapshot's.
        let mut l2s: BTreeMap<u64, u32> = BTreeMap::new();
        self.walk_l1(
            "active L1 table",
            h.raw.l1_table_offset,
            u64::from(h.raw.l1_size),
            &mut l2s,
        );
        if !img.snapshots.is_empty() {
            self.count(
                "snapshot table",
                h.raw.snapshots_offset,
                img.snapshot_table_len,
                1,
                true,
            );
        }
        let mut walked = 0u64;
        for s in &img.snapshots {
            walked += u64::from(s.l1_size);
            if walked > MAX_SNAPSHOT_L1_ENTRIES {
                self.report(
                    Kind::Table,
                    Severity::Warning,
                    format!(
                        "snapshot L1 tables hold more than {MAX_SNAPSHOT_L1_ENTRIES} entries: \
                         the rest were not checked"
                    ),
                );
                break;
            }
            self.walk_l1(
                &format!("L1 table of snapshot {}", s.id),
                s.l1_offset,
                u64::from(s.l1_size),
                &mut l2s,
            );
        }

        // Refcount table and blocks.
        let rt_off = h.raw.refcount_table_offset;
        let rt_len = u64::from(h.raw.refcount_table_clusters) * cs;
        let mut reftable: Vec<u64> = Vec::new();
        if rt_len > MAX_REFTABLE_BYTES {
            self.report(
                Kind::Table,
                Severity::Error,
                format!("refcount table of {rt_len} bytes is above qemu's 8 MiB"),
            );
        } else if self.count("refcount table", rt_off, rt_len, 1, true) {
            reftable = self
                .read(rt_off, rt_len)
                .chunks_exact(8)
                .map(BigEndian::read_u64)
                .collect();
            for (i, entry) in reftable.iter_mut().enumerate() {
                let off = *entry & OFFSET_MASK;
                if off == 0 {
                    continue;
                }
                let what = format!("refcount block {i}");
                // A block outside the file counts nothing.
                if !self.aligned(&what, off) || !self.count(&what, off, cs, 1, true) {
                    *entry = 0;
                }
            }
        }
        if rt_len == 0 || reftable.iter().all(|&e| e & OFFSET_MASK == 0) {
            self.report(
                Kind::Table,
                Severity::Error,
                "the image has no refcount blocks".into(),
            );
        }

        // Bitmaps: directory, tables, data clusters.
        if let (Some(ext), Bitmaps::Directory(list)) = (h.bitmaps, &img.bitmaps) {
            self.count(
                "bitmap directory",
                ext.directory_offset,
                ext.directory_size,
                1,
                true,
            );
            for b in list {
                let what = format!("bitmap {} table", b.name);
                let n = u64::from(b.table_size);
                if !self.aligned(&what, b.table_offset)
                    || !self.count(&what, b.table_offset, n * 8, 1, true)
                {
                    continue;
                }
                for e in self.read(b.table_offset, n * 8).chunks_exact(8) {
                    let off = BigEndian::read_u64(e) & OFFSET_MASK;
                    if off != 0 && self.aligned(&format!("bitmap {} data", b.name), off) {
                        self.count(&format!("bitmap {} data", b.name), off, cs, 1, true);
                    }
                }
            }
        }

        // L2 tables are metadata; mark them all before their entries are looked at, so data
        // pointing into any metadata is found.
        let mut tables = Vec::with_capacity(l2s.len());
        for (&off, &w) in &l2s {
            if self.count("L2 table", off, cs, w, true) {
                tables.push((off, w));
            }
        }
        for (off, w) in tables {
            self.walk_l2(off, w);
        }

        let stored = StoredRefcounts::new(img, reftable);
        self.compare(&stored);
        self.check_copied(&stored);
    }

    /// Count the clusters the L2 table at `off` references, `weight` times.
    fn walk_l2(&mut self, off: u64, weight: u32) {
        let img = self.img;
        let geo = img.geo;
        let cs = self.cs;
        let table = self.read(off, cs);
        for i in 0..geo.l2_entries as usize {
            let (e, bitmap) = geo.raw_entry(&table, i);
            let at = format!("L2 table at {off:#x}, entry {i}");
            let m = match geo.decode(e, bitmap) {
                Ok(m) => m,
                Err(err) => {
                    self.report(
                        Kind::Entry,
                        Severity::Error,
                        format!("{at}: {}", err.message()),
                    );
                    continue;
                }
            };
            let (host, len) = match m {
                ClusterMapping::Whole(Mapping::Compressed { offset, len }) => (offset, len),
                ClusterMapping::Whole(Mapping::Data(h)) => (h, cs),
                ClusterMapping::Sub { host, .. } => (host, if host != 0 { cs } else { 0 }),
                // A zero cluster may keep its host cluster (preallocated): still referenced.
                ClusterMapping::Whole(Mapping::Zero | Mapping::Unallocated) => {
                    (e & OFFSET_MASK, if e & OFFSET_MASK != 0 { cs } else { 0 })
                }
            };
            if len == 0 || (geo.external_data && e & COMPRESSED == 0) {
                continue;
            }
            if host >= self.len {
                self.report(
                    Kind::Entry,
                    Severity::Error,
                    format!("{at}: data at host offset {host:#x} lies past the end of the file ({} bytes)", self.len),
                );
                continue;
            }
            if (host..host + len)
                .step_by(cs as usize)
                .chain([host + len - 1])
                .any(|o| self.is_meta(o))
            {
                self.report(
                    Kind::Entry,
                    Severity::Error,
                    format!("{at}: data at host offset {host:#x} overlaps metadata"),
                );
            }
            self.count(&at, host, len, weight, false);
        }
    }

    /// Compare the counted references with the stored refcounts, cluster by cluster.
    fn compare(&mut self, stored: &StoredRefcounts<'_>) {
        let cs = self.cs;
        let mut leaked = 0u64;
        for c in 0..self.refs.len() as u64 {
            let want = u64::from(self.refs[c as usize]);
            let have = stored.get(c);
            if have == want || (want == u64::from(u16::MAX) && have >= want) {
                continue;
            }
            if have > want {
                leaked += 1;
                self.report(
                    Kind::Leak,
                    Severity::Warning,
                    format!(
                        "leaked cluster {c} (offset {:#x}): refcount {have}, {want} references",
                        c * cs
                    ),
                );
            } else {
                self.report(
                    Kind::TooLow,
                    Severity::Error,
                    format!(
                        "cluster {c} (offset {:#x}): refcount {have} but {want} references",
                        c * cs
                    ),
                );
            }
        }
        if leaked > 0 {
            self.report(
                Kind::Leak,
                Severity::Warning,
                format!(
                    "{leaked} leaked clusters ({} bytes): `qemu-img check -r leaks` frees them",
                    leaked * cs
                ),
            );
        }
        if let Some(b) = stored.past_end(self.refs.len() as u64) {
            self.report(
                Kind::TooLow,
                Severity::Error,
                format!("refcount block {b} counts clusters past the end of the file"),
            );
        }
    }

    /// The COPIED flag of active L1 and L2 entries must say whether the refcount is one.
    fn check_copied(&mut self, stored: &StoredRefcounts<'_>) {
        let img = self.img;
        let geo = img.geo;
        let cs = self.cs;
        // An L2 table referenced by several L1 entries is walked once.
        let mut walked = std::collections::HashSet::new();
        for (i, &e) in img.l1.iter().enumerate() {
            let off = e & OFFSET_MASK;
            if off == 0 || !off.is_multiple_of(cs) || off + cs > self.len {
                continue;
            }
            let rc = stored.get(off / cs);
            if (rc == 1) != (e & COPIED != 0) {
                self.report(
                    Kind::Copied,
                    Severity::Error,
                    format!("L1 entry {i}: COPIED flag is wrong for the L2 table at {off:#x} (refcount {rc})"),
                );
            }
            if !walked.insert(off) {
                continue;
            }
            let table = self.read(off, cs);
            for j in 0..geo.l2_entries as usize {
                let (e, _) = geo.raw_entry(&table, j);
                let host = e & OFFSET_MASK;
                if e & COMPRESSED != 0 {
                    if e & COPIED != 0 {
                        self.report(
                            Kind::Copied,
                            Severity::Error,
                            format!("L1 entry {i}, L2 entry {j}: a compressed cluster with the COPIED flag"),
                        );
                    }
                    continue;
                }
                if host == 0 || geo.external_data || !host.is_multiple_of(cs) || host >= self.len {
                    continue;
                }
                let rc = stored.get(host / cs);
                if (rc == 1) != (e & COPIED != 0) {
                    self.report(
                        Kind::Copied,
                        Severity::Error,
                        format!("L1 entry {i}, L2 entry {j}: COPIED flag is wrong for the data cluster at {host:#x} (refcount {rc})"),
                    );
                }
            }
        }
    }
}

/// The refcounts the image stores, read block by block.
struct StoredRefcounts<'a> {
    img: &'a Qcow2Image,
    table: Vec<u64>,
    bits: u32,
    /// Entries per refcount block.
    per_block: u64,
    /// The block last read.
    cache: std::cell::RefCell<Option<(u64, Vec<u8>)>>,
}

impl<'a> StoredRefcounts<'a> {
    fn new(img: &'a Qcow2Image, table: Vec<u64>) -> Self {
        let bits = img.header.refcount_bits;
        StoredRefcounts {
            img,
            table,
            bits,
            per_block: img.header.cluster_size * 8 / u64::from(bits),
            cache: std::cell::RefCell::new(None),
        }
    }

    fn get(&self, cluster: u64) -> u64 {
        let b = cluster / self.per_block;
        let Some(&entry) = self.table.get(b as usize) else {
            return 0;
        };
        let off = entry & OFFSET_MASK;
        if off == 0 {
            return 0;
        }
        let mut cache = self.cache.borrow_mut();
        if cache.as_ref().map(|c| c.0) != Some(off) {
            let mut block = vec![0u8; self.img.header.cluster_size as usize];
            let _ = self.img.bytes.read_at(&mut block, off);
            *cache = Some((off, block));
        }
        let block = &cache.as_ref().expect("just filled").1;
        refcount_entry(block, self.bits, cluster % self.per_block)
    }

    /// The first refcount block that gives a refcount to a cluster at or past `clusters`.
    fn past_end(&self, clusters: u64) -> Option<u64> {
        let first = clusters / self.per_block;
        let mut seen = std::collections::HashSet::new();
        for b in first..self.table.len() as u64 {
            let off = self.table[b as usize] & OFFSET_MASK;
            if off == 0 || !seen.insert(off) {
                continue;
            }
            let start = if b == first {
                clusters % self.per_block
            } else {
                0
            };
            let base = b * self.per_block;
            if (start..self.per_block).any(|i| self.get(base + i) != 0) {
                return Some(b);
            }
        }
        None
    }
}

/// Entry `i` of a refcount block of `bits`-bit entries (sub-byte widths from the least
/// significant bit of each byte, wider ones big-endian).
pub fn refcount_entry(block: &[u8], bits: u32, i: u64) -> u64 {
    match bits {
        1 | 2 | 4 => {
            let bit = i * u64::from(bits);
            let byte = block[(bit / 8) as usize];
            u64::from(byte >> (bit % 8)) & ((1 << bits) - 1)
        }
        8 => u64::from(block[i as usize]),
        16 => u64::from(BigEndian::read_u16(&block[(i * 2) as usize..])),
        32 => u64::from(BigEndian::read_u32(&block[(i * 4) as usize..])),
        _ => BigEndian::read_u64(&block[(i * 8) as usize..]),
    }
}

#[cfg(test)]
mod tests {
    use super::refcount_entry;

    #[test]
    fn refcount_widths() {
        let block = [
            0b1011_0110u8,
            0x12,
            0x34,
            0x56,
            0x78,
            0x9a,
            0xbc,
            0xde,
            0xf0,
        ];
        assert_eq!(refcount_entry(&block, 1, 0), 0);
        assert_eq!(refcount_entry(&block, 1, 1), 1);
        assert_eq!(refcount_entry(&block, 2, 0), 0b10);
        assert_eq!(refcount_entry(&block, 2, 3), 0b10);
        assert_eq!(refcount_entry(&block, 4, 1), 0b1011);
        assert_eq!(refcount_entry(&block, 8, 1), 0x12);
        assert_eq!(refcount_entry(&block, 16, 1), 0x3456);
        assert_eq!(refcount_entry(&block, 32, 1), 0x789a_bcde);
        assert_eq!(refcount_entry(&block, 64, 0), 0xb612_3456_789a_bcde);
    }
}
