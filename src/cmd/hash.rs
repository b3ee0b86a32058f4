use std::path::Path;

use vdisk::diff::{hash_image, ScanOptions};
use vdisk::size::human;
use vdisk::{DiskImage, Result};

use super::convert::Progress;
use super::Status;
use crate::Ctx;

pub fn run(ctx: &Ctx, image: &Path, out: &Path, granularity: u64, force: bool) -> Result<Status> {
    let img = vdisk::open_with(image, &ctx.open)?;
    let progress = Progress::new(ctx, img.size());
    let tick = |n: u64| progress.tick(n);
    let opts = ScanOptions {
        granularity,
        throttle: Some(&ctx.throttle),
        progress: Some(&tick),
    };
    let read = vdisk::output::write_stream(out, force, |w| Ok(hash_image(&img, w, &opts)?.1))?;
    progress.done(&format!(
        "hashed {} ({} read)",
        human(img.size()),
        human(read)
    ));
    Ok(0)
}
