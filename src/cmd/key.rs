//! `vdisk key passwd`: a new password for an encrypted repository.

use std::path::{Path, PathBuf};

use vdisk::chain::Access;
use vdisk::{Repository, Result};

use super::{Ctx, Status};

/// The keys of an encrypted repository.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Change the password: the master key is wrapped with the new password in a new key
    /// file, which is read back and checked before the old one is removed (a run killed at
    /// any instant leaves the old password or the new one working). The data is not
    /// rewritten. The current password comes from VDISK_PASSWORD, --password-file or the
    /// terminal; the new one from VDISK_NEW_PASSWORD, --new-password-file or the terminal
    /// (asked twice).
    Passwd {
        /// The repository: a folder or s3://BUCKET/PREFIX.
        repo: PathBuf,
        /// A file holding the new password (its first line).
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
}

impl Command {
    /// The repository the command is about.
    pub fn repo(&self) -> &Path {
        match self {
            Command::Passwd { repo, .. } => repo,
        }
    }
}

pub fn run(ctx: &Ctx, c: Command) -> Result<Status> {
    let Command::Passwd {
        repo,
        new_password_file,
    } = c;
    let ask = |p: &Path| ctx.password(p);
    let r = Repository::open(
        super::location(&repo)?,
        &Access {
            password: Some(&ask),
        },
    )?;
    let new = ctx.new_password("VDISK_NEW_PASSWORD", new_password_file.as_deref(), &repo)?;
    r.change_password(&new)?;
    ctx.summary(format_args!(
        "changed the password of {}: the new password opens it; the old one no longer does",
        repo.display()
    ));
    Ok(0)
}
