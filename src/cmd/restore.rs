//! `vdisk restore`: a point as a disk image or onto a device, every grain checked.

use std::path::PathBuf;

use serde_json::json;
use vdisk::size::human;
use vdisk::{ConvertOptions, DiskImage, Protected, Repository, Result};

use super::convert::OutputArgs;
use super::{path_text, policy, print_json, Ctx, Status};

/// Write a restore point as a disk image, or onto a device (the newest point by default).
/// Every grain read is checked against the hash kept at backup time.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The repository: a folder or s3://BUCKET/PREFIX.
    pub repo: PathBuf,
    /// The image to write, or a device (written in place).
    pub dst: PathBuf,
    /// The point to restore.
    #[arg(long, value_name = "N")]
    pub point: Option<u64>,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Replace an existing destination (a device is overwritten in place).
    #[arg(long)]
    pub force: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<Status> {
    // The output's format is settled before anything is read.
    a.output.output(&a.dst, vdisk::OutputPolicy::new())?;
    let repository = Repository::open(super::location(&a.repo)?)?
        .with_read_ahead(ctx.open.read_ahead)
        .with_cache(ctx.open.cache);
    let image = repository.checked_point(a.point)?;
    let mut protected = Protected::new();
    if let Some(dir) = repository.local_dir() {
        protected.add_folder(dir)?;
    }
    protected.add_image(&image);
    let progress = ctx.progress(image.size());
    let tick = |n: u64| progress.tick(n);
    let out = a.output.output(&a.dst, policy(a.force, protected))?;
    let opts = ConvertOptions {
        create: out.create.clone(),
        throttle: Some(&ctx.throttle),
        progress: Some(&tick),
    };
    let stats = vdisk::convert(&image, &a.dst, out.format, &opts)?;
    let seconds = progress.seconds();
    progress.done(&format!(
        "restored {} ({} read)",
        human(stats.size),
        human(stats.bytes_read)
    ));
    if a.json {
        print_json(&json!({
            "point": image.point(),
            "destination": path_text(&a.dst),
            "format": out.format.name(),
            "size": stats.size,
            "bytes_read": stats.bytes_read,
            "seconds": seconds,
        }))?;
    }
    Ok(0)
}
