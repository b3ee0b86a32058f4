use std::path::Path;

use vdisk::convert::ConvertOptions;
use vdisk::merge::merge_chain;
use vdisk::vmdk::writer::{Adapter, Subformat, WriteOptions};
use vdisk::{size::human, Result};

use super::convert::Progress;
use super::Status;
use crate::Ctx;

pub fn run(
    ctx: &Ctx,
    inputs: &[std::path::PathBuf],
    out: &Path,
    base: Option<&Path>,
    subformat: Option<&str>,
    adapter: Adapter,
    force: bool,
) -> Result<Status> {
    if vdisk::read_head(&inputs[0], vdisk::bitmap::MAGIC.len())? == vdisk::bitmap::MAGIC {
        if base.is_some() || subformat.is_some() {
            return Err(vdisk::Error::new(
                vdisk::ErrorKind::InvalidArgument,
                "--base and --subformat apply to merging a chain, not bitmaps",
            ));
        }
        return super::bitmap::merge(ctx, inputs, out, force);
    }
    let [image] = inputs else {
        return Err(vdisk::Error::new(
            vdisk::ErrorKind::InvalidArgument,
            "merge takes several bitmaps, or one image",
        )
        .with_path(&inputs[1]));
    };
    let subformat = match subformat {
        Some(s) => s.parse::<Subformat>().map_err(|e| e.with_path(out))?,
        None => Subformat::MonolithicSparse,
    };
    let progress = Progress::new(ctx, 0);
    let tick = |n: u64| progress.tick(n);
    let opts = ConvertOptions {
        overwrite: force,
        throttle: Some(&ctx.throttle),
        progress: Some(&tick),
        vmdk: WriteOptions {
            overwrite: force,
            adapter,
            cid: None,
        },
    };
    let stats = merge_chain(image, out, base, subformat, &ctx.open, &opts)?;
    progress.done(&format!(
        "merged {} of disk ({} read)",
        human(stats.size),
        human(stats.bytes_read)
    ));
    Ok(0)
}
