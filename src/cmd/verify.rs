//! `vdisk verify`: every stored grain against the hashes kept at backup time.

use std::path::PathBuf;

use serde_json::json;
use vdisk::chain::VerifyOptions;
use vdisk::{Repository, Result};

use super::{print_json, print_text, Ctx, Expect, Status};
use crate::progress::{rate, secs};

/// Check a repository's points against the hashes kept at backup time
///
/// Exit status 1 when a point is damaged.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The repository: a folder or s3://BUCKET/PREFIX.
    pub repo: PathBuf,
    /// Check this point and those it depends on (all points by default).
    #[arg(long, value_name = "N")]
    pub point: Option<u64>,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<Status> {
    let repository = Repository::open(super::location(&a.repo)?)?
        .with_read_ahead(ctx.open.read_ahead)
        .with_cache(ctx.open.cache);
    let expected = repository.verify_bytes(a.point);
    let progress = ctx.progress(
        &format!("verify {}", super::label(&a.repo)),
        Expect::Reads(expected),
    );
    let opts = VerifyOptions {
        throttle: Some(&ctx.throttle),
        progress: Some(&progress),
    };
    let reports = repository.verify(a.point, &opts)?;
    let seconds = progress.seconds();
    let sound = reports.iter().all(|r| r.sound());
    let damaged = reports.iter().filter(|r| !r.problems.is_empty()).count();
    let affected = reports
        .iter()
        .filter(|r| r.problems.is_empty() && r.depends_on_damaged.is_some())
        .count();
    if a.json {
        let v: Vec<_> = reports
            .iter()
            .map(|r| {
                let status = if !r.problems.is_empty() {
                    "damaged"
                } else if r.depends_on_damaged.is_some() {
                    "affected"
                } else {
                    "ok"
                };
                let problems: Vec<String> = r.problems.iter().map(|p| p.to_string()).collect();
                json!({"point": r.point, "status": status, "problems": problems, "depends_on_damaged": r.depends_on_damaged})
            })
            .collect();
        print_json(&json!({ "sound": sound, "points": v }))?;
    } else {
        let mut text = String::new();
        for r in &reports {
            if !r.problems.is_empty() {
                text.push_str(&format!("point {}: DAMAGED\n", r.point));
                for p in &r.problems {
                    text.push_str(&format!("  {p}\n"));
                }
            } else if let Some(d) = r.depends_on_damaged {
                text.push_str(&format!(
                    "point {}: affected (depends on damaged point {d})\n",
                    r.point
                ));
            } else {
                text.push_str(&format!("point {}: ok\n", r.point));
            }
        }
        text.push_str(if sound {
            "repository is sound\n"
        } else {
            "repository is damaged\n"
        });
        print_text(&text)?;
    }
    let verdict = if sound {
        "sound".to_string()
    } else {
        format!("DAMAGED ({damaged} point(s) damaged, {affected} affected)")
    };
    progress.finish(format_args!(
        "verified {} point(s) of {}: {verdict}; checked {} in {} ({})",
        reports.len(),
        a.repo.display(),
        crate::progress::amount(expected),
        secs(seconds),
        rate(expected, seconds)
    ));
    Ok(u8::from(!sound))
}
