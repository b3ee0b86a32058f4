//! Opening chains: probe the bytes, open the layer with its driver, follow its backing file
//! (resolved against its folder and confined to it, probed, its link checked) down to the
//! base, with a depth limit and loop detection.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use vdisk_core::{Error, ErrorKind, Result};
use vdisk_io::{
    resolve_relative, Bytes, Cache, FileStore, Format, FsStore, Layer, LinkId, OpenContext,
    ProbeBytes, ReadAhead, PROBE_HEAD, PROBE_TAIL,
};

use crate::image::Image;
use crate::location::ImageLocation;
use crate::registry;

/// Deepest chain vdisk follows. VMware allows at most 255 redo logs on one disk, qemu's
/// default limit is lower still; a deeper chain is damaged or hostile.
pub const MAX_CHAIN_DEPTH: usize = 256;

/// How images are opened.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// The format of the opened file, instead of detecting it (`-f`). Backing files are
    /// always detected (or taken from what their child records).
    pub format: Option<String>,
    /// Follow names inside images (extents, backing files, data files) that are absolute or
    /// leave the image's folder (`--allow-outside-paths`). Off by default: an image from an
    /// untrusted source must not make vdisk read arbitrary files.
    pub allow_outside_paths: bool,
    /// Deepest chain to follow.
    pub max_depth: usize,
    /// Refuse a layer whose record of its parent's identity differs from the parent's (a
    /// VMDK's parentCID), as qemu-img does.
    pub check_links: bool,
    /// Read-ahead on the image's files: off when its reads will be paced (`--io-limit`).
    pub read_ahead: ReadAhead,
    /// What becomes of the page cache behind data read once.
    pub cache: Cache,
    /// The disk of an archive to read, by its name in it (`--disk`); needed when the
    /// archive holds several. Images that are not archives ignore it.
    pub disk: Option<String>,
    /// Every timeout of an NBD export's connections (connect, handshake, each request);
    /// `None`: the client's defaults (10 s, 20 s, 30 s).
    pub nbd_timeout: Option<std::time::Duration>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            format: None,
            allow_outside_paths: false,
            max_depth: MAX_CHAIN_DEPTH,
            check_links: true,
            read_ahead: ReadAhead::default(),
            cache: Cache::default(),
            disk: None,
            nbd_timeout: None,
        }
    }
}

impl OpenOptions {
    /// The store local files are opened through.
    pub fn store(&self) -> FsStore {
        FsStore {
            read_ahead: self.read_ahead,
            cache: self.cache,
        }
    }
}

/// The first and last bytes of `bytes`, as probes see them.
pub(crate) struct Probe {
    head: Vec<u8>,
    tail: Vec<u8>,
    len: u64,
}

impl Probe {
    pub(crate) fn of(bytes: &Bytes) -> Result<Self> {
        let len = bytes.len();
        let mut head = vec![0u8; len.min(PROBE_HEAD as u64) as usize];
        bytes.read_at(&mut head, 0)?;
        let t = len.min(PROBE_TAIL as u64);
        let mut tail = vec![0u8; t as usize];
        bytes.read_at(&mut tail, len - t)?;
        Ok(Probe { head, tail, len })
    }

    pub(crate) fn bytes(&self) -> ProbeBytes<'_> {
        ProbeBytes {
            head: &self.head,
            tail: &self.tail,
            len: self.len,
        }
    }
}

/// What claims the file at `path`, by its first and last bytes: the name of the registered
/// format (not raw, which claims nothing) or `ova` for an archive; `None` for a file no
/// format claims (read as raw).
pub fn probe_file(path: &Path) -> Result<Option<&'static str>> {
    let bytes = FsStore::default().load(path)?;
    let probe = Probe::of(&bytes)?;
    #[cfg(feature = "ova")]
    if vdisk_ova::is_tar(probe.bytes().head) {
        return Ok(Some("ova"));
    }
    Ok(registry::probe(&probe.bytes()).map(|f| f.name()))
}

/// The driver for `bytes`: the forced one, the one a child recorded, or the one whose probe
/// claims them; a format vdisk knows but does not read is refused by name; otherwise raw.
fn driver_for(bytes: &Bytes, forced: Option<&str>) -> Result<&'static dyn Format> {
    if let Some(name) = forced {
        return registry::require(name);
    }
    let probe = Probe::of(bytes)?;
    if let Some(f) = registry::probe(&probe.bytes()) {
        return Ok(f);
    }
    if let Some(e) = registry::refuse_known(&probe.bytes()) {
        return Err(e);
    }
    Ok(&vdisk_raw::RAW)
}

