//! `vdisk merge`: a union of bitmaps, or a chain collapsed into one image or one link.

use std::path::PathBuf;

use serde_json::json;
use vdisk::size::human;
use vdisk::{ConvertOptions, DiskImage, Error, ErrorKind, Protected, Result};

use super::convert::OutputArgs;
use super::{path_text, policy, print_json, Ctx, Expect, Status};
use crate::progress::{rate, secs};

/// Union changed-block bitmaps, or collapse a chain of deltas into one image
///
/// With --base, the links above BASE are collapsed into one link above it.
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
        return super::bitmap::merge(ctx, &a.inputs, &a.out, a.force, a.json);
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
    // With --base, only the links above it are read: their span, less what they leave to
    // the links below, which the merge passes over.
    let progress = ctx.progress(
        &format!("merge {}", super::label(image)),
        if a.base.is_some() {
            Expect::Span(img.size())
        } else {
            Expect::Reads(super::data_bytes(&img))
        },
    );
    let opts = ConvertOptions {
        create: out.create.clone(),
        throttle: Some(&ctx.throttle),
        progress: Some(&progress),
    };
    let stats = vdisk::merge(
        &img,
        &a.out,
        a.base.as_deref(),
        out.format,
        &ctx.open,
        &opts,
    )?;
    let seconds = progress.seconds();
    if a.json {
        print_json(&json!({
            "image": path_text(image),
            "output": path_text(&a.out),
            "format": out.format.name(),
            "subformat": out.create.subformat.as_deref().or_else(|| out.format.subformats().first().copied()),
            "virtual_size": stats.size,
            "bytes_read": stats.bytes_read,
            "seconds": seconds,
        }))?;
    }
    progress.finish(format_args!(
        "merged {} into {} ({}, {} disk): read {} in {} ({})",
        image.display(),
        a.out.display(),
        out.format.name(),
        human(stats.size),
        crate::progress::amount(stats.bytes_read),
        secs(seconds),
        rate(stats.bytes_read, seconds)
    ));
    Ok(0)
}
