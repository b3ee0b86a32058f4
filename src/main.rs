//! The `vdisk` command: parse the command line, dispatch to one module per command, report.

mod cmd;
mod progress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vdisk::{Error, ErrorKind, OpenOptions};

use cmd::{Ctx, Status};

/// Read, convert, compare and back up virtual-disk images: VMDK, qcow2, VHDX, VHD, VDI and
/// raw, files or live NBD exports.
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
    #[arg(long, global = true, help_heading = "Global options", value_name = "N")]
    threads: Option<usize>,
    /// Cap on bytes read per second, at least 1M, e.g. 200M.
    #[arg(long, global = true, help_heading = "Global options", value_name = "RATE", value_parser = parse_rate)]
    io_limit: Option<u64>,
    /// No progress bars or summaries.
    #[arg(short, long, global = true, help_heading = "Global options")]
    quiet: bool,
    /// Force the input format instead of detecting it.
    #[arg(
        short = 'f',
        long = "format",
        global = true,
        help_heading = "Global options",
        value_name = "FORMAT",
        ignore_case = true,
        value_parser = input_formats()
    )]
    format: Option<String>,
    /// Keep what is read once (a backup, a hash, a verify, a restore) in the host's page
    /// cache; by default the pages a run brings in are dropped behind it, so it does not
    /// push out the cache of the host and its VMs.
    #[arg(long, global = true, help_heading = "Global options")]
    keep_cache: bool,
    /// The disk of an OVA appliance to read, by its name in the archive (needed when it
    /// holds several; `vdisk info X.ova` lists them). Other images ignore it.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "NAME"
    )]
    disk: Option<String>,
    /// Follow descriptor paths (extents, parents) that are absolute or leave the
    /// descriptor's folder. (A repository's points never name such paths.)
    #[arg(long, global = true, help_heading = "Global options")]
    allow_outside_paths: bool,
    /// The password of an encrypted repository: the first line of FILE (else
    /// VDISK_PASSWORD, else asked on the terminal; never an argument).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
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
    Manpage(cmd::manpage::Args),
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

/// The formats `-f` takes: those vdisk reads, and `ova` (an archive of disks).
fn input_formats() -> clap::builder::PossibleValuesParser {
    let mut names = vdisk::image::registry::names();
    names.push("ova");
    clap::builder::PossibleValuesParser::new(names)
}

/// A repository's block size: a power of two from 4K to 1M.
fn parse_block_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if !n.is_power_of_two() || !(vdisk::chain::MIN_BLOCK..=vdisk::chain::MAX_BLOCK).contains(&n) {
        return Err(format!(
            "\"{s}\" is not a block size: a power of two from 4K to 1M"
        ));
    }
    Ok(n)
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

/// `VDISK_NBD_TIMEOUT`: seconds every step of an NBD connection may take (connect,
/// handshake, each request), instead of the client's defaults.
fn nbd_timeout() -> Result<Option<std::time::Duration>, String> {
    let Some(v) = std::env::var_os("VDISK_NBD_TIMEOUT") else {
        return Ok(None);
    };
    let text = v.to_string_lossy();
    match text.trim().parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 86_400.0 => Ok(Some(std::time::Duration::from_secs_f64(s))),
        _ => Err(format!(
            "VDISK_NBD_TIMEOUT is \"{text}\", not a number of seconds from 0 to 86400"
        )),
    }
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
        Command::Completions(_) | Command::Manpage(_) => return None,
    })
}

