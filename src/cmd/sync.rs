//! `vdisk sync`: make one repository hold another's points (folders and object stores,
//! either way), moving only what the destination lacks.

use std::path::PathBuf;

use serde_json::json;
use vdisk::chain::VerifyOptions;
use vdisk::{Error, ErrorKind, Repository, Result};

use super::{print_json, Ctx, Expect, Status};
use crate::progress::{rate, secs as secs_text};

/// Copy a repository's points to another (offsite) repository
///
/// Copies only what DST lacks, checks what arrived against the hashes kept at backup time,
/// then switches DST's metadata: a sync killed at any instant leaves DST as it was.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  vdisk sync /backups/web01 s3://offsite/web01          # AWS_* variables name the store
  vdisk sync s3://offsite/web01 /restore-area/web01     # and back")]
pub struct Args {
    /// The repository to copy: a folder or s3://BUCKET/PREFIX.
    pub src: PathBuf,
    /// The repository to make a copy of it (created if needed): a folder or
    /// s3://BUCKET/PREFIX.
    pub dst: PathBuf,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<Status> {
    let (src_loc, dst_loc) = (super::location(&a.src)?, super::location(&a.dst)?);
    if src_loc == dst_loc {
        return Err(Error::new(
            ErrorKind::Refused,
            "source and destination are the same repository",
        )
        .with_path(&a.dst));
    }
    let src = Repository::open(src_loc)
        .map_err(|e| e.with_path(&a.src))?
        .with_read_ahead(ctx.open.read_ahead)
        .with_cache(ctx.open.cache);
    let mut dst = Repository::open_or_create(dst_loc)?;
    // Each point is copied, then read back and checked: twice its stored bytes, taken off
    // for the points the destination already holds.
    let progress = ctx.progress(
        &format!("sync to {}", super::label(&a.dst)),
        Expect::Span(src.verify_bytes(None).saturating_mul(2)),
    );
    let opts = VerifyOptions {
        throttle: Some(&ctx.throttle),
        progress: Some(&progress),
    };
    let s = dst.sync_from(&src, &opts)?;
    let secs = progress.seconds();
    if a.json {
        print_json(&json!({
            "points": s.points,
            "points_copied": s.points_copied,
            "files_copied": s.files_copied,
            "bytes_copied": s.bytes_copied,
            "points_removed": s.points_removed,
            "seconds": secs,
        }))?;
    }
    progress.finish(format_args!(
        "synced {} to {}: {} point(s), {} copied ({} file(s), {}), {} removed in {} ({})",
        a.src.display(),
        a.dst.display(),
        s.points,
        s.points_copied,
        s.files_copied,
        crate::progress::amount(s.bytes_copied),
        s.points_removed,
        secs_text(secs),
        rate(s.bytes_copied, secs)
    ));
    Ok(0)
}
