//! `vdisk prune`: points a retention policy does not keep are removed, then the space
//! nothing references is reclaimed.

use std::path::PathBuf;

use serde_json::json;
use vdisk::chain::{PruneOptions, Reader, Retention};
use vdisk::{CopyOptions, Error, ErrorKind, Result};

use super::{print_json, Ctx, Expect, Status};
use crate::progress::{amount, secs};

/// Remove the points a retention policy does not keep, then reclaim their space
///
/// Each NAME is pruned on its own, with restic's meanings of the --keep options; the newest
/// point of a NAME always stays. Packs nothing needs any more are condemned, and deleted by
/// a later prune once the grace period has passed (a reader that started before still finds
/// them).
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  vdisk prune --keep-daily 7 --keep-weekly 4 --keep-monthly 12 /backups
  vdisk prune --name web01 --keep-last 3 --dry-run /backups")]
pub struct Args {
    /// The repository: a folder or s3://BUCKET/PREFIX.
    pub repo: PathBuf,
    /// Only the points of this NAME.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Keep the N newest points.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest point of each of the N newest days that have points (UTC).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: u32,
    /// ... of each of the N newest ISO weeks.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: u32,
    /// ... of each of the N newest months.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: u32,
    /// Say what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

fn layout2(ctx: &Ctx, a: &Args) -> Result<Status> {
    if a.keep_daily + a.keep_weekly + a.keep_monthly > 0 || a.dry_run || a.keep_last == 0 {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "is a layout-2 repository: it is pruned with --keep-last N only (bring it into layout 3 with `vdisk sync OLD NEW`)",
        )
        .with_path(&a.repo));
    }
    let mut r = vdisk::chain::layout2::Repository::open_writable(super::location(&a.repo)?)?
        .with_read_ahead(ctx.open.read_ahead)
        .with_cache(ctx.open.cache);
    let keep = a.keep_last as usize;
    let progress = ctx.progress(
        &format!("prune {}", super::label(&a.repo)),
        Expect::Span(r.prune_bytes(keep)),
    );
    let opts = CopyOptions {
        throttle: Some(&ctx.throttle),
        progress: Some(&progress),
    };
    let s = r.prune(keep, &opts)?;
    let seconds = progress.seconds();
    let kept = r.points().len();
    if a.json {
        print_json(&json!({"folded": s.folded, "kept": kept, "bytes_freed": s.bytes_freed}))?;
    }
    progress.finish(format_args!(
        "pruned {}: folded {} point(s) into the base, {kept} kept, freed {} in {}",
        a.repo.display(),
        s.folded,
        amount(s.bytes_freed),
        secs(seconds)
    ));
    Ok(0)
}

pub fn run(ctx: &Ctx, a: Args) -> Result<Status> {
    let retention = Retention {
        last: a.keep_last,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
    };
    if retention.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "say what to keep: --keep-last, --keep-daily, --keep-weekly or --keep-monthly (at least 1)",
        ));
    }
    let r = match super::open_reader(ctx, &a.repo)? {
        Reader::Two(_) => return layout2(ctx, &a),
        Reader::Three(r) => r,
    };
    let started = std::time::Instant::now();
    let s = r.prune(&PruneOptions {
        retention,
        name: a.name.clone(),
        dry_run: a.dry_run,
    })?;
    let g = &s.gc;
    if a.json {
        let pts = |v: &[(String, u64)]| -> Vec<serde_json::Value> {
            v.iter()
                .map(|(n, p)| json!({"name": n, "point": p}))
                .collect()
        };
        print_json(&json!({
            "dry_run": a.dry_run,
            "kept": pts(&s.kept),
            "removed": pts(&s.removed),
            "packs": g.packs,
            "pack_bytes": g.pack_bytes,
            "live_bytes": g.live_bytes,
            "condemned_packs": g.condemned_packs,
            "condemned_bytes": g.condemned_bytes,
            "repacked_blobs": g.repacked_blobs,
            "repacked_bytes": g.repacked_bytes,
            "deleted_packs": g.deleted_packs,
            "bytes_freed": g.freed_bytes,
            "waiting_packs": g.waiting_packs,
            "writers_running": g.writers_running,
            "leftovers_removed": g.leftovers_removed,
        }))?;
    }
    let (would, freed, condemned) = if a.dry_run {
        ("would remove", "would free", "would condemn")
    } else {
        ("removed", "freed", "condemned")
    };
    let list: Vec<String> = s.removed.iter().map(|(n, p)| format!("{n} {p}")).collect();
    ctx.summary(format_args!(
            "{} {}: {would} {} point(s){}{}, {} kept; {freed} {} ({} pack(s)); {condemned} {} pack(s), {} ({} block(s) copied out of mostly-empty packs){} in {}",
            if a.dry_run { "dry run of prune on" } else { "pruned" },
            a.repo.display(),
            s.removed.len(),
            if list.is_empty() { "" } else { ": " },
            list.join(", "),
            s.kept.len(),
            amount(g.freed_bytes),
            g.deleted_packs,
            g.condemned_packs,
            amount(g.condemned_bytes),
            g.repacked_blobs,
            if g.writers_running {
                "; deletions wait: backups are running"
            } else {
                ""
            },
            secs(started.elapsed().as_secs_f64())
        ));
    Ok(0)
}