/// What an interrupt of the command leaves as it was, for `vdisk: interrupted; <what>`.
fn unchanged(c: &Command) -> String {
    let out = |p: &std::path::Path| {
        let device = vdisk::io::Destination::of(p).is_ok_and(|d| d.is_device());
        if device {
            format!(
                "{} is a device written in place: it holds part of the output",
                p.display()
            )
        } else if std::fs::symlink_metadata(p).is_ok() {
            format!("{} is unchanged", p.display())
        } else {
            format!("{} is unchanged (not created)", p.display())
        }
    };
    let repo = |p: &std::path::Path| format!("repository {} is unchanged", p.display());
    let input = |p: &std::path::Path| format!("{} is unchanged", p.display());
    match c {
        Command::Info(a) => input(&a.image),
        Command::Map(a) => input(&a.image),
        Command::Check(a) => input(&a.image),
        Command::Merge(a) => out(&a.out),
        Command::Diff(a) => match (&a.delta, &a.bitmap) {
            (Some(d), Some(b)) => format!("{}; {}", out(d), out(b)),
            (Some(p), None) | (None, Some(p)) => out(p),
            (None, None) => input(&a.new),
        },
        Command::Hash(a) => out(&a.out),
        Command::Bitmap(cmd::bitmap::Command::Show { bitmap, .. }) => input(bitmap),
        Command::Bitmap(cmd::bitmap::Command::Import { out: o, .. }) => out(o),
        Command::Init(a) => out(&a.repo),
        Command::Key(cmd::key::Command::Passwd { repo: r, .. }) => repo(r),
        Command::Backup(a) => repo(&a.repo),
        Command::Restore(a) => out(&a.dst),
        Command::List(a) => repo(&a.repo),
        Command::Verify(a) => repo(&a.repo),
        Command::Prune(a) => repo(&a.repo),
        Command::Sync(a) => repo(&a.dst),
        Command::Convert(a) => out(&a.dst),
        Command::Serve(a) => input(&a.source),
        Command::Completions(_) | Command::Manpage(_) => "nothing".to_string(),
    }
}

/// What the user can do about an error of this kind, in this command's words.
fn hint(e: &Error, repository: bool) -> Option<&'static str> {
    match e.kind() {
        ErrorKind::AlreadyExists => Some("pass --force to replace it"),
        ErrorKind::Unsafe => {
            Some("pass --force to go ahead anyway (the same disk under another name, say)")
        }
        ErrorKind::PathRefused if !repository => Some("pass --allow-outside-paths to read it"),
        // A repository of several NAMEs, or a point (an archive) of several disks.
        ErrorKind::Ambiguous if e.message().contains(" names (") => {
            Some("pick one with --name NAME")
        }
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
        let p = p
            .strip_prefix('[')
            .and_then(|p| p.strip_suffix(']'))
            .unwrap_or(&p)
            .to_string();
        if !line.is_empty() {
            line.push_str(if line.ends_with(':') { " " } else { "; " });
        }
        line.push_str(&p);
    }
    format!(
        "{line} (see {} --help)",
        command_path(std::env::args_os().skip(1))
    )
}

/// The command an argument list runs, as `vdisk SUB [SUBSUB]`: the subcommand names among
/// the arguments, in order (options and their values are passed over).
fn command_path(args: impl Iterator<Item = std::ffi::OsString>) -> String {
    use clap::CommandFactory;
    let root = Cli::command();
    let mut path = vec!["vdisk".to_string()];
    let mut current = &root;
    for a in args {
        let Some(a) = a.to_str() else { continue };
        if let Some(sub) = current.find_subcommand(a) {
            path.push(sub.get_name().to_string());
            current = sub;
        }
    }
    path.join(" ")
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
    let nbd_timeout = match nbd_timeout() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("vdisk: error: {e}");
            return ExitCode::from(2);
        }
    };
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
            nbd_timeout,
            ..Default::default()
        },
        throttle: vdisk::Throttle::new(g.io_limit),
        quiet: g.quiet,
        password_file: g.password_file,
    };
    let repository = is_repository_command(&cli.command);
    let subject = subject(&cli.command);
    // `serve` stops on its own terms (it closes its clients and its socket).
    if !matches!(cli.command, Command::Serve(_)) {
        let what = unchanged(&cli.command);
        let caught = vdisk::io::interrupt::on_interrupt(move |_| {
            use std::io::{IsTerminal, Write};
            let mut err = std::io::stderr().lock();
            if err.is_terminal() {
                // Wipe a progress bar's line.
                let _ = write!(err, "\r\x1b[2K");
            }
            let _ = writeln!(err, "vdisk: interrupted; {what}");
            let _ = err.flush();
            std::process::exit(130);
        });
        if let Err(e) = caught {
            eprintln!("vdisk: error: cannot catch interrupts: {e}");
            return ExitCode::from(2);
        }
    }
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
        Command::Manpage(a) => cmd::manpage::run(&ctx, a),
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
