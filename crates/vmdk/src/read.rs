//! The read path of a chain: positional reads and allocation maps, resolved through the
//! parents.

use vdisk_core::{
    check_range, coalesce, Allocation, DiskImage, Error, ErrorKind, Extent, FileId, Result,
};

use crate::bytes::Bytes;
use crate::chain::VmdkImage;
use crate::layer::{LayerRun, Storage};

impl VmdkImage {
    /// Read what link `depth` itself stores at `offset`, without falling through to its
    /// parents: unallocated ranges read as zero. (Verifying a backup reads each link's own
    /// grains once this way.)
    pub fn read_layer_only(&self, depth: usize, buf: &mut [u8], offset: u64) -> Result<()> {
        let layer = self
            .layers
            .get(depth)
            .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, "no such layer"))?;
        check_range(layer.size, offset, buf.len() as u64)?;
        self.read_layer(depth, buf, offset, false)
    }

    fn read_layer(
        &self,
        depth: usize,
        buf: &mut [u8],
        offset: u64,
        fall_through: bool,
    ) -> Result<()> {
        let layer = &self.layers[depth];
        let mut pos = 0usize;
        while pos < buf.len() {
            let off = offset + pos as u64;
            let want = (buf.len() - pos) as u64;
            if off >= layer.size {
                buf[pos..].fill(0);
                break;
            }
            let (len, run) = layer.run_at(off, want.min(layer.size - off))?;
            let len = len.clamp(1, want) as usize;
            let dst = &mut buf[pos..pos + len];
            match run {
                LayerRun::Compressed(ext, grain, within) => {
                    ext.read_compressed(grain, within, dst)?
                }
                LayerRun::File(file, at) => file.read_at(dst, at)?,
                LayerRun::Zero => dst.fill(0),
                LayerRun::Unallocated if fall_through && depth + 1 < self.layers.len() => {
                    self.read_layer(depth + 1, dst, off, true)?
                }
                LayerRun::Unallocated => dst.fill(0),
            }
            pos += len;
        }
        Ok(())
    }

    /// Hand `f` the file ranges reads of `len` bytes at `offset` would touch, through the
    /// chain: `(file, offset in it, length)`.
    fn file_ranges<'a>(
        &'a self,
        depth: usize,
        offset: u64,
        len: u64,
        f: &mut dyn FnMut(&'a Bytes, u64, u64),
    ) -> Result<()> {
        let layer = &self.layers[depth];
        let end = offset + len;
        let mut off = offset;
        while off < end && off < layer.size {
            let (n, run) = layer.run_at(off, (end - off).min(layer.size - off))?;
            let n = n.clamp(1, end - off);
            match run {
                LayerRun::File(file, at) => f(file, at, n),
                LayerRun::Compressed(ext, grain, _) => {
                    if let crate::sparse::GrainEntry::Data(pos) = ext.grain(grain) {
                        if let Ok((start, size, _)) = ext.compressed_span(pos) {
                            f(ext.bytes(), start as u64, size as u64);
                        }
                    }
                }
                LayerRun::Zero => {}
                LayerRun::Unallocated if depth + 1 < self.layers.len() => {
                    self.file_ranges(depth + 1, off, n, f)?
                }
                LayerRun::Unallocated => {}
            }
            off += n;
        }
        Ok(())
    }

    /// Call `f` on each file range behind `[offset, offset + len)`, adjacent ranges of a
    /// file joined.
    fn each_file_range(&self, offset: u64, len: u64, f: impl Fn(&Bytes, u64, u64)) {
        // Ranges of one file that touch (grains appended in order usually do) are joined.
        let mut joined: Vec<(&Bytes, u64, u64)> = Vec::new();
        let _ = self.file_ranges(0, offset, len, &mut |b, at, n| match joined.last_mut() {
            Some(l) if std::ptr::eq(l.0, b) && l.1 + l.2 == at => l.2 += n,
            _ => joined.push((b, at, n)),
        });
        for (b, at, n) in joined {
            f(b, at, n);
        }
    }

    fn allocation_layer(
        &self,
        depth: usize,
        offset: u64,
        length: u64,
        map: &mut Vec<Extent>,
    ) -> Result<()> {
        let layer = &self.layers[depth];
        let end = offset + length;
        let mut off = offset;
        while off < end {
            let (len, alloc) = if off >= layer.size {
                (end - off, Allocation::Unallocated)
            } else {
                layer.allocation_at(off, (end - off).min(layer.size - off))?
            };
            let len = len.clamp(1, end - off);
            if alloc == Allocation::Unallocated && depth + 1 < self.layers.len() {
                self.allocation_layer(depth + 1, off, len, map)?;
            } else {
                coalesce(
                    map,
                    Extent {
                        start: off,
                        length: len,
                        allocation: alloc,
                        depth: if alloc == Allocation::Unallocated {
                            0
                        } else {
                            depth as u32
                        },
                    },
                );
            }
            off += len;
        }
        Ok(())
    }

    /// Hand `f` every range that link `depth` itself stores (data or zeroed grains), walking
    /// its map ([`vdisk_core::walk_map`]) up to the smaller of its size and the image's.
    pub fn for_each_stored(
        &self,
        depth: usize,
        mut f: impl FnMut(Extent) -> Result<()>,
    ) -> Result<()> {
        let layer = self
            .layers
            .get(depth)
            .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, "no such layer"))?;
        let size = layer.size.min(self.size());
        vdisk_core::walk_map(
            size,
            |off, len| self.layer_allocation(depth, off, len),
            |e| {
                if e.allocation == Allocation::Unallocated {
                    Ok(())
                } else {
                    f(e)
                }
            },
        )
    }

    /// The allocation map of one layer alone (not falling through to parents).
    pub fn layer_allocation(&self, depth: usize, offset: u64, length: u64) -> Result<Vec<Extent>> {
        let layer = self
            .layers
            .get(depth)
            .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, "no such layer"))?;
        check_range(layer.size, offset, length)?;
        let mut map = Vec::new();
        let end = offset + length;
        let mut off = offset;
        while off < end {
            let (len, alloc) = layer.allocation_at(off, end - off)?;
            let len = len.clamp(1, end - off);
            coalesce(
                &mut map,
                Extent {
                    start: off,
                    length: len,
                    allocation: alloc,
                    depth: depth as u32,
                },
            );
            off += len;
        }
        Ok(map)
    }
}

