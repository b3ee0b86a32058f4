//! `vdisk check` for the data files of ESX snapshots: SEsparse and COWD extents. What
//! `qemu-img check` reports for them (a grain pointer it cannot look up, a grain past the end
//! of the file) and more: damaged directory entries, tables outside the file or sharing
//! sectors, grains inside metadata or running past the end of the file.

use std::path::PathBuf;

use vdisk_core::SECTOR;

use crate::cowd::{CowdExtent, CowdGrain, CowdTable, COWD_GTES_PER_GT, COWD_HEADER_BYTES};
use crate::findings::{Finding, Problem, Severity};
use crate::sesparse::{SeSparseExtent, SeSparseGrain, SeSparseTable};

/// Findings of one kind beyond this count are summarised in one line.
const MAX_EXAMPLES: usize = 10;

/// Findings about one file, with at most [`MAX_EXAMPLES`] messages of each kind kept (a
/// hostile file can hold millions of bad entries).
struct Findings<'a> {
    file: PathBuf,
    out: &'a mut Vec<Finding>,
}

/// Messages of one kind: the first few, and a count.
#[derive(Default)]
struct Kind {
    shown: Vec<String>,
    total: u64,
}

impl Kind {
    fn push(&mut self, message: impl FnOnce() -> String) {
        if self.shown.len() < MAX_EXAMPLES {
            self.shown.push(message());
        }
        self.total += 1;
    }
}

impl Findings<'_> {
    fn add(&mut self, severity: Severity, message: String) {
        self.push(severity, Problem::SnapshotExtent(message));
    }

    fn push(&mut self, severity: Severity, problem: Problem) {
        self.out.push(Finding {
            severity,
            file: self.file.clone(),
            problem,
        });
    }

    fn all(&mut self, severity: Severity, kind: Kind, what: &'static str) {
        let total = kind.total;
        for m in kind.shown {
            self.add(severity, m);
        }
        if total > MAX_EXAMPLES as u64 {
            self.push(
                severity,
                Problem::More {
                    count: total - MAX_EXAMPLES as u64,
                    what,
                },
            );
        }
    }
}

/// Whether `[start, end)` overlaps any of `regions` (`(start, end, name)`, few of them).
fn overlapping(regions: &[(u64, u64, String)], start: u64, end: u64) -> Option<&str> {
    regions
        .iter()
        .find(|r| start < r.1 && r.0 < end)
        .map(|r| r.2.as_str())
}

