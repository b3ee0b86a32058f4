//! The `vdisk` command: parse the command line, call the library, print.

mod cmd;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vdisk::vmdk::writer::Adapter;
use vdisk::{Error, Format, OpenOptions};

/// Read, compare and chain virtual-disk images (VMDK and raw).
#[derive(Parser, Debug)]
#[command(name = "vdisk", version, about, max_term_width = 100)]
pub struct Cli {
    /// Worker threads (default: one per core).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    /// Cap on bytes read per second, e.g. 200M.
    #[arg(long, global = true, value_name = "RATE", value_parser = parse_size)]
    io_limit: Option<u64>,
    /// No progress bars or summaries.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Force the input format instead of detecting it.
    #[arg(short = 'f', long = "format", global = true, value_name = "raw|vmdk")]
    format: Option<Format>,
    /// Follow descriptor paths (extents, parents) that are absolute or leave the
    /// descriptor's folder.
    #[arg(long, global = true)]
    allow_outside_paths: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show format, size, allocation, header fields and the chain.
    Info {
        /// The image.
        image: PathBuf,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show which byte ranges hold data and which read as zero.
    Map {
        /// The image.
        image: PathBuf,
        /// One JSON document on stdout: [{"start","length","data","zero","depth"}].
        #[arg(long)]
        json: bool,
    },
    /// Check metadata consistency (exit 1 when problems are found).
    Check {
        /// The image.
        image: PathBuf,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Union changed-block bitmaps, or collapse a delta chain into one image (or, with
    /// --base, into one link above BASE).
    Merge {
        /// Bitmaps to union, or the one image at the top of a chain.
        #[arg(required = true, value_name = "BITMAP...|IMAGE")]
        inputs: Vec<PathBuf>,
        /// Output file.
        #[arg(short = 'o', value_name = "OUT")]
        out: PathBuf,
        /// Keep this link of the chain (and those below it) and write one link above it.
        #[arg(long, value_name = "LINK")]
        base: Option<PathBuf>,
        /// VMDK subformat of the output (monolithicSparse by default; links are always
        /// monolithicSparse).
        #[arg(long)]
        subformat: Option<String>,
        /// Adapter type recorded in the output.
        #[arg(
            long,
            value_name = "ide|lsilogic|buslogic|pvscsi",
            default_value = "ide"
        )]
        adapter: Adapter,
        /// Replace an existing output.
        #[arg(long)]
        force: bool,
    },
    /// Find the blocks that changed between two disk states (exit 1 when they differ).
    Diff {
        /// The old state: an image, or a manifest written by `vdisk hash`.
        old: PathBuf,
        /// The new state.
        new: PathBuf,
        /// Block size: 512, 4K, 64K (default), 1M, …
        #[arg(long, value_parser = parse_granularity)]
        granularity: Option<u64>,
        /// Write the changed blocks as a bitmap.
        #[arg(long, value_name = "OUT")]
        bitmap: Option<PathBuf>,
        /// Write a VMDK delta link on OLD holding the changed blocks (reads as NEW).
        #[arg(long, value_name = "OUT.vmdk")]
        delta: Option<PathBuf>,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
        /// Replace existing output files.
        #[arg(long)]
        force: bool,
    },
    /// Hash every block of an image into a manifest (for a later `diff MANIFEST NEW`).
    Hash {
        /// The image.
        image: PathBuf,
        /// Manifest to write.
        #[arg(short = 'o', value_name = "MANIFEST")]
        out: PathBuf,
        /// Block size: 512, 4K, 64K (default), 1M, …
        #[arg(long, value_parser = parse_granularity, default_value = "64K")]
        granularity: u64,
        /// Replace an existing manifest.
        #[arg(long)]
        force: bool,
    },
    /// Changed-block bitmaps.
    #[command(subcommand)]
    Bitmap(BitmapCommand),
    /// Back up an image into a repository: a full point first, incremental points after.
    Backup {
        /// The disk to back up.
        src: PathBuf,
        /// The repository folder (created on the first backup).
        repo: PathBuf,
        /// Changed blocks from the hypervisor (a bitmap from `vdisk bitmap import`), trusted
        /// as a superset of the changes; without it, changes are found by hashing.
        #[arg(long, value_name = "BITMAP")]
        changed: Option<PathBuf>,
        /// Back up a source that was not closed cleanly, or that is not the repository's disk.
        #[arg(long)]
        force: bool,
    },
    /// Write a restore point as a disk image (the newest by default).
    Restore {
        /// The repository.
        repo: PathBuf,
        /// The image to write.
        dst: PathBuf,
        /// The point to restore.
        #[arg(long, value_name = "N")]
        point: Option<u64>,
        /// Output format.
        #[arg(short = 'O', value_name = "raw|vmdk", default_value = "raw")]
        output_format: Format,
        /// Replace an existing destination.
        #[arg(long)]
        force: bool,
    },
    /// List a repository's restore points.
    List {
        /// The repository.
        repo: PathBuf,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Check a repository's points against the hashes kept at backup time (exit 1 if damaged).
    Verify {
        /// The repository.
        repo: PathBuf,
        /// Check this point and those it depends on (all points by default).
        #[arg(long, value_name = "N")]
        point: Option<u64>,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Fold the oldest points into the base so that N remain.
    Prune {
        /// The repository.
        repo: PathBuf,
        /// Points to keep.
        #[arg(long, value_name = "N")]
        keep: usize,
    },
    /// Convert an image to another format.
    Convert {
        /// Source image; `-` reads a streamOptimized VMDK from standard input.
        src: PathBuf,
        /// Destination file.
        dst: PathBuf,
        /// Output format.
        #[arg(short = 'O', value_name = "raw|vmdk", default_value = "raw")]
        output_format: Format,
        /// VMDK subformat of the output: monolithicSparse (default), monolithicFlat,
        /// twoGbMaxExtentSparse, twoGbMaxExtentFlat, streamOptimized.
        #[arg(long)]
        subformat: Option<String>,
        /// Adapter type recorded in a VMDK output (it sets the geometry).
        #[arg(
            long,
            value_name = "ide|lsilogic|buslogic|pvscsi",
            default_value = "ide"
        )]
        adapter: Adapter,
        /// Replace an existing destination.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum BitmapCommand {
    /// Show a bitmap's size, granularity and changed extents.
    Show {
        /// The bitmap.
        bitmap: PathBuf,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Make a bitmap from a JSON extent list (vdisk's, VMware's changedArea, Hyper-V's ranges).
    Import {
        /// The extent list.
        extents: PathBuf,
        /// Size of the disk in bytes (suffixes allowed).
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Block size: 512, 4K, 64K (default), 1M, …
        #[arg(long, value_parser = parse_granularity, default_value = "64K")]
        granularity: u64,
        /// Bitmap to write.
        #[arg(short = 'o', value_name = "OUT")]
        out: PathBuf,
        /// Replace an existing output.
        #[arg(long)]
        force: bool,
    },
}

fn parse_granularity(s: &str) -> Result<u64, String> {
    match vdisk::size::parse(s) {
        Some(g) if g >= 512 && g.is_power_of_two() => Ok(g),
        _ => Err(format!(
            "\"{s}\" is not a power of two of at least 512 (512, 4K, 64K, 1M)"
        )),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    vdisk::size::parse(s).ok_or_else(|| format!("\"{s}\" is not a size (e.g. 512, 64K, 200M)"))
}

/// Global settings every command gets.
pub struct Ctx {
    pub open: OpenOptions,
    pub throttle: vdisk::Throttle,
    pub quiet: bool,
}

impl Ctx {
    /// Whether to draw progress bars.
    pub fn progress(&self) -> bool {
        !self.quiet && std::io::stderr().is_terminal()
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind as K;
            if matches!(
                e.kind(),
                K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == K::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            // One line, as for every other error.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("vdisk: error: {first} (see vdisk --help)");
            return ExitCode::from(2);
        }
    };
    if let Some(n) = cli.threads {
        if n == 0 {
            eprintln!("vdisk: error: --threads must be at least 1");
            return ExitCode::from(2);
        }
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    let ctx = Ctx {
        open: OpenOptions {
            format: cli.format,
            vmdk: vdisk::vmdk::OpenOptions {
                allow_outside_paths: cli.allow_outside_paths,
                ..Default::default()
            },
        },
        throttle: vdisk::Throttle::new(cli.io_limit),
        quiet: cli.quiet,
    };
    let (result, path) = match cli.command {
        Command::Info { image, json } => (cmd::info::run(&ctx, &image, json), image),
        Command::Map { image, json } => (cmd::map::run(&ctx, &image, json), image),
        Command::Check { image, json } => (cmd::check::run(&ctx, &image, json), image),
        Command::Merge {
            inputs,
            out,
            base,
            subformat,
            adapter,
            force,
        } => {
            let first = inputs[0].clone();
            let r = cmd::merge::run(
                &ctx,
                &inputs,
                &out,
                base.as_deref(),
                subformat.as_deref(),
                adapter,
                force,
            );
            (r, first)
        }
        Command::Diff {
            old,
            new,
            granularity,
            bitmap,
            delta,
            json,
            force,
        } => {
            let args = cmd::diff::DiffArgs {
                old: &old,
                new: &new,
                granularity,
                bitmap: bitmap.as_deref(),
                delta: delta.as_deref(),
                json,
                force,
            };
            (cmd::diff::run(&ctx, args), new.clone())
        }
        Command::Hash {
            image,
            out,
            granularity,
            force,
        } => (
            cmd::hash::run(&ctx, &image, &out, granularity, force),
            image,
        ),
        Command::Backup {
            src,
            repo,
            changed,
            force,
        } => (
            cmd::repo::backup(&ctx, &src, &repo, changed.as_deref(), force),
            repo,
        ),
        Command::Restore {
            repo,
            dst,
            point,
            output_format,
            force,
        } => (
            cmd::repo::restore(&ctx, &repo, &dst, point, output_format, force),
            repo,
        ),
        Command::List { repo, json } => (cmd::repo::list(&ctx, &repo, json), repo),
        Command::Verify { repo, point, json } => {
            (cmd::repo::verify(&ctx, &repo, point, json), repo)
        }
        Command::Prune { repo, keep } => (cmd::repo::prune(&ctx, &repo, keep), repo),
        Command::Bitmap(BitmapCommand::Show { bitmap, json }) => {
            (cmd::bitmap::show(&ctx, &bitmap, json), bitmap)
        }
        Command::Bitmap(BitmapCommand::Import {
            extents,
            size,
            granularity,
            out,
            force,
        }) => (
            cmd::bitmap::import(&ctx, &extents, size, granularity, &out, force),
            extents,
        ),
        Command::Convert {
            src,
            dst,
            output_format,
            subformat,
            adapter,
            force,
        } => {
            let r = cmd::convert::run(
                &ctx,
                &src,
                &dst,
                output_format,
                subformat.as_deref(),
                adapter,
                force,
            );
            (r, src)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            report(e, &path);
            ExitCode::from(2)
        }
    }
}

/// Print an error as `vdisk: error: PATH: MESSAGE`, on one line. The path is the innermost
/// file the library named, or else the command's input.
fn report(e: Error, fallback: &std::path::Path) {
    eprintln!("vdisk: error: {}", e.with_path(fallback));
}
