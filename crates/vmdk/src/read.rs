//! The read path of one layer: positional reads and allocation maps of its own extents
//! (ranges it does not store read as zero and map as unallocated: the registry reads them from
//! the parent).

use std::path::Path;

use vdisk_core::{
    check_range, coalesce, Advice, Allocation, DiskImage, Extent, FileId, Finding, Result,
};
use vdisk_io::{Backing, Bytes, Layer, LayerInfo, LinkId, MetadataRegion};

use crate::descriptor::cid_link;

use crate::layer::{LayerRun, VmdkLayer};

impl VmdkLayer {
    /// Hand `f` the file ranges reads of `len` bytes at `offset` would touch in this layer:
    /// `(file, offset in it, length)`, adjacent ranges of a file joined.
    fn each_file_range(&self, offset: u64, len: u64, f: impl Fn(&Bytes, u64, u64)) {
        let mut joined: Vec<(&Bytes, u64, u64)> = Vec::new();
        let end = offset.saturating_add(len).min(self.size);
        let mut off = offset;
        while off < end {
            let Ok((n, run)) = self.run_at(off, end - off) else {
                break;
            };
            let n = n.clamp(1, end - off);
            let range: Option<(&Bytes, u64, u64)> = match run {
                LayerRun::File(file, at) => Some((file, at, n)),
                LayerRun::Compressed(ext, grain, _) => match ext.grain(grain) {
                    crate::sparse::GrainEntry::Data(pos) => ext
                        .compressed_span(pos)
                        .ok()
                        .map(|(start, size, _)| (ext.bytes(), start as u64, size as u64)),
                    _ => None,
                },
                LayerRun::Zero | LayerRun::Unallocated => None,
            };
            if let Some((b, at, n)) = range {
                match joined.last_mut() {
                    Some(l) if std::ptr::eq(l.0, b) && l.1 + l.2 == at => l.2 += n,
                    _ => joined.push((b, at, n)),
                }
            }
            off += n;
        }
        for (b, at, n) in joined {
            f(b, at, n);
        }
    }

    /// Hand `f` every range this layer stores (data or zeroed grains), walking its map
    /// ([`vdisk_core::walk_map`]).
    pub fn for_each_stored(&self, mut f: impl FnMut(Extent) -> Result<()>) -> Result<()> {
        vdisk_core::walk_map(
            self.size,
            |off, len| self.allocation(off, len),
            |e| {
                if e.allocation == Allocation::Unallocated {
                    Ok(())
                } else {
                    f(e)
                }
            },
        )
    }
}

impl DiskImage for VmdkLayer {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.size, offset, buf.len() as u64).map_err(|e| e.with_path(&self.path))?;
        let mut pos = 0usize;
        while pos < buf.len() {
            let off = offset + pos as u64;
            let want = (buf.len() - pos) as u64;
            let (len, run) = self.run_at(off, want)?;
            let len = len.clamp(1, want) as usize;
            let dst = &mut buf[pos..pos + len];
            match run {
                LayerRun::Compressed(ext, grain, within) => {
                    ext.read_compressed(grain, within, dst)?
                }
                LayerRun::File(file, at) => file.read_at(dst, at)?,
                LayerRun::Zero | LayerRun::Unallocated => dst.fill(0),
            }
            pos += len;
        }
        Ok(())
    }

    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        check_range(self.size, offset, length).map_err(|e| e.with_path(&self.path))?;
        let mut map = Vec::new();
        let end = offset + length;
        let mut off = offset;
        while off < end {
            let (len, allocation) = self.allocation_at(off, end - off)?;
            let len = len.clamp(1, end - off);
            coalesce(
                &mut map,
                Extent {
                    start: off,
                    length: len,
                    allocation,
                    depth: 0,
                },
            );
            off += len;
        }
        Ok(map)
    }

    fn format_name(&self) -> &'static str {
        "vmdk"
    }

    /// A range stored contiguously in one file (inside a flat extent, or grains of a sparse
    /// extent that follow each other in its file, as writers append them) is handed out
    /// straight from the file's memory map.
    fn mapped(&self, offset: u64, len: u64) -> Option<&[u8]> {
        if len == 0 || offset.checked_add(len)? > self.size {
            return None;
        }
        let (n, run) = self.run_at(offset, len).ok()?;
        let LayerRun::File(file, at) = run else {
            return None;
        };
        if n < len || at.checked_add(len)? > file.len() {
            return None;
        }
        let start = usize::try_from(at).ok()?;
        file.slice()?
            .get(start..start.checked_add(usize::try_from(len).ok()?)?)
    }

    fn advise(&self, offset: u64, len: u64, advice: Advice) {
        match advice {
            Advice::Paced => self.read_as_asked(),
            // The files' ranges behind the disk's: flat extents, and sparse grains (mapped
            // when they lie one after the other; see `mapped`).
            _ => self.each_file_range(offset, len, |b, at, n| b.advise(at, n, advice)),
        }
    }

    fn files(&self) -> Vec<FileId> {
        VmdkLayer::files(self)
    }

    fn unclean_shutdown(&self) -> bool {
        VmdkLayer::unclean_shutdown(self)
    }
}

impl Layer for VmdkLayer {
    fn path(&self) -> &Path {
        &self.path
    }

    fn backing(&self) -> Option<&Backing> {
        self.backing.as_ref()
    }

    fn link_id(&self) -> Option<LinkId> {
        Some(cid_link(self.descriptor.cid))
    }

    fn disk_usage(&self) -> u64 {
        VmdkLayer::disk_usage(self)
    }

    fn info(&self) -> LayerInfo {
        crate::info::layer_info(self)
    }

    fn check(&self) -> Vec<Finding> {
        crate::check::check(self)
            .iter()
            .map(|f| f.to_core())
            .collect()
    }

    fn metadata(&self) -> Vec<MetadataRegion> {
        crate::info::metadata_regions(self)
    }
}