/// Check an SEsparse extent.
pub(crate) fn check_sesparse(x: &SeSparseExtent, out: &mut Vec<Finding>) {
    let mut f = Findings {
        file: x.bytes().path().to_path_buf(),
        out,
    };
    let h = x.header();
    let len = x.bytes().len();
    let span = 4096 * x.grain_bytes();
    let covered = x.directory_len().saturating_mul(span);
    if covered < x.capacity() {
        f.add(
            Severity::Error,
            format!(
                "the grain directory covers {covered} bytes of the {}-byte disk; reads past it fail",
                x.capacity()
            ),
        );
    }
    // The fixed metadata, in bytes (saturating: a hostile area may reach past u64).
    let area = |sector: u64, sectors: u64, name: &str| {
        let s = sector.saturating_mul(SECTOR);
        (
            s,
            s.saturating_add(sectors.saturating_mul(SECTOR)),
            name.to_string(),
        )
    };
    let regions = vec![
        area(0, 1, "the header"),
        area(h.volatile_header_offset, 1, "the volatile header"),
        area(h.grain_dir_offset, h.grain_dir_size, "the grain directory"),
        area(
            h.grain_tables_offset,
            h.grain_tables_size,
            "the grain tables area",
        ),
    ];
    let tables_in_area = h.grain_tables_size / 64;
    let mut bad_dir = Kind::default();
    let mut outside_area = Kind::default();
    let mut numbers: Vec<(u64, u64)> = Vec::new();
    for slot in 0..x.directory_used() {
        match x.table(slot) {
            None | Some(SeSparseTable::None) => {}
            Some(SeSparseTable::At(at)) => {
                let number = (at / SECTOR - h.grain_tables_offset) / 64;
                if number >= tables_in_area {
                    outside_area.push(|| {
                        format!("grain table {slot} (table number {number}) lies past the grain tables area ({tables_in_area} tables)")
                    });
                }
                numbers.push((number, slot));
            }
            Some(SeSparseTable::Invalid(raw)) => bad_dir
                .push(|| format!("grain directory entry {slot} is {raw:#018x}, not a grain table")),
            Some(SeSparseTable::TooFar(n)) => bad_dir.push(|| {
                format!("grain directory entry {slot} names grain table {n}, past sector 2^32")
            }),
            Some(SeSparseTable::OutsideFile(at)) => bad_dir.push(|| {
                format!(
                    "grain table {slot} (byte {at}) lies past the end of the file ({len} bytes)"
                )
            }),
        }
    }
    f.all(Severity::Error, bad_dir, "bad grain directory entries");
    f.all(Severity::Warning, outside_area, "tables outside their area");
    // Two slots naming one table: each table is then walked once.
    numbers.sort_unstable();
    let mut shared = Kind::default();
    for w in numbers.windows(2) {
        if w[0].0 == w[1].0 {
            shared.push(|| {
                format!(
                    "grain directory entries {} and {} name the same grain table",
                    w[0].1, w[1].1
                )
            });
        }
    }
    f.all(Severity::Error, shared, "shared grain tables");
    numbers.dedup_by_key(|n| n.0);
    let grains = x.capacity().div_ceil(x.grain_bytes());
    let mut bad = Kind::default();
    for &(_, slot) in &numbers {
        let first = slot * 4096;
        for g in first..(first + 4096).min(grains) {
            match x.grain(g) {
                Ok(SeSparseGrain::Allocated(n)) => {
                    let Some(at) = x.grain_offset(n).filter(|&a| a < len) else {
                        bad.push(|| format!("grain {g}: stored at grain {n} of the grains area, past the end of the file ({len} bytes)"));
                        continue;
                    };
                    let end = at.saturating_add(x.grain_bytes());
                    if let Some(what) = overlapping(&regions, at, end) {
                        bad.push(|| format!("grain {g}: byte {at} lies inside {what}"));
                    } else if end > len {
                        bad.push(|| {
                            format!(
                                "grain {g}: byte {at} runs past the end of the file ({len} bytes)"
                            )
                        });
                    }
                }
                Ok(SeSparseGrain::Invalid(raw)) => {
                    bad.push(|| format!("grain {g}: table entry {raw:#018x} is of no known kind"))
                }
                Ok(_) => {}
                Err(e) => bad.push(|| format!("grain {g}: {}", e.message())),
            }
        }
    }
    f.all(Severity::Error, bad, "bad grain pointers");
}

