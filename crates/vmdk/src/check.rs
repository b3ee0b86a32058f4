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
    fn errors(&mut self, items: Vec<String>, what: &str) {
        let n = items.len();
        for m in items.into_iter().take(MAX_EXAMPLES) {
            self.error(m);
        }
        if n > MAX_EXAMPLES {
            self.error(format!("… and {} more {what}", n - MAX_EXAMPLES));
        }
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
    what: String,
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
        what: "the header".into(),
    }];
    if h.descriptor_offset != 0 && h.descriptor_size != 0 {
        regions.push(Region {
            start: h.descriptor_offset * SECTOR,
            end: (h.descriptor_offset + h.descriptor_size) * SECTOR,
            what: "the embedded descriptor".into(),
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
                what: format!("the {name}"),
            });
        }
    }
    let mut past_end = Vec::new();
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
                past_end.push(format!(
                    "{name} entry {i}: grain table at sector {t} lies past the end of the file ({len} bytes)"
                ));
            } else {
                regions.push(Region {
                    start,
                    end: start + table_bytes,
                    what: format!("grain table {i} of the {name}"),
                });
            }
        }
    }
    r.errors(past_end, "tables past the end");

    // Overlapping metadata regions (a table over the header, two tables sharing sectors).
    regions.sort_by_key(|g| (g.start, g.end));
    let mut overlaps = Vec::new();
    let mut reach: Option<&Region> = None;
    for g in &regions {
        if let Some(prev) = reach {
            if g.start < prev.end {
                overlaps.push(format!("{} overlaps {}", g.what, prev.what));
            }
        }
        if reach.is_none_or(|p| g.end > p.end) {
            reach = Some(g);
        }
    }
    r.errors(overlaps, "overlapping tables");

    // Primary and redundant copies must agree.
    if let (Some(p), Some(q)) = (&primary, &redundant) {
        let mut disagree = Vec::new();
        for (i, (&a, &b)) in p.iter().zip(q).enumerate() {
            if (a == 0) != (b == 0) {
                disagree.push(format!(
                    "grain directory and redundant directory disagree at entry {i} ({a} vs {b})"
                ));
            } else if a != 0 {
                let ta = read_dir(data, u64::from(a), gtes);
                let tb = read_dir(data, u64::from(b), gtes);
                if let (Some(ta), Some(tb)) = (ta, tb) {
                    let ca = ta.iter().map(|&e| e != 0);
                    let first = ca.zip(tb.iter().map(|&e| e != 0)).position(|(x, y)| x != y);
                    if let Some(j) = first {
                        disagree.push(format!(
                            "grain table {i} and its redundant copy disagree on grain {}",
                            i as u64 * gtes + j as u64
                        ));
                    }
                }
            }
        }
        r.errors(disagree, "disagreements between the directories");
    }

    // Every grain pointer: inside the file, outside metadata; compressed grains well-formed.
    let capacity_grains = h.capacity.div_ceil(h.grain_size);
    let mut bad = Vec::new();
    let mut slot_grains = 0u64;
    for slot in 0..sparse.directory_len() {
        if sparse.table_sector(slot).unwrap_or(0) == 0 {
            continue;
        }
        let first = slot as u64 * gtes;
        let last = (first + gtes).min(capacity_grains);
        for g in first..last {
            slot_grains += 1;
            match sparse.grain(g) {
                GrainEntry::Invalid(raw) => {
                    let at = u64::from(raw) * SECTOR;
                    bad.push(if at >= len {
                        format!("grain {g}: offset {at} is past the end of the file ({len} bytes)")
                    } else {
                        format!("grain {g}: offset {at} lies inside the header")
                    });
                }
                GrainEntry::Data(at) => {
                    if let Some(m) = regions.iter().find(|m| at < m.end && at + SECTOR > m.start) {
                        bad.push(format!("grain {g}: offset {at} lies inside {}", m.what));
                    } else if h.flags.compressed() {
                        match sparse.compressed_span(at) {
                            Err(e) => bad.push(format!("grain {g}: {}", e.message())),
                            Ok((_, _, Some(lba))) if lba != g * h.grain_size => bad.push(format!(
                                "grain {g}: marker says sector {lba}, the table says sector {}",
                                g * h.grain_size
                            )),
                            Ok(_) => {}
                        }
                    } else if at + sparse.grain_bytes() > len {
                        bad.push(format!(
                            "grain {g}: offset {at} runs past the end of the file ({len} bytes)"
                        ));
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
