//! `vdisk check`: metadata consistency.

use std::path::PathBuf;

use serde_json::json;
use vdisk::vmdk::check::{check, Severity};
use vdisk::{Image, Result};

use super::{path_text, print_json, print_text, Ctx, Status};

/// Check metadata consistency (exit 1 when problems are found).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image.
    pub image: PathBuf,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<Status> {
    let img = vdisk::open_with(&args.image, &ctx.open)?;
    let findings = match &img {
        Image::Vmdk(v) => check(v),
        Image::Raw(_) => Vec::new(), // a raw image has no metadata to be inconsistent
    };
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    if args.json {
        let list = |sev| {
            findings
                .iter()
                .filter(|f| f.severity == sev)
                .map(|f| json!({"file": path_text(&f.file), "message": f.message.to_string()}))
                .collect::<Vec<_>>()
        };
        print_json(&json!({
            "path": path_text(&args.image),
            "clean": errors == 0,
            "errors": list(Severity::Error),
            "warnings": list(Severity::Warning),
        }))?;
    } else {
        let mut text = String::new();
        for f in &findings {
            let tag = if f.severity == Severity::Error {
                "ERROR"
            } else {
                "warning"
            };
            text.push_str(&format!("{tag}: {}: {}\n", f.file.display(), f.message));
        }
        if errors == 0 {
            text.push_str("No errors were found on the image.\n");
        } else {
            text.push_str(&format!("{errors} error(s) were found on the image.\n"));
        }
        print_text(&text)?;
    }
    Ok(u8::from(errors > 0))
}
