//! Metadata consistency checks (`vdisk check`): what `qemu-img check` finds (grain pointers
//! past the end of the file, overlapping tables) and more (primary and redundant directories
//! that disagree, grains inside metadata, compressed grains with wrong markers, short flat
//! files, an unclean shutdown).

use std::collections::HashSet;
use std::path::PathBuf;

use byteorder::{ByteOrder, LittleEndian as LE};
use vdisk_core::SECTOR;

use crate::header::{SparseHeader, GD_AT_END};
use crate::marker::Marker;
use crate::sparse::{GrainEntry, SparseExtent};
use crate::VmdkImage;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Data may read wrong or not at all.
    Error,
    /// Worth knowing; data reads as stored.
    Warning,
}

/// One finding of a check.
#[derive(Debug, Clone)]
pub struct Finding {
    /// How serious it is.
    pub severity: Severity,
    /// The file it is about.
    pub file: PathBuf,
    /// What is wrong.
    pub message: String,
}

/// Findings of one kind beyond this count are summarised in one line.
const MAX_EXAMPLES: usize = 10;

struct Report<'a> {
    file: PathBuf,
    out: &'a mut Vec<Finding>,
}

impl Report<'_> {
    fn error(&mut self, message: String) {
        self.out.push(Finding {
            severity: Severity::Error,
            file: self.file.clone(),
            message,
        });
    }
    fn warning(&mut self, message: String) {
        self.out.push(Finding {
            severity: Severity::Warning,
            file: self.file.clone(),
            message,
        });
    }
    /// Report the first few of `items`, then a count of the rest.
    fn errors(&mut self, items: Examples, what: &str) {
        let n = items.total;
        for m in items.shown {
            self.error(m);
        }
        if n > MAX_EXAMPLES as u64 {
            self.error(format!("… and {} more {what}", n - MAX_EXAMPLES as u64));
        }
    }
}

/// Findings of one kind: the first [`MAX_EXAMPLES`] messages and a count. A hostile file can
/// hold hundreds of millions of bad pointers; only the shown ones are ever formatted or kept.
#[derive(Default)]
struct Examples {
    shown: Vec<String>,
    total: u64,
}

impl Examples {
    fn push(&mut self, message: impl FnOnce() -> String) {
        if self.shown.len() < MAX_EXAMPLES {
            self.shown.push(message());
        }
        self.total += 1;
    }
}

/// Check every layer of `img`. An empty result means the metadata is consistent.
pub fn check(img: &VmdkImage) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for layer in img.layers() {
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
                    r.error(format!(
                        "flat extent file is {} bytes, shorter than the {need} bytes its extent line needs (the rest reads as zero)",
                        file.len()
                    ));
                }
            }
        }
    }
    out
}

/// A byte range of the file holding metadata.
#[derive(Debug, Clone)]
struct Region {
    start: u64,
    end: u64,
    what: What,
}

/// What a [`Region`] holds; a directory can name millions of tables, so names are formatted
/// only for the findings that are shown.
#[derive(Debug, Clone, Copy)]
enum What {
    Header,
    Descriptor,
    Directory(&'static str),
    Table(usize, &'static str),
}

impl std::fmt::Display for What {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            What::Header => f.write_str("the header"),
            What::Descriptor => f.write_str("the embedded descriptor"),
            What::Directory(name) => write!(f, "the {name}"),
            What::Table(i, name) => write!(f, "grain table {i} of the {name}"),
        }
    }
}

/// For each prefix of `regions` (sorted by start), the index of the region that ends last.
fn furthest_reaching(regions: &[Region]) -> Vec<usize> {
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
fn region_at<'a>(regions: &'a [Region], widest: &[usize], at: u64) -> Option<&'a Region> {
    let before = regions.partition_point(|g| g.start < at.saturating_add(SECTOR));
    let g = &regions[*widest.get(before.checked_sub(1)?)?];
    (g.end > at).then_some(g)
}

fn read_dir(data: &[u8], sector: u64, n: u64) -> Option<Vec<u32>> {
    let start = sector.checked_mul(SECTOR)?;
    let end = start.checked_add(n.checked_mul(4)?)?;
    let raw = data.get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)?;
    Some(raw.chunks_exact(4).map(LE::read_u32).collect())
}

