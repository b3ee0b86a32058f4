//! A qcow2 image as a [`Layer`]: its backing file named, `info`, metadata regions, bitmaps.

use std::path::Path;

use serde_json::{json, Map, Value};
use vdisk_core::{Error, ErrorKind, Finding, Result};
use vdisk_io::{Backing, BitmapInfo, Layer, LayerInfo, MetadataRegion};

use crate::bitmap::{self, Bitmaps};
use crate::header::incompat;
use crate::image::Qcow2Image;
use crate::snapshot::{format_clock, format_date};
use crate::tables::OFFSET_MASK;

impl Qcow2Image {
    /// `compat` as qemu-img prints it: "0.10" for version 2, "1.1" for version 3.
    pub fn compat(&self) -> &'static str {
        if self.header.is_v3() {
            "1.1"
        } else {
            "0.10"
        }
    }

    fn info_fields(&self) -> Map<String, Value> {
        let h = &self.header;
        let mut m = Map::new();
        m.insert("version".into(), json!(h.raw.version));
        m.insert("compat".into(), json!(self.compat()));
        m.insert("cluster_size".into(), json!(h.cluster_size));
        m.insert("compression_type".into(), json!(h.compression.name()));
        m.insert("refcount_bits".into(), json!(h.refcount_bits));
        m.insert("lazy_refcounts".into(), json!(h.lazy_refcounts()));
        m.insert("dirty".into(), json!(h.incompatible(incompat::DIRTY)));
        m.insert("corrupt".into(), json!(h.incompatible(incompat::CORRUPT)));
        m.insert("extended_l2".into(), json!(h.extended_l2));
        if let Some(d) = &h.data_file {
            m.insert("data_file".into(), json!(d.to_string_lossy()));
            m.insert("data_file_raw".into(), json!(h.data_file_raw()));
        }
        if let Some(b) = &h.backing_file {
            m.insert("backing_file".into(), json!(b.to_string_lossy()));
        }
        if let Some(f) = &h.backing_format {
            m.insert("backing_format".into(), json!(f));
        }
        let snaps: Vec<Value> = self
            .snapshots
            .iter()
            .map(|s| {
                json!({
                    "id": s.id,
                    "name": s.name,
                    "vm_state_size": s.vm_state_size,
                    "disk_size": s.disk_size,
                    "date": format_date(u64::from(s.date_sec)),
                    "date_sec": s.date_sec,
                    "date_nsec": s.date_nsec,
                    "vm_clock_nsec": s.vm_clock_nsec,
                })
            })
            .collect();
        if !snaps.is_empty() {
            m.insert("snapshots".into(), Value::Array(snaps));
        }
        match &self.bitmaps {
            Bitmaps::None => {}
            Bitmaps::Directory(v) => {
                let list: Vec<Value> = v
                    .iter()
                    .map(|b| {
                        json!({
                            "name": b.name,
                            "granularity": b.granularity(),
                            "flags": b.flag_names(),
                        })
                    })
                    .collect();
                m.insert("bitmaps".into(), Value::Array(list));
            }
            Bitmaps::Unusable(why) => {
                m.insert("bitmaps_error".into(), json!(why));
            }
        }
        m
    }

    fn info_text(&self) -> Vec<String> {
        let h = &self.header;
        let mut t = vec![
            format!("compat: {}", self.compat()),
            format!("cluster size: {}", h.cluster_size),
            format!("compression type: {}", h.compression.name()),
            format!("refcount bits: {}", h.refcount_bits),
            format!("lazy refcounts: {}", h.lazy_refcounts()),
            format!("extended l2: {}", h.extended_l2),
            format!("corrupt: {}", h.incompatible(incompat::CORRUPT)),
        ];
        if h.incompatible(incompat::DIRTY) {
            t.push("dirty: true (not closed cleanly; refcounts may be stale)".into());
        }
        if let Some(d) = &h.data_file {
            t.push(format!("data file: {}", d.display()));
            t.push(format!("data file raw: {}", h.data_file_raw()));
        }
        if let Some(b) = &h.backing_file {
            t.push(format!("backing file: {}", b.display()));
        }
        if let Some(f) = &h.backing_format {
            t.push(format!("backing file format: {f}"));
        }
        if !self.snapshots.is_empty() {
            t.push("snapshots:".into());
            t.push(format!(
                "  {:<4} {:<16} {:>12} {:<19} {:>15}",
                "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK"
            ));
            for s in &self.snapshots {
                t.push(format!(
                    "  {:<4} {:<16} {:>12} {:<19} {:>15}",
                    s.id,
                    s.name,
                    vdisk_core::size::human(s.vm_state_size),
                    format_date(u64::from(s.date_sec)),
                    format_clock(s.vm_clock_nsec)
                ));
            }
        }
        match &self.bitmaps {
            Bitmaps::None => {}
            Bitmaps::Directory(v) => {
                t.push("bitmaps:".into());
                for b in v {
                    let flags = b.flag_names();
                    t.push(format!(
                        "  {}: granularity {}, flags [{}]",
                        b.name,
                        b.granularity()
                            .map_or_else(|| "invalid".to_string(), |g| g.to_string()),
                        flags.join(", ")
                    ));
                }
            }
            Bitmaps::Unusable(why) => t.push(format!("bitmaps: unusable: {why}")),
        }
        t
    }

    /// Byte ranges of the image file that hold metadata: the first cluster, the active L1
    /// and L2 tables, the refcount table and blocks, the snapshot table, the bitmap
    /// directory and tables. Offsets outside the file are left out.
    fn metadata_ranges(&self) -> Vec<(u64, u64)> {
        let h = &self.header;
        let cs = h.cluster_size;
        let len = self.bytes.len();
        let mut r: Vec<(u64, u64)> = Vec::new();
        let mut add = |off: u64, l: u64| {
            if l > 0 && off < len {
                r.push((off, l.min(len - off)));
            }
        };
        add(0, cs);
        add(h.raw.l1_table_offset, u64::from(h.raw.l1_size) * 8);
        for &e in &self.l1 {
            let off = e & OFFSET_MASK;
            if off != 0 && off.is_multiple_of(cs) {
                add(off, cs);
            }
        }
        let rt = h.raw.refcount_table_offset;
        let rt_len = (u64::from(h.raw.refcount_table_clusters) * cs).min(len.saturating_sub(rt));
        add(rt, rt_len);
        if rt_len > 0 && rt < len {
            let mut table = vec![0u8; rt_len as usize];
            if self.bytes.read_at(&mut table, rt).is_ok() {
                for e in table.chunks_exact(8) {
                    let off = u64::from_be_bytes(e.try_into().expect("8 bytes")) & OFFSET_MASK;
                    if off != 0 && off.is_multiple_of(cs) {
                        add(off, cs);
                    }
                }
            }
        }
        add(h.raw.snapshots_offset, self.snapshot_table_len);
        for s in &self.snapshots {
            add(s.l1_offset, u64::from(s.l1_size) * 8);
        }
        if let (Some(ext), Bitmaps::Directory(v)) = (h.bitmaps, &self.bitmaps) {
            add(ext.directory_offset, ext.directory_size);
            for b in v {
                add(b.table_offset, u64::from(b.table_size) * 8);
            }
        }
        r.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(r.len());
        for (o, l) in r {
            match merged.last_mut() {
                Some((mo, ml)) if *mo + *ml >= o => *ml = (*ml).max(o + l - *mo),
                _ => merged.push((o, l)),
            }
        }
        merged
    }
}

