//! The `vdisk` command: parse the command line, dispatch to one module per command, report.

mod cmd;
mod progress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vdisk::{Error, ErrorKind, OpenOptions};

use cmd::{Ctx, Status};

/// Read, compare and chain virtual-disk images (VMDK and raw).
#[derive(Parser, Debug)]
#[command(name = "vdisk", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(clap::Args, Debug)]
struct GlobalArgs {
    /// Worker threads (default: one per core).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    /// Cap on bytes read per second, at least 1M, e.g. 200M.
    #[arg(long, global = true, value_name = "RATE", value_parser = parse_rate)]
    io_limit: Option<u64>,
    /// No progress bars or summaries.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Force the input format instead of detecting it (raw, vmdk, ova).
    #[arg(
        short = 'f',
        long = "format",
        global = true,
        value_name = "FORMAT",
        value_parser = parse_input_format
    )]
    format: Option<String>,
    /// Keep what is read once (a backup, a hash, a verify, a restore) in the host's page
    /// cache; by default the pages a run brings in are dropped behind it, so it does not
    /// push out the cache of the host and its VMs.
    #[arg(long, global = true)]
    keep_cache: bool,
    /// The disk of an OVA appliance to read, by its name in the archive (needed when it
    /// holds several; `vdisk info X.ova` lists them). Other images ignore it.
    #[arg(long, global = true, value_name = "NAME")]
    disk: Option<String>,
    /// Follow descriptor paths (extents, parents) that are absolute or leave the
    /// descriptor's folder. (A repository's points never name such paths.)
    #[arg(long, global = true)]
    allow_outside_paths: bool,
    /// The password of an encrypted repository: the first line of FILE (else
    /// VDISK_PASSWORD, else asked on the terminal; never an argument).
    #[arg(long, global = true, value_name = "FILE")]
    password_file: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    Info(cmd::info::Args),
    Map(cmd::map::Args),
    Check(cmd::check::Args),
    Merge(cmd::merge::Args),
    Diff(cmd::diff::Args),
    Hash(cmd::hash::Args),
    #[command(subcommand)]
    Bitmap(cmd::bitmap::Command),
    Init(cmd::init::Args),
    Backup(cmd::backup::Args),
    Restore(cmd::restore::Args),
    List(cmd::list::Args),
    Verify(cmd::verify::Args),
    Prune(cmd::prune::Args),
    Sync(cmd::sync::Args),
    #[command(subcommand)]
    Key(cmd::key::Command),
    Convert(cmd::convert::Args),
    Serve(cmd::serve::Args),
    Completions(cmd::completions::Args),
}

/// Slowest `--io-limit` accepted: below it a backup of a real disk would take days, and
/// the pacing itself would sleep for minutes between reads.
const MIN_RATE: u64 = 1 << 20;
/// Most `--threads` accepted.
const MAX_THREADS: usize = 1024;

/// A size as users type it: `512`, `64K`, `1M`, `200M`.
fn parse_size(s: &str) -> Result<u64, String> {
    vdisk::size::parse(s).ok_or_else(|| format!("\"{s}\" is not a size (e.g. 512, 64K, 200M)"))
}

/// A repository's block size: a power of two from 4K to 1M.
fn parse_block_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if !n.is_power_of_two() || !(vdisk::chain::MIN_BLOCK..=vdisk::chain::MAX_BLOCK).contains(&n) {
        return Err(format!("\"{s}\" is not a block size: a power of two from 4K to 1M"));
    }
    Ok(n)
}

/// A format vdisk reads, by name (or `ova`, an archive of disks).
fn parse_input_format(s: &str) -> Result<String, String> {
    if s.eq_ignore_ascii_case("ova") {
        return Ok("ova".into());
    }
    vdisk::image::registry::require(s)
        .map(|f| f.name().to_string())
        .map_err(|e| e.message().to_string())
}

fn parse_rate(s: &str) -> Result<u64, String> {
    let rate = parse_size(s)?;
    if rate < MIN_RATE {
        return Err(format!(
            "\"{s}\" is below the slowest rate vdisk paces to (1M per second); leave --io-limit out for no limit"
        ));
    }
    Ok(rate)
}

/// Whether the command reads or writes a repository (whose points never name files outside
/// it, whatever `--allow-outside-paths` says).
fn is_repository_command(c: &Command) -> bool {
    matches!(
        c,
        Command::Restore(_)
            | Command::Init(_)
            | Command::Key(_)
            | Command::List(_)
            | Command::Verify(_)
            | Command::Prune(_)
            | Command::Sync(_)
            | Command::Serve(_)
    )
}

/// The file an error is about when the library named none: the command's main input.
fn subject(c: &Command) -> Option<std::path::PathBuf> {
    Some(match c {
        Command::Info(a) => a.image.clone(),
        Command::Map(a) => a.image.clone(),
        Command::Check(a) => a.image.clone(),
        Command::Merge(a) => a.inputs.first()?.clone(),
        Command::Diff(a) => a.new.clone(),
        Command::Hash(a) => a.image.clone(),
        Command::Bitmap(cmd::bitmap::Command::Show { bitmap, .. }) => bitmap.clone(),
        Command::Bitmap(cmd::bitmap::Command::Import { extents, .. }) => extents.clone(),
        Command::Init(a) => a.repo.clone(),
        Command::Backup(a) => a.repo.clone(),
        Command::Key(c) => c.repo().to_path_buf(),
        Command::Restore(a) => a.repo.clone(),
        Command::List(a) => a.repo.clone(),
        Command::Verify(a) => a.repo.clone(),
        Command::Prune(a) => a.repo.clone(),
        Command::Sync(a) => a.dst.clone(),
        Command::Convert(a) => a.src.clone(),
        Command::Serve(a) => a.source.clone(),
        Command::Completions(_) => return None,
    })
}

