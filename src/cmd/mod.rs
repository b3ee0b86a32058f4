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

use vdisk::{Error, ErrorKind, OpenOptions, OutputPolicy, Protected, Result};

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
    /// A progress bar up to `total` bytes (drawn only on a terminal, never with `-q`).
    pub fn progress(&self, total: u64) -> crate::progress::Progress {
        crate::progress::Progress::new(self.quiet, total)
    }

    /// Whether to print a summary line on stderr.
    pub fn summary(&self) -> bool {
        !self.quiet
    }
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
        return Err(Error::invalid(format!("{what}: an empty password is refused")));
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
        password_from(env, file, &format!("new password for {}: ", repo.display()), true)
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
