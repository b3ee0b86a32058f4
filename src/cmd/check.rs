//! `vdisk check`: metadata consistency.

use std::path::PathBuf;

use serde_json::json;
use vdisk::{Error, ErrorKind, Finding, Result, Severity};

use super::{path_text, print_json, print_text, Ctx, Status};

/// Check an image's metadata for consistency
///
/// Exit status 1 when problems are found.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image (a file, or an NBD export: nbd://HOST/EXPORT, nbd+unix:///EXPORT?socket=PATH).
    pub image: PathBuf,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Whether an error opening `path` is damage to report (exit 1) rather than a reason the
/// image could not be examined at all (exit 2): the file is there and a format vdisk reads
/// claims it (or it is an OVA archive), but it, a file it names, a parent or the archive is
/// cut, corrupt or missing.
fn is_damage(path: &std::path::Path, e: &Error) -> bool {
    let claimed = vdisk::image::probe_file(path).is_ok_and(|f| f.is_some());
    claimed
        && matches!(
            e.kind(),
            ErrorKind::Corrupt
                | ErrorKind::InvalidFormat
                | ErrorKind::NotFound
                | ErrorKind::ParentMismatch
                | ErrorKind::ChainLoop
                | ErrorKind::ChainTooDeep
                | ErrorKind::OutOfBounds
        )
}

pub fn run(ctx: &Ctx, args: Args) -> Result<Status> {
    let findings = match vdisk::open_with(&args.image, &ctx.open) {
        // A raw image has no metadata to be inconsistent: no findings.
        Ok(img) => img.check(),
        Err(e) if is_damage(&args.image, &e) => vec![Finding::error(
            e.path().unwrap_or(&args.image),
            format!(
                "cannot be opened: {}",
                match e.offset() {
                    Some(o) => format!("{} (at offset {o})", e.message()),
                    None => e.message().to_string(),
                }
            ),
        )],
        Err(e) => return Err(e),
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
                .map(|f| json!({"file": path_text(&f.file), "message": f.message}))
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
    let warnings = findings.len() - errors;
    ctx.summary(format_args!(
        "checked {}: {}",
        args.image.display(),
        if errors == 0 && warnings == 0 {
            "clean".to_string()
        } else {
            format!("{errors} error(s), {warnings} warning(s)")
        }
    ));
    Ok(u8::from(errors > 0))
}
