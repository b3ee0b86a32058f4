//! An opened image: its chain of layers (the file opened first, its backing files after, in
//! any mix of formats), read as one disk.

use std::path::Path;

use vdisk_core::{
    check_range, coalesce, Advice, Allocation, DiskImage, Extent, FileId, Finding, Result,
};
use vdisk_io::{Format, Layer};

use crate::location::ImageLocation;

/// The archive an image was found in (an OVA).
#[cfg(feature = "ova")]
#[derive(Debug)]
pub struct Archive {
    /// The archive, listed.
    pub ova: vdisk_ova::Ova,
    /// The member that was opened.
    pub member: vdisk_ova::Member,
}

/// An opened image: the chain of layers, the opened file first. Reads of what a layer does
/// not store go to the next one; the chain reads as one disk of the top layer's size.
pub struct Image {
    pub(crate) layers: Vec<Box<dyn Layer>>,
    pub(crate) formats: Vec<&'static dyn Format>,
    pub(crate) location: ImageLocation,
    #[cfg(feature = "ova")]
    pub(crate) archive: Option<Archive>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("location", &self.location)
            .field(
                "layers",
                &self
                    .layers
                    .iter()
                    .zip(&self.formats)
                    .map(|(l, f)| format!("{} ({})", l.path().display(), f.name()))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Image {
    /// The layers, the opened file first and the last backing file last.
    pub fn layers(&self) -> &[Box<dyn Layer>] {
        &self.layers
    }

    /// The top layer (the file that was opened).
    pub fn top(&self) -> &dyn Layer {
        &*self.layers[0]
    }

    /// The driver of layer `depth`.
    pub fn format_of(&self, depth: usize) -> &'static dyn Format {
        self.formats[depth]
    }

    /// The driver of the top layer.
    pub fn format(&self) -> &'static dyn Format {
        self.formats[0]
    }

    /// Where the image was opened from.
    pub fn location(&self) -> &ImageLocation {
        &self.location
    }

    /// The path of the top layer.
    pub fn path(&self) -> &Path {
        self.layers[0].path()
    }

    /// The archive the image is a disk of, if any.
    #[cfg(feature = "ova")]
    pub fn archive(&self) -> Option<&Archive> {
        self.archive.as_ref()
    }

    /// Every layer's metadata findings (`vdisk check`), the top first.
    pub fn check(&self) -> Vec<Finding> {
        let mut seen = std::collections::HashSet::new();
        self.layers
            .iter()
            .flat_map(|l| l.check())
            .filter(|f| seen.insert((f.file.clone(), f.message.clone())))
            .collect()
    }

    /// Bytes all the chain's files take on disk.
    pub fn disk_usage(&self) -> u64 {
        self.layers.iter().map(|l| l.disk_usage()).sum()
    }