impl DiskImage for VmdkImage {
    fn size(&self) -> u64 {
        self.layers[0].size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.size(), offset, buf.len() as u64)
            .map_err(|e| e.with_path(&self.layers[0].path))?;
        self.read_layer(0, buf, offset, true)
    }

    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        check_range(self.size(), offset, length).map_err(|e| e.with_path(&self.layers[0].path))?;
        let mut map = Vec::new();
        self.allocation_layer(0, offset, length, &mut map)?;
        Ok(map)
    }

    fn format_name(&self) -> &'static str {
        "vmdk"
    }

    /// A range inside one flat extent of an image without parents is handed out straight from
    /// the extent file's memory map.
    fn mapped(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let [layer] = self.layers.as_slice() else {
            return None;
        };
        let ext = layer.extents.get(layer.extent_index(offset))?;
        let Storage::Flat {
            file, offset: base, ..
        } = &ext.storage
        else {
            return None;
        };
        let within = offset.checked_sub(ext.start)?;
        if within.checked_add(len)? > ext.len {
            return None;
        }
        let start = usize::try_from(base.checked_add(within)?).ok()?;
        file.slice()?
            .get(start..start.checked_add(usize::try_from(len).ok()?)?)
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

    fn read_as_asked(&self) {
        for l in &self.layers {
            l.read_as_asked();
        }
    }

    fn read_once(&self, offset: u64, len: u64) {
        self.each_file_range(offset, len, |b, at, n| b.read_once(at, n));
    }

    fn forget(&self, offset: u64, len: u64) {
        self.each_file_range(offset, len, |b, at, n| b.forget(at, n));
    }

    fn release(&self, offset: u64, len: u64) {
        let [layer] = self.layers.as_slice() else {
            return;
        };
        let mut off = offset;
        let end = offset.saturating_add(len).min(layer.size);
        while off < end {
            let Some(ext) = layer.extents.get(layer.extent_index(off)) else {
                return;
            };
            let stop = end.min(ext.start + ext.len);
            if let Storage::Flat {
                file, offset: base, ..
            } = &ext.storage
            {
                file.release(base.saturating_add(off - ext.start), stop - off);
            }
            off = stop;
        }
    }
}
