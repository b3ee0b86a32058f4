//! A whole VMDK image: one descriptor with its extents (a [`Layer`]), and the chain of
//! parents below it (a [`VmdkImage`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vdisk_core::{
    check_range, coalesce, Allocation, DiskImage, Error, ErrorKind, Extent, Result, SECTOR,
};

use crate::bytes::{Bytes, FileStore, FsStore};
use crate::descriptor::{Access, Descriptor, ExtentLine, ExtentType};
use crate::paths::resolve_relative;
use crate::sparse::{Run, SparseExtent};

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

/// Where one extent's bytes come from.
#[derive(Debug)]
enum Storage {
    Sparse(Arc<SparseExtent>),
    /// `dense`: the file has no holes, so its allocation needs no `SEEK_DATA` calls.
    Flat {
        file: Arc<Bytes>,
        offset: u64,
        dense: bool,
    },
    Zero,
}

/// One extent of a layer, placed on the virtual disk.
#[derive(Debug)]
pub struct LayerExtent {
    /// The extent line as written in the descriptor.
    pub line: ExtentLine,
    /// First byte on the virtual disk.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// The file it reads, resolved against the descriptor's folder.
    pub path: Option<PathBuf>,
    storage: Storage,
}

impl LayerExtent {
    /// The sparse extent behind this line, if it is one.
    pub fn sparse(&self) -> Option<&SparseExtent> {
        match &self.storage {
            Storage::Sparse(s) => Some(s),
            _ => None,
        }
    }

    /// The flat file and its byte offset, if this is a flat extent.
    pub fn flat(&self) -> Option<(&Bytes, u64)> {
        match &self.storage {
            Storage::Flat { file, offset, .. } => Some((file, *offset)),
            _ => None,
        }
    }
}

/// What `info` shows of one extent.
#[derive(Debug, Clone)]
pub struct ExtentInfo {
    /// Access keyword.
    pub access: &'static str,
    /// Size in sectors.
    pub sectors: u64,
    /// Type keyword.
    pub kind: &'static str,
    /// Resolved file, if any.
    pub file: Option<PathBuf>,
    /// Offset in the file in sectors.
    pub offset: u64,
}

/// One image file set: a descriptor and its extents (no parent).
#[derive(Debug)]
pub struct Layer {
    path: PathBuf,
    descriptor: Descriptor,
    embedded: bool,
    extents: Vec<LayerExtent>,
    size: u64,
}

