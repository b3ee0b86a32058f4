use std::path::Path;
use std::time::Instant;

use vdisk::convert::{convert, ConvertOptions, Target};
use vdisk::vmdk::writer::{Adapter, Subformat, WriteOptions};
use vdisk::{DiskImage, Error, ErrorKind, Format, Result};

use super::Status;
use crate::Ctx;

/// What `convert` writes, from `-O`, `--subformat` and `--adapter`.
pub fn target(format: Format, subformat: Option<&str>) -> Result<Target> {
    match (format, subformat) {
        (Format::Raw, Some(_)) => Err(Error::new(
            ErrorKind::InvalidArgument,
            "--subformat applies to -O vmdk only",
        )),
        (Format::Raw, None) => Ok(Target::Raw),
        (Format::Vmdk, s) => Ok(Target::Vmdk(match s {
            Some(s) => s.parse::<Subformat>()?,
            None => Subformat::MonolithicSparse,
        })),
    }
}

/// A progress bar on a terminal (and nothing otherwise), and the summary line.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    show: bool,
}

impl Progress {
    pub fn new(ctx: &Ctx, total: u64) -> Self {
        let bar = ctx.progress().then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        Progress {
            bar,
            started: Instant::now(),
            show: ctx.progress(),
        }
    }

    pub fn tick(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    pub fn done(self, what: &str) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
        if self.show {
            eprintln!(
                "vdisk: {what} in {:.2} s",
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}

pub fn run(
    ctx: &Ctx,
    src: &Path,
    dst: &Path,
    format: Format,
    subformat: Option<&str>,
    adapter: Adapter,
    force: bool,
) -> Result<Status> {
    let target = target(format, subformat).map_err(|e| e.with_path(dst))?;
    let vmdk = WriteOptions {
        overwrite: force,
        adapter,
        cid: None,
    };
    if src == Path::new("-") {
        return super::stdin::convert(ctx, dst, target, vmdk);
    }
    let img = vdisk::open_with(src, &ctx.open)?;
    let progress = Progress::new(ctx, img.size());
    let tick = |n: u64| progress.tick(n);
    let stats = convert(
        &img,
        dst,
        target,
        &ConvertOptions {
            overwrite: force,
            throttle: Some(&ctx.throttle),
            progress: Some(&tick),
            vmdk,
        },
    )?;
    progress.done(&format!(
        "converted {} of disk ({} read)",
        vdisk::size::human(stats.size),
        vdisk::size::human(stats.bytes_read)
    ));
    Ok(0)
}
