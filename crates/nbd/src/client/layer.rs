//! The export as a disk image: reads (aligned to the server's minimum block), the
//! allocation map from `base:allocation`, and QEMU's dirty bitmaps.

use std::path::Path;

use serde_json::{json, Map, Value};
use vdisk_core::{
    check_range, coalesce, size::human, Allocation, DiskImage, Error, ErrorKind, Extent, Result,
};
use vdisk_io::{BitmapInfo, Layer, LayerInfo};

use super::negotiate::DIRTY_BITMAP;
use super::NbdExport;
use crate::proto::{BASE_ALLOCATION, STATE_HOLE, STATE_ZERO};

/// `NBD_STATE_DIRTY` in a `qemu:dirty-bitmap:` context.
const STATE_DIRTY: u32 = 1;

/// Most block-status replies a walk accepts that advance by less than 512 bytes: a server
/// answering a byte at a time would otherwise make a walk of a large export last for ever.
const MAX_TINY_REPLIES: u64 = 1 << 20;

/// Largest range asked in one block-status request (the length field is 32 bits).
const STATUS_REQUEST: u64 = 1 << 31;

impl NbdExport {
    fn err(&self, e: Error) -> Error {
        e.with_path(&self.label)
    }

    fn align(&self) -> u64 {
        u64::from(self.info.min_block.max(1))
    }

    /// Read an aligned range (start and length multiples of the minimum block, or ending at
    /// the export's end).
    fn read_aligned(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.pool.run(None, |c| c.read(buf, offset))
    }

    /// Walk the status of `[offset, offset + length)` in context `ctx` (on slot `prefer`),
    /// handing each run `(start, length, flags)` to `each`, clipped to the range.
    fn walk_status(
        &self,
        ctx: &str,
        prefer: Option<usize>,
        offset: u64,
        length: u64,
        mut each: impl FnMut(u64, u64, u32) -> Result<()>,
    ) -> Result<()> {
        let a = self.align();
        let end = offset + length;
        // Requests are aligned to the minimum block (the last may end at the export's end).
        let mut pos = offset / a * a;
        let stop = end.div_ceil(a).saturating_mul(a).min(self.info.size);
        let mut tiny = 0u64;
        let mut runs: Vec<(u64, u32)> = Vec::new();
        while pos < stop {
            let len = (stop - pos).min(STATUS_REQUEST / a * a) as u32;
            runs.clear();
            let covered = self.pool.run(prefer, |c| {
                let id = c.neg.context(ctx).ok_or_else(|| {
                    super::wire_io::WireError::Answer(Error::new(
                        ErrorKind::Unsupported,
                        format!("the connection did not select the metadata context {ctx}"),
                    ))
                })?;
                runs.clear();
                c.block_status(pos, len, id, &mut runs)
            })?;
            if covered < 512 && u64::from(len) >= 512 {
                tiny += 1;
                if tiny > MAX_TINY_REPLIES {
                    return Err(Error::invalid(
                        "the NBD server answers block status a few bytes at a time; giving up",
                    ));
                }
            }
            let mut at = pos;
            for &(l, flags) in &runs {
                let (s, e) = (at.max(offset), (at + l).min(end));
                if s < e {
                    each(s, e - s, flags)?;
                }
                at += l;
            }
            pos += covered;
        }
        Ok(())
    }

    /// Hand `dirty` the ranges the dirty bitmap `name` marks, in order (touching ranges
    /// joined); returns the bitmap's apparent granularity (the largest power of two, up to
    /// 64 MiB, that every dirty range's edges are multiples of; 64 KiB when nothing is
    /// dirty). A name the server does not offer is refused with the names it offers.
    pub fn read_dirty(
        &self,
        name: &str,
        dirty: &mut dyn FnMut(u64, u64) -> Result<()>,
    ) -> Result<u64> {
        if !self.info.bitmaps.iter().any(|b| b == name) {
            let offers = if self.info.bitmaps.is_empty() {
                "it offers none (export one with qemu-nbd -B NAME, or block-export-add's bitmaps)"
                    .to_string()
            } else {
                let names: Vec<String> = self
                    .info
                    .bitmaps
                    .iter()
                    .take(32)
                    .map(|b| format!("\"{b}\""))
                    .collect();
                format!("it offers {}", names.join(", "))
            };
            return Err(self.err(Error::new(
                ErrorKind::NotFound,
                format!("the NBD server offers no dirty bitmap \"{name}\"; {offers}"),
            )));
        }
        let ctx = format!("{DIRTY_BITMAP}{name}");
        let size = self.info.size;
        let mut pending: Option<(u64, u64)> = None;
        let mut edges = 0u64;
        let mut flush = |p: (u64, u64), edges: &mut u64| -> Result<()> {
            *edges |= p.0;
            if p.0 + p.1 != size {
                *edges |= p.1;
            }
            dirty(p.0, p.1)
        };
        self.walk_status(&ctx, Some(0), 0, size, |s, l, flags| {
            if flags & STATE_DIRTY == 0 {
                if let Some(p) = pending.take() {
                    flush(p, &mut edges)?;
                }
                return Ok(());
            }
            match &mut pending {
                Some(p) if p.0 + p.1 == s => p.1 += l,
                _ => {
                    if let Some(p) = pending.replace((s, l)) {
                        flush(p, &mut edges)?;
                    }
                }
            }
            Ok(())
        })
        .map_err(|e| self.err(e))?;
        if let Some(p) = pending {
            flush(p, &mut edges).map_err(|e| self.err(e))?;
        }
        Ok(match edges {
            0 => 64 << 10,
            e => (1u64 << e.trailing_zeros()).min(64 << 20),
        })
    }
}

