//! A VDI as a [`Layer`]: what `vdisk info` shows, the check, where its metadata lies.

use std::path::Path;

use serde_json::{json, Map};
use vdisk_core::{size, Finding};
use vdisk_io::{Layer, LayerInfo, LinkId, MetadataRegion};

use crate::header::{DISCARDED, HEADER_SIZE};
use crate::image::VdiImage;

/// The kind of identity a VDI's image UUID is, for [`LinkId`]s.
pub const LINK_KIND: &str = "vdi-uuid";

/// Findings of one kind reported one by one; past this, one more line counts the rest.
const MAX_PER_KIND: usize = 20;

/// A UUID as VirtualBox prints it: the first three groups are stored little-endian.
pub fn uuid_text(b: &[u8; 16]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
        b[14], b[15]
    )
}

impl Layer for VdiImage {
    fn path(&self) -> &Path {
        self.bytes.path()
    }

    fn link_id(&self) -> Option<LinkId> {
        Some(LinkId {
            kind: LINK_KIND,
            value: uuid_text(&self.header.raw.uuid_image),
        })
    }

    fn disk_usage(&self) -> u64 {
        self.bytes.disk_usage()
    }

    fn info(&self) -> LayerInfo {
        let h = &self.header;
        let r = &h.raw;
        let allocated = (0..h.blocks).filter(|&i| self.entry(i) < DISCARDED).count();
        let mut fields = Map::new();
        let mut headline = Map::new();
        headline.insert("subformat".into(), json!(h.image_type.name()));
        headline.insert("cluster_size".into(), json!(h.block_size));
        fields.insert("subformat".into(), json!(h.image_type.name()));
        fields.insert(
            "version".into(),
            json!(format!("{}.{}", r.version >> 16, r.version & 0xffff)),
        );
        fields.insert("text".into(), json!(r.text()));
        fields.insert("description".into(), json!(r.description()));
        fields.insert("block_size".into(), json!(h.block_size));
        fields.insert("blocks_in_image".into(), json!(r.blocks_in_image));
        fields.insert("blocks_allocated".into(), json!(r.blocks_allocated));
        fields.insert("blocks_mapped".into(), json!(allocated));
        fields.insert("uuid".into(), json!(uuid_text(&r.uuid_image)));
        fields.insert(
            "last_snapshot_uuid".into(),
            json!(uuid_text(&r.uuid_last_snap)),
        );
        let text = vec![
            format!("subformat: {}", h.image_type.name()),
            format!("text: {}", r.text()),
            format!(
                "block size: {}, {} blocks, {} allocated",
                size::human(h.block_size),
                r.blocks_in_image,
                r.blocks_allocated
            ),
            format!("uuid: {}", uuid_text(&r.uuid_image)),
        ];
        LayerInfo {
            fields,
            headline,
            text,
        }
    }

    fn check(&self) -> Vec<Finding> {
        check(self)
    }

    fn metadata(&self) -> Vec<MetadataRegion> {
        let r = &self.header.raw;
        let map = (u64::from(r.offset_bmap), u64::from(r.blocks_in_image) * 4);
        let mut ranges = vec![(0, HEADER_SIZE as u64)];
        if map.0 <= HEADER_SIZE as u64 {
            ranges[0].1 = ranges[0].1.max(map.0 + map.1);
        } else {
            ranges.push(map);
        }
        vec![MetadataRegion {
            file: self.bytes.path().to_path_buf(),
            ranges,
        }]
    }
}

/// qemu's check (every allocated entry names a distinct block below `blocks_in_image`; the
/// header's count of allocated blocks is right), plus: blocks lie inside the file, and the
/// block map does not run into the data.
fn check(img: &VdiImage) -> Vec<Finding> {
    let file = img.bytes.path();
    let h = &img.header;
    let r = &h.raw;
    let mut out = Vec::new();
    let push = |out: &mut Vec<Finding>, count: &mut usize, m: String| {
        *count += 1;
        if *count <= MAX_PER_KIND {
            out.push(Finding::error(file, m));
        }
    };
    let map_end = u64::from(r.offset_bmap) + u64::from(r.blocks_in_image) * 4;
    if map_end > u64::from(r.offset_data) {
        out.push(Finding::error(
            file,
            format!(
                "the block map ends at {map_end:#x}, past the start of the data at {:#x}",
                r.offset_data
            ),
        ));
    }
    let n = u64::from(r.blocks_in_image);
    // One bit per data block: which entries use it (bounded by the map, itself inside the
    // file).
    let mut used = vec![false; n as usize];
    let (mut allocated, mut dup, mut big, mut past) = (0u64, 0, 0, 0);
    let len = img.bytes.len();
    for i in 0..n {
        let e = img.entry(i);
        if e >= DISCARDED {
            continue;
        }
        if u64::from(e) >= n {
            push(
                &mut out,
                &mut big,
                format!("block {i} names data block {e}, past the image's {n}"),
            );
            continue;
        }
        allocated += 1;
        if std::mem::replace(&mut used[e as usize], true) {
            push(
                &mut out,
                &mut dup,
                format!("data block {e} is used by block {i} and another"),
            );
        }
        let end = u64::from(r.offset_data) + (u64::from(e) + 1) * h.block_size;
        if end > len && i < h.blocks {
            push(
                &mut out,
                &mut past,
                format!("block {i} (data block {e}) ends at {end}, past the end of the file ({len} bytes)"),
            );
        }
    }
    for (count, what) in [
        (big, "entries past the image"),
        (dup, "shared data blocks"),
        (past, "blocks past the end of the file"),
    ] {
        if count > MAX_PER_KIND {
            out.push(Finding::error(
                file,
                format!("{} more {what}", count - MAX_PER_KIND),
            ));
        }
    }
    if allocated != u64::from(r.blocks_allocated) {
        out.push(Finding::error(
            file,
            format!(
                "the header counts {} allocated blocks, the block map {allocated}",
                r.blocks_allocated
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_print_as_virtualbox_prints_them() {
        let b: [u8; 16] = core::array::from_fn(|i| i as u8);
        assert_eq!(uuid_text(&b), "03020100-0504-0706-0809-0a0b0c0d0e0f");
    }
}
