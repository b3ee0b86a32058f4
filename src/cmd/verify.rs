//! `vdisk verify`: every block and every chunk of the index of the points, checked.

use std::path::PathBuf;

use serde_json::json;
use vdisk::chain::{layout2, Reader, VerifyOptions};
use vdisk::Result;

use super::{print_json, print_text, Ctx, Expect, Status};
use crate::progress::{amount, rate, secs};

/// Check a repository's points
///
/// Every block and chunk of index is opened and checked against its id (and its seal).
/// Exit status 1 when a point is damaged.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  vdisk verify /backups
  vdisk verify --name web01 --point 12 --json s3://offsite/vms")]
pub struct Args {
    /// The repository: a folder or s3://BUCKET/PREFIX.
    pub repo: PathBuf,
    /// Only the points of this NAME.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Only this point (of the NAME).
    #[arg(long, value_name = "N")]
    pub point: Option<u64>,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The layout-2 flow: every stored grain against the hashes kept at backup time.
fn verify_layout2(ctx: &Ctx, r: layout2::Repository, a: &Args) -> Result<Status> {
    let r = r
        .with_read_ahead(ctx.open.read_ahead)
        .with_cache(ctx.open.cache);
    let expected = r.verify_bytes(a.point);
    let progress = ctx.progress(
        &format!("verify {}", super::label(&a.repo)),
        Expect::Reads(expected),
    );
    let opts = layout2::VerifyOptions {
        throttle: Some(&ctx.throttle),
        progress: Some(&progress),
    };
    let reports = r.verify(a.point, &opts)?;
    let seconds = progress.seconds();
    let damaged = reports.iter().filter(|r| !r.problems.is_empty()).count();
    let sound = reports.iter().all(|r| r.sound());
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
    progress.finish(format_args!(
        "verified {} of {}: {}; checked {} in {} ({})",
        verified(reports.len()),
        a.repo.display(),
        verdict(sound, damaged),
        amount(expected),
        secs(seconds),
        rate(expected, seconds)
    ));
    Ok(u8::from(!sound))
}

pub fn run(ctx: &Ctx, a: Args) -> Result<Status> {
    let r = match super::open_reader(ctx, &a.repo)? {
        Reader::Two(r) => return verify_layout2(ctx, r, &a),
        Reader::Three(r) => r.with_reading(ctx.open.read_ahead, ctx.open.cache),
    };
    let expected = r.verify_bytes(a.name.as_deref(), a.point);
    let progress = ctx.progress(
        &format!("verify {}", super::label(&a.repo)),
        Expect::Reads(expected),
    );
    let opts = VerifyOptions {
        throttle: Some(&ctx.throttle),
        progress: Some(&progress),
    };
    let reports = r.verify(a.name.as_deref(), a.point, &opts)?;
    let seconds = progress.seconds();
    let damaged = reports.iter().filter(|r| !r.removed && !r.sound()).count();
    let sound = reports.iter().all(|r| r.sound());
    if a.json {
        let v: Vec<_> = reports
            .iter()
            .map(|r| {
                let status = if r.removed {
                    "removed"
                } else if r.sound() {
                    "ok"
                } else {
                    "damaged"
                };
                let problems: Vec<String> = r.problems.iter().map(|p| p.to_string()).collect();
                json!({"name": r.name, "point": r.point, "object": r.key, "status": status, "problems": problems})
            })
            .collect();
        print_json(&json!({ "sound": sound, "points": v }))?;
    } else {
        let mut text = String::new();
        for r in &reports {
            let what = if r.point == 0 {
                r.key.clone()
            } else {
                format!("{} point {}", r.name, r.point)
            };
            if r.removed {
                text.push_str(&format!("{what}: removed by a prune while verify ran\n"));
            } else if r.sound() {
                text.push_str(&format!("{what}: ok\n"));
            } else {
                text.push_str(&format!("{what}: DAMAGED\n"));
                for p in &r.problems {
                    text.push_str(&format!("  {p}\n"));
                }
            }
        }
        text.push_str(if sound {
            "repository is sound\n"
        } else {
            "repository is damaged\n"
        });
        print_text(&text)?;
    }
    progress.finish(format_args!(
        "verified {} of {}: {}; checked {} in {} ({})",
        verified(reports.len()),
        a.repo.display(),
        verdict(sound, damaged),
        amount(expected),
        secs(seconds),
        rate(expected, seconds)
    ));
    Ok(u8::from(!sound))
}

/// How many points (or objects) were checked.
fn verified(n: usize) -> String {
    format!("{n} point(s)")
}

/// The verdict of a summary line.
fn verdict(sound: bool, damaged: usize) -> String {
    if sound {
        "sound".into()
    } else {
        format!("DAMAGED ({damaged} damaged)")
    }
}