fn check_sparse(sparse: &SparseExtent, r: &mut Report<'_>) {
    let h: &SparseHeader = sparse.header();
    let data = sparse.bytes().slice().unwrap_or(&[]);
    let len = data.len() as u64;
    for note in &sparse.open_notes {
        r.error(note.clone());
    }
    if h.unclean_shutdown {
        r.warning("uncleanShutdown is set: the image was not closed cleanly".into());
    }
    let gtes = u64::from(h.gtes_per_gt);
    let table_bytes = gtes * 4;
    let n = h.gd_entries();

    let mut regions = vec![Region {
        start: 0,
        end: SECTOR,
        what: What::Header,
    }];
    if h.descriptor_offset != 0 && h.descriptor_size != 0 {
        regions.push(Region {
            start: h.descriptor_offset * SECTOR,
            end: (h.descriptor_offset + h.descriptor_size) * SECTOR,
            what: What::Descriptor,
        });
    }
    let primary = read_dir(data, sparse.gd_offset(), n);
    let redundant = if h.flags.redundant_gd() && h.rgd_offset != 0 && h.rgd_offset != GD_AT_END {
        read_dir(data, h.rgd_offset, n)
    } else {
        None
    };
    for (dir, sector, name) in [
        (&primary, sparse.gd_offset(), "grain directory"),
        (&redundant, h.rgd_offset, "redundant grain directory"),
    ] {
        if dir.is_some() {
            regions.push(Region {
                start: sector * SECTOR,
                end: sector * SECTOR + n * 4,
                what: What::Directory(name),
            });
        }
    }
    let mut past_end = Examples::default();
    for (dir, name) in [
        (&primary, "grain directory"),
        (&redundant, "redundant grain directory"),
    ] {
        let Some(dir) = dir else { continue };
        for (i, &t) in dir.iter().enumerate() {
            if t == 0 {
                continue;
            }
            let start = u64::from(t) * SECTOR;
            if start + table_bytes > len {
                past_end.push(|| format!(
                    "{name} entry {i}: grain table at sector {t} lies past the end of the file ({len} bytes)"
                ));
            } else {
                regions.push(Region {
                    start,
                    end: start + table_bytes,
                    what: What::Table(i, name),
                });
            }
        }
    }
    r.errors(past_end, "tables past the end");

    // Overlapping metadata regions (a table over the header, two tables sharing sectors).
    regions.sort_by_key(|g| (g.start, g.end));
    let mut overlaps = Examples::default();
    let mut reach: Option<&Region> = None;
    for g in &regions {
        if let Some(prev) = reach {
            if g.start < prev.end {
                overlaps.push(|| format!("{} overlaps {}", g.what, prev.what));
            }
        }
        if reach.map_or(true, |p| g.end > p.end) {
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
                disagree.push(|| {
                    format!(
                    "grain directory and redundant directory disagree at entry {i} ({a} vs {b})"
                )
                });
            } else if a != 0 && compared.insert(a) {
                let ta = read_dir(data, u64::from(a), gtes);
                let tb = read_dir(data, u64::from(b), gtes);
                if let (Some(ta), Some(tb)) = (ta, tb) {
                    let ca = ta.iter().map(|&e| e != 0);
                    let first = ca.zip(tb.iter().map(|&e| e != 0)).position(|(x, y)| x != y);
                    if let Some(j) = first {
                        disagree.push(|| {
                            format!(
                                "grain table {i} and its redundant copy disagree on grain {}",
                                i as u64 * gtes + j as u64
                            )
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
                            format!(
                                "grain {g}: offset {at} is past the end of the file ({len} bytes)"
                            )
                        } else {
                            format!("grain {g}: offset {at} lies inside the header")
                        }
                    });
                }
                GrainEntry::Data(at) => {
                    if let Some(m) = region_at(&regions, &widest, at) {
                        bad.push(|| format!("grain {g}: offset {at} lies inside {}", m.what));
                    } else if h.flags.compressed() {
                        match sparse.compressed_span(at) {
                            Err(e) => bad.push(|| format!("grain {g}: {}", e.message())),
                            Ok((_, _, Some(lba))) if lba != g * h.grain_size => bad.push(|| {
                                format!(
                                    "grain {g}: marker says sector {lba}, the table says sector {}",
                                    g * h.grain_size
                                )
                            }),
                            Ok(_) => {}
                        }
                    } else if at + sparse.grain_bytes() > len {
                        bad.push(|| {
                            format!(
                            "grain {g}: offset {at} runs past the end of the file ({len} bytes)"
                        )
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
            r.warning("streamOptimized image does not end with an end-of-stream marker".into());
        }
    }
}
