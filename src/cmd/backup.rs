//! `vdisk backup`: a full point first, incremental points after.

use std::path::PathBuf;

use serde_json::json;
use vdisk::size::human;
use vdisk::{BackupOptions, DiskImage, Granularity, Repository, Result};

use super::{print_json, Ctx, Status};

/// Back up an image into a repository: a full point first, incremental points after.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The disk to back up: an image, or a live NBD export (nbd://HOST[:PORT]/EXPORT,
    /// nbd+unix:///EXPORT?socket=PATH).
    pub src: PathBuf,
    /// The repository: a folder (created on the first backup) or s3://BUCKET/PREFIX.
    pub repo: PathBuf,
    /// Changed blocks from the hypervisor, trusted as a superset of the changes: a bitmap
    /// from `vdisk bitmap import`, or qemu:dirty-bitmap:NAME, a QEMU dirty bitmap of the
    /// source (an NBD export's, or a qcow2 file's); only those blocks are read. Without it,
    /// changes are found by hashing.
    #[arg(long, value_name = "CHANGES")]
    pub changed: Option<PathBuf>,
    /// Back up a source that was not closed cleanly, or that is not the repository's disk.
    #[arg(long)]
    pub force: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<Status> {
    let img = vdisk::open_with(&a.src, &ctx.open)?;
    let source = vdisk::Source::of(&img)?;
    let changed = match &a.changed {
        Some(p) => Some(super::bitmap::changes(
            p,
            &img,
            Granularity::DEFAULT.bytes(),
        )?),
        None => None,
    };
    // Paced reads read no more than asked, in the repository too (the previous point, which
    // an incremental links to, is read through a map).
    let mut repository = Repository::open_or_create(super::location(&a.repo)?)?
        .with_read_ahead(ctx.open.read_ahead)
        .with_cache(ctx.open.cache);
    let progress = ctx.progress(img.size());
    let tick = |n: u64| progress.tick(n);
    let opts = BackupOptions {
        force: a.force,
        changed,
        throttle: Some(&ctx.throttle),
        progress: Some(&tick),
    };
    let s = repository
        .backup_image(&img, &source, &opts)
        .map_err(|e| e.with_path(&a.src))?;
    let secs = progress.seconds();
    progress.done("backed up");
    if a.json {
        print_json(&json!({
            "point": s.point,
            "kind": s.kind.name(),
            "points": s.points,
            "bytes_read": s.bytes_read,
            "bytes_written": s.bytes_written,
            "seconds": secs,
        }))?;
    } else if ctx.summary() {
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
