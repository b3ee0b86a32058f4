//! `vdisk merge`: a union of bitmaps, or a chain collapsed into one image or one link.

use std::path::PathBuf;

use serde_json::json;
use vdisk::size::human;
use vdisk::{ConvertOptions, Error, ErrorKind, Protected, Result};

use super::convert::OutputArgs;
use super::{path_text, policy, print_json, Ctx, Status};

/// Union changed-block bitmaps, or collapse a delta chain into one image (or, with --base,
/// into one link above BASE).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Bitmaps to union, or the one image at the top of a chain.
    #[arg(required = true, value_name = "BITMAP...|IMAGE")]
    pub inputs: Vec<PathBuf>,
    /// Output file.
    #[arg(short = 'o', value_name = "OUT")]
    pub out: PathBuf,
    /// Keep this link of the chain (and those below it) and write one link above it.
    #[arg(long, value_name = "LINK")]
    pub base: Option<PathBuf>,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Replace an existing output.
    #[arg(long)]
    pub force: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<Status> {
    if vdisk::read_head(&a.inputs[0], vdisk::bitmap::MAGIC.len())? == vdisk::bitmap::MAGIC {
        if a.base.is_some() || a.output.subformat.is_some() || a.output.output_format.is_some() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "--base, -O and --subformat apply to merging a chain, not bitmaps",
            ));
        }
        return super::bitmap::merge(&a.inputs, &a.out, a.force, a.json);
    }
    let [image] = a.inputs.as_slice() else {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "merge takes several bitmaps, or one image",
        )
        .with_path(&a.inputs[1]));
    };
    let img = vdisk::open_with(image, &ctx.open)?;
    let mut protected = Protected::new();
    protected.add_image(&img);
    let mut out = a.output.output(&a.out, policy(a.force, protected))?;
    // Without -O or a telling name, a chain merges into the format of its top.
    if a.output.output_format.is_none() && out.format.name() == "raw" {
        if let Some(f) = [img.format()]
            .into_iter()
            .find(|f| f.writable() && f.name() != "raw")
        {
            out = super::convert::Output {
                format: f,
                create: out.create,
            };
        }
    }
    let progress = ctx.progress(0);
    let tick = |n: u64| progress.tick(n);
    let opts = ConvertOptions {
        create: out.create.clone(),
        throttle: Some(&ctx.throttle),
        progress: Some(&tick),
    };
    let stats = vdisk::merge(
        &img,
        &a.out,
        a.base.as_deref(),
        out.format,
        &ctx.open,
        &opts,
    )?;
    progress.done(&format!(
        "merged {} of disk ({} read)",
        human(stats.size),
        human(stats.bytes_read)
    ));
    if a.json {
        print_json(&json!({
            "image": path_text(image),
            "output": path_text(&a.out),
            "format": out.format.name(),
            "subformat": out.create.subformat.as_deref().or_else(|| out.format.subformats().first().copied()),
            "virtual_size": stats.size,
            "bytes_read": stats.bytes_read,
        }))?;
    }
    Ok(0)
}
