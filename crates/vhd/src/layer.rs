//! A VHD as a [`Layer`]: its parent's names and identity, what `vdisk info` shows, where its
//! metadata lies.

use std::path::Path;

use serde_json::{json, Map, Value};
use vdisk_core::{size, Finding, SECTOR};
use vdisk_io::{Backing, Layer, LayerInfo, LinkId, MetadataRegion};

use crate::footer::{SizeSource, VHD_EPOCH};
use crate::header::{HEADER_SIZE, UNALLOCATED};
use crate::image::{Layout, VhdImage};

impl Layer for VhdImage {
    fn path(&self) -> &Path {
        self.bytes.path()
    }

    fn backing(&self) -> Option<&Backing> {
        self.backing.as_ref()
    }

    fn link_id(&self) -> Option<LinkId> {
        Some(self.link())
    }

    fn disk_usage(&self) -> u64 {
        self.bytes.disk_usage()
    }

    fn info(&self) -> LayerInfo {
        info(self)
    }

    fn check(&self) -> Vec<Finding> {
        crate::check::check(self)
    }

    fn metadata(&self) -> Vec<MetadataRegion> {
        vec![MetadataRegion {
            file: self.bytes.path().to_path_buf(),
            ranges: metadata_ranges(self),
        }]
    }
}

/// Printable text of a four-byte tag (`qemu`, `Wi2k`): trailing spaces and NULs dropped,
/// anything unprintable shown as `?`.
pub(crate) fn tag(b: &[u8; 4]) -> String {
    let s: String = b
        .iter()
        .map(|&c| {
            if c.is_ascii_graphic() || c == b' ' {
                c as char
            } else if c == 0 {
                ' '
            } else {
                '?'
            }
        })
        .collect();
    s.trim_end().to_string()
}

