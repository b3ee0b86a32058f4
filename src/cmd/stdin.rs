use std::path::Path;

use vdisk::convert::Target;
use vdisk::vmdk::writer::WriteOptions;
use vdisk::{Error, ErrorKind, Result};

use super::Status;
use crate::Ctx;

/// `vdisk convert - DST`: a streamOptimized image read front to back from standard input.
pub fn convert(_ctx: &Ctx, dst: &Path, _target: Target, _opts: WriteOptions) -> Result<Status> {
    Err(Error::new(
        ErrorKind::Unsupported,
        "reading from standard input is not implemented yet",
    )
    .with_path(dst))
}
