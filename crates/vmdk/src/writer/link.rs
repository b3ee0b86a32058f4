//! Delta links: a sparse image holding only the grains it is given, on top of a parent VMDK
//! (parentFileNameHint + parentCID), readable by qemu-img and VMware as the new disk. The
//! grains come from `vdisk_core::write_delta`, which decides what changed; this module only
//! stores them.

use std::path::{Path, PathBuf};

use vdisk_core::{is_zero, ImageSink, Result, SECTOR};
use vdisk_io::ImageOutput;

use super::clustered::ClusteredImage;
use super::{Layout, OutputFiles, SparseImage, WriteOptions, GRAIN_SECTORS};

/// The image a link is written as.
// One value per link written: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
enum LinkImage {
    Sparse(SparseImage),
    Clustered(ClusteredImage),
}

/// A delta link being written: every grain it is given is stored, all-zero grains as zeroed
/// grains (which mask the parent); grains never given read from the parent.
pub struct LinkSink {
    image: LinkImage,
}

/// Where a link's parent is and what it is called.
#[derive(Debug, Clone)]
pub struct ParentLink {
    /// The parent's CID (the link's parentCID).
    pub cid: u32,
    /// The parentFileNameHint: a name beside the link, or a path.
    pub hint: PathBuf,
}

impl LinkSink {
    /// Start a link at `dst` (in `layout`: monolithicSparse, twoGbMaxExtentSparse or
    /// clustered) of `size` bytes on `parent`.
    pub fn create(
        dst: &Path,
        parent: ParentLink,
        size: u64,
        layout: Layout,
        opts: &WriteOptions,
    ) -> Result<Self> {
        let sectors = size.div_ceil(SECTOR);
        let files = OutputFiles::new(dst, &opts.policy)?;
        let parent = Some((parent.cid, parent.hint));
        let image = match layout {
            Layout::Clustered => LinkImage::Clustered(ClusteredImage::create(
                Box::new(files),
                sectors,
                opts,
                parent,
            )?),
            l => LinkImage::Sparse(SparseImage::create(files, sectors, l, opts, parent)?),
        };
        Ok(LinkSink { image })
    }

    /// Start a link of `size` bytes on `parent` into `out` (local files, or another
    /// storage's), in the clustered layout.
    pub fn create_in(
        out: Box<dyn ImageOutput>,
        parent: ParentLink,
        size: u64,
        opts: &WriteOptions,
    ) -> Result<Self> {
        let image = ClusteredImage::create(
            out,
            size.div_ceil(SECTOR),
            opts,
            Some((parent.cid, parent.hint)),
        )?;
        Ok(LinkSink {
            image: LinkImage::Clustered(image),
        })
    }
}

impl ImageSink for LinkSink {
    fn block_size(&self) -> u64 {
        GRAIN_SECTORS * SECTOR
    }

    fn put(&mut self, blocks: &[(u64, &[u8])]) -> Result<()> {
        let gb = GRAIN_SECTORS * SECTOR;
        for &(off, data) in blocks {
            let g = off / gb;
            match (&mut self.image, is_zero(data)) {
                (LinkImage::Sparse(i), false) => i.put_grain(g, data)?,
                (LinkImage::Sparse(i), true) => i.put_zero(g)?,
                (LinkImage::Clustered(i), false) => i.put_grain(g, data)?,
                (LinkImage::Clustered(i), true) => i.put_zero(g)?,
            }
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<()> {
        match self.image {
            LinkImage::Sparse(i) => i.finish_image(),
            LinkImage::Clustered(i) => i.finish_image(),
        }
    }
}
