//! `vdisk restore`: a disk of a point as a disk image or onto a device, every block checked.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;
use vdisk::chain::Reader;
use vdisk::size::human;
use vdisk::{ConvertOptions, DiskImage, Protected, Result};

use super::convert::OutputArgs;
use super::{path_text, policy, print_json, Ctx, Status};

/// Write a disk of a point as a disk image, or onto a device (the newest point by
/// default). Every block read is checked (its seal, and its bytes against its id).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The repository: a folder or s3://BUCKET/PREFIX.
    pub repo: PathBuf,
    /// The image to write, or a device (written in place).
    pub dst: PathBuf,
    /// The NAME whose point to restore (default: the repository's only NAME).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The point to restore, by its number in its NAME.
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

/// A disk of a point of the repository at `repo`, checked as it is read: (image, NAME,
/// point, disk label).
pub fn checked_disk(
    ctx: &Ctx,
    repo: &std::path::Path,
    name: Option<&str>,
    point: Option<u64>,
) -> Result<(Arc<dyn DiskImage>, String, u64, String, Option<PathBuf>)> {
    Ok(match super::open_reader(ctx, repo)? {
        Reader::Two(r) => {
            let r = r
                .with_read_ahead(ctx.open.read_ahead)
                .with_cache(ctx.open.cache);
            let n = super::layout2_name(&r);
            let img = r.checked_point(point)?;
            let p = img.point();
            let label = r
                .meta()
                .and_then(|m| {
                    std::path::Path::new(&m.disk.source)
                        .file_name()
                        .map(|s| s.to_string_lossy().into_owned())
                })
                .unwrap_or_default();
            let dir = r.local_dir().map(|d| d.to_path_buf());
            (Arc::new(img), n, p, label, dir)
        }
        Reader::Three(r) => {
            let r = r.with_reading(ctx.open.read_ahead, ctx.open.cache);
            let p = r.select(name, point)?;
            let img = r.point_image(&p, ctx.open.disk.as_deref())?;
            let label = img.disk().label.clone();
            let dir = r.local_dir().map(|d| d.to_path_buf());
            (Arc::new(img), p.record.name, p.record.seq, label, dir)
        }
    })
}

pub fn run(ctx: &Ctx, a: Args) -> Result<Status> {
    // The output's format is settled before anything is read.
    a.output.output(&a.dst, vdisk::OutputPolicy::new())?;
    let (image, name, point, disk, dir) =
        checked_disk(ctx, &a.repo, a.name.as_deref(), a.point)?;
    let mut protected = Protected::new();
    if let Some(dir) = &dir {
        protected.add_folder(dir)?;
    }
    protected.add_image(&*image);
    let progress = ctx.progress(image.size());
    let tick = |n: u64| progress.tick(n);
    let out = a.output.output(&a.dst, policy(a.force, protected))?;
    let opts = ConvertOptions {
        create: out.create.clone(),
        throttle: Some(&ctx.throttle),
        progress: Some(&tick),
    };
    let stats = vdisk::convert(&*image, &a.dst, out.format, &opts)?;
    let seconds = progress.seconds();
    progress.done(&format!(
        "restored point {point} of {name}, disk {disk}: {} ({} read)",
        human(stats.size),
        human(stats.bytes_read)
    ));
    if a.json {
        print_json(&json!({
            "name": name,
            "point": point,
            "disk": disk,
            "destination": path_text(&a.dst),
            "format": out.format.name(),
            "size": stats.size,
            "bytes_read": stats.bytes_read,
            "seconds": seconds,
        }))?;
    }
    Ok(0)
}