/// What the user can do about an error of this kind, in this command's words.
fn hint(e: &Error, repository: bool) -> Option<&'static str> {
    match e.kind() {
        ErrorKind::AlreadyExists => Some("pass --force to replace it"),
        ErrorKind::Unsafe => Some("pass --force to go ahead anyway"),
        ErrorKind::PathRefused if !repository => Some("pass --allow-outside-paths to read it"),
        ErrorKind::Ambiguous => Some("pick one with --disk NAME"),
        _ => None,
    }
}

/// A clap error (help, version, bad arguments) as vdisk reports errors: one line, clap's own
/// words kept (what is missing, the similar subcommand it suggests).
fn clap_error_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let mut parts: Vec<String> = Vec::new();
    let mut usage = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(u) = t.strip_prefix("Usage: ") {
            usage = Some(u.to_string());
            continue;
        }
        if t.is_empty() || t.starts_with("For more information") || usage.is_some() {
            continue;
        }
        parts.push(t.strip_prefix("error: ").unwrap_or(t).to_string());
    }
    let mut line = String::new();
    for p in parts {
        if !line.is_empty() {
            line.push_str(if line.ends_with(':') { " " } else { "; " });
        }
        line.push_str(&p);
    }
    let command: Vec<&str> = usage
        .as_deref()
        .unwrap_or("vdisk")
        .split_whitespace()
        .take_while(|w| !w.starts_with('[') && !w.starts_with('<'))
        .collect();
    format!("{line} (see {} --help)", command.join(" "))
}

fn main() -> ExitCode {
    // Large buffers (an object store's upload parts and read blocks, freed on other threads
    // than the ones that made them) go straight to mmap and back to the system when freed: a
    // long upload's memory would otherwise grow with the disk.
    vdisk::io::sys::unmap_large_buffers(1 << 20);
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind as K;
            match e.kind() {
                K::DisplayHelp | K::DisplayVersion => {
                    let _ = e.print();
                    return ExitCode::SUCCESS;
                }
                K::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    return ExitCode::from(2);
                }
                _ => {
                    eprintln!("vdisk: error: {}", clap_error_line(&e));
                    return ExitCode::from(2);
                }
            }
        }
    };
    let g = cli.global;
    if let Some(n) = g.threads {
        if n == 0 || n > MAX_THREADS {
            eprintln!("vdisk: error: --threads takes 1 to {MAX_THREADS}");
            return ExitCode::from(2);
        }
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            eprintln!("vdisk: error: cannot start {n} worker threads: {e}");
            return ExitCode::from(2);
        }
    }
    // A split image keeps each extent open until it is published.
    vdisk::io::sys::raise_file_limit();
    let ctx = Ctx {
        open: OpenOptions {
            format: g.format,
            allow_outside_paths: g.allow_outside_paths,
            read_ahead: if g.io_limit.is_some() {
                vdisk::io::ReadAhead::Off
            } else {
                vdisk::io::ReadAhead::On
            },
            cache: if g.keep_cache {
                vdisk::io::Cache::Keep
            } else {
                vdisk::io::Cache::Forget
            },
            disk: g.disk,
            ..Default::default()
        },
        throttle: vdisk::Throttle::new(g.io_limit),
        quiet: g.quiet,
        password_file: g.password_file,
    };
    let repository = is_repository_command(&cli.command);
    let subject = subject(&cli.command);
    let result: vdisk::Result<Status> = match cli.command {
        Command::Info(a) => cmd::info::run(&ctx, a),
        Command::Map(a) => cmd::map::run(&ctx, a),
        Command::Check(a) => cmd::check::run(&ctx, a),
        Command::Merge(a) => cmd::merge::run(&ctx, a),
        Command::Diff(a) => cmd::diff::run(&ctx, a),
        Command::Hash(a) => cmd::hash::run(&ctx, a),
        Command::Bitmap(c) => cmd::bitmap::run(&ctx, c),
        Command::Init(a) => cmd::init::run(&ctx, a),
        Command::Backup(a) => cmd::backup::run(&ctx, a),
        Command::Key(c) => cmd::key::run(&ctx, c),
        Command::Restore(a) => cmd::restore::run(&ctx, a),
        Command::List(a) => cmd::list::run(&ctx, a),
        Command::Verify(a) => cmd::verify::run(&ctx, a),
        Command::Prune(a) => cmd::prune::run(&ctx, a),
        Command::Sync(a) => cmd::sync::run(&ctx, a),
        Command::Convert(a) => cmd::convert::run(&ctx, a),
        Command::Serve(a) => cmd::serve::run(&ctx, a),
        Command::Completions(a) => cmd::completions::run(&ctx, a),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        // The reader of our output went away (`vdisk list | head -1`): nothing to report.
        Err(e) if e.kind() == ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            let e = match subject {
                Some(p) => e.with_path(p),
                None => e,
            };
            match hint(&e, repository) {
                Some(h) => eprintln!("vdisk: error: {e}; {h}"),
                None => eprintln!("vdisk: error: {e}"),
            }
            ExitCode::from(2)
        }
    }
}
