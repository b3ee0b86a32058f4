//! `backup`, `restore`, `list`, `verify`, `prune`.

use std::path::Path;
use std::time::Instant;

use serde_json::json;
use vdisk::chain::{BackupOptions, Repository, SourceInfo};
use vdisk::convert::ConvertOptions;
use vdisk::size::human;
use vdisk::{DiskImage, Error, Format, Image, Result};

use super::convert::Progress;
use super::{print_json, Status};
use crate::Ctx;

pub fn backup(
    ctx: &Ctx,
    src: &Path,
    repo: &Path,
    changed: Option<&Path>,
    force: bool,
) -> Result<Status> {
    let started = Instant::now();
    let img = vdisk::open_with(src, &ctx.open)?;
    let unclean = match &img {
        Image::Vmdk(v) => v.layers().iter().any(|l| l.unclean_shutdown()),
        Image::Raw(_) => false,
    };
    let identity = std::fs::canonicalize(src)
        .map_err(|e| Error::io("cannot resolve", e).with_path(src))?
        .display()
        .to_string();
    let changed = match changed {
        Some(p) => Some(super::bitmap::load(p)?),
        None => None,
    };
    let mut repository = Repository::open_or_create(repo)?;
    let progress = Progress::new(ctx, img.size());
    let tick = |n: u64| progress.tick(n);
    let opts = BackupOptions {
        force,
        changed,
        throttle: Some(&ctx.throttle),
        progress: Some(&tick),
    };
    let s = repository
        .backup(&img, &SourceInfo { identity, unclean }, &opts)
        .map_err(|e| e.with_path(src))?;
    progress.done("backed up");
    if !ctx.quiet {
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "vdisk: point {} ({}), {} point(s); read {}, wrote {} in {secs:.2} s ({}/s)",
            s.point,
            s.kind.name(),
            s.points,
            human(s.bytes_read),
            human(s.bytes_written),
            human((s.bytes_read as f64 / secs.max(1e-3)) as u64)
        );
    }
    Ok(0)
}

pub fn restore(
    ctx: &Ctx,
    repo: &Path,
    dst: &Path,
    point: Option<u64>,
    format: Format,
    force: bool,
) -> Result<Status> {
    let repository = Repository::open(repo)?;
    let target = super::convert::target(format, None)?;
    let p = repository.point(point)?;
    let progress = Progress::new(ctx, p.size);
    let tick = |n: u64| progress.tick(n);
    let opts = ConvertOptions {
        overwrite: force,
        throttle: Some(&ctx.throttle),
        progress: Some(&tick),
        ..Default::default()
    };
    let stats = repository.restore(point, dst, target, &opts)?;
    progress.done(&format!(
        "restored {} ({} read)",
        human(stats.size),
        human(stats.bytes_read)
    ));
    Ok(0)
}

pub fn list(_ctx: &Ctx, repo: &Path, json_out: bool) -> Result<Status> {
    let repository = Repository::open(repo)?;
    let points = repository
        .meta()
        .map(|m| m.points.clone())
        .unwrap_or_default();
    if json_out {
        let v: Vec<_> = points
            .iter()
            .map(|p| {
                json!({"point": p.point, "image": p.image, "kind": p.kind, "created": p.created,
                       "size": p.size, "changed_bytes": p.changed_bytes})
            })
            .collect();
        print_json(&json!({ "points": v }))?;
    } else {
        println!(
            "{:>6}  {:<12} {:<20} {:>14} {:>14}  image",
            "point", "kind", "created", "size", "changed"
        );
        for p in &points {
            let kind = p.kind.name();
            println!(
                "{:>6}  {:<12} {:<20} {:>14} {:>14}  {}",
                p.point,
                kind,
                p.created,
                human(p.size),
                human(p.changed_bytes),
                p.image
            );
        }
    }
    Ok(0)
}

pub fn verify(_ctx: &Ctx, repo: &Path, point: Option<u64>, json_out: bool) -> Result<Status> {
    let repository = Repository::open(repo)?;
    let reports = repository.verify(point)?;
    let sound = reports.iter().all(|r| r.sound());
    if json_out {
        let v: Vec<_> = reports
            .iter()
            .map(|r| {
                let status = if !r.problems.is_empty() {
                    "damaged"
                } else if r.depends_on_damaged.is_some() {
                    "affected"
                } else {
                    "ok"
                };
                json!({"point": r.point, "status": status, "problems": r.problems, "depends_on_damaged": r.depends_on_damaged})
            })
            .collect();
        print_json(&json!({ "sound": sound, "points": v }))?;
    } else {
        for r in &reports {
            if !r.problems.is_empty() {
                println!("point {}: DAMAGED", r.point);
                for p in &r.problems {
                    println!("  {p}");
                }
            } else if let Some(d) = r.depends_on_damaged {
                println!("point {}: affected (depends on damaged point {d})", r.point);
            } else {
                println!("point {}: ok", r.point);
            }
        }
        println!(
            "{}",
            if sound {
                "repository is sound"
            } else {
                "repository is damaged"
            }
        );
    }
    Ok(u8::from(!sound))
}

pub fn prune(ctx: &Ctx, repo: &Path, keep: usize) -> Result<Status> {
    let mut repository = Repository::open(repo)?;
    let opts = ConvertOptions {
        throttle: Some(&ctx.throttle),
        ..Default::default()
    };
    let s = repository.prune(keep, &opts)?;
    if !ctx.quiet {
        eprintln!(
            "vdisk: folded {} point(s) into the base, freed {}",
            s.folded,
            human(s.bytes_freed)
        );
    }
    Ok(0)
}
