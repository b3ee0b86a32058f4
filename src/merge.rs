//! Collapsing delta-link chains (`vdisk merge IMAGE -o OUT [--base LINK]`).

use std::path::Path;

use vdisk_core::{CopyStats, DiskImage, Error, ErrorKind, Result};
use vdisk_vmdk::writer::{write_delta_link, LinkTarget, Subformat, WriteOptions};
use vdisk_vmdk::{FileStore, FsStore, VmdkImage};

use crate::convert::{convert_with, ConvertOptions, Target};
use crate::OpenOptions;

/// Collapse the chain of the VMDK at `path` into `out`.
///
/// Without `base`, `out` is a standalone image (no parent) of `subformat` that reads like the
/// chain. With `base`, the links above `base` (a file of the chain) become one
/// monolithicSparse link at `out` whose parent is `base`; `base` and the links below it are
/// not touched (the link may also be twoGbMaxExtentSparse).
pub fn merge_chain(
    path: &Path,
    out: &Path,
    base: Option<&Path>,
    subformat: Subformat,
    open: &OpenOptions,
    opts: &ConvertOptions<'_>,
) -> Result<CopyStats> {
    let img = VmdkImage::open_with(&open.store(), path, &open.vmdk)?;
    let Some(base) = base else {
        return convert_with(&img, out, Target::Vmdk(subformat), opts);
    };
    let Some(layout) = vdisk_vmdk::writer::Layout::of(subformat) else {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "with --base the output is a delta link: monolithicSparse or twoGbMaxExtentSparse",
        )
        .with_path(out));
    };
    let want = FsStore::default().identity(base)?;
    let depth = img
        .layers()
        .iter()
        .position(|l| {
            FsStore::default()
                .identity(l.path())
                .is_ok_and(|id| id == want)
        })
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("is not a link of the chain of {}", path.display()),
            )
            .with_path(base)
        })?;
    if depth == 0 {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "is the image itself: there are no links above it to merge",
        )
        .with_path(base));
    }
    // Every range any link above the base stores (data or zeroed grains).
    let mut changed: Vec<(u64, u64)> = Vec::new();
    for d in 0..depth {
        img.for_each_stored(d, |e| {
            changed.push((e.start, e.length));
            Ok(())
        })?;
    }
    changed.sort_unstable();
    let parent_path = img.layers()[depth].path().to_path_buf();
    let parent = VmdkImage::open_with(&open.store(), &parent_path, &open.vmdk)?;
    let mut protected = (*opts.policy.protected).clone();
    protected.add_image(&img);
    let wopts = WriteOptions {
        policy: vdisk_raw::OutputPolicy {
            existing: opts.policy.existing,
            protected: std::sync::Arc::new(protected),
        },
        adapter: opts.adapter,
        cid: None,
    };
    let stats = write_delta_link(
        &LinkTarget {
            parent_path: &parent_path,
            parent: &parent,
            layout,
            opts: &wopts,
            on_grain: None,
        },
        &img,
        changed,
        out,
    )?;
    Ok(CopyStats {
        size: img.size(),
        bytes_read: stats.bytes_read,
    })
}
