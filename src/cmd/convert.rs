//! `vdisk convert`: any image (or a streamOptimized stream on stdin) to any format vdisk
//! writes, or onto a device.

use std::path::{Path, PathBuf};

use serde_json::json;
use vdisk::size::human;
use vdisk::{
    ConvertOptions, CopyStats, CreateOptions, Error, ErrorKind, Format, Protected, Result,
};

use super::{path_text, policy, print_json, Ctx, Expect, Status};
use crate::progress::{rate, secs};

/// How an output is written (`convert`, `merge`, `restore`).
#[derive(clap::Args, Debug, Clone)]
pub struct OutputArgs {
    /// Output format (raw, vmdk, …); without it, the output's extension decides (.vmdk, …),
    /// and any other name is raw.
    #[arg(short = 'O', value_name = "FORMAT", ignore_case = true, value_parser = writable_formats())]
    pub output_format: Option<String>,
    /// The format's variant: a VMDK's monolithicSparse (default), monolithicFlat,
    /// twoGbMaxExtentSparse, twoGbMaxExtentFlat or streamOptimized; a VHD's or VHDX's
    /// dynamic (default) or fixed.
    #[arg(long, ignore_case = true, value_parser = subformats())]
    pub subformat: Option<String>,
    /// Adapter type recorded in a VMDK output (it sets the geometry):
    /// ide, lsilogic, buslogic, pvscsi.
    #[arg(long, value_name = "ADAPTER")]
    pub adapter: Option<String>,
    /// Compress the output where its format can (a VMDK: streamOptimized).
    #[arg(long)]
    pub compress: bool,
}

/// The formats `-O` takes: those vdisk writes (offered by shell completion too).
fn writable_formats() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(vdisk::image::registry::writable_names())
}

/// The values `--subformat` takes: every writable format's variants (each output format
/// then accepts only its own).
fn subformats() -> clap::builder::PossibleValuesParser {
    let mut all: Vec<&'static str> = Vec::new();
    for f in vdisk::image::registry::formats() {
        for s in f.subformats() {
            if f.writable() && !all.contains(s) {
                all.push(s);
            }
        }
    }
    clap::builder::PossibleValuesParser::new(all)
}

/// The output's format, and its options under `policy`.
pub struct Output {
    /// The format.
    pub format: &'static dyn Format,
    /// How it is created.
    pub create: CreateOptions,
}

impl OutputArgs {
    /// The format an output at `dst` is written in, and its options: a subformat or adapter
    /// the format does not take is refused before anything is written.
    pub fn output(&self, dst: &Path, policy: vdisk::OutputPolicy) -> Result<Output> {
        let format = vdisk::output_format(dst, self.output_format.as_deref())?;
        let bad = |what: String| Err(Error::new(ErrorKind::InvalidArgument, what).with_path(dst));
        if let Some(sub) = &self.subformat {
            let subs = format.subformats();
            if subs.is_empty() {
                return bad(format!("a {} image has no subformat", format.name()));
            }
            if !subs.iter().any(|s| s.eq_ignore_ascii_case(sub)) {
                return bad(format!("unknown subformat \"{sub}\" ({})", subs.join(", ")));
            }
        }
        if self.adapter.is_some() && format.name() != "vmdk" {
            return bad("--adapter applies to VMDK outputs only".into());
        }
        // A VMDK compresses in the streamOptimized subformat.
        let subformat = match (&self.subformat, self.compress, format.name()) {
            (None, true, "vmdk") => Some("streamOptimized".to_string()),
            (s, _, _) => s.clone(),
        };
        Ok(Output {
            format,
            create: CreateOptions {
                policy,
                subformat,
                compress: self.compress && format.name() != "vmdk",
                adapter: self.adapter.clone(),
                ..Default::default()
            },
        })
    }
}

/// Convert an image to another format
///
/// The format follows DST's name (.vmdk, .qcow2, .vhdx, .vhd; anything else is raw) unless
/// -O says it; an -O that contradicts the name is refused. Unallocated space stays
/// unallocated.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  vdisk convert disk.qcow2 disk.vmdk                    # a monolithicSparse VMDK
  vdisk convert --subformat streamOptimized disk.vhdx disk-for-ovf.vmdk
  vdisk convert --compress disk.vmdk disk.qcow2         # zstd-compressed clusters")]
pub struct Args {
    /// Source image (a file, or an NBD export: nbd://HOST/EXPORT,
    /// nbd+unix:///EXPORT?socket=PATH); `-` reads a streamOptimized VMDK from standard input.
    pub src: PathBuf,
    /// Destination file, or a device (written in place).
    pub dst: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Replace an existing destination (a device is overwritten in place).
    #[arg(long)]
    pub force: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The JSON summary of a conversion.
pub fn summary(
    src: &Path,
    dst: &Path,
    out: &Output,
    stats: &CopyStats,
    seconds: f64,
) -> Result<()> {
    print_json(&json!({
        "source": path_text(src),
        "destination": path_text(dst),
        "format": out.format.name(),
        "subformat": out.create.subformat.as_deref().or_else(|| out.format.subformats().first().copied()),
        "virtual_size": stats.size,
        "bytes_read": stats.bytes_read,
        "seconds": seconds,
    }))
}

pub fn run(ctx: &Ctx, args: Args) -> Result<Status> {
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
    let out = args
        .output
        .output(&args.dst, policy(args.force, protected))?;
    // A stream on stdin tells its size only as it goes: its bar counts up to nothing.
    let expected = img.as_ref().map_or(0, |i| super::data_bytes(i));
    let progress = ctx.progress(
        &format!("convert {}", super::label(&args.src)),
        Expect::Reads(expected),
    );
    let opts = ConvertOptions {
        create: out.create.clone(),
        throttle: Some(&ctx.throttle),
        progress: Some(&progress),
    };
    let stats = match &img {
        Some(img) => vdisk::convert(img, &args.dst, out.format, &opts)?,
        None => {
            let input = std::io::BufReader::with_capacity(1 << 20, std::io::stdin().lock());
            vdisk::convert_stream(input, &args.dst, out.format, &opts)
                .map_err(|e| e.with_path("<stdin>"))?
        }
    };
    let seconds = progress.seconds();
    if args.json {
        summary(&args.src, &args.dst, &out, &stats, seconds)?;
    }
    progress.finish(format_args!(
        "converted {} to {} ({}, {} disk): read {} in {} ({})",
        args.src.display(),
        args.dst.display(),
        out.format.name(),
        human(stats.size),
        crate::progress::amount(stats.bytes_read),
        secs(seconds),
        rate(stats.bytes_read, seconds)
    ));
    Ok(0)
}
