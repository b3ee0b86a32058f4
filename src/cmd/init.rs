//! `vdisk init`: make a repository, encrypted or not.

use std::path::PathBuf;

use serde_json::json;
use vdisk::chain::InitOptions;
use vdisk::{Repository, Result};

use super::{print_json, Ctx, Status};

/// Make a repository. With --encrypt, a random master key encrypts everything it stores,
/// wrapped by a key derived from a password (VDISK_PASSWORD, --password-file, or asked twice
/// on the terminal). A lost password loses the data: nothing can read it without one.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The repository to make: a folder (new or empty) or s3://BUCKET/PREFIX.
    pub repo: PathBuf,
    /// Encrypt it (XChaCha20-Poly1305; the key wrapped with Argon2id from a password).
    #[arg(long)]
    pub encrypt: bool,
    /// Bytes a block: a power of two from 4K to 1M (64K by default; a CBT bitmap maps
    /// straight onto blocks of its granularity or larger).
    #[arg(long, value_name = "SIZE", value_parser = crate::parse_block_size, default_value = "64K")]
    pub block_size: u64,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<Status> {
    let password = if a.encrypt {
        Some(ctx.new_password("VDISK_PASSWORD", ctx.password_file.as_deref(), &a.repo)?)
    } else {
        None
    };
    let r = Repository::init(
        super::location(&a.repo)?,
        &InitOptions {
            block_size: a.block_size,
            password,
        },
    )?;
    if a.json {
        print_json(&json!({
            "repository": super::path_text(&a.repo),
            "id": r.id(),
            "block_size": r.block_size(),
            "encrypted": r.encrypted(),
        }))?;
    }
    {
        ctx.summary(format_args!(
            "made repository {} (blocks of {} bytes{})",
            a.repo.display(),
            r.block_size(),
            if r.encrypted() {
                ", encrypted: keep the password safe, without it the data cannot be read"
            } else {
                ", not encrypted"
            }
        ));
    }
    Ok(0)
}
