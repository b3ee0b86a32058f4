//! A chain of layers: the image that was opened and its parents, followed through
//! parentFileNameHint with loop detection, a depth limit and parentCID checks.

use std::collections::HashSet;
use std::path::Path;

use vdisk_core::{Error, ErrorKind, Result};

use crate::bytes::{FileStore, FsStore};
use crate::layer::{parent_dir, resolve_name, Layer};

/// Deepest chain of delta links vdisk follows. VMware allows at most 255 redo logs on one
/// disk (and recommends far fewer); a deeper chain is damaged or hostile.
pub const MAX_CHAIN_DEPTH: usize = 256;

/// How to open an image.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Follow extent and parent paths that are absolute or leave the descriptor's folder
    /// (`--allow-outside-paths`). Off by default: a descriptor from an untrusted source must
    /// not make vdisk read arbitrary files.
    pub allow_outside_paths: bool,
    /// Deepest chain to follow.
    pub max_depth: usize,
    /// Refuse a link whose parentCID differs from its parent's CID (as qemu-img does).
    pub check_parent_cid: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            allow_outside_paths: false,
            max_depth: MAX_CHAIN_DEPTH,
            check_parent_cid: true,
        }
    }
}

/// A VMDK image with its chain of parents: `layers()[0]` is the image that was opened, each
/// next one the previous one's parent.
#[derive(Debug)]
pub struct VmdkImage {
    pub(crate) layers: Vec<Layer>,
}

impl VmdkImage {
    /// Open `path` from the file system with default options.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(&FsStore::default(), path, &OpenOptions::default())
    }

    /// Open `path` through `store`, following parents.
    pub fn open_with(store: &dyn FileStore, path: &Path, opts: &OpenOptions) -> Result<Self> {
        let mut layers: Vec<Layer> = Vec::new();
        let mut seen = HashSet::new();
        let mut current = path.to_path_buf();
        loop {
            let id = store.identity(&current)?;
            if !seen.insert(id) {
                let child = layers.last().map(|l| l.path.clone()).unwrap_or_default();
                return Err(Error::new(
                    ErrorKind::ChainLoop,
                    format!(
                        "parent chain loops: \"{}\" is already in the chain",
                        current.display()
                    ),
                )
                .with_path(child));
            }
            if layers.len() >= opts.max_depth {
                return Err(Error::new(
                    ErrorKind::ChainTooDeep,
                    format!(
                        "chain of delta links is deeper than {} links",
                        opts.max_depth
                    ),
                )
                .with_path(path));
            }
            let layer = Layer::open(store, &current, opts)?;
            if let Some(child) = layers.last() {
                let want = child.descriptor.parent_cid;
                let have = layer.descriptor.cid;
                if opts.check_parent_cid && want != have {
                    return Err(Error::new(
                        ErrorKind::ParentMismatch,
                        format!(
                            "parentCID {} does not match the CID {} of parent \"{}\" (the parent changed after the link was made)",
                            fmt_cid(want),
                            fmt_cid(have),
                            layer.path.display()
                        ),
                    )
                    .with_path(&child.path));
                }
            }
            let next = match &layer.descriptor.parent_hint {
                Some(hint) => Some(
                    resolve_name(
                        store,
                        &layer.descriptor,
                        parent_dir(&current),
                        hint,
                        opts,
                        "parent",
                    )
                    .map_err(|e| e.with_path(&current))?,
                ),
                None => None,
            };
            layers.push(layer);
            match next {
                Some(p) => current = p,
                None => break,
            }
        }
        Ok(VmdkImage { layers })
    }

    /// The layers, the opened image first and the base last.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }
}

/// Print a CID as 8 hex digits (or `none`).
fn fmt_cid(cid: Option<u32>) -> String {
    match cid {
        Some(c) => format!("{c:08x}"),
        None => "(none)".into(),
    }
}