    /// Read `buf` at `offset` from layer `depth` down (what it does not store, from below).
    fn read_from(&self, depth: usize, buf: &mut [u8], offset: u64) -> Result<()> {
        let layer = &self.layers[depth];
        let size = layer.size();
        // A backing file smaller than its child reads as zero past its end.
        let inside = usize::try_from(size.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let (head, tail) = buf.split_at_mut(inside);
        tail.fill(0);
        if head.is_empty() {
            return Ok(());
        }
        if depth + 1 == self.layers.len() {
            return layer.read_at(head, offset);
        }
        for e in layer.allocation(offset, head.len() as u64)? {
            let at = (e.start - offset) as usize;
            let piece = &mut head[at..at + e.length as usize];
            match e.allocation {
                Allocation::Data => layer.read_at(piece, e.start)?,
                Allocation::Zero => piece.fill(0),
                Allocation::Unallocated => self.read_from(depth + 1, piece, e.start)?,
            }
        }
        Ok(())
    }

    /// The map of `length` bytes at `offset` resolved from layer `depth` down.
    fn map_from(
        &self,
        depth: usize,
        offset: u64,
        length: u64,
        out: &mut Vec<Extent>,
    ) -> Result<()> {
        let layer = &self.layers[depth];
        let own = length.min(layer.size().saturating_sub(offset));
        let push_unallocated = |start: u64, len: u64, out: &mut Vec<Extent>| {
            coalesce(
                out,
                Extent {
                    start,
                    length: len,
                    allocation: Allocation::Unallocated,
                    depth: 0,
                },
            )
        };
        if own > 0 {
            for mut e in layer.allocation(offset, own)? {
                if e.allocation != Allocation::Unallocated {
                    e.depth = depth as u32;
                    coalesce(out, e);
                } else if depth + 1 < self.layers.len() {
                    self.map_from(depth + 1, e.start, e.length, out)?;
                } else {
                    push_unallocated(e.start, e.length, out);
                }
            }
        }
        if own < length {
            // Past this layer's end: nothing below can store it for this chain.
            push_unallocated(offset + own, length - own, out);
        }
        Ok(())
    }

    /// Pass a per-range hint to whichever layer holds each part of the range.
    fn advise_from(&self, depth: usize, offset: u64, len: u64, advice: Advice) {
        let layer = &self.layers[depth];
        let own = len.min(layer.size().saturating_sub(offset));
        if own == 0 {
            return;
        }
        if depth + 1 == self.layers.len() {
            layer.advise(offset, own, advice);
            return;
        }
        let Ok(map) = layer.allocation(offset, own) else {
            return;
        };
        for e in map {
            match e.allocation {
                Allocation::Data => layer.advise(e.start, e.length, advice),
                Allocation::Zero => {}
                Allocation::Unallocated => self.advise_from(depth + 1, e.start, e.length, advice),
            }
        }
    }
}

impl DiskImage for Image {
    fn size(&self) -> u64 {
        self.layers[0].size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.size(), offset, buf.len() as u64).map_err(|e| e.with_path(self.path()))?;
        if self.layers.len() == 1 {
            return self.layers[0].read_at(buf, offset);
        }
        self.read_from(0, buf, offset)
    }

    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        check_range(self.size(), offset, length).map_err(|e| e.with_path(self.path()))?;
        if self.layers.len() == 1 {
            return self.layers[0].allocation(offset, length);
        }
        let mut out = Vec::new();
        self.map_from(0, offset, length, &mut out)?;
        Ok(out)
    }

    fn format_name(&self) -> &'static str {
        self.formats[0].name()
    }

    fn mapped(&self, offset: u64, len: u64) -> Option<&[u8]> {
        match self.layers.as_slice() {
            [one] => one.mapped(offset, len),
            _ => None,
        }
    }

    fn next_data(&self, offset: u64) -> Result<Option<u64>> {
        if let [one] = self.layers.as_slice() {
            return one.next_data(offset);
        }
        let size = self.size();
        let mut off = offset;
        while off < size {
            let len = (size - off).min(vdisk_core::MAP_WINDOW);
            for e in self.allocation(off, len)? {
                if e.allocation == Allocation::Data {
                    return Ok(Some(e.start.max(offset)));
                }
            }
            off += len;
        }
        Ok(None)
    }

    fn advise(&self, offset: u64, len: u64, advice: Advice) {
        match (advice, self.layers.as_slice()) {
            (_, [one]) => one.advise(offset, len, advice),
            (Advice::Paced, layers) => layers.iter().for_each(|l| l.advise(0, l.size(), advice)),
            (Advice::ReadOnce | Advice::Forget, _) => self.advise_from(0, offset, len, advice),
            // Only a single layer is ever mapped for readers.
            _ => {}
        }
    }

    fn files(&self) -> Vec<FileId> {
        let mut out: Vec<FileId> = self.layers.iter().flat_map(|l| l.files()).collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    fn unclean_shutdown(&self) -> bool {
        self.layers.iter().any(|l| l.unclean_shutdown())
    }
}
