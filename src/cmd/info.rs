use std::path::Path;

use serde_json::{json, Value};
use vdisk::size::human;
use vdisk::{for_each_extent, Allocation, DiskImage, Image, Result};

use super::{print_json, Status};
use crate::Ctx;

fn cid(c: Option<u32>) -> Value {
    match c {
        Some(c) => json!(format!("{c:08x}")),
        None => Value::Null,
    }
}

pub fn run(ctx: &Ctx, path: &Path, json_out: bool) -> Result<Status> {
    let img = vdisk::open_with(path, &ctx.open)?;
    let mut allocated = 0u64;
    for_each_extent(&img, |e| {
        if e.allocation == Allocation::Data {
            allocated += e.length;
        }
        Ok(())
    })?;
    let mut doc = json!({
        "path": path,
        "format": img.format_name(),
        "virtual_size": img.size(),
        "allocated": allocated,
    });
    match &img {
        Image::Raw(r) => {
            doc["disk_usage"] = json!(r.disk_usage());
        }
        Image::Vmdk(v) => {
            let top = &v.layers()[0];
            let d = top.descriptor();
            let sparse = top.first_sparse().map(|s| *s.header());
            doc["subformat"] = json!(d.create_type);
            doc["disk_usage"] = json!(v.layers().iter().map(|l| l.disk_usage()).sum::<u64>());
            doc["grain_size"] = json!(sparse.map(|h| h.grain_bytes()));
            doc["version"] = json!(sparse.map(|h| h.version));
            doc["unclean_shutdown"] = json!(v.layers().iter().any(|l| l.unclean_shutdown()));
            doc["cid"] = cid(d.cid);
            doc["parent_cid"] = cid(d.parent_cid);
            let chain: Vec<Value> = v
                .layers()
                .iter()
                .map(|l| {
                    let d = l.descriptor();
                    let h = l.first_sparse().map(|s| *s.header());
                    json!({
                        "path": l.path(),
                        "create_type": d.create_type,
                        "cid": cid(d.cid),
                        "parent_cid": cid(d.parent_cid),
                        "parent_hint": d.parent_hint,
                        "virtual_size": l.size(),
                        "disk_usage": l.disk_usage(),
                        "version": h.map(|h| h.version),
                        "flags": h.map(|h| format!("{:#x}", h.flags.0)),
                        "grain_size": h.map(|h| h.grain_bytes()),
                        "unclean_shutdown": l.unclean_shutdown(),
                        "embedded_descriptor": l.embedded_descriptor(),
                        "adapter_type": d.ddb("ddb.adapterType"),
                        "extents": l.extent_infos().iter().map(|e| json!({
                            "access": e.access,
                            "sectors": e.sectors,
                            "type": e.kind,
                            "file": e.file,
                            "offset": e.offset,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            doc["chain"] = Value::Array(chain);
        }
    }
    if json_out {
        print_json(&doc)?;
    } else {
        print_text(&doc);
    }
    Ok(0)
}

fn print_text(doc: &Value) {
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let bytes = |v: &Value| {
        let n = v.as_u64().unwrap_or(0);
        format!("{} ({n} bytes)", human(n))
    };
    println!("image: {}", s(&doc["path"]));
    match doc.get("subformat") {
        Some(sub) => println!("format: {} ({})", s(&doc["format"]), s(sub)),
        None => println!("format: {}", s(&doc["format"])),
    }
    println!("virtual size: {}", bytes(&doc["virtual_size"]));
    println!("allocated: {}", bytes(&doc["allocated"]));
    println!("disk usage: {}", bytes(&doc["disk_usage"]));
    if doc.get("chain").is_none() {
        return;
    }
    if let Some(g) = doc["grain_size"].as_u64() {
        println!("grain size: {}", human(g));
    }
    println!("header version: {}", s(&doc["version"]));
    println!(
        "unclean shutdown: {}",
        if doc["unclean_shutdown"].as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        }
    );
    println!("CID: {}", s(&doc["cid"]));
    println!("parent CID: {}", s(&doc["parent_cid"]));
    let chain = doc["chain"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    println!("chain: {} file(s)", chain.len());
    for (i, l) in chain.iter().enumerate() {
        println!(
            "  [{i}] {} ({}, CID {}, parent CID {}, version {}, {})",
            s(&l["path"]),
            s(&l["create_type"]),
            s(&l["cid"]),
            s(&l["parent_cid"]),
            s(&l["version"]),
            human(l["virtual_size"].as_u64().unwrap_or(0)),
        );
        if let Some(hint) = l["parent_hint"].as_str() {
            println!("      parent: {hint}");
        }
        if l["unclean_shutdown"].as_bool() == Some(true) {
            println!("      uncleanShutdown is set");
        }
        for e in l["extents"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let file = e["file"]
                .as_str()
                .map(|f| format!(" \"{f}\""))
                .unwrap_or_default();
            let off = match e["offset"].as_u64() {
                Some(0) | None => String::new(),
                Some(o) => format!(" {o}"),
            };
            println!(
                "      {} {} {}{file}{off}",
                s(&e["access"]),
                e["sectors"],
                s(&e["type"])
            );
        }
    }
}