impl Layer for Qcow2Image {
    fn path(&self) -> &Path {
        self.bytes.path()
    }

    fn backing(&self) -> Option<&Backing> {
        self.backing.as_ref()
    }

    fn disk_usage(&self) -> u64 {
        self.bytes.disk_usage() + self.data.as_ref().map_or(0, |d| d.disk_usage())
    }

    fn info(&self) -> LayerInfo {
        let fields = self.info_fields();
        let mut headline = Map::new();
        headline.insert("compat".into(), json!(self.compat()));
        headline.insert("cluster_size".into(), json!(self.header.cluster_size));
        LayerInfo {
            fields,
            headline,
            text: self.info_text(),
        }
    }

    fn check(&self) -> Vec<Finding> {
        crate::check::check(self)
    }

    fn metadata(&self) -> Vec<MetadataRegion> {
        vec![MetadataRegion {
            file: self.bytes.path().to_path_buf(),
            ranges: self.metadata_ranges(),
        }]
    }

    fn bitmaps(&self) -> Vec<BitmapInfo> {
        self.bitmaps
            .entries()
            .iter()
            .map(|b| BitmapInfo {
                name: b.name.clone(),
                granularity: b.granularity().unwrap_or(0),
                enabled: b.enabled(),
                in_use: b.in_use(),
            })
            .collect()
    }

    fn read_bitmap(
        &self,
        name: &str,
        dirty: &mut dyn FnMut(u64, u64) -> Result<()>,
    ) -> Result<u64> {
        let path = self.bytes.path();
        let entries = match &self.bitmaps {
            Bitmaps::Directory(v) => v.as_slice(),
            Bitmaps::None => &[],
            Bitmaps::Unusable(why) => {
                return Err(
                    Error::corrupt(format!("cannot read bitmap {name}: {why}")).with_path(path)
                )
            }
        };
        let Some(e) = entries.iter().find(|b| b.name == name) else {
            let names: Vec<&str> = entries.iter().map(|b| b.name.as_str()).collect();
            let there = if names.is_empty() {
                "it has no bitmaps".to_string()
            } else {
                format!("its bitmaps are: {}", names.join(", "))
            };
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("has no bitmap \"{name}\" ({there})"),
            )
            .with_path(path));
        };
        bitmap::read_bitmap(&self.bytes, &self.header, e, dirty).map_err(|e| e.with_path(path))
    }
}
