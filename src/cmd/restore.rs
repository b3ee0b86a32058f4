//! `vdisk restore`: a disk of a point as a disk image or onto a device, every block checked.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;
use vdisk::chain::Reader;
use vdisk::size::human;
use vdisk::{ConvertOptions, DiskImage, Protected, Result};

use super::convert::OutputArgs;
use super::{path_text, policy, print_json, Ctx, Expect, Status};
use crate::progress::{rate, secs};

/// Restore a disk of a point as a disk image, or onto a device
///
/// The newest point of the NAME unless --point says which; a point of several disks needs
/// --disk. The image's format follows DST's name (.vmdk, .qcow2, .vhdx, .vhd, .vdi; anything
/// else is raw) unless -O says it. Every block read is checked (its seal, and its bytes
/// against its id).
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  vdisk restore /backups web01-restored.vmdk            # the newest point, as a VMDK
  vdisk restore --name web01 --point 3 /backups web01.qcow2
  vdisk restore --disk disk1.vmdk --name db01 /backups db01-data.raw
  vdisk restore --force /backups /dev/vg0/web01         # onto a device, in place")]
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

/// A disk of a point, checked as it is read: (image, NAME, point, disk label, the
/// repository's folder when it is local).
pub type CheckedDisk = (Arc<dyn DiskImage>, String, u64, String, Option<PathBuf>);

/// A disk of a point of the repository at `repo`, checked as it is read.
pub fn checked_disk(
    ctx: &Ctx,
    repo: &std::path::Path,
    name: Option<&str>,
    point: Option<u64>,
) -> Result<CheckedDisk> {
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
    super::repository_order(
        &a.repo,
        &[&a.dst],
        "vdisk restore REPO DST",
        "REPO comes first",
    )?;
    // The output's format is settled before anything is read.
    a.output.output(&a.dst, vdisk::OutputPolicy::new())?;
    let (image, name, point, disk, dir) = checked_disk(ctx, &a.repo, a.name.as_deref(), a.point)?;
    let mut protected = Protected::new();
    if let Some(dir) = &dir {
        protected.add_folder(dir)?;
    }
    protected.add_image(&*image);
    let progress = ctx.progress(
        &format!("restore {}", super::label(&a.dst)),
        Expect::Reads(super::data_bytes(&*image)),
    );
    let out = a.output.output(&a.dst, policy(a.force, protected))?;
    let opts = ConvertOptions {
        create: out.create.clone(),
        throttle: Some(&ctx.throttle),
        progress: Some(&progress),
    };
    let stats = vdisk::convert(&*image, &a.dst, out.format, &opts)?;
    let seconds = progress.seconds();
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
    progress.finish(format_args!(
        "restored point {point} of {name}, disk {disk}, from {} to {} ({}, {} disk): read and checked {} in {} ({})",
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
