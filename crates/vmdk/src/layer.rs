//! One layer of an image: a descriptor and its extents, without the parent (the registry
//! opens the chain).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vdisk_core::{Allocation, Error, FileId, Result, SECTOR};

use crate::cowd::CowdExtent;
use crate::descriptor::{Access, Descriptor, ExtentLine, ExtentType};
use crate::sesparse::{SeSparseExtent, SESPARSE_CONST_MAGIC, SESPARSE_VERSION};
use crate::sparse::{Run, SparseExtent};
use vdisk_io::resolve_relative;
use vdisk_io::{Backing, Bytes, FileStore, OpenContext};

/// Where one extent's bytes come from.
#[derive(Debug)]
pub(crate) enum Storage {
    Sparse(Arc<SparseExtent>),
    /// An ESXi SEsparse extent (SESPARSE).
    SeSparse(Arc<SeSparseExtent>),
    /// An ESX COWD extent (VMFSSPARSE, or SPARSE naming a COWD file).
    Cowd(Arc<CowdExtent>),
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
    pub(crate) storage: Storage,
}

impl LayerExtent {
    /// The sparse extent behind this line, if it is one.
    pub fn sparse(&self) -> Option<&SparseExtent> {
        match &self.storage {
            Storage::Sparse(s) => Some(s),
            _ => None,
        }
    }

    /// The SEsparse extent behind this line, if it is one.
    pub fn sesparse(&self) -> Option<&SeSparseExtent> {
        match &self.storage {
            Storage::SeSparse(s) => Some(s),
            _ => None,
        }
    }

