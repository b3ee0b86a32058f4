//! `vdisk restore`: a point as a disk image or onto a device, every grain checked.

use std::path::PathBuf;

use serde_json::json;
use vdisk::size::human;
use vdisk::{ConvertOptions, Protected, Repository, Result};

use super::convert::OutputArgs;
use super::{path_text, policy, print_json, Ctx, Expect, Status};
use crate::progress::{rate, secs};

/// Restore a point as a disk image, or onto a device
///
/// The newest point unless --point says which. The image's format follows DST's name
/// (.vmdk, .qcow2, .vhdx, .vhd; anything else is raw) unless -O says it. Every block read is
/// checked against the hash kept at backup time.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  vdisk restore /backups/web01 web01-restored.vmdk      # the newest point, as a VMDK
  vdisk restore --point 3 /backups/web01 web01.qcow2
  vdisk restore --force /backups/web01 /dev/vg0/web01   # onto a device, in place")]
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
    super::repository_order(
        &a.repo,
        &[&a.dst],
        "vdisk restore REPO DST",
        "REPO comes first",
    )?;
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
    let progress = ctx.progress(
        &format!("restore {}", super::label(&a.dst)),
        Expect::Reads(super::data_bytes(&image)),
    );
    let out = a.output.output(&a.dst, policy(a.force, protected))?;
    let opts = ConvertOptions {
        create: out.create.clone(),
        throttle: Some(&ctx.throttle),
        progress: Some(&progress),
    };
    let stats = vdisk::convert(&image, &a.dst, out.format, &opts)?;
    let seconds = progress.seconds();
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
    progress.finish(format_args!(
        "restored point {} of {} to {} ({}, {} disk): read and checked {} in {} ({})",
        image.point(),
        a.repo.display(),
        a.dst.display(),
        out.format.name(),
        human(stats.size),
        crate::progress::amount(stats.bytes_read),
        secs(seconds),
        rate(stats.bytes_read, seconds)
    ));
    Ok(0)
}
