//! `vdisk info`: format, sizes, the chain and each file's details.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use vdisk::io::LayerInfo;
use vdisk::size::human;
use vdisk::{for_each_extent, Allocation, DiskImage, ErrorKind, Image, Result};

use super::{path_text, stdout_error, Ctx, Status};

/// Show format, size, allocation, the chain and each file's details.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image (a file, or an NBD export: nbd://HOST/EXPORT, nbd+unix:///EXPORT?socket=PATH).
    pub image: PathBuf,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

/// An OVA archive: its members and disks, and the disk that was opened.
fn archive_info(ova: &vdisk::ova::Ova, opened: Option<&Path>, ctx: &Ctx) -> Value {
    let disks: Vec<Value> = ova
        .disks()
        .map(|m| {
            // Each disk is opened to tell its size; one that cannot be is listed all the same.
            let loc = vdisk::ImageLocation::member(ova.path(), m.name.to_string_lossy());
            let img = vdisk::open_with(loc, &ctx.open);
            let (virtual_size, subformat) = match &img {
                Ok(i) => (
                    Some(i.size()),
                    i.top().info().headline.get("subformat").cloned(),
                ),
                Err(_) => (None, None),
            };
            serde_json::json!({
                "name": path_text(&m.name),
                "size": m.size,
                "virtual_size": virtual_size,
                "subformat": subformat,
            })
        })
        .collect();
    serde_json::json!({
        "format": "ova",
        "members": ova.members().len(),
        "opened": opened.map(path_text),
        "disks": disks,
    })
}

/// Every layer's entry: path, format, sizes, then the format's own fields.
fn chain_entry(img: &Image, depth: usize, fields: Map<String, Value>) -> Map<String, Value> {
    let l = &img.layers()[depth];
    let mut m = Map::new();
    m.insert("path".into(), Value::String(path_text(l.path())));
    m.insert("format".into(), img.format_of(depth).name().into());
    m.insert("virtual_size".into(), l.size().into());
    m.insert("disk_usage".into(), l.disk_usage().into());
    m.extend(fields);
    m
}

pub fn run(ctx: &Ctx, args: Args) -> Result<Status> {
    let path = args.image.as_path();
    let img = match vdisk::open_with(path, &ctx.open) {
        Ok(img) => img,
        // An OVA of several disks and no --disk: list them.
        Err(e) if e.kind() == ErrorKind::Ambiguous => {
            let ova = vdisk::image::open_archive(path, &ctx.open)?;
            return print_archive_only(path, archive_info(&ova, None, ctx), args.json);
        }
        Err(e) => return Err(e),
    };
    let mut allocated = 0u64;
    for_each_extent(&img, |e| {
        if e.allocation == Allocation::Data {
            allocated += e.length;
        }
        Ok(())
    })?;
    // Each file's details, taken once (a descriptor can list 200,000 extents).
    let mut infos: Vec<LayerInfo> = img.layers().iter().map(|l| l.info()).collect();
    let mut doc = Map::new();
    doc.insert("path".into(), Value::String(path_text(path)));
    doc.insert("format".into(), img.format_name().into());
    doc.insert("virtual_size".into(), img.size().into());
    doc.insert("allocated".into(), allocated.into());
    doc.insert("disk_usage".into(), img.disk_usage().into());
    for (k, v) in infos[0].headline.clone() {
        // A chain is unclean when any of its files is.
        let v = if k == "unclean_shutdown" {
            img.unclean_shutdown().into()
        } else {
            v
        };
        doc.insert(k, v);
    }
    // Formats with details (every one but raw) list the chain file by file.
    let detailed = infos.iter().any(|i| !i.fields.is_empty());
    if detailed || img.layers().len() > 1 {
        let chain = (0..img.layers().len())
            // The fields move into the document (an extent list can be long): the text
            // output uses each file's lines, not its fields.
            .map(|d| Value::Object(chain_entry(&img, d, std::mem::take(&mut infos[d].fields))))
            .collect();
        doc.insert("chain".into(), Value::Array(chain));
    }
    if let Some(a) = img.archive() {
        doc.insert(
            "archive".into(),
            archive_info(&a.ova, Some(&a.member.name), ctx),
        );
    }
    let out = std::io::stdout().lock();
    let mut out = std::io::BufWriter::new(out);
    let io = stdout_error;
    if args.json {
        serde_json::to_writer_pretty(&mut out, &doc).map_err(|e| io(e.into()))?;
        writeln!(out).map_err(io)?;
    } else {
        print_text(&mut out, &img, &infos, &doc, detailed).map_err(io)?;
    }
    out.flush().map_err(io)?;
    Ok(0)
}

