//! `vdisk convert`: any image (or a streamOptimized stream on stdin) to raw, a device, or any
//! VMDK subformat.

use std::path::{Path, PathBuf};

use serde_json::json;
use vdisk::size::human;
use vdisk::{
    Adapter, ConvertOptions, CopyStats, DiskImage, Error, ErrorKind, Format, Protected, Result,
    Subformat, Target,
};

use super::{path_text, policy, print_json, Ctx, Status};

/// How a VMDK output is laid out (`convert`, `merge`, `restore -O vmdk`).
#[derive(clap::Args, Debug, Clone)]
pub struct VmdkArgs {
    /// VMDK subformat of the output: monolithicSparse (default), monolithicFlat,
    /// twoGbMaxExtentSparse, twoGbMaxExtentFlat, streamOptimized.
    #[arg(long)]
    pub subformat: Option<Subformat>,
    /// Adapter type recorded in a VMDK output (it sets the geometry).
    #[arg(
        long,
        value_name = "ide|lsilogic|buslogic|pvscsi",
        default_value = "ide"
    )]
    pub adapter: Adapter,
}

/// Convert an image to another format.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Source image; `-` reads a streamOptimized VMDK from standard input.
    pub src: PathBuf,
    /// Destination file, or a device (written in place).
    pub dst: PathBuf,
    /// Output format.
    #[arg(short = 'O', value_name = "raw|vmdk", default_value = "raw")]
    pub output_format: Format,
    #[command(flatten)]
    pub vmdk: VmdkArgs,
    /// Replace an existing destination (a device is overwritten in place).
    #[arg(long)]
    pub force: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

/// What `-O` and `--subformat` ask for.
pub fn target(format: Format, subformat: Option<Subformat>) -> Result<Target> {
    match (format, subformat) {
        (Format::Raw, Some(_)) => Err(Error::new(
            ErrorKind::InvalidArgument,
            "--subformat applies to -O vmdk only",
        )),
        (Format::Raw, None) => Ok(Target::Raw),
        (Format::Vmdk, s) => Ok(Target::Vmdk(s.unwrap_or(Subformat::MonolithicSparse))),
        (Format::Ova, _) => Err(Error::new(
            ErrorKind::InvalidArgument,
            "vdisk reads OVA archives but writes raw or vmdk",
        )),
    }
}

/// The JSON summary of a conversion.
pub fn summary(
    src: &Path,
    dst: &Path,
    target: Target,
    stats: &CopyStats,
    seconds: f64,
) -> Result<()> {
    let (format, subformat) = match target {
        Target::Raw => ("raw", None),
        Target::Vmdk(s) => ("vmdk", Some(s.name())),
    };
    print_json(&json!({
        "source": path_text(src),
        "destination": path_text(dst),
        "format": format,
        "subformat": subformat,
        "virtual_size": stats.size,
        "bytes_read": stats.bytes_read,
        "seconds": seconds,
    }))
}

pub fn run(ctx: &Ctx, args: Args) -> Result<Status> {
    let target =
        target(args.output_format, args.vmdk.subformat).map_err(|e| e.with_path(&args.dst))?;
    let stdin = args.src == Path::new("-");
    let img = if stdin {
        None
    } else {
        Some(vdisk::open_with(&args.src, &ctx.open)?)
    };
    let mut protected = Protected::new();
    if let Some(img) = &img {
        protected.add_image(img);
    }
    let progress = ctx.progress(img.as_ref().map_or(0, |i| i.size()));
    let tick = |n: u64| progress.tick(n);
    let opts = ConvertOptions {
        policy: policy(args.force, protected),
        adapter: args.vmdk.adapter,
        throttle: Some(&ctx.throttle),
        progress: Some(&tick),
    };
    let stats = match &img {
        Some(img) => vdisk::convert_with(img, &args.dst, target, &opts)?,
        None => {
            let input = std::io::BufReader::with_capacity(1 << 20, std::io::stdin().lock());
            vdisk::convert_stream(input, &args.dst, target, &opts)
                .map_err(|e| e.with_path("<stdin>"))?
        }
    };
    let seconds = progress.seconds();
    progress.done(&format!(
        "converted {} of disk ({} read)",
        human(stats.size),
        human(stats.bytes_read)
    ));
    if args.json {
        summary(&args.src, &args.dst, target, &stats, seconds)?;
    }
    Ok(0)
}
