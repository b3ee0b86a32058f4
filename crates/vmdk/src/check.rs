//! Metadata consistency checks (`vdisk check`): what `qemu-img check` finds (grain pointers
//! past the end of the file, overlapping tables) and more (primary and redundant directories
//! that disagree, grains inside metadata, compressed grains with wrong markers, short flat
//! files, an unclean shutdown).

use std::collections::HashSet;
use std::path::PathBuf;

use vdisk_core::SECTOR;

use crate::findings::{Directory, Region};
pub use crate::findings::{Finding, Problem, Severity};
use crate::header::{SparseHeader, GD_AT_END};
use crate::marker::Marker;
use crate::sparse::{read_u32s, GrainEntry, SparseExtent};
use crate::VmdkLayer;

/// Findings of one kind beyond this count are summarised in one line.
const MAX_EXAMPLES: usize = 10;

struct Report<'a> {
    file: PathBuf,
    out: &'a mut Vec<Finding>,
}

impl Report<'_> {
    fn error(&mut self, problem: Problem) {
        self.out.push(Finding {
            severity: Severity::Error,
            file: self.file.clone(),
            problem,
        });
    }
    fn warning(&mut self, problem: Problem) {
        self.out.push(Finding {
            severity: Severity::Warning,
            file: self.file.clone(),
            problem,
        });
    }
    /// Report the first few of `items`, then a count of the rest.
    fn errors(&mut self, items: Examples, what: &'static str) {
        let n = items.total;
        for m in items.shown {
            self.error(m);
        }
        if n > MAX_EXAMPLES as u64 {
            self.error(Problem::More {
                count: n - MAX_EXAMPLES as u64,
                what,
            });
        }
    }
}

/// Findings of one kind: the first [`MAX_EXAMPLES`] and a count. A hostile file can hold
/// hundreds of millions of bad pointers; only the shown ones are ever built or kept.
#[derive(Default)]
struct Examples {
    shown: Vec<Problem>,
    total: u64,
}

impl Examples {
    fn push(&mut self, problem: impl FnOnce() -> Problem) {
        if self.shown.len() < MAX_EXAMPLES {
            self.shown.push(problem());
        }
        self.total += 1;
    }
}

/// Check the files of `layer` (its descriptor's extents; a chain's other links are checked
/// on their own). An empty result means the metadata is consistent.
pub fn check(layer: &VmdkLayer) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    {
        for ext in layer.extents() {
            if let Some(sparse) = ext.sparse() {
                if seen.insert(sparse.bytes().path().to_path_buf()) {
                    let mut r = Report {
                        file: sparse.bytes().path().to_path_buf(),
                        out: &mut out,
                    };
                    check_sparse(sparse, &mut r);
                }
            }
            if let Some(x) = ext.sesparse() {
                if seen.insert(x.bytes().path().to_path_buf()) {
                    crate::esx_check::check_sesparse(x, &mut out);
                }
            }
            if let Some(x) = ext.cowd() {
                if seen.insert(x.bytes().path().to_path_buf()) {
                    crate::esx_check::check_cowd(x, &mut out);
                }
            }
            if let Some((file, offset)) = ext.flat() {
                let need = offset.saturating_add(ext.len);
                if file.len() < need {
                    let mut r = Report {
                        file: file.path().to_path_buf(),
                        out: &mut out,
                    };
                    r.error(Problem::FlatExtentShort {
                        len: file.len(),
                        need,
                    });
                }
            }
        }
    }
    out
}

/// A byte range of the file holding metadata.
#[derive(Debug, Clone)]
struct Span {
    start: u64,
    end: u64,
    what: Region,
}

/// For each prefix of `regions` (sorted by start), the index of the region that ends last.
fn furthest_reaching(regions: &[Span]) -> Vec<usize> {
    let mut best = 0;
    regions
        .iter()
        .enumerate()
        .map(|(i, g)| {
            if g.end > regions[best].end {
                best = i;
            }
            best
        })
        .collect()
}

/// A region that the sector at byte `at` overlaps, if any (`regions` sorted by start, `widest`
/// from [`furthest_reaching`]). A search, not a scan: it runs once per grain, and a hostile
/// directory can name millions of tables.
fn region_at<'a>(regions: &'a [Span], widest: &[usize], at: u64) -> Option<&'a Span> {
    let before = regions.partition_point(|g| g.start < at.saturating_add(SECTOR));
    let g = &regions[*widest.get(before.checked_sub(1)?)?];
    (g.end > at).then_some(g)
}

