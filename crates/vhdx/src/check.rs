//! What `vdisk info` shows of a VHDX file, and what `vdisk check` finds in it beyond what
//! opening already refuses.

use serde_json::{json, Map, Value};
use vdisk_core::{DiskImage, Finding};
use vdisk_io::LayerInfo;

use crate::bat::{
    BlockState, BITMAP_BLOCK_SIZE, OFFSET_MASK, RESERVED_MASK, SB_BLOCK_PRESENT, STATE_MASK,
};
use crate::header::MIB;
use crate::image::VhdxImage;

/// The details `vdisk info` shows.
pub fn info(img: &VhdxImage) -> LayerInfo {
    let m = img.metadata_items();
    let h = &img.header().raw;
    let log = match &img.view().replay {
        Some(r) => format!(
            "replayed in memory ({} entries up to sequence {}: {} sectors written, {} ranges zeroed)",
            r.entries, r.head_sequence, r.data_sectors, r.zero_ranges
        ),
        None => "empty".to_string(),
    };
    let mut fields = Map::new();
    fields.insert("subformat".into(), json!(img.subformat().name()));
    fields.insert("block_size".into(), json!(m.block_size));
    fields.insert("logical_sector_size".into(), json!(m.logical_sector_size));
    fields.insert("physical_sector_size".into(), json!(m.physical_sector_size));
    fields.insert("log".into(), json!(log));
    fields.insert("data_write_guid".into(), json!(h.data_write_guid.braced()));
    fields.insert("virtual_disk_id".into(), json!(m.disk_id.braced()));
    fields.insert("creator".into(), json!(img.creator()));
    let mut text = vec![
        format!("subformat: {}", img.subformat().name()),
        format!("block size: {}", vdisk_core::size::human(m.block_size)),
        format!(
            "sector size: {} logical, {} physical",
            m.logical_sector_size, m.physical_sector_size
        ),
        format!("log: {log}"),
        format!("data write GUID: {}", h.data_write_guid.braced()),
    ];
    if let Some(p) = &m.parent {
        let entries: Map<String, Value> = p
            .entries
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        fields.insert("parent_locator".into(), Value::Object(entries));
        for (k, v) in &p.entries {
            text.push(format!("parent locator {k}: {v}"));
        }
    }
    let mut headline = Map::new();
    headline.insert("subformat".into(), json!(img.subformat().name()));
    headline.insert("cluster_size".into(), json!(m.block_size));
    LayerInfo {
        fields,
        headline,
        text,
    }
}

/// Consistency findings: damaged redundant copies, a log left to replay, reserved bits,
/// misaligned regions, blocks that share bytes.
pub fn check(img: &VhdxImage) -> Vec<Finding> {
    let path = img.view().bytes().path().to_path_buf();
    let mut out = Vec::new();
    let warn = |out: &mut Vec<Finding>, m: String| out.push(Finding::warning(&path, m));
    let header = img.header();
    if !header.other_valid {
        warn(
            &mut out,
            format!(
                "the header copy at {} KiB is not valid (the one at {} KiB is used)",
                if header.index == 0 { 128 } else { 64 },
                if header.index == 0 { 64 } else { 128 }
            ),
        );
    }
    let regions = img.regions();
    if let Some(p) = &regions.other_problem {
        warn(
            &mut out,
            format!(
                "the region table copy at {} KiB {p}",
                if regions.copy == 0 { 256 } else { 192 }
            ),
        );
    }
    if let Some(r) = &img.view().replay {
        warn(
            &mut out,
            format!(
                "the log holds {} entries not yet applied to the file (replayed in memory when read)",
                r.entries
            ),
        );
    }
    for (name, r) in [("BAT", regions.bat), ("metadata", regions.metadata)] {
        if r.offset % MIB != 0 || r.length % MIB != 0 {
            warn(
                &mut out,
                format!(
                    "the {name} region ({} bytes at {}) is not aligned to 1 MiB",
                    r.length, r.offset
                ),
            );
        }
    }
    let bat = img.bat();
    let g = bat.geometry;
    let reserved = bat
        .entries
        .iter()
        .filter(|e| *e & RESERVED_MASK != 0)
        .count();
    if reserved > 0 {
        warn(
            &mut out,
            format!("{reserved} BAT entries have reserved bits set"),
        );
    }
    // Every block's bytes in the file, to find two blocks sharing bytes.
    let mut blocks: Vec<(u64, u64, String)> = Vec::new();
    for block in 0..g.data_blocks {
        if let BlockState::Full(off) | BlockState::Partial(off, _) = bat.state(block) {
            blocks.push((off, off + g.block_size, format!("payload block {block}")));
        }
    }
    for chunk in 0..g.data_blocks.div_ceil(g.chunk_ratio) {
        let i = g.bitmap_index(chunk) as usize;
        let Some(&e) = bat.entries.get(i) else {
            continue;
        };
        if e & STATE_MASK == SB_BLOCK_PRESENT {
            if g.has_parent {
                let off = e & OFFSET_MASK;
                blocks.push((
                    off,
                    off + BITMAP_BLOCK_SIZE,
                    format!("sector bitmap block {chunk}"),
                ));
            } else {
                warn(
                    &mut out,
                    format!(
                        "sector bitmap block {chunk} is marked present in a disk without a parent"
                    ),
                );
            }
        }
    }
    blocks.sort_unstable();
    let mut overlaps = 0usize;
    for w in blocks.windows(2) {
        if w[1].0 < w[0].1 {
            overlaps += 1;
            if overlaps <= 10 {
                out.push(Finding::error(
                    &path,
                    format!("{} and {} share bytes at {}", w[0].2, w[1].2, w[1].0),
                ));
            }
        }
    }
    if overlaps > 10 {
        out.push(Finding::error(
            &path,
            format!("{} more pairs of blocks share bytes", overlaps - 10),
        ));
    }
    let file_len = img.view().bytes().len();
    let end = blocks.iter().map(|b| b.1).max().unwrap_or(0);
    if end > file_len && img.size() > 0 {
        warn(
            &mut out,
            format!("the last block ends at {end}, past the end of the file ({file_len} bytes)"),
        );
    }
    out
}
