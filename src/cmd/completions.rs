//! `vdisk completions`: shell completion scripts.

use clap::CommandFactory;
use vdisk::Result;

use super::{stdout_error, Ctx, Status};

/// Print a shell completion script
///
/// For example: `vdisk completions bash > /etc/bash_completion.d/vdisk`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The shell.
    pub shell: clap_complete::Shell,
}

pub fn run(_ctx: &Ctx, a: Args) -> Result<Status> {
    let mut cmd = crate::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "vdisk", &mut out);
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&out).map_err(stdout_error)?;
    stdout.flush().map_err(stdout_error)?;
    Ok(0)
}