fn check_sparse(sparse: &SparseExtent, r: &mut Report<'_>) {
    let h: &SparseHeader = sparse.header();
    let data = sparse.bytes().slice().unwrap_or(&[]);
    let len = data.len() as u64;
    for note in &sparse.open_notes {
        r.error(note.clone());
    }
    if h.unclean_shutdown {
        r.warning(Problem::UncleanShutdown);
    }
    let gtes = u64::from(h.gtes_per_gt);
    let table_bytes = gtes * 4;
    let n = h.gd_entries();

    let mut regions = vec![Span {
        start: 0,
        end: SECTOR,
        what: Region::Header,
    }];
    if h.descriptor_offset != 0 && h.descriptor_size != 0 {
        regions.push(Span {
            start: h.descriptor_offset * SECTOR,
            end: (h.descriptor_offset + h.descriptor_size) * SECTOR,
            what: Region::Descriptor,
        });
    }
    let primary = read_u32s(data, sparse.gd_offset(), n);
    let redundant = if h.flags.redundant_gd() && h.rgd_offset != 0 && h.rgd_offset != GD_AT_END {
        read_u32s(data, h.rgd_offset, n)
    } else {
        None
    };
    for (dir, sector, name) in [
        (&primary, sparse.gd_offset(), Directory::Primary),
        (&redundant, h.rgd_offset, Directory::Redundant),
    ] {
        if dir.is_some() {
            regions.push(Span {
                start: sector * SECTOR,
                end: sector * SECTOR + n * 4,
                what: Region::Directory(name),
            });
        }
    }
    let mut past_end = Examples::default();
    for (dir, name) in [
        (&primary, Directory::Primary),
        (&redundant, Directory::Redundant),
    ] {
        let Some(dir) = dir else { continue };
        for (i, &t) in dir.iter().enumerate() {
            if t == 0 {
                continue;
            }
            let start = u64::from(t) * SECTOR;
            if start + table_bytes > len {
                past_end.push(|| Problem::TablePastEnd {
                    directory: name,
                    entry: i as u64,
                    sector: t,
                    file_len: len,
                });
            } else {
                regions.push(Span {
                    start,
                    end: start + table_bytes,
                    what: Region::Table(i as u64, name),
                });
            }
        }
    }
    r.errors(past_end, "tables past the end");

    // Overlapping metadata regions (a table over the header, two tables sharing sectors).
    regions.sort_by_key(|g| (g.start, g.end));
    let mut overlaps = Examples::default();
    let mut reach: Option<&Span> = None;
    for g in &regions {
        if let Some(prev) = reach {
            if g.start < prev.end {
                overlaps.push(|| Problem::Overlap {
                    region: g.what,
                    other: prev.what,
                });
            }
        }
        if reach.is_none_or(|p| g.end > p.end) {
            reach = Some(g);
        }
    }
    r.errors(overlaps, "overlapping tables");
    let widest = furthest_reaching(&regions);

    // Slots that share a table were reported above as overlapping tables; walking the shared
    // table again for each of them would only repeat its findings, and a hostile directory of
    // 32 Mi slots naming one table would cost 16 Gi grain visits. So each table is walked once,
    // and the walks cost at most one visit per byte of the file.

    // Primary and redundant copies must agree.
    if let (Some(p), Some(q)) = (&primary, &redundant) {
        let mut disagree = Examples::default();
        let mut compared = HashSet::new();
        for (i, (&a, &b)) in p.iter().zip(q).enumerate() {
            if (a == 0) != (b == 0) {
                disagree.push(|| Problem::DirectoriesDisagree {
                    entry: i as u64,
                    primary: a,
                    redundant: b,
                });
            } else if a != 0 && compared.insert(a) {
                let ta = read_u32s(data, u64::from(a), gtes);
                let tb = read_u32s(data, u64::from(b), gtes);
                if let (Some(ta), Some(tb)) = (ta, tb) {
                    let ca = ta.iter().map(|&e| e != 0);
                    let first = ca.zip(tb.iter().map(|&e| e != 0)).position(|(x, y)| x != y);
                    if let Some(j) = first {
                        disagree.push(|| Problem::TablesDisagree {
                            table: i as u64,
                            grain: i as u64 * gtes + j as u64,
                        });
                    }
                }
            }
        }
        r.errors(disagree, "disagreements between the directories");
    }

    // Every grain pointer: inside the file, outside metadata; compressed grains well-formed.
    let capacity_grains = h.capacity.div_ceil(h.grain_size);
    let mut bad = Examples::default();
    let mut slot_grains = 0u64;
    let mut walked = HashSet::new();
    for slot in 0..sparse.directory_len() {
        let table = sparse.table_sector(slot).unwrap_or(0);
        if table == 0 || !walked.insert(table) {
            continue;
        }
        let first = slot as u64 * gtes;
        let last = (first + gtes).min(capacity_grains);
        for g in first..last {
            slot_grains += 1;
            match sparse.grain(g) {
                GrainEntry::Invalid(raw) => {
                    let at = u64::from(raw) * SECTOR;
                    bad.push(|| {
                        if at >= len {
                            Problem::GrainPastEnd {
                                grain: g,
                                offset: at,
                                file_len: len,
                            }
                        } else {
                            Problem::GrainInHeader {
                                grain: g,
                                offset: at,
                            }
                        }
                    });
                }
                GrainEntry::Data(at) => {
                    if let Some(m) = region_at(&regions, &widest, at) {
                        bad.push(|| Problem::GrainInMetadata {
                            grain: g,
                            offset: at,
                            region: m.what,
                        });
                    } else if h.flags.compressed() {
                        match sparse.compressed_span(at) {
                            Err(e) => bad.push(|| Problem::BadCompressedGrain {
                                grain: g,
                                error: e.message().to_string(),
                            }),
                            Ok((_, _, Some(lba))) if lba != g * h.grain_size => {
                                bad.push(|| Problem::MarkerMismatch {
                                    grain: g,
                                    marker: lba,
                                    table: g * h.grain_size,
                                })
                            }
                            Ok(_) => {}
                        }
                    } else if at + sparse.grain_bytes() > len {
                        bad.push(|| Problem::GrainRunsPastEnd {
                            grain: g,
                            offset: at,
                            file_len: len,
                        });
                    }
                }
                GrainEntry::Unallocated | GrainEntry::Zero | GrainEntry::BadTable => {}
            }
        }
    }
    let _ = slot_grains;
    r.errors(bad, "bad grain pointers");
    if h.flags.markers() && h.gd_offset == GD_AT_END {
        // VMware layout: the stream must end with an end-of-stream marker.
        let eos = data.get(data.len().saturating_sub(512)..).unwrap_or(&[]);
        if !matches!(
            Marker::parse(eos),
            Ok(Marker::Meta {
                kind: crate::MarkerType::EndOfStream,
                ..
            })
        ) {
            r.warning(Problem::NoEndOfStream);
        }
    }
}
