//! `vdisk backup`: a full point first, incremental points after.

use std::path::PathBuf;

use serde_json::json;
use vdisk::{BackupOptions, DiskImage, Granularity, Repository, Result};

use super::{print_json, Ctx, Expect, Status};
use crate::progress::{rate, secs as secs_text};

/// Back up a disk into a repository (a full point first, incremental points after)
///
/// Only what changed since the newest point is stored: the blocks a changed-block bitmap
/// names (--changed), or otherwise those whose hashes differ. Every block is hashed, so
/// restore, serve and verify can check it later.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  vdisk backup web01.vmdk /backups/web01                # full, then incremental
  vdisk backup --changed web01.cbt web01.vmdk /backups/web01
  vdisk --io-limit 100M backup web01.qcow2 s3://backups/web01")]
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
    super::repository_order(
        &a.repo,
        &[&a.src],
        "vdisk backup SRC REPO",
        "REPO comes last",
    )?;
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
    // A changed-block map bounds the reads; otherwise every allocated byte is read.
    let expected = match &changed {
        Some(map) => map
            .count()
            .saturating_mul(map.granularity())
            .min(img.size()),
        // A repository reads whole 64 KiB grains.
        None => super::data_blocks(&img, 64 << 10),
    };
    let progress = ctx.progress(
        &format!("backup {}", super::label(&a.src)),
        Expect::Reads(expected),
    );
    let opts = BackupOptions {
        force: a.force,
        changed,
        throttle: Some(&ctx.throttle),
        progress: Some(&progress),
    };
    let s = repository
        .backup_image(&img, &source, &opts)
        .map_err(|e| e.with_path(&a.src))?;
    let secs = progress.seconds();
    if a.json {
        print_json(&json!({
            "point": s.point,
            "kind": s.kind.name(),
            "points": s.points,
            "bytes_read": s.bytes_read,
            "bytes_written": s.bytes_written,
            "seconds": secs,
        }))?;
    }
    progress.finish(format_args!(
        "backed up {} to {} as point {} ({}; {} point(s) kept): read {}, stored {} in {} ({})",
        a.src.display(),
        a.repo.display(),
        s.point,
        s.kind.name(),
        s.points,
        crate::progress::amount(s.bytes_read),
        crate::progress::amount(s.bytes_written),
        secs_text(secs),
        rate(s.bytes_read, secs)
    ));
    Ok(0)
}