/// A run of a layer, for the read path.
enum LayerRun<'a> {
    Compressed(&'a SparseExtent, u64, u64),
    File(&'a Bytes, u64),
    Zero,
    Unallocated,
}

impl Layer {
    /// Open the image file at `path` (a descriptor, or a sparse extent with or without an
    /// embedded descriptor), without following its parent.
    pub fn open(store: &dyn FileStore, path: &Path, opts: &OpenOptions) -> Result<Self> {
        let bytes = store.load(path)?;
        Self::from_bytes(store, path, bytes, opts).map_err(|e| e.with_path(path))
    }

    fn from_bytes(
        store: &dyn FileStore,
        path: &Path,
        bytes: Bytes,
        opts: &OpenOptions,
    ) -> Result<Self> {
        let head = bytes.slice().map(|s| &s[..s.len().min(4096)]);
        let mut head_buf = [0u8; 64];
        let head = match head {
            Some(h) => h,
            None => {
                bytes.read_at(&mut head_buf, 0)?;
                &head_buf[..]
            }
        };
        if head.starts_with(b"KDMV") {
            let sparse = SparseExtent::open(bytes)?;
            let embedded = sparse.embedded_descriptor().map(Descriptor::parse);
            let capacity = sparse.capacity();
            let (descriptor, embedded) = match embedded {
                Some(Ok(d)) => (d, true),
                Some(Err(e)) => {
                    return Err(Error::invalid(format!(
                        "embedded descriptor: {}",
                        e.message()
                    )))
                }
                None => (bare_descriptor(path, capacity / SECTOR), false),
            };
            // The file itself holds the data, whatever name the embedded descriptor uses
            // (images get renamed); qemu-img reads it the same way.
            let line = descriptor
                .extents
                .first()
                .cloned()
                .unwrap_or_else(|| bare_descriptor(path, capacity / SECTOR).extents[0].clone());
            let extents = vec![LayerExtent {
                line,
                start: 0,
                len: capacity,
                path: Some(path.to_path_buf()),
                storage: Storage::Sparse(Arc::new(sparse)),
            }];
            return Ok(Layer {
                path: path.to_path_buf(),
                descriptor,
                embedded,
                extents,
                size: capacity,
            });
        }
        if head.starts_with(b"COWD") {
            return Err(Error::unsupported(
                "COWD (ESX VMFSSPARSE) extents are not supported",
            ));
        }
        if !crate::descriptor::looks_like_descriptor(head) {
            return Err(Error::invalid(
                "not a VMDK: no sparse header magic and no \"# Disk DescriptorFile\" line",
            ));
        }
        let text = bytes.require_slice()?;
        let descriptor = Descriptor::parse(text)?;
        let size = descriptor.total_sectors()? * SECTOR;
        let dir = parent_dir(path);
        let mut opened: HashMap<PathBuf, Storage> = HashMap::new();
        let mut identities: HashMap<PathBuf, PathBuf> = HashMap::new();
        let mut extents = Vec::with_capacity(descriptor.extents.len());
        let mut start = 0u64;
        for line in &descriptor.extents {
            let len = line.sectors * SECTOR; // total_sectors bounds every product
            let (file_path, storage) = match (line.access, line.kind) {
                (Access::NoAccess, _) | (_, ExtentType::Zero) => (None, Storage::Zero),
                (_, ExtentType::Sparse | ExtentType::Flat | ExtentType::Vmfs) => {
                    let name = line.file.as_deref().unwrap_or(Path::new(""));
                    let p = resolve_relative(dir, name, opts.allow_outside_paths, "extent file")?;
                    let storage = open_extent(store, &p, line, &mut opened, &mut identities)
                        .map_err(|e| e.with_path(&p))?;
                    (Some(p), storage)
                }
                (_, other) => {
                    return Err(Error::unsupported(format!(
                        "{} extents are not supported",
                        other.as_str()
                    )))
                }
            };
            extents.push(LayerExtent {
                line: line.clone(),
                start,
                len,
                path: file_path,
                storage,
            });
            start += len;
        }
        Ok(Layer {
            path: path.to_path_buf(),
            descriptor,
            embedded: false,
            extents,
            size,
        })
    }

    /// The file this layer was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The descriptor (embedded, separate, or made up for a bare sparse extent).
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    /// Whether the descriptor is embedded in a sparse extent.
    pub fn embedded_descriptor(&self) -> bool {
        self.embedded
    }

    /// The extents in disk order.
    pub fn extents(&self) -> &[LayerExtent] {
        &self.extents
    }

    /// Virtual size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The first sparse extent (its header describes the layer's grain size and version).
    pub fn first_sparse(&self) -> Option<&SparseExtent> {
        self.extents.iter().find_map(|e| e.sparse())
    }

    /// Whether any sparse extent's header has the uncleanShutdown flag set.
    pub fn unclean_shutdown(&self) -> bool {
        self.extents
            .iter()
            .filter_map(|e| e.sparse())
            .any(|s| s.header().unclean_shutdown)
    }

    /// The extents as `info` shows them.
    pub fn extent_infos(&self) -> Vec<ExtentInfo> {
        self.extents
            .iter()
            .map(|e| ExtentInfo {
                access: e.line.access.as_str(),
                sectors: e.line.sectors,
                kind: e.line.kind.as_str(),
                file: e.path.clone(),
                offset: e.line.offset,
            })
            .collect()
    }

    /// Bytes the layer's files take on disk.
    pub fn disk_usage(&self) -> u64 {
        let mut seen = HashSet::new();
        let mut total = 0u64;
        for e in &self.extents {
            let bytes = match &e.storage {
                Storage::Sparse(s) => s.bytes(),
                Storage::Flat { file, .. } => file,
                Storage::Zero => continue,
            };
            if seen.insert(bytes.path().to_path_buf()) {
                total = total.saturating_add(bytes.disk_usage());
            }
        }
        if !self.embedded
            && self
                .extents
                .iter()
                .all(|e| e.path.as_deref() != Some(&self.path))
        {
            if let Ok(m) = std::fs::metadata(&self.path) {
                use std::os::unix::fs::MetadataExt;
                total = total.saturating_add(m.blocks().saturating_mul(512));
            }
        }
        total
    }

    fn extent_index(&self, offset: u64) -> usize {
        self.extents.partition_point(|e| e.start + e.len <= offset)
    }

    fn run_at(&self, offset: u64, max: u64) -> Result<(u64, LayerRun<'_>)> {
        let Some(ext) = self.extents.get(self.extent_index(offset)) else {
            return Ok((max, LayerRun::Unallocated));
        };
        let within = offset - ext.start;
        let max = max.min(ext.len - within);
        Ok(match &ext.storage {
            Storage::Zero => (max, LayerRun::Zero),
            Storage::Flat {
                file, offset: base, ..
            } => (max, LayerRun::File(file, base.saturating_add(within))),
            Storage::Sparse(s) => {
                if within >= s.capacity() {
                    return Ok((max, LayerRun::Unallocated));
                }
                let (len, run) = s.run_at(within, max.min(s.capacity() - within))?;
                let run = match run {
                    Run::Stored(pos) => LayerRun::File(s.bytes(), pos),
                    Run::Compressed(g, w) => LayerRun::Compressed(s, g, w),
                    Run::Zero => LayerRun::Zero,
                    Run::Unallocated => LayerRun::Unallocated,
                };
                (len, run)
            }
        })
    }

    /// The allocation of the run at `offset` (at most `max` bytes) in this layer alone.
    fn allocation_at(&self, offset: u64, max: u64) -> Result<(u64, Allocation)> {
        if let Some(ext) = self.extents.get(self.extent_index(offset)) {
            if let Storage::Flat {
                file,
                offset: base,
                dense: false,
            } = &ext.storage
            {
                let within = offset - ext.start;
                let max = max.min(ext.len - within);
                let pos = base.saturating_add(within);
                let ranges = file.data_ranges(pos, pos.saturating_add(max));
                return Ok(match ranges.first() {
                    Some(&(s, _)) if s > pos => (s - pos, Allocation::Zero),
                    Some(&(s, l)) => ((s + l - pos).min(max), Allocation::Data),
                    None => (max, Allocation::Zero),
                });
            }
        }
        let (len, run) = self.run_at(offset, max)?;
        let alloc = match run {
            LayerRun::Compressed(..) | LayerRun::File(..) => Allocation::Data,
            LayerRun::Zero => Allocation::Zero,
            LayerRun::Unallocated => Allocation::Unallocated,
        };
        Ok((len, alloc))
    }
}

fn open_extent(
    store: &dyn FileStore,
    path: &Path,
    line: &ExtentLine,
    opened: &mut HashMap<PathBuf, Storage>,
    identities: &mut HashMap<PathBuf, PathBuf>,
) -> Result<Storage> {
    // Descriptors may name one file many times; ask the file system once per name.
    let id = match identities.get(path) {
        Some(id) => id.clone(),
        None => {
            let id = store.identity(path)?;
            identities.insert(path.to_path_buf(), id.clone());
            id
        }
    };
    if let Some(s) = opened.get(&id) {
        return Ok(match s {
            Storage::Sparse(x) if line.kind == ExtentType::Sparse => Storage::Sparse(Arc::clone(x)),
            Storage::Flat { file, dense, .. } if line.kind != ExtentType::Sparse => Storage::Flat {
                file: Arc::clone(file),
                dense: *dense,
                offset: line
                    .offset
                    .checked_mul(SECTOR)
                    .ok_or_else(|| Error::invalid("extent offset is out of range"))?,
            },
            _ => {
                return Err(Error::invalid(
                    "the same file is named as both a sparse and a flat extent",
                ))
            }
        });
    }
    let bytes = store.load(path)?;
    let storage = if line.kind == ExtentType::Sparse {
        Storage::Sparse(Arc::new(SparseExtent::open(bytes)?))
    } else {
        let offset = line
            .offset
            .checked_mul(SECTOR)
            .ok_or_else(|| Error::invalid("extent offset is out of range"))?;
        let dense = bytes.is_dense();
        Storage::Flat {
            file: Arc::new(bytes),
            offset,
            dense,
        }
    };
    let copy = match &storage {
        Storage::Sparse(s) => Storage::Sparse(Arc::clone(s)),
        Storage::Flat {
            file,
            offset,
            dense,
        } => Storage::Flat {
            file: Arc::clone(file),
            offset: *offset,
            dense: *dense,
        },
        Storage::Zero => Storage::Zero,
    };
    opened.insert(id, copy);
    Ok(storage)
}

fn bare_descriptor(path: &Path, sectors: u64) -> Descriptor {
    Descriptor {
        extents: vec![ExtentLine {
            access: Access::Rw,
            sectors,
            kind: ExtentType::Sparse,
            file: path.file_name().map(PathBuf::from),
            offset: 0,
        }],
        ..Descriptor::default()
    }
}

/// The folder descriptor paths resolve against: empty for a bare file name, so resolved
/// names stay as short as the user typed them (`a.vmdk`, not `./a.vmdk`).
fn parent_dir(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new(""))
}

