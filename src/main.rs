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
    /// Collapse a delta chain into one image (or, with --base, into one link above BASE).
    Merge {
        /// The top of the chain.
        image: PathBuf,
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
            image,
            out,
            base,
            subformat,
            adapter,
            force,
        } => {
            let r = cmd::merge::run(
                &ctx,
                &image,
                &out,
                base.as_deref(),
                subformat.as_deref(),
                adapter,
                force,
            );
            (r, image)
        }
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
