use std::path::Path;
use std::time::Instant;

use vdisk::convert::{to_raw, ConvertOptions};
use vdisk::{DiskImage, Error, ErrorKind, Format, Result};

use super::Status;
use crate::Ctx;

pub fn run(
    ctx: &Ctx,
    src: &Path,
    dst: &Path,
    format: Format,
    subformat: Option<&str>,
    force: bool,
) -> Result<Status> {
    if format == Format::Vmdk || subformat.is_some() {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "writing VMDK is not implemented yet (use -O raw)",
        )
        .with_path(dst));
    }
    let img = vdisk::open_with(src, &ctx.open)?;
    let started = Instant::now();
    let bar = ctx.progress().then(|| {
        let b = indicatif::ProgressBar::new(img.size());
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let tick = |n: u64| {
        if let Some(b) = &bar {
            b.inc(n);
        }
    };
    let stats = to_raw(
        &img,
        dst,
        &ConvertOptions {
            overwrite: force,
            throttle: Some(&ctx.throttle),
            progress: Some(&tick),
        },
    )?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if !ctx.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "vdisk: converted {} of disk ({} read) in {secs:.2} s",
            vdisk::size::human(stats.size),
            vdisk::size::human(stats.bytes_read)
        );
    }
    Ok(0)
}