/// A VMDK image with its chain of parents: `layers()[0]` is the image that was opened, each
/// next one the previous one's parent.
#[derive(Debug)]
pub struct VmdkImage {
    layers: Vec<Layer>,
}

impl VmdkImage {
    /// Open `path` from the file system with default options.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(&FsStore, path, &OpenOptions::default())
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
                    resolve_relative(
                        parent_dir(&current),
                        hint,
                        opts.allow_outside_paths,
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

    /// Read what link `depth` itself stores at `offset`, without falling through to its
    /// parents: unallocated ranges read as zero. (Verifying a backup reads each link's own
    /// grains once this way.)
    pub fn read_layer_only(&self, depth: usize, buf: &mut [u8], offset: u64) -> Result<()> {
        let layer = self
            .layers
            .get(depth)
            .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, "no such layer"))?;
        check_range(layer.size, offset, buf.len() as u64)?;
        self.read_layer(depth, buf, offset, false)
    }

    fn read_layer(
        &self,
        depth: usize,
        buf: &mut [u8],
        offset: u64,
        fall_through: bool,
    ) -> Result<()> {
        let layer = &self.layers[depth];
        let mut pos = 0usize;
        while pos < buf.len() {
            let off = offset + pos as u64;
            let want = (buf.len() - pos) as u64;
            if off >= layer.size {
                buf[pos..].fill(0);
                break;
            }
            let (len, run) = layer.run_at(off, want.min(layer.size - off))?;
            let len = len.clamp(1, want) as usize;
            let dst = &mut buf[pos..pos + len];
            match run {
                LayerRun::Compressed(ext, grain, within) => {
                    ext.read_compressed(grain, within, dst)?
                }
                LayerRun::File(file, at) => file.read_at(dst, at)?,
                LayerRun::Zero => dst.fill(0),
                LayerRun::Unallocated if fall_through && depth + 1 < self.layers.len() => {
                    self.read_layer(depth + 1, dst, off, true)?
                }
                LayerRun::Unallocated => dst.fill(0),
            }
            pos += len;
        }
        Ok(())
    }

    fn allocation_layer(
        &self,
        depth: usize,
        offset: u64,
        length: u64,
        map: &mut Vec<Extent>,
    ) -> Result<()> {
        let layer = &self.layers[depth];
        let end = offset + length;
        let mut off = offset;
        while off < end {
            let (len, alloc) = if off >= layer.size {
                (end - off, Allocation::Unallocated)
            } else {
                layer.allocation_at(off, (end - off).min(layer.size - off))?
            };
            let len = len.clamp(1, end - off);
            if alloc == Allocation::Unallocated && depth + 1 < self.layers.len() {
                self.allocation_layer(depth + 1, off, len, map)?;
            } else {
                coalesce(
                    map,
                    Extent {
                        start: off,
                        length: len,
                        allocation: alloc,
                        depth: if alloc == Allocation::Unallocated {
                            0
                        } else {
                            depth as u32
                        },
                    },
                );
            }
            off += len;
        }
        Ok(())
    }

    /// Hand `f` every range that link `depth` itself stores (data or zeroed grains), walking
    /// its map in [`vdisk_core::MAP_WINDOW`] windows up to the smaller of its size and the
    /// image's.
    pub fn for_each_stored(
        &self,
        depth: usize,
        mut f: impl FnMut(Extent) -> Result<()>,
    ) -> Result<()> {
        let layer = self
            .layers
            .get(depth)
            .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, "no such layer"))?;
        let size = layer.size.min(self.size());
        let mut off = 0;
        while off < size {
            let len = (size - off).min(vdisk_core::MAP_WINDOW);
            for e in self.layer_allocation(depth, off, len)? {
                if e.allocation != Allocation::Unallocated {
                    f(e)?;
                }
            }
            off += len;
        }
        Ok(())
    }

    /// The allocation map of one layer alone (not falling through to parents).
    pub fn layer_allocation(&self, depth: usize, offset: u64, length: u64) -> Result<Vec<Extent>> {
        let layer = self
            .layers
            .get(depth)
            .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, "no such layer"))?;
        check_range(layer.size, offset, length)?;
        let mut map = Vec::new();
        let end = offset + length;
        let mut off = offset;
        while off < end {
            let (len, alloc) = layer.allocation_at(off, end - off)?;
            let len = len.clamp(1, end - off);
            coalesce(
                &mut map,
                Extent {
                    start: off,
                    length: len,
                    allocation: alloc,
                    depth: depth as u32,
                },
            );
            off += len;
        }
        Ok(map)
    }
}

