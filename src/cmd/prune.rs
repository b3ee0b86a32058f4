//! `vdisk prune`: the oldest points folded into a synthetic full.

use std::path::PathBuf;

use serde_json::json;
use vdisk::{CopyOptions, Repository, Result};

use super::{print_json, Ctx, Expect, Status};
use crate::progress::secs;

/// Fold the oldest points into the base so that N remain.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The repository: a folder or s3://BUCKET/PREFIX.
    pub repo: PathBuf,
    /// Points to keep.
    #[arg(long, value_name = "N")]
    pub keep: usize,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<Status> {
    let mut repository = Repository::open_writable(super::location(&a.repo)?)?
        .with_read_ahead(ctx.open.read_ahead)
        .with_cache(ctx.open.cache);
    let progress = ctx.progress(
        &format!("prune {}", super::label(&a.repo)),
        Expect::Span(repository.prune_bytes(a.keep)),
    );
    let opts = CopyOptions {
        throttle: Some(&ctx.throttle),
        progress: Some(&progress),
    };
    let s = repository.prune(a.keep, &opts)?;
    let seconds = progress.seconds();
    let kept = repository.points().len();
    if a.json {
        print_json(&json!({
            "folded": s.folded,
            "kept": kept,
            "bytes_freed": s.bytes_freed,
        }))?;
    }
    progress.finish(format_args!(
        "pruned {}: folded {} point(s) into the base, {kept} kept, freed {} in {}",
        a.repo.display(),
        s.folded,
        crate::progress::amount(s.bytes_freed),
        secs(seconds)
    ));
    Ok(0)
}
