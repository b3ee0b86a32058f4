//! `vdisk list`: a repository's restore points.

use std::path::PathBuf;

use serde_json::json;
use vdisk::size::human;
use vdisk::{Repository, Result};

use super::{print_json, print_text, Ctx, Status};

/// List a repository's restore points.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The repository: a folder or s3://BUCKET/PREFIX.
    pub repo: PathBuf,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(_ctx: &Ctx, a: Args) -> Result<Status> {
    let repository = Repository::open(super::location(&a.repo)?)?;
    let points = repository.points();
    if a.json {
        let v: Vec<_> = points
            .iter()
            .map(|p| {
                json!({"point": p.point, "image": p.image, "kind": p.kind, "created": p.created,
                       "size": p.size, "changed_bytes": p.changed_bytes})
            })
            .collect();
        print_json(&json!({ "points": v }))?;
    } else {
        let mut text = format!(
            "{:>6}  {:<12} {:<20} {:>14} {:>14}  image\n",
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
    Ok(0)
}