/// Print a CID as 8 hex digits (or `none`).
fn fmt_cid(cid: Option<u32>) -> String {
    match cid {
        Some(c) => format!("{c:08x}"),
        None => "(none)".into(),
    }
}

impl DiskImage for VmdkImage {
    fn size(&self) -> u64 {
        self.layers[0].size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.size(), offset, buf.len() as u64)
            .map_err(|e| e.with_path(&self.layers[0].path))?;
        self.read_layer(0, buf, offset, true)
    }

    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        check_range(self.size(), offset, length).map_err(|e| e.with_path(&self.layers[0].path))?;
        let mut map = Vec::new();
        self.allocation_layer(0, offset, length, &mut map)?;
        Ok(map)
    }

    fn format_name(&self) -> &'static str {
        "vmdk"
    }

    /// A range inside one flat extent of an image without parents is handed out straight from
    /// the extent file's memory map.
    fn mapped(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let [layer] = self.layers.as_slice() else {
            return None;
        };
        let ext = layer.extents.get(layer.extent_index(offset))?;
        let Storage::Flat {
            file, offset: base, ..
        } = &ext.storage
        else {
            return None;
        };
        let within = offset.checked_sub(ext.start)?;
        if within.checked_add(len)? > ext.len {
            return None;
        }
        let start = usize::try_from(base.checked_add(within)?).ok()?;
        file.slice()?
            .get(start..start.checked_add(usize::try_from(len).ok()?)?)
    }

    fn release(&self, offset: u64, len: u64) {
        let [layer] = self.layers.as_slice() else {
            return;
        };
        let mut off = offset;
        let end = offset.saturating_add(len).min(layer.size);
        while off < end {
            let Some(ext) = layer.extents.get(layer.extent_index(off)) else {
                return;
            };
            let stop = end.min(ext.start + ext.len);
            if let Storage::Flat {
                file, offset: base, ..
            } = &ext.storage
            {
                if let Bytes::File(f) = &**file {
                    f.release(base.saturating_add(off - ext.start), stop - off);
                }
            }
            off = stop;
        }
    }
}