/// A VHD time stamp (seconds since 2000-01-01 UTC) as `YYYY-MM-DD hh:mm:ss UTC`.
pub fn vhd_time(stamp: u32) -> String {
    let secs = VHD_EPOCH + u64::from(stamp);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn info(img: &VhdImage) -> LayerInfo {
    let f = &img.footer;
    let raw = &f.raw;
    let creator = format!(
        "{} {}.{}",
        tag(&raw.creator_app),
        raw.creator_version >> 16,
        raw.creator_version & 0xffff
    );
    let size_from = match f.size_source {
        SizeSource::Geometry => "geometry",
        SizeSource::CurrentSize => "current_size",
    };
    let g = raw.geometry;
    let mut fields = Map::new();
    let mut headline = Map::new();
    let mut text = Vec::new();
    headline.insert("subformat".into(), json!(f.disk_type.name()));
    fields.insert("subformat".into(), json!(f.disk_type.name()));
    fields.insert("creator".into(), json!(creator));
    fields.insert("creator_os".into(), json!(tag(&raw.creator_os)));
    fields.insert("created".into(), json!(vhd_time(raw.timestamp)));
    fields.insert("unique_id".into(), json!(raw.unique_id.to_string()));
    fields.insert(
        "geometry".into(),
        json!({"cylinders": g.cylinders, "heads": g.heads, "sectors": g.sectors}),
    );
    fields.insert("current_size".into(), json!(raw.current_size));
    fields.insert("original_size".into(), json!(raw.original_size));
    fields.insert("size_from".into(), json!(size_from));
    fields.insert("saved_state".into(), json!(raw.saved_state != 0));
    text.push(format!("subformat: {}", f.disk_type.name()));
    text.push(format!(
        "creator: {creator} ({}), {}",
        tag(&raw.creator_os),
        vhd_time(raw.timestamp)
    ));
    text.push(format!("unique id: {}", raw.unique_id));
    text.push(format!(
        "size from: {size_from} (geometry {}/{}/{}, current size {})",
        g.cylinders, g.heads, g.sectors, raw.current_size
    ));
    if let (Layout::Fixed { .. }, Some((_, 511))) = (&img.layout, &img.copies.tail) {
        // qemu reads these too: it rounds the file's length up to a sector, and the byte it
        // adds reads as zero, as the missing reserved byte is.
        fields.insert("footer_bytes".into(), json!(511));
        text.push("footer: 511 bytes (Virtual PC before 2004)".into());
    }
    if raw.saved_state != 0 {
        text.push("saved state: yes (a virtual machine was suspended on it)".into());
    }
    if let Layout::Sparse(s) = &img.layout {
        let allocated = (0..s.bat.len())
            .filter(|&i| s.bat.get(&img.bytes, i) != UNALLOCATED)
            .count();
        headline.insert("cluster_size".into(), json!(s.header.block_size));
        fields.insert("block_size".into(), json!(s.header.block_size));
        fields.insert(
            "table_entries".into(),
            json!(s.header.raw.max_table_entries),
        );
        fields.insert("allocated_blocks".into(), json!(allocated));
        text.push(format!(
            "block size: {}, {} table entries, {allocated} blocks allocated",
            size::human(s.header.block_size),
            s.header.raw.max_table_entries
        ));
    }
    if let Some(p) = &img.parent {
        let locators: Vec<Value> = p
            .locators
            .iter()
            .map(|(l, n)| {
                json!({
                    "platform": l.platform().name(),
                    "name": n.as_ref().map(|n| n.written.clone()),
                })
            })
            .collect();
        fields.insert(
            "parent".into(),
            json!({
                "unique_id": p.unique_id.to_string(),
                "modified": vhd_time(p.timestamp),
                "name": p.name,
                "locators": locators,
            }),
        );
        text.push(format!(
            "parent: {} (unique id {}, modified {})",
            p.name,
            p.unique_id,
            vhd_time(p.timestamp)
        ));
        for (l, n) in &p.locators {
            let name = n.as_ref().map_or("(unreadable)", |n| n.written.as_str());
            text.push(format!("parent locator {}: {name}", l.platform().name()));
        }
    }
    LayerInfo {
        fields,
        headline,
        text,
    }
}

/// The file's metadata: footers, dynamic header, table, locator data and sector bitmaps,
/// sorted and joined.
fn metadata_ranges(img: &VhdImage) -> Vec<(u64, u64)> {
    let len = img.bytes.len();
    let mut r: Vec<(u64, u64)> = Vec::new();
    if let Layout::Fixed { .. } = &img.layout {
        r.push((img.footer_offset, len - img.footer_offset));
    }
    if let Layout::Sparse(s) = &img.layout {
        // The footer copy at offset 0 (the one in use, as a rule) and the one at the end.
        r.push((0, 512.min(len)));
        r.push((len.saturating_sub(512), 512.min(len)));
        r.push((s.header_offset, HEADER_SIZE as u64));
        r.push((s.header.raw.table_offset, s.header.blocks * 4));
        if let Some(p) = &img.parent {
            for (l, _) in &p.locators {
                let end = l.data_offset.saturating_add(u64::from(l.data_length));
                if end <= len && l.data_length > 0 {
                    r.push((l.data_offset, u64::from(l.data_length)));
                }
            }
        }
        for i in 0..s.bat.len() {
            let e = s.bat.get(&img.bytes, i);
            let at = u64::from(e) * SECTOR;
            if e != UNALLOCATED && at + s.header.bitmap_size <= len {
                r.push((at, s.header.bitmap_size));
            }
        }
    }
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (start, n) in r {
        match out.last_mut() {
            Some((s0, n0)) if *s0 + *n0 >= start => *n0 = (*n0).max(start + n - *s0),
            _ => out.push((start, n)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_tags_print() {
        assert_eq!(vhd_time(0), "2000-01-01 00:00:00 UTC");
        // qemu-img's footer time stamp 0x32a7d95c.
        assert_eq!(vhd_time(0x32a7_d95c), "2026-12-06 08:29:16 UTC");
        assert_eq!(vhd_time(u32::MAX), "2136-02-07 06:28:15 UTC");
        assert_eq!(tag(b"qem2"), "qem2");
        assert_eq!(tag(b"vpc "), "vpc");
        assert_eq!(tag(b"tap\0"), "tap");
        assert_eq!(tag(&[0xff, b'a', 0, b'b']), "?a b");
    }
}