/// What a child records of its parent, against what the parent is: refused when both are
/// of one kind and differ.
fn check_link(child: &dyn Layer, want: Option<&LinkId>, parent: &dyn Layer) -> Result<()> {
    let (Some(want), Some(have)) = (want, parent.link_id()) else {
        return Ok(());
    };
    if want.kind != have.kind || want.value == have.value {
        return Ok(());
    }
    let (mine, theirs) = match want.kind {
        vdisk_vmdk_cid::KIND => ("parentCID", "the CID"),
        _ => ("the recorded parent identity", "the identity"),
    };
    Err(Error::new(
        ErrorKind::ParentMismatch,
        format!(
            "{mine} {} does not match {theirs} {} of parent \"{}\" (the parent changed after the link was made)",
            want.value,
            have.value,
            parent.path().display()
        ),
    )
    .with_path(child.path()))
}

/// The kinds of link identity whose words messages know.
mod vdisk_vmdk_cid {
    /// A VMDK's CID (see `vdisk_vmdk::CID_LINK`).
    pub const KIND: &str = "vmdk-cid";
}

/// The folder names inside `path` resolve against: empty for a bare file name, so resolved
/// names stay as short as the user typed them (`a.vmdk`, not `./a.vmdk`).
fn folder_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new(""))
}

/// The file a layer's backing names lead to: each name confined to the layer's folder
/// (unless outside paths are allowed); the first that exists, or the first when none does
/// (its error names what was looked for).
fn resolve_backing(
    files: &dyn FileStore,
    layer: &dyn Layer,
    names: &[PathBuf],
    opts: &OpenOptions,
) -> Result<PathBuf> {
    let dir = folder_of(layer.path());
    let mut resolved = Vec::with_capacity(names.len());
    for n in names {
        resolved.push(resolve_relative(
            dir,
            n,
            opts.allow_outside_paths,
            "parent",
        )?);
    }
    if resolved.is_empty() {
        return Err(Error::corrupt("names a parent without a file name"));
    }
    if resolved.len() > 1 {
        if let Some(p) = resolved.iter().find(|p| files.exists(p)) {
            return Ok(p.clone());
        }
    }
    Ok(resolved.swap_remove(0))
}

/// Open the file at `path` in `files` as one layer, without following its backing file
/// (its format detected, or forced by `opts.format`).
pub fn open_layer(
    files: &dyn FileStore,
    path: &Path,
    opts: &OpenOptions,
) -> Result<(Box<dyn Layer>, &'static dyn Format)> {
    let bytes = files.load(path)?;
    let driver = driver_for(&bytes, opts.format.as_deref()).map_err(|e| e.with_path(path))?;
    let cx = OpenContext {
        files,
        path,
        allow_outside_paths: opts.allow_outside_paths,
    };
    let layer = driver.open(bytes, &cx).map_err(|e| e.with_path(path))?;
    Ok((layer, driver))
}

/// Open the chain whose top file is `path` in `files`: the file's bytes are probed (or its
/// format forced by `opts.format`), then each backing file in turn.
pub fn open_chain(files: &dyn FileStore, path: &Path, opts: &OpenOptions) -> Result<Image> {
    let top = files.load(path)?;
    open_chain_from(
        files,
        path,
        top,
        opts,
        ImageLocation::File(path.to_path_buf()),
    )
}

pub(crate) fn open_chain_from(
    files: &dyn FileStore,
    path: &Path,
    top: Bytes,
    opts: &OpenOptions,
    location: ImageLocation,
) -> Result<Image> {
    let mut layers: Vec<Box<dyn Layer>> = Vec::new();
    let mut formats: Vec<&'static dyn Format> = Vec::new();
    let mut seen = HashSet::new();
    let mut current = path.to_path_buf();
    let mut bytes = Some(top);
    let mut forced = opts.format.clone();
    loop {
        let id = files.identity(&current)?;
        if !seen.insert(id) {
            let child = layers
                .last()
                .map(|l| l.path().to_path_buf())
                .unwrap_or_default();
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
                    "chain of backing files is deeper than {} links",
                    opts.max_depth
                ),
            )
            .with_path(path));
        }
        let b = match bytes.take() {
            Some(b) => b,
            None => files.load(&current)?,
        };
        let driver = driver_for(&b, forced.as_deref()).map_err(|e| e.with_path(&current))?;
        let cx = OpenContext {
            files,
            path: &current,
            allow_outside_paths: opts.allow_outside_paths,
        };
        let layer = driver.open(b, &cx).map_err(|e| e.with_path(&current))?;
        if let Some(child) = layers.last() {
            if opts.check_links {
                let want = child.backing().and_then(|b| b.link.as_ref());
                check_link(&**child, want, &*layer)?;
            }
        }
        let next = match layer.backing() {
            Some(b) => {
                let p = resolve_backing(files, &*layer, &b.names, opts)
                    .map_err(|e| e.with_path(&current))?;
                // A recorded backing format is used when vdisk knows it; otherwise probe.
                forced = b
                    .format
                    .as_deref()
                    .filter(|f| registry::by_name(f).is_some())
                    .map(String::from);
                Some(p)
            }
            None => None,
        };
        layers.push(layer);
        formats.push(driver);
        match next {
            Some(p) => current = p,
            None => break,
        }
    }
    Ok(Image {
        layers,
        formats,
        location,
        #[cfg(feature = "ova")]
        archive: None,
    })
}
