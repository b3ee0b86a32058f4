//! `vdisk list`: a repository's NAMEs and points, what each point added, and the
//! repository's size and deduplication.

use std::path::PathBuf;

use serde_json::json;
use vdisk::chain::Reader;
use vdisk::size::human;
use vdisk::Result;

use super::{print_json, print_text, Ctx, Status};

/// List a repository's points: by NAME, with their disks, sizes and the bytes each added.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The repository: a folder or s3://BUCKET/PREFIX.
    pub repo: PathBuf,
    /// Only the points of this NAME.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

fn layout2(r: &vdisk::chain::layout2::Repository, a: &Args) -> Result<()> {
    let name = super::layout2_name(r);
    let points = r.points();
    if a.json {
        let v: Vec<_> = points
            .iter()
            .map(|p| {
                json!({"name": name, "point": p.point, "image": p.image, "kind": p.kind, "created": p.created,
                       "size": p.size, "changed_bytes": p.changed_bytes, "added_bytes": p.changed_bytes,
                       "disks": [{"index": 0, "label": name, "size": p.size}]})
            })
            .collect();
        print_json(
            &json!({ "layout": 2, "names": [name], "points": v, "stored_bytes": r.usage() }),
        )?;
    } else {
        let mut text = format!(
            "layout 2 (a VMDK chain; `vdisk sync` brings it into layout 3)\n{:>6}  {:<12} {:<20} {:>14} {:>14}  image\n",
            "point", "kind", "created", "size", "changed"
        );
        for p in points {
            text.push_str(&format!(
                "{:>6}  {:<12} {:<20} {:>14} {:>14}  {}\n",
                p.point,
                p.kind.name(),
                p.created,
                human(p.size),
                human(p.changed_bytes),
                p.image
            ));
        }
        print_text(&text)?;
    }
    Ok(())
}

pub fn run(ctx: &Ctx, a: Args) -> Result<Status> {
    let r = match super::open_reader(ctx, &a.repo)? {
        Reader::Two(r) => {
            layout2(&r, &a)?;
            return Ok(0);
        }
        Reader::Three(r) => r,
    };
    let list = r.points()?;
    let stored = r.stored_bytes()?;
    let points: Vec<_> = list
        .points
        .iter()
        .filter(|p| a.name.as_ref().is_none_or(|n| *n == p.record.name))
        .collect();
    if let Some(n) = &a.name {
        if points.is_empty() {
            return Err(vdisk::Error::new(
                vdisk::ErrorKind::NotFound,
                format!(
                    "has no points of \"{n}\" (names: {})",
                    list.names().join(", ")
                ),
            )
            .with_path(&a.repo));
        }
    }
    let data: u64 = list.points.iter().map(|p| p.record.data_bytes()).sum();
    let logical: u64 = list.points.iter().map(|p| p.record.logical_bytes()).sum();
    let ratio = if stored > 0 {
        data as f64 / stored as f64
    } else {
        0.0
    };
    if a.json {
        let v: Vec<_> = points
            .iter()
            .map(|p| {
                let r = &p.record;
                let disks: Vec<_> = r
                    .disks
                    .iter()
                    .enumerate()
                    .map(|(i, d)| json!({"index": i, "label": d.label, "source": d.source, "size": d.size, "data_bytes": d.data_bytes}))
                    .collect();
                json!({"name": r.name, "point": r.seq, "kind": if r.parent.is_some() { "incremental" } else { "full" },
                       "created": r.time, "parent": r.parent, "size": r.logical_bytes(), "data_bytes": r.data_bytes(),
                       "added_bytes": r.stats.added_bytes, "changed_bytes": r.stats.added_bytes, "disks": disks})
            })
            .collect();
        let unreadable: Vec<_> = list
            .unreadable
            .iter()
            .map(|(k, e)| json!({"object": k, "error": e}))
            .collect();
        print_json(&json!({
            "layout": 3,
            "encrypted": r.encrypted(),
            "block_size": r.block_size(),
            "names": list.names(),
            "points": v,
            "logical_bytes": logical,
            "data_bytes": data,
            "stored_bytes": stored,
            "dedup_ratio": ratio,
            "unreadable": unreadable,
        }))?;
        return Ok(0);
    }
    let mut text = String::new();
    let mut last = "";
    for p in &points {
        let r = &p.record;
        if r.name != last {
            text.push_str(&format!(
                "{}\n{:>6}  {:<12} {:<20} {:>10} {:>10} {:>10}  disks\n",
                r.name, "point", "kind", "created", "size", "data", "added"
            ));
            last = &r.name;
        }
        let disks: Vec<String> = r
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| format!("{i}:{} {}", d.label, human(d.size)))
            .collect();
        text.push_str(&format!(
            "{:>6}  {:<12} {:<20} {:>10} {:>10} {:>10}  {}\n",
            r.seq,
            if r.parent.is_some() {
                "incremental"
            } else {
                "full"
            },
            r.time,
            human(r.logical_bytes()),
            human(r.data_bytes()),
            human(r.stats.added_bytes),
            disks.join(", ")
        ));
    }
    for (k, e) in &list.unreadable {
        text.push_str(&format!("{k}: not a valid point ({e})\n"));
    }
    text.push_str(&format!(
        "{} name(s), {} point(s): {} of disks, {} of data, stored in {} ({ratio:.2}x){}\n",
        list.names().len(),
        list.points.len(),
        human(logical),
        human(data),
        human(stored),
        if r.encrypted() { ", encrypted" } else { "" }
    ));
    print_text(&text)?;
    Ok(0)
}
