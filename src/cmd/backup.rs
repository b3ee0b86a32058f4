//! `vdisk backup`: a point of a NAME, holding one disk or several disks of one VM.

use std::path::{Path, PathBuf};

use serde_json::json;
use vdisk::chain::{Access, DiskSource};
use vdisk::{BackupOptions, Error, ErrorKind, Granularity, Repository, Result};

use super::{print_json, Ctx, Expect, Status};
use crate::progress::{rate, secs as secs_text};

/// Back up disks into a repository, as the next point of a NAME
///
/// Blocks the repository holds already (of any disk, VM or point) are not stored again.
/// Only what changed since the NAME's newest point is read: the blocks a changed-block map
/// names (--changed), or otherwise every allocated block, compared by its fingerprint.
/// Several SRCs are the disks of one VM, taken together in one point.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  vdisk backup web01.vmdk /backups                      # NAME web01: full, then incremental
  vdisk backup --name web01 disk0.vmdk disk1.vmdk /backups
  vdisk backup --changed web01.cbt web01.vmdk /backups
  vdisk backup --changed qemu:dirty-bitmap:b1 'nbd+unix:///vda?socket=/run/b.sock' /backups
  vdisk --io-limit 100M backup web01.qcow2 s3://backups/vms")]
pub struct Args {
    /// The disks to back up: images, or live NBD exports (nbd://HOST[:PORT]/EXPORT,
    /// nbd+unix:///EXPORT?socket=PATH). Several: the disks of one VM, in one point.
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
    /// Changed blocks from the hypervisor, trusted as a superset of the changes: a bitmap
    /// from `vdisk bitmap import`, or qemu:dirty-bitmap:NAME, a QEMU dirty bitmap of the
    /// source (an NBD export's, or a qcow2 file's); only those blocks are read. A NAME's
    /// first point has nothing to build on, so it reads every allocated block even with it.
    /// Without it, changes are found by fingerprints. With one SRC only.
    #[arg(long, value_name = "CHANGES")]
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

/// The default NAME: the first source's file name without its extension (an NBD export's
/// name, for a URI).
fn default_name(src: &Path) -> String {
    match vdisk::ImageLocation::from(src).live_identity() {
        Some(id) => id
            .rsplit('/')
            .find(|s| !s.is_empty())
            .map_or_else(|| "disk".into(), str::to_string),
        None => src
            .file_stem()
            .map_or_else(|| "disk".into(), |s| s.to_string_lossy().into_owned()),
    }
}

pub fn run(ctx: &Ctx, a: Args) -> Result<Status> {
    let srcs: Vec<&Path> = a.src.iter().map(PathBuf::as_path).collect();
    super::repository_order(
        &a.repo,
        &srcs,
        "vdisk backup SRC... REPO",
        "REPO comes last",
    )?;
    if a.changed.is_some() && a.src.len() > 1 {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "--changed describes one disk: back up a VM's disks with --changed one NAME each, or without --changed",
        ));
    }
    let name = match &a.name {
        Some(n) => n.clone(),
        None => default_name(&a.src[0]),
    };
    let mut images = Vec::new();
    for s in &a.src {
        let img = vdisk::open_with(s, &ctx.open)?;
        let source = vdisk::Source::of(&img).map_err(|e| e.with_path(s))?;
        let label = match vdisk::ImageLocation::from(s.as_path()).live_identity() {
            Some(_) => default_name(s),
            None => file_name(s),
        };
        images.push((img, source, label));
    }
    let changed = match &a.changed {
        Some(p) => vec![Some(super::bitmap::changes(
            p,
            &images[0].0,
            Granularity::DEFAULT.bytes(),
        )?)],
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
    // A changed-block map bounds the reads; otherwise every allocated block is read.
    let expected: u64 = match changed.first().and_then(Option::as_ref) {
        Some(map) => map
            .count()
            .saturating_mul(map.granularity())
            .min(vdisk::DiskImage::size(&images[0].0)),
        None => images
            .iter()
            .map(|(i, _, _)| super::data_blocks(i, repository.block_size()))
            .sum(),
    };
    // The label names the disk (or, for a VM's several disks, the NAME).
    let label = match a.src.as_slice() {
        [one] => super::label(one),
        _ => name.clone(),
    };
    let progress = ctx.progress(&format!("backup {label}"), Expect::Reads(expected));
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
        progress: Some(&progress),
    };
    let s = repository.backup(&name, &disks, &opts)?;
    let secs = progress.seconds();
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
    }
    progress.finish(format_args!(
        "backed up {} to {} as point {} of {} ({}; {} point(s) kept): read {}, stored {} in {} ({})",
        a.src
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        a.repo.display(),
        s.point,
        s.name,
        s.kind.name(),
        s.points,
        crate::progress::amount(s.bytes_read),
        crate::progress::amount(s.bytes_added),
        secs_text(secs),
        rate(s.bytes_read, secs)
    ));
    Ok(0)
}
