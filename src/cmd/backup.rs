//! `vdisk backup`: a point of a NAME, holding one disk or several disks of one VM.

use std::path::{Path, PathBuf};

use serde_json::json;
use vdisk::chain::{Access, DiskSource};
use vdisk::size::human;
use vdisk::{BackupOptions, Error, ErrorKind, Repository, Result};

use super::{print_json, Ctx, Status};

/// Back up disks into a repository, as the next point of a NAME: blocks the repository
/// holds already (of any disk, VM or point) are not stored again.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The disks to back up (several: the disks of one VM, taken together in one point).
    #[arg(required = true, num_args = 1.., value_name = "SRC")]
    pub src: Vec<PathBuf>,
    /// The repository: a folder (an unencrypted one is made by the first backup; `vdisk
    /// init` makes others) or s3://BUCKET/PREFIX.
    #[arg(required = true)]
    pub repo: PathBuf,
    /// What the points are of, e.g. web01 (default: the first SRC's file name without its
    /// extension).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Changed blocks from the hypervisor (a bitmap from `vdisk bitmap import`), trusted
    /// as a superset of the changes; without it, changes are found by fingerprints. With
    /// one SRC only.
    #[arg(long, value_name = "BITMAP")]
    pub changed: Option<PathBuf>,
    /// Back up a source that was not closed cleanly, or that is not the disk the NAME's
    /// points hold.
    #[arg(long)]
    pub force: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The file name of `p`, or `disk` for a path without one.
fn file_name(p: &Path) -> String {
    p.file_name()
        .map_or_else(|| "disk".into(), |n| n.to_string_lossy().into_owned())
}

pub fn run(ctx: &Ctx, a: Args) -> Result<Status> {
    if a.changed.is_some() && a.src.len() > 1 {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "--changed describes one disk: back up a VM's disks with --changed one NAME each, or without --changed",
        ));
    }
    let name = match &a.name {
        Some(n) => n.clone(),
        None => a.src[0]
            .file_stem()
            .map_or_else(|| "disk".into(), |s| s.to_string_lossy().into_owned()),
    };
    let mut images = Vec::new();
    for s in &a.src {
        let img = vdisk::open_with(s, &ctx.open)?;
        let source = vdisk::Source::of(&img).map_err(|e| e.with_path(s))?;
        images.push((img, source, file_name(s)));
    }
    let changed = match &a.changed {
        Some(p) => vec![Some(super::bitmap::load(p)?)],
        None => Vec::new(),
    };
    let ask = |p: &Path| ctx.password(p);
    let repository = Repository::open_or_init(
        super::location(&a.repo)?,
        &Access {
            password: Some(&ask),
        },
    )?
    .with_reading(ctx.open.read_ahead, ctx.open.cache);
    let total: u64 = images.iter().map(|(i, _, _)| vdisk::DiskImage::size(i)).sum();
    let progress = ctx.progress(total);
    let tick = |n: u64| progress.tick(n);
    let disks: Vec<DiskSource<'_>> = images
        .iter()
        .map(|(img, source, label)| DiskSource {
            image: img,
            source: source.clone(),
            label: label.clone(),
        })
        .collect();
    let opts = BackupOptions {
        force: a.force,
        changed,
        throttle: Some(&ctx.throttle),
        progress: Some(&tick),
    };
    let s = repository.backup(&name, &disks, &opts)?;
    let secs = progress.seconds();
    progress.done("backed up");
    if a.json {
        print_json(&json!({
            "name": s.name,
            "point": s.point,
            "kind": s.kind.name(),
            "points": s.points,
            "disks": s.disks,
            "logical_bytes": s.logical_bytes,
            "bytes_read": s.bytes_read,
            "bytes_written": s.bytes_added,
            "blobs_written": s.blobs_added,
            "seconds": secs,
        }))?;
    } else if ctx.summary() {
        eprintln!(
            "vdisk: point {} of {} ({}, {} disk(s)), {} point(s); read {}, wrote {} in {secs:.2} s ({}/s)",
            s.point,
            s.name,
            s.kind.name(),
            s.disks,
            s.points,
            human(s.bytes_read),
            human(s.bytes_added),
            human((s.bytes_read as f64 / secs.max(1e-3)) as u64)
        );
    }
    Ok(0)
}
