use std::path::Path;

use serde_json::json;
use vdisk::vmdk::check::{check, Severity};
use vdisk::{Image, Result};

use super::{print_json, Status};
use crate::Ctx;

pub fn run(ctx: &Ctx, path: &Path, json_out: bool) -> Result<Status> {
    let img = vdisk::open_with(path, &ctx.open)?;
    let findings = match &img {
        Image::Vmdk(v) => check(v),
        Image::Raw(_) => Vec::new(), // a raw image has no metadata to be inconsistent
    };
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    if json_out {
        let list = |sev| {
            findings
                .iter()
                .filter(|f| f.severity == sev)
                .map(|f| json!({"file": f.file, "message": f.message}))
                .collect::<Vec<_>>()
        };
        print_json(&json!({
            "path": path,
            "clean": errors == 0,
            "errors": list(Severity::Error),
            "warnings": list(Severity::Warning),
        }))?;
    } else {
        for f in &findings {
            let tag = if f.severity == Severity::Error {
                "ERROR"
            } else {
                "warning"
            };
            println!("{tag}: {}: {}", f.file.display(), f.message);
        }
        if errors == 0 {
            println!("No errors were found on the image.");
        } else {
            println!("{errors} error(s) were found on the image.");
        }
    }
    Ok(u8::from(errors > 0))
}