    /// The COWD extent behind this line, if it is one.
    pub fn cowd(&self) -> Option<&CowdExtent> {
        match &self.storage {
            Storage::Cowd(s) => Some(s),
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

/// One VMDK file set: a descriptor and its extents, without its parent (the registry reads
/// the chain).
#[derive(Debug)]
pub struct VmdkLayer {
    pub(crate) path: PathBuf,
    pub(crate) descriptor: Descriptor,
    embedded: bool,
    pub(crate) extents: Vec<LayerExtent>,
    pub(crate) size: u64,
    /// The identity of the file the layer was opened from (none for in-memory files).
    id: Option<FileId>,
    /// The parent the descriptor names (parentFileNameHint and parentCID).
    pub(crate) backing: Option<Backing>,
}

/// The parent `descriptor` names: its parentFileNameHint (decoded from the descriptor's
/// `encoding` first, then as written) and its parentCID.
fn backing_of(descriptor: &Descriptor) -> Option<Backing> {
    let hint = descriptor.parent_hint.as_deref()?;
    Some(Backing {
        names: descriptor.name_candidates(hint),
        format: None,
        link: Some(crate::descriptor::cid_link(descriptor.parent_cid)),
    })
}

/// A run of a layer, for the read path.
pub(crate) enum LayerRun<'a> {
    Compressed(&'a SparseExtent, u64, u64),
    File(&'a Bytes, u64),
    Zero,
    Unallocated,
}

impl VmdkLayer {
    /// Open the image file at `path` (a descriptor, or a sparse extent with or without an
    /// embedded descriptor) from the local file system, without following its parent.
    pub fn open(path: &Path) -> Result<Self> {
        let store = vdisk_io::FsStore::default();
        Self::open_in(&OpenContext {
            files: &store,
            path,
            allow_outside_paths: false,
        })
    }

    /// Open the image file `cx.path` through `cx.files`, without following its parent.
    pub fn open_in(cx: &OpenContext<'_>) -> Result<Self> {
        let bytes = cx.files.load(cx.path)?;
        Self::from_bytes(bytes, cx)
    }

    /// Open the layer whose main file (descriptor or sparse extent) is `bytes`.
    pub fn from_bytes(bytes: Bytes, cx: &OpenContext<'_>) -> Result<Self> {
        Self::parse(cx.files, cx.path, bytes, cx.allow_outside_paths)
            .map_err(|e| e.with_path(cx.path))
    }

    fn parse(
        store: &dyn FileStore,
        path: &Path,
        bytes: Bytes,
        allow_outside_paths: bool,
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
            let bytes_id = bytes.id();
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
            return Ok(VmdkLayer {
                backing: backing_of(&descriptor),
                id: bytes_id,
                path: path.to_path_buf(),
                descriptor,
                embedded,
                extents,
                size: capacity,
            });
        }
        // The data files of ESX snapshots are only read through their descriptors, which
        // name the parent: read alone, a snapshot's data file is not the disk. qemu refuses
        // a bare COWD file too, and reads a bare SEsparse file as a raw disk.
        if head.starts_with(b"COWD") {
            return Err(Error::unsupported(
                "this is a COWD (vmfsSparse) extent, the data file of an ESX snapshot: open the descriptor that names it (the .vmdk without -delta)",
            ));
        }
        if is_sesparse(head) {
            return Err(Error::unsupported(
                "this is an SEsparse extent, the data file of an ESXi snapshot: open the descriptor that names it (the .vmdk without -sesparse)",
            ));
        }
        if !crate::descriptor::looks_like_descriptor(head) {
            return Err(Error::invalid(
                "not a VMDK: no sparse header magic, and not descriptor text (its first line sets neither version=, CID= nor createType=)",
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
                (
                    _,
                    ExtentType::Sparse
                    | ExtentType::Flat
                    | ExtentType::Vmfs
                    | ExtentType::VmfsSparse
                    | ExtentType::SeSparse,
                ) => {
                    let name = line.file.as_deref().unwrap_or(Path::new(""));
                    let p = resolve_name(
                        store,
                        &descriptor,
                        dir,
                        name,
                        allow_outside_paths,
                        "extent file",
                    )
                    .map_err(|e| device_refusal(e, &descriptor))?;
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
        Ok(VmdkLayer {
            backing: backing_of(&descriptor),
            id: bytes.id(),
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

    /// The grain size in bytes of the first SEsparse or COWD extent (ESX snapshots), if any.
    pub fn esx_grain_bytes(&self) -> Option<u64> {
        self.extents.iter().find_map(|e| match &e.storage {
            Storage::SeSparse(s) => Some(s.grain_bytes()),
            Storage::Cowd(c) => Some(c.grain_bytes()),
            _ => None,
        })
    }

    /// Whether any sparse extent's header has the uncleanShutdown flag set.
    pub fn unclean_shutdown(&self) -> bool {
        self.extents
            .iter()
            .filter_map(|e| e.sparse())
            .any(|s| s.header().unclean_shutdown)
            || self
                .extents
                .iter()
                .filter_map(|e| e.cowd())
                .any(|c| c.header().unclean_shutdown != 0)
    }

    /// The identities of the layer's files: the descriptor and every extent file.
    pub fn files(&self) -> Vec<FileId> {
        let mut out: Vec<FileId> = self.id.into_iter().collect();
        for e in &self.extents {
            let id = match &e.storage {
                Storage::Sparse(s) => s.bytes().id(),
                Storage::SeSparse(s) => s.bytes().id(),
                Storage::Cowd(s) => s.bytes().id(),
                Storage::Flat { file, .. } => file.id(),
                Storage::Zero => None,
            };
            out.extend(id);
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Stop read-ahead on every file of the layer (reads are being paced).
    pub(crate) fn read_as_asked(&self) {
        for e in &self.extents {
            let bytes = match &e.storage {
                Storage::Sparse(s) => s.bytes(),
                Storage::SeSparse(s) => s.bytes(),
                Storage::Cowd(s) => s.bytes(),
                Storage::Flat { file, .. } => file,
                Storage::Zero => continue,
            };
            bytes.advise(0, bytes.len(), vdisk_core::Advice::Paced);
        }
    }

    /// Bytes the layer's files take on disk.
    pub fn disk_usage(&self) -> u64 {
        let mut seen = HashSet::new();
        let mut total = 0u64;
        for e in &self.extents {
            let bytes = match &e.storage {
                Storage::Sparse(s) => s.bytes(),
                Storage::SeSparse(s) => s.bytes(),
                Storage::Cowd(s) => s.bytes(),
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
                total = total.saturating_add(vdisk_io::disk_usage(&m));
            }
        }
        total
    }

    pub(crate) fn extent_index(&self, offset: u64) -> usize {
        self.extents.partition_point(|e| e.start + e.len <= offset)
    }

    pub(crate) fn run_at(&self, offset: u64, max: u64) -> Result<(u64, LayerRun<'_>)> {
        let Some(ext) = self.extents.get(self.extent_index(offset)) else {
            return Ok((max, LayerRun::Unallocated));
        };
        let within = offset - ext.start;
        let max = max.min(ext.len - within);
        Ok(match &ext.storage {
            Storage::Zero => (max, LayerRun::Zero),
            // A flat file shorter than its extent reads as zero past its end, and qemu-img
            // maps that tail as zero: so does vdisk.
            Storage::Flat {
                file, offset: base, ..
            } => {
                let pos = base.saturating_add(within);
                match file.len().checked_sub(pos) {
                    Some(left) if left > 0 => (max.min(left), LayerRun::File(file, pos)),
                    _ => (max, LayerRun::Zero),
                }
            }
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
            Storage::SeSparse(s) => {
                if within >= s.capacity() {
                    return Ok((max, LayerRun::Unallocated));
                }
                let (len, run) = s.run_at(within, max.min(s.capacity() - within))?;
                (len, plain_run(s.bytes(), run))
            }
            Storage::Cowd(s) => {
                if within >= s.capacity() {
                    return Ok((max, LayerRun::Unallocated));
                }
                let (len, run) = s.run_at(within, max.min(s.capacity() - within))?;
                (len, plain_run(s.bytes(), run))
            }
        })
    }

    /// The allocation of the run at `offset` (at most `max` bytes) in this layer alone.
    pub(crate) fn allocation_at(&self, offset: u64, max: u64) -> Result<(u64, Allocation)> {
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

/// A refused extent path of a raw-device descriptor (VirtualBox's `createrawvmdk`, VMware's
/// physical disks) says why it is outside: the descriptor reads a disk of this machine.
fn device_refusal(e: Error, descriptor: &Descriptor) -> Error {
    match descriptor.create_type.as_deref() {
        Some(ct @ ("fullDevice" | "partitionedDevice"))
            if e.kind() == vdisk_core::ErrorKind::PathRefused =>
        {
            Error::new(
                e.kind(),
                format!(
                    "{} (this {ct} descriptor reads a disk of the machine it was made on)",
                    e.message()
                ),
            )
        }
        _ => e,
    }
}

/// Resolve `name`, a file name as written in `descriptor` (at `dir`), to the file the store
/// has: the name decoded from the descriptor's `encoding` first, then the bytes as written.
/// When neither exists, the decoded name is returned (its error names what was looked for).
pub(crate) fn resolve_name(
    store: &dyn FileStore,
    descriptor: &Descriptor,
    dir: &Path,
    name: &Path,
    allow_outside_paths: bool,
    what: &str,
) -> Result<PathBuf> {
    let candidates = descriptor.name_candidates(name);
    let mut resolved = Vec::with_capacity(candidates.len());
    for c in &candidates {
        resolved.push(resolve_relative(dir, c, allow_outside_paths, what)?);
    }
    if resolved.len() > 1 {
        if let Some(p) = resolved.iter().find(|p| store.exists(p)) {
            return Ok(p.clone());
        }
    }
    Ok(resolved.swap_remove(0))
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
    // SPARSE and VMFSSPARSE lines open a hosted sparse (KDMV) or a COWD file, whichever the
    // magic says, as qemu's vmdk_open_sparse does.
    let sparse_line = matches!(line.kind, ExtentType::Sparse | ExtentType::VmfsSparse);
    let flat_line = matches!(line.kind, ExtentType::Flat | ExtentType::Vmfs);
    if let Some(s) = opened.get(&id) {
        return Ok(match s {
            Storage::Sparse(x) if sparse_line => Storage::Sparse(Arc::clone(x)),
            Storage::Cowd(x) if sparse_line => Storage::Cowd(Arc::clone(x)),
            Storage::SeSparse(x) if line.kind == ExtentType::SeSparse => {
                Storage::SeSparse(Arc::clone(x))
            }
            Storage::Flat { file, dense, .. } if flat_line => Storage::Flat {
                file: Arc::clone(file),
                dense: *dense,
                offset: line
                    .offset
                    .checked_mul(SECTOR)
                    .ok_or_else(|| Error::invalid("extent offset is out of range"))?,
            },
            _ => {
                return Err(Error::invalid(
                    "the same file is named as extents of different types",
                ))
            }
        });
    }
    let bytes = store.load(path)?;
    let storage = if sparse_line {
        let mut magic = [0u8; 4];
        bytes.read_at(&mut magic, 0)?;
        if magic == crate::cowd::COWD_MAGIC {
            Storage::Cowd(Arc::new(CowdExtent::open(bytes)?))
        } else {
            Storage::Sparse(Arc::new(SparseExtent::open(bytes)?))
        }
    } else if line.kind == ExtentType::SeSparse {
        Storage::SeSparse(Arc::new(SeSparseExtent::open(bytes)?))
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
        Storage::SeSparse(s) => Storage::SeSparse(Arc::clone(s)),
        Storage::Cowd(s) => Storage::Cowd(Arc::clone(s)),
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

/// A run of an SEsparse or COWD extent as the read path sees it (they have no compressed
/// grains).
fn plain_run(bytes: &Bytes, run: Run) -> LayerRun<'_> {
    match run {
        Run::Stored(pos) => LayerRun::File(bytes, pos),
        Run::Zero => LayerRun::Zero,
        Run::Unallocated | Run::Compressed(..) => LayerRun::Unallocated,
    }
}

/// Whether `head` starts with an SEsparse constant header (magic and version: 16 bytes that
/// a raw disk is unlikely to start with).
pub(crate) fn is_sesparse(head: &[u8]) -> bool {
    head.len() >= 16
        && head[..8] == SESPARSE_CONST_MAGIC.to_le_bytes()
        && head[8..16] == SESPARSE_VERSION.to_le_bytes()
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
pub(crate) fn parent_dir(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new(""))
}
