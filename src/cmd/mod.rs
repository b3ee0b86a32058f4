//! One module per command: its arguments (a clap `Args` struct) and its `run`, which parses
//! nothing more, calls the library and prints.

pub mod backup;
pub mod bitmap;
pub mod check;
pub mod completions;
pub mod convert;
pub mod diff;
pub mod hash;
pub mod info;
pub mod init;
pub mod key;
pub mod list;
pub mod manpage;
pub mod map;
pub mod merge;
pub mod prune;
pub mod restore;
pub mod serve;
pub mod sync;
pub mod verify;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::progress::Expect;
use vdisk::{DiskImage, Error, ErrorKind, OpenOptions, OutputPolicy, Protected, Result};

/// A repository location as typed: a folder, or `s3://BUCKET/PREFIX`.
pub fn location(repo: &Path) -> Result<vdisk::chain::Location> {
    vdisk::chain::Location::parse(repo.as_os_str())
}

/// Exit status of a command that ran: 0 clean or identical, 1 problems or differences.
pub type Status = u8;

/// Global settings every command gets.
pub struct Ctx {
    /// How images are opened (`-f`, `--allow-outside-paths`).
    pub open: OpenOptions,
    /// `--io-limit`.
    pub throttle: vdisk::Throttle,
    /// `-q`.
    pub quiet: bool,
    /// `--password-file`.
    pub password_file: Option<PathBuf>,
}

impl Ctx {
    /// A progress bar labelled `label` (the command and the disk), up to `expected` bytes
    /// read (drawn only on a terminal, never with `-q`); its `finish` prints the command's
    /// summary line.
    pub fn progress(&self, label: &str, expected: Expect) -> crate::progress::Progress {
        crate::progress::Progress::new(self.quiet, label, expected, self.throttle.rate())
    }
}

impl Ctx {
    /// Print a command's one summary line, `vdisk: LINE`, on stderr (unless `-q`): for
    /// commands that write or check without a progress bar.
    pub fn summary(&self, line: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("vdisk: {line}");
        }
    }
}

/// A bitmap's changed blocks in a summary line.
pub fn bitmap_line(map: &vdisk::bitmap::ChangeMap) -> String {
    format!(
        "{} of {} blocks of {} changed ({})",
        map.count(),
        map.block_count(),
        vdisk::size::human(map.granularity()),
        vdisk::size::human(map.changed_bytes())
    )
}

/// The bytes a copy or scan of `img` reads: its allocated data (the whole disk if its map
/// cannot be walked; the job itself will then report the error).
pub fn data_bytes(img: &dyn DiskImage) -> u64 {
    data_blocks(img, 1)
}

/// The bytes a job that reads `img` in whole `block`s reads: its allocated data, rounded out
/// to blocks (a block counted once however many extents touch it).
pub fn data_blocks(img: &dyn DiskImage, block: u64) -> u64 {
    let block = block.max(1);
    let size = img.size();
    let mut n = 0u64;
    // The end of the last block counted.
    let mut counted = 0u64;
    let walked = vdisk::for_each_extent(img, |e| {
        if e.allocation == vdisk::Allocation::Data {
            let start = (e.start / block * block).max(counted);
            let end = e.end().div_ceil(block).saturating_mul(block).min(size);
            if end > start {
                n = n.saturating_add(end - start);
                counted = end;
            }
        }
        Ok(())
    });
    match walked {
        Ok(()) => n,
        Err(_) => size,
    }
}

/// A label's name for a file: its last component.
pub fn label(path: &Path) -> String {
    crate::progress::file_label(path)
}

/// Whether `p` names a repository rather than an image: an `s3://` location, or a folder
/// (an image is never a folder).
fn is_repository(p: &Path) -> bool {
    p.as_os_str().as_encoded_bytes().starts_with(b"s3://") || p.is_dir()
}

