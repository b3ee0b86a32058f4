//! What `vdisk info` shows of a VMDK layer, and where its metadata lies (for repositories'
//! checksums).

use serde_json::{json, Map, Value};
use vdisk_core::SECTOR;
use vdisk_io::{LayerInfo, MetadataRegion};

use crate::layer::VmdkLayer;

/// A CID as `info` prints it: 8 hex digits, or `null`.
fn cid(c: Option<u32>) -> Value {
    match c {
        Some(c) => Value::String(format!("{c:08x}")),
        None => Value::Null,
    }
}

fn cid_text(c: Option<u32>) -> String {
    c.map_or_else(|| "-".to_string(), |c| format!("{c:08x}"))
}

/// The details of `l` for `vdisk info`.
pub(crate) fn layer_info(l: &VmdkLayer) -> LayerInfo {
    let d = l.descriptor();
    let h = l.first_sparse().map(|s| *s.header());
    let grain_size = h.map(|h| h.grain_bytes()).or_else(|| l.esx_grain_bytes());
    let version = h.map(|h| h.version);
    let extents: Vec<Value> = l
        .extents()
        .iter()
        .map(|e| {
            json!({
                "access": e.line.access.as_str(),
                "sectors": e.line.sectors,
                "type": e.line.kind.as_str(),
                "file": e.path.as_ref().map(|p| p.to_string_lossy().into_owned()),
                "offset": e.line.offset,
            })
        })
        .collect();
    let mut fields = Map::new();
    fields.insert("create_type".into(), json!(d.create_type));
    fields.insert("cid".into(), cid(d.cid));
    fields.insert("parent_cid".into(), cid(d.parent_cid));
    fields.insert(
        "parent_hint".into(),
        json!(d
            .parent_hint
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())),
    );
    fields.insert("version".into(), json!(version));
    fields.insert(
        "flags".into(),
        json!(h.map(|h| format!("{:#x}", h.flags.0))),
    );
    fields.insert("grain_size".into(), json!(grain_size));
    fields.insert("unclean_shutdown".into(), json!(l.unclean_shutdown()));
    fields.insert("embedded_descriptor".into(), json!(l.embedded_descriptor()));
    fields.insert("adapter_type".into(), json!(d.ddb("ddb.adapterType")));
    fields.insert("extents".into(), Value::Array(extents));

    let mut headline = Map::new();
    if let Some(ct) = &d.create_type {
        headline.insert("subformat".into(), json!(ct));
    }
    if let Some(g) = grain_size {
        headline.insert("grain_size".into(), json!(g));
    }
    if let Some(v) = version {
        headline.insert("version".into(), json!(v));
    }
    headline.insert("unclean_shutdown".into(), json!(l.unclean_shutdown()));
    headline.insert("cid".into(), cid(d.cid));
    headline.insert("parent_cid".into(), cid(d.parent_cid));

    let mut text = vec![format!(
        "{}, CID {}, parent CID {}, version {}",
        d.create_type.as_deref().unwrap_or("-"),
        cid_text(d.cid),
        cid_text(d.parent_cid),
        version.map_or_else(|| "-".to_string(), |v| v.to_string()),
    )];
    if let Some(g) = grain_size {
        text.push(format!("grain size: {}", vdisk_core::size::human(g)));
    }
    if let Some(hint) = &d.parent_hint {
        text.push(format!("parent: {}", hint.display()));
    }
    if l.unclean_shutdown() {
        text.push("uncleanShutdown is set".into());
    }
    for e in l.extents() {
        let file = e
            .path
            .as_ref()
            .map(|f| format!(" \"{}\"", f.display()))
            .unwrap_or_default();
        let off = if e.line.offset == 0 {
            String::new()
        } else {
            format!(" {}", e.line.offset)
        };
        text.push(format!(
            "{} {} {}{file}{off}",
            e.line.access.as_str(),
            e.line.sectors,
            e.line.kind.as_str()
        ));
    }
    LayerInfo {
        fields,
        headline,
        text,
    }
}

/// Where `l`'s metadata lies: the whole descriptor file (when it is a file of its own), and
/// each sparse extent's header, embedded descriptor, grain directory and tables.
pub(crate) fn metadata_regions(l: &VmdkLayer) -> Vec<MetadataRegion> {
    let mut out = Vec::new();
    if !l.embedded_descriptor()
        && l.extents()
            .iter()
            .all(|e| e.path.as_deref() != Some(l.path()))
    {
        out.push(MetadataRegion {
            file: l.path().to_path_buf(),
            ranges: vec![(0, u64::MAX)],
        });
    }
    let mut seen = std::collections::HashSet::new();
    for e in l.extents() {
        let Some(x) = e.sparse() else { continue };
        if !seen.insert(x.bytes().path().to_path_buf()) {
            continue;
        }
        let h = x.header();
        let mut ranges = vec![(0, h.overhead.max(1) * SECTOR)];
        let gd = x.gd_offset() * SECTOR;
        let gd_len = (x.directory_len() as u64 * 4).next_multiple_of(SECTOR);
        ranges.push((gd, gd_len));
        let table_bytes = u64::from(h.gtes_per_gt) * 4;
        for slot in 0..x.directory_len() {
            if let Some(t) = x.table_sector(slot).filter(|&t| t != 0) {
                ranges.push((u64::from(t) * SECTOR, table_bytes));
            }
        }
        out.push(MetadataRegion {
            file: x.bytes().path().to_path_buf(),
            ranges,
        });
    }
    out
}