/// Check a COWD extent.
pub(crate) fn check_cowd(x: &CowdExtent, out: &mut Vec<Finding>) {
    let mut f = Findings {
        file: x.bytes().path().to_path_buf(),
        out,
    };
    let h = x.header();
    let len = x.bytes().len();
    if h.unclean_shutdown != 0 {
        f.add(
            Severity::Warning,
            "uncleanShutdown is set: the snapshot was not closed cleanly".into(),
        );
    }
    if h.version != 1 {
        f.add(
            Severity::Warning,
            format!(
                "COWD version {} (the files described so far have version 1)",
                h.version
            ),
        );
    }
    let needed = h.needed_entries();
    if u64::from(h.gd_entries) < needed {
        f.add(
            Severity::Error,
            format!(
                "the grain directory has {} entries, the capacity needs {needed}; reads past them fail",
                h.gd_entries
            ),
        );
    }
    let table_bytes = COWD_GTES_PER_GT * 4;
    let gd_start = u64::from(h.gd_offset) * SECTOR;
    let regions: Vec<(u64, u64, String)> = vec![
        (0, COWD_HEADER_BYTES, "the header".into()),
        (
            gd_start,
            gd_start + x.directory_used() * 4,
            "the grain directory".into(),
        ),
    ];
    let mut bad_dir = Kind::default();
    let mut tables: Vec<(u64, u64)> = Vec::new();
    for slot in 0..x.directory_used() {
        match x.table(slot) {
            None | Some(CowdTable::None) => {}
            Some(CowdTable::At(at)) => tables.push((at, slot)),
            Some(CowdTable::Invalid(raw)) => bad_dir.push(|| {
                if u64::from(raw) * SECTOR < COWD_HEADER_BYTES {
                    format!("grain table {slot} at sector {raw} lies inside the header")
                } else {
                    format!("grain table {slot} at sector {raw} lies past the end of the file ({len} bytes)")
                }
            }),
        }
    }
    f.all(Severity::Error, bad_dir, "bad grain directory entries");
    // Tables over the directory or over each other (sorted by start, each against the one
    // before: tables are all the same size).
    tables.sort_unstable();
    let mut overlaps = Kind::default();
    for (i, &(at, slot)) in tables.iter().enumerate() {
        if let Some(what) = overlapping(&regions[1..2], at, at + table_bytes) {
            overlaps.push(|| format!("grain table {slot} overlaps {what}"));
        }
        if let Some(&(prev, prev_slot)) = i.checked_sub(1).and_then(|p| tables.get(p)) {
            if at < prev + table_bytes {
                overlaps.push(|| format!("grain table {slot} overlaps grain table {prev_slot}"));
            }
        }
    }
    f.all(Severity::Error, overlaps, "overlapping tables");
    let grains = x.capacity().div_ceil(x.grain_bytes());
    let mut bad = Kind::default();
    // Each table is walked once, and only if it does not overlap the one walked before (the
    // overlap is reported above): a hostile directory of a million slots naming tables one
    // sector apart would otherwise cost 4 Gi grain visits. The walks cost at most one visit
    // per 4 bytes of the file.
    let mut walked: Vec<u64> = Vec::new();
    let mut free_from = 0u64;
    for &(at, slot) in &tables {
        if at >= free_from {
            walked.push(slot);
            free_from = at + table_bytes;
        }
    }
    for &slot in &walked {
        let first = slot * COWD_GTES_PER_GT;
        for g in first..(first + COWD_GTES_PER_GT).min(grains) {
            match x.grain(g) {
                Ok(CowdGrain::Data(at)) => {
                    let end = at + x.grain_bytes();
                    // Inside the directory, or inside a table (a search: tables are sorted).
                    let i = tables.partition_point(|t| t.0 + table_bytes <= at);
                    let in_table = tables.get(i).filter(|t| t.0 < end);
                    if let Some(what) = overlapping(&regions, at, end) {
                        bad.push(|| format!("grain {g}: byte {at} lies inside {what}"));
                    } else if let Some(&(_, ts)) = in_table {
                        bad.push(|| format!("grain {g}: byte {at} lies inside grain table {ts}"));
                    } else if end > len {
                        bad.push(|| {
                            format!(
                                "grain {g}: byte {at} runs past the end of the file ({len} bytes)"
                            )
                        });
                    }
                }
                Ok(CowdGrain::Invalid(raw)) => bad.push(|| {
                    if u64::from(raw) * SECTOR < COWD_HEADER_BYTES {
                        format!("grain {g}: sector {raw} lies inside the header")
                    } else {
                        format!(
                            "grain {g}: sector {raw} lies past the end of the file ({len} bytes)"
                        )
                    }
                }),
                Ok(_) => {}
                Err(e) => bad.push(|| format!("grain {g}: {}", e.message())),
            }
        }
    }
    f.all(Severity::Error, bad, "bad grain pointers");
}
