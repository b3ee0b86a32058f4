//! A VHDX file as a registry [`Layer`]: its backing (parent locator), identity, info, checks
//! and metadata regions.

use std::path::Path;

use vdisk_core::Finding;
use vdisk_io::{Backing, Layer, LayerInfo, LinkId, MetadataRegion};

use crate::bat::BITMAP_BLOCK_SIZE;
use crate::header::HEADER_SECTION;
use crate::image::{VhdxImage, LINK_KIND};

impl Layer for VhdxImage {
    fn path(&self) -> &Path {
        &self.path
    }

    fn backing(&self) -> Option<&Backing> {
        self.backing.as_ref()
    }

    fn link_id(&self) -> Option<LinkId> {
        Some(LinkId {
            kind: LINK_KIND,
            value: self.data_write_guid().braced(),
        })
    }

    fn disk_usage(&self) -> u64 {
        self.view.bytes().disk_usage()
    }

    fn info(&self) -> LayerInfo {
        crate::check::info(self)
    }

    fn check(&self) -> Vec<Finding> {
        crate::check::check(self)
    }

    fn metadata(&self) -> Vec<MetadataRegion> {
        let mut ranges = vec![(0, HEADER_SECTION)];
        let h = &self.header.raw;
        if h.log_length > 0 {
            ranges.push((h.log_offset, u64::from(h.log_length)));
        }
        ranges.push((self.regions.bat.offset, self.regions.bat.length));
        ranges.push((self.regions.metadata.offset, self.regions.metadata.length));
        let g = &self.bat.geometry;
        if g.has_parent {
            for chunk in 0..g.data_blocks.div_ceil(g.chunk_ratio) {
                let e = self.bat.entries[g.bitmap_index(chunk) as usize];
                if e & crate::bat::STATE_MASK == crate::bat::SB_BLOCK_PRESENT {
                    ranges.push((e & crate::bat::OFFSET_MASK, BITMAP_BLOCK_SIZE));
                }
            }
        }
        ranges.sort_unstable();
        vec![MetadataRegion {
            file: self.path.clone(),
            ranges,
        }]
    }
}
