//! `vdisk sync`: make one repository hold another's points (folders and object stores,
//! either way), moving only what the destination lacks; or bring a layout-2 repository's
//! points into layout 3.

use std::path::{Path, PathBuf};

use serde_json::json;
use vdisk::chain::{Access, Reader, VerifyOptions};
use vdisk::{Error, ErrorKind, Repository, Result};

use super::{print_json, Ctx, Expect, Status};
use crate::progress::{amount, rate, secs as secs_text};

/// Copy a repository's points to another (offsite) repository
///
/// Makes DST hold SRC's points: copies what DST lacks (blocks it has are never sent), checks
/// it on arrival, then adds the points (a sync killed at any instant resumes where it was).
/// SRC may be a layout-2 repository: its points become points of a NAME in DST. A DST made
/// by sync shares SRC's key (an encrypted one opens with SRC's password, or
/// VDISK_DST_PASSWORD).
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  vdisk sync /backups s3://offsite/vms                  # AWS_* variables name the store
  vdisk sync --name web01 s3://offsite/vms /restore-area
  vdisk sync /old-backups/web01 /backups                # a layout-2 repository, imported")]
pub struct Args {
    /// The repository to copy: a folder or s3://BUCKET/PREFIX.
    pub src: PathBuf,
    /// The repository to copy into (made if needed): a folder or s3://BUCKET/PREFIX.
    pub dst: PathBuf,
    /// Only the points of this NAME (for a layout-2 SRC: the NAME its points get; by
    /// default its disk's file name without extension).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
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
    let dst_password = |p: &Path| match std::env::var("VDISK_DST_PASSWORD") {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => ctx.password(p),
    };
    let dst_access = Access {
        password: Some(&dst_password),
    };
    let (s, progress) = match super::open_reader(ctx, &a.src).map_err(|e| e.with_path(&a.src))? {
        Reader::Two(old) => {
            let old = old
                .with_read_ahead(ctx.open.read_ahead)
                .with_cache(ctx.open.cache);
            let name = a.name.clone().unwrap_or_else(|| super::layout2_name(&old));
            let dst = Repository::open_or_init(dst_loc, &dst_access)?;
            let progress = ctx.progress(
                &format!("sync to {}", super::label(&a.dst)),
                Expect::Span(old.verify_bytes(None)),
            );
            let opts = VerifyOptions {
                throttle: Some(&ctx.throttle),
                progress: Some(&progress),
            };
            let s = dst.import_layout2(&old, &name, &opts)?;
            (s, progress)
        }
        Reader::Three(src) => {
            let src = src.with_reading(ctx.open.read_ahead, ctx.open.cache);
            let copy_password = if src.encrypted() {
                Some(dst_password(&a.dst)?)
            } else {
                None
            };
            let dst = Repository::open_or_init_copy(dst_loc, &src, &dst_access, copy_password)?;
            let progress = ctx.progress(
                &format!("sync to {}", super::label(&a.dst)),
                Expect::Span(src.verify_bytes(a.name.as_deref(), None)),
            );
            let opts = VerifyOptions {
                throttle: Some(&ctx.throttle),
                progress: Some(&progress),
            };
            let s = dst.sync_from(&src, a.name.as_deref(), &opts)?;
            (s, progress)
        }
    };
    let secs = progress.seconds();
    if a.json {
        print_json(&json!({
            "points": s.points,
            "points_copied": s.points_copied,
            "points_present": s.points_present,
            "blobs_copied": s.blobs_copied,
            "bytes_copied": s.bytes_copied,
            "seconds": secs,
        }))?;
    }
    progress.finish(format_args!(
        "synced {} to {}: {} point(s), {} copied ({} there already), {} block(s), {} in {} ({})",
        a.src.display(),
        a.dst.display(),
        s.points,
        s.points_copied,
        s.points_present,
        s.blobs_copied,
        amount(s.bytes_copied),
        secs_text(secs),
        rate(s.bytes_copied, secs)
    ));
    Ok(0)
}