fn print_archive_only(path: &Path, archive: Value, json_out: bool) -> Result<Status> {
    let out = std::io::stdout().lock();
    let mut out = std::io::BufWriter::new(out);
    let io = stdout_error;
    if json_out {
        let doc = serde_json::json!({
            "path": path_text(path),
            "format": "ova",
            "archive": archive,
        });
        serde_json::to_writer_pretty(&mut out, &doc).map_err(|e| io(e.into()))?;
        writeln!(out).map_err(io)?;
    } else {
        writeln!(out, "image: {}", path.display()).map_err(io)?;
        let n = archive["disks"].as_array().map_or(0, Vec::len);
        writeln!(out, "format: ova ({n} disks: pick one with --disk NAME)").map_err(io)?;
        print_archive(&mut out, &archive).map_err(io)?;
    }
    out.flush().map_err(io)?;
    Ok(0)
}

fn print_archive(out: &mut impl Write, a: &Value) -> std::io::Result<()> {
    let disks = a["disks"].as_array().cloned().unwrap_or_default();
    writeln!(
        out,
        "archive: {} member(s), {} disk(s)",
        a["members"],
        disks.len()
    )?;
    for d in &disks {
        let name = d["name"].as_str().unwrap_or("");
        let mark = if a["opened"].as_str() == Some(name) {
            " (opened)"
        } else {
            ""
        };
        let what = match (d["virtual_size"].as_u64(), d["subformat"].as_str()) {
            (Some(v), Some(sub)) => format!("{sub}, virtual size {}", human(v)),
            (Some(v), None) => format!("virtual size {}", human(v)),
            _ => "cannot be opened".to_string(),
        };
        let size = d["size"].as_u64().unwrap_or(0);
        writeln!(
            out,
            "  {name}: {} in the archive, {what}{mark}",
            human(size)
        )?;
    }
    Ok(())
}

fn print_text(
    out: &mut impl Write,
    img: &Image,
    infos: &[LayerInfo],
    doc: &Map<String, Value>,
    detailed: bool,
) -> std::io::Result<()> {
    let bytes = |n: u64| format!("{} ({n} bytes)", human(n));
    let num = |k: &str| doc.get(k).and_then(Value::as_u64).unwrap_or(0);
    writeln!(out, "image: {}", img.path().display())?;
    match doc.get("subformat").and_then(Value::as_str) {
        Some(sub) => writeln!(out, "format: {} ({sub})", img.format_name())?,
        None => writeln!(out, "format: {}", img.format_name())?,
    }
    writeln!(out, "virtual size: {}", bytes(num("virtual_size")))?;
    writeln!(out, "allocated: {}", bytes(num("allocated")))?;
    writeln!(out, "disk usage: {}", bytes(num("disk_usage")))?;
    if let Some(a) = doc.get("archive") {
        print_archive(out, a)?;
    }
    if img.unclean_shutdown() {
        writeln!(out, "unclean shutdown: yes")?;
    }
    if !detailed && img.layers().len() == 1 {
        return Ok(());
    }
    writeln!(out, "chain: {} file(s)", img.layers().len())?;
    for (n, (l, info)) in img.layers().iter().zip(infos).enumerate() {
        let first = info
            .text
            .first()
            .map(|t| format!(", {t}"))
            .unwrap_or_default();
        writeln!(
            out,
            "  [{n}] {} ({}{first}, {})",
            l.path().display(),
            img.format_of(n).name(),
            human(l.size()),
        )?;
        for line in info.text.iter().skip(1) {
            writeln!(out, "      {line}")?;
        }
    }
    Ok(())
}
