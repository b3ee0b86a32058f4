//! `vdisk hash`: a manifest of every block's hash, for a later `diff MANIFEST NEW`.

use std::path::PathBuf;

use serde_json::json;
use vdisk::diff::{hash_image, ScanOptions};
use vdisk::size::human;
use vdisk::{DiskImage, Granularity, Protected, Result};

use super::{path_text, policy, print_json, Ctx, Expect, Status};
use crate::progress::{rate, secs};

/// Hash every block of an image into a manifest
///
/// A later `vdisk diff MANIFEST NEW` then finds what changed without the old image.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image (a file, or an NBD export: nbd://HOST/EXPORT, nbd+unix:///EXPORT?socket=PATH).
    pub image: PathBuf,
    /// Manifest to write.
    #[arg(short = 'o', value_name = "MANIFEST")]
    pub out: PathBuf,
    /// Block size: 512, 4K, 64K (default), 1M, … up to 64M.
    #[arg(long, default_value = "64K")]
    pub granularity: Granularity,
    /// Replace an existing manifest.
    #[arg(long)]
    pub force: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<Status> {
    let img = vdisk::open_with(&args.image, &ctx.open)?;
    let progress = ctx.progress(
        &format!("hash {}", super::label(&args.image)),
        Expect::Reads(super::data_bytes(&img)),
    );
    let opts = ScanOptions {
        granularity: args.granularity.bytes(),
        throttle: Some(&ctx.throttle),
        progress: Some(&progress),
    };
    let mut protected = Protected::new();
    protected.add_image(&img);
    let read = vdisk::io::write_stream(&args.out, &policy(args.force, protected), |w| {
        Ok(hash_image(&img, w, &opts)?.1)
    })?;
    let seconds = progress.seconds();
    if args.json {
        print_json(&json!({
            "image": path_text(&args.image),
            "manifest": path_text(&args.out),
            "size": img.size(),
            "granularity": args.granularity.bytes(),
            "blocks": args.granularity.blocks(img.size()),
            "bytes_read": read,
            "seconds": seconds,
        }))?;
    }
    progress.finish(format_args!(
        "hashed {} into {} ({} blocks of {}): read {} in {} ({})",
        args.image.display(),
        args.out.display(),
        args.granularity.blocks(img.size()),
        human(args.granularity.bytes()),
        crate::progress::amount(read),
        secs(seconds),
        rate(read, seconds)
    ));
    Ok(0)
}