impl DiskImage for NbdExport {
    fn size(&self) -> u64 {
        self.info.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let size = self.info.size;
        check_range(size, offset, buf.len() as u64).map_err(|e| self.err(e))?;
        let a = self.align();
        let end = offset + buf.len() as u64;
        let mut step = |pos: u64| -> Result<u64> {
            let at = (pos - offset) as usize;
            if pos.is_multiple_of(a) && (end - pos >= a || end == size) {
                // Whole blocks (and the export's last, perhaps short, block) read in place.
                let stop = if end == size { end } else { end / a * a };
                self.read_aligned(&mut buf[at..(stop - offset) as usize], pos)?;
                return Ok(stop);
            }
            // Part of a block: the block, through a buffer.
            let s = pos / a * a;
            let e = (s + a).min(size);
            let mut b = vec![0u8; (e - s) as usize];
            self.read_aligned(&mut b, s)?;
            let stop = e.min(end);
            let n = (stop - pos) as usize;
            buf[at..at + n].copy_from_slice(&b[(pos - s) as usize..(pos - s) as usize + n]);
            Ok(stop)
        };
        let mut pos = offset;
        while pos < end {
            pos = step(pos).map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        check_range(self.info.size, offset, length).map_err(|e| self.err(e))?;
        let mut map = Vec::new();
        if length == 0 {
            return Ok(map);
        }
        let extent = |start, length, allocation| Extent {
            start,
            length,
            allocation,
            depth: 0,
        };
        if !self.info.block_status {
            map.push(extent(offset, length, Allocation::Data));
            return Ok(map);
        }
        self.walk_status(BASE_ALLOCATION, None, offset, length, |s, l, flags| {
            let a = match (flags & STATE_HOLE != 0, flags & STATE_ZERO != 0) {
                (true, true) => Allocation::Unallocated,
                (false, true) => Allocation::Zero,
                // A hole of undefined contents, or data: read it.
                _ => Allocation::Data,
            };
            coalesce(&mut map, extent(s, l, a));
            Ok(())
        })
        .map_err(|e| self.err(e))?;
        Ok(map)
    }

    fn format_name(&self) -> &'static str {
        "nbd"
    }
}

impl Layer for NbdExport {
    fn path(&self) -> &Path {
        &self.label
    }

    fn disk_usage(&self) -> u64 {
        0
    }

    fn info(&self) -> LayerInfo {
        let i = &self.info;
        let mut fields = Map::new();
        let export = Value::String(self.pool.uri.export.clone());
        fields.insert("export".into(), export.clone());
        fields.insert("read_only".into(), i.read_only().into());
        fields.insert("multi_conn".into(), i.multi_conn().into());
        fields.insert("connections".into(), self.connections().into());
        fields.insert("structured_replies".into(), i.structured.into());
        fields.insert("block_status".into(), i.block_status.into());
        fields.insert("min_block".into(), i.min_block.into());
        fields.insert("preferred_block".into(), i.preferred_block.into());
        fields.insert("max_payload".into(), i.max_payload.into());
        if let Some(d) = &i.description {
            fields.insert("description".into(), d.clone().into());
        }
        fields.insert("bitmaps".into(), json!(i.bitmaps));
        let mut headline = Map::new();
        headline.insert("export".into(), export);
        headline.insert("bitmaps".into(), json!(i.bitmaps));
        let mut text = vec![format!("export \"{}\"", self.pool.uri.export)];
        text.push(format!(
            "{}, {}, {} connection(s)",
            if i.read_only() {
                "read-only"
            } else {
                "writable (read here only)"
            },
            if i.multi_conn() {
                "multi-conn"
            } else {
                "single-conn"
            },
            self.connections()
        ));
        text.push(format!(
            "block sizes: minimum {}, preferred {}, maximum {}",
            i.min_block,
            i.preferred_block,
            human(u64::from(i.max_payload))
        ));
        text.push(format!(
            "allocation map: {}",
            if i.block_status {
                "from base:allocation"
            } else {
                "none (every byte is read)"
            }
        ));
        text.push(if i.bitmaps.is_empty() {
            "dirty bitmaps: none".to_string()
        } else {
            format!("dirty bitmaps: {}", i.bitmaps.join(", "))
        });
        if let Some(d) = &i.description {
            text.push(format!("description: {d}"));
        }
        LayerInfo {
            fields,
            headline,
            text,
        }
    }

    fn bitmaps(&self) -> Vec<BitmapInfo> {
        self.info
            .bitmaps
            .iter()
            .map(|name| BitmapInfo {
                name: name.clone(),
                // NBD does not say; read_dirty tells the granularity it sees.
                granularity: 0,
                enabled: false,
                in_use: false,
            })
            .collect()
    }

    fn read_bitmap(
        &self,
        name: &str,
        dirty: &mut dyn FnMut(u64, u64) -> Result<()>,
    ) -> Result<u64> {
        self.read_dirty(name, dirty)
    }
}