/// Refuse arguments given in the wrong order: `images` (sources or destinations, which are
/// files) where `repo` should be, and a repository among them. `usage` is the command's
/// synopsis, e.g. `vdisk backup SRC REPO`.
pub fn repository_order(repo: &Path, images: &[&Path], usage: &str, rule: &str) -> Result<()> {
    if is_repository(repo) {
        return Ok(());
    }
    if let Some(r) = images.iter().find(|p| is_repository(p)) {
        return Err(Error::new(
            vdisk::ErrorKind::InvalidArgument,
            format!(
                "is a repository, and {} is not: {rule} ({usage})",
                repo.display()
            ),
        )
        .with_path(r));
    }
    Ok(())
}

/// A password from `VDISK_PASSWORD`'s like, a file, or the terminal: never an argument.
fn password_from(env: &str, file: Option<&Path>, prompt: &str, twice: bool) -> Result<String> {
    if let Some(v) = std::env::var_os(env) {
        let v = v
            .into_string()
            .map_err(|_| Error::invalid(format!("{env} is not text")))?;
        return nonempty(v, env);
    }
    if let Some(f) = file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| Error::io("cannot read the password file", e).with_path(f))?;
        let line = text.strip_suffix('\n').unwrap_or(&text);
        let line = line.strip_suffix('\r').unwrap_or(line);
        return nonempty(line.to_string(), &f.display().to_string());
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) && !Path::new("/dev/tty").exists() {
        return Err(no_password(env));
    }
    let first = rpassword::prompt_password(prompt).map_err(|_| no_password(env))?;
    if twice {
        let again = rpassword::prompt_password("again: ").map_err(|_| no_password(env))?;
        if again != first {
            return Err(Error::invalid("the two passwords differ"));
        }
    }
    nonempty(first, "the password")
}

fn nonempty(p: String, what: &str) -> Result<String> {
    if p.is_empty() {
        return Err(Error::invalid(format!(
            "{what}: an empty password is refused"
        )));
    }
    Ok(p)
}

fn no_password(env: &str) -> Error {
    Error::new(
        ErrorKind::Refused,
        format!("a password is needed: set {env}, give --password-file, or run on a terminal"),
    )
}

impl Ctx {
    /// The password of an encrypted repository (asked for only when one is opened).
    pub fn password(&self, repo: &Path) -> Result<String> {
        password_from(
            "VDISK_PASSWORD",
            self.password_file.as_deref(),
            &format!("password for {}: ", repo.display()),
            false,
        )
    }

    /// A new password (of a repository being made): asked twice on a terminal.
    pub fn new_password(&self, env: &str, file: Option<&Path>, repo: &Path) -> Result<String> {
        password_from(
            env,
            file,
            &format!("new password for {}: ", repo.display()),
            true,
        )
    }
}

/// Open the repository at `path` to read it, in whichever layout it is.
pub fn open_reader(ctx: &Ctx, path: &Path) -> Result<vdisk::chain::Reader> {
    let ask = |p: &Path| ctx.password(p);
    vdisk::chain::open_reader(
        location(path)?,
        &vdisk::chain::Access {
            password: Some(&ask),
        },
    )
}

/// `(name, point)` of a layout-2 repository's points for messages.
pub fn layout2_name(repo: &vdisk::chain::layout2::Repository) -> String {
    repo.meta()
        .and_then(|m| {
            Path::new(&m.disk.source)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "disk".into())
}

/// The output policy for `--force`, protecting `protected`.
pub fn policy(force: bool, protected: Protected) -> OutputPolicy {
    OutputPolicy {
        existing: if force {
            vdisk::Existing::Replace
        } else {
            vdisk::Existing::Refuse
        },
        protected: Arc::new(protected),
    }
}

/// An error writing to standard output (its reader gone: `BrokenPipe`, ended quietly by
/// `main`).
pub fn stdout_error(e: std::io::Error) -> Error {
    Error::io("writing output", e)
}

/// Write a JSON document to stdout, followed by a newline.
pub fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v).map_err(|e| stdout_error(e.into()))?;
    writeln!(out).map_err(stdout_error)?;
    out.flush().map_err(stdout_error)
}

/// Print lines of text to stdout.
pub fn print_text(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).map_err(stdout_error)?;
    out.flush().map_err(stdout_error)
}

/// A path as JSON text: UTF-8 as it is, other bytes replaced (JSON holds only text).
pub fn path_text(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
