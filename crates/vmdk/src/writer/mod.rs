//! Writing VMDK images: every hosted subformat, and delta links.
//!
//! An output is a [`vdisk_core::ImageSink`]: the caller hands it the disk's blocks in
//! increasing order and then calls [`ImageSink::finish`]. Every file is written unnamed (or
//! under a temporary name, see [`vdisk_io::SparseWriter`]) and published only when all of
//! them are complete, extents first and the descriptor (the name the user gave) last, so the
//! destination never names a partial image. Extents get fresh names (no file has them when the
//! image is started), so replacing a multi-file image is atomic: until the descriptor is
//! renamed over the old one, the old image is whole; after it, the old extents are removed.

mod clustered;
mod flat;
mod link;
mod sparse;
mod stream;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use vdisk_core::{Error, ErrorKind, ImageSink, Result, SECTOR};
use vdisk_io::{Existing, ImageOutput, OutputFile, OutputPolicy, SealedOutput, SparseWriter};

use crate::descriptor::{Access, Descriptor, ExtentLine, ExtentType, NO_PARENT_CID};
use vdisk_io::resolve_relative;

pub use link::{LinkSink, ParentLink};
pub(crate) use sparse::SparseImage;

/// Grain size of every sparse output: 64 KiB, what qemu-img and VMware write.
pub const GRAIN_SECTORS: u64 = 128;
/// Largest extent of the split subformats: 2 GiB.
pub const SPLIT_SECTORS: u64 = 0x40_0000;

/// A VMDK subformat vdisk writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subformat {
    /// One sparse file with an embedded descriptor.
    MonolithicSparse,
    /// A descriptor and one flat file.
    MonolithicFlat,
    /// A descriptor and sparse extents of at most 2 GiB.
    TwoGbMaxExtentSparse,
    /// A descriptor and flat extents of at most 2 GiB.
    TwoGbMaxExtentFlat,
    /// One compressed sparse file laid out for streaming, the way VMware writes it.
    StreamOptimized,
}

impl Subformat {
    /// The `createType` name.
    pub fn name(self) -> &'static str {
        match self {
            Subformat::MonolithicSparse => "monolithicSparse",
            Subformat::MonolithicFlat => "monolithicFlat",
            Subformat::TwoGbMaxExtentSparse => "twoGbMaxExtentSparse",
            Subformat::TwoGbMaxExtentFlat => "twoGbMaxExtentFlat",
            Subformat::StreamOptimized => "streamOptimized",
        }
    }

    /// All subformats, in the order the docs list them.
    pub const ALL: [Subformat; 5] = [
        Subformat::MonolithicSparse,
        Subformat::MonolithicFlat,
        Subformat::TwoGbMaxExtentSparse,
        Subformat::TwoGbMaxExtentFlat,
        Subformat::StreamOptimized,
    ];
}

impl std::str::FromStr for Subformat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Subformat::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    format!("unknown subformat \"{s}\" (monolithicSparse, monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat, streamOptimized)"),
                )
            })
    }
}

/// The virtual disk controller recorded in `ddb.adapterType` (it decides the geometry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Adapter {
    /// IDE: 16 heads, 63 sectors per track.
    #[default]
    Ide,
    /// LSI Logic SCSI.
    LsiLogic,
    /// BusLogic SCSI.
    BusLogic,
    /// VMware paravirtual SCSI.
    Pvscsi,
}

impl Adapter {
    /// The `ddb.adapterType` value.
    pub fn name(self) -> &'static str {
        match self {
            Adapter::Ide => "ide",
            Adapter::LsiLogic => "lsilogic",
            Adapter::BusLogic => "buslogic",
            Adapter::Pvscsi => "pvscsi",
        }
    }
}

impl std::str::FromStr for Adapter {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ide" => Ok(Adapter::Ide),
            "lsilogic" => Ok(Adapter::LsiLogic),
            "buslogic" => Ok(Adapter::BusLogic),
            "pvscsi" => Ok(Adapter::Pvscsi),
            _ => Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("unknown adapter \"{s}\" (ide, lsilogic, buslogic, pvscsi)"),
            )),
        }
    }
}

/// How to write an image.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// What happens to an existing destination (and its extent files), and which files the
    /// output must never replace.
    pub policy: OutputPolicy,
    /// The adapter type for the descriptor.
    pub adapter: Adapter,
    /// The content ID to give the image instead of a fresh one (a synthetic full that takes
    /// the place of a link keeps the link's CID, so the links above it stay valid).
    pub cid: Option<u32>,
}

/// A fresh content ID: random, and never one of the reserved all-ones values.
pub fn new_cid() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS; mixing in the time keeps two CIDs made in one process
    // apart.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let cid = h.finish() as u32;
    if cid >= 0xffff_fffe {
        0x1234_5678
    } else {
        cid
    }
}

/// The `ddb.` keys of a new image of `sectors` sectors: hardware version, geometry and adapter,
/// with the geometry convention qemu-img and VMware use (IDE 16×63, SCSI 255×63, cylinders
/// capped at 16383 for IDE and 65535 otherwise).
pub fn ddb_for(sectors: u64, adapter: Adapter) -> Vec<(String, String)> {
    let (heads, secs, max_cyl) = match adapter {
        Adapter::Ide => (16u64, 63u64, 16383u64),
        _ => (255, 63, 65535),
    };
    let cylinders = (sectors / (heads * secs)).min(max_cyl);
    vec![
        ("ddb.virtualHWVersion".into(), "4".into()),
        ("ddb.geometry.cylinders".into(), cylinders.to_string()),
        ("ddb.geometry.heads".into(), heads.to_string()),
        ("ddb.geometry.sectors".into(), secs.to_string()),
        ("ddb.adapterType".into(), adapter.name().into()),
    ]
}

/// Start writing a VMDK of `size` bytes at `dst` in `subformat`.
///
/// The size is rounded up to whole sectors. An existing `dst` is refused unless the policy
/// replaces it; extent files get names no file has yet.
///
/// The image is written through [`ImageSink`]: blocks of [`ImageSink::block_size`] bytes in
/// increasing order, then [`ImageSink::finish`] (or [`vdisk_core::copy_into`] from any image).
///
/// ```
/// use vdisk_core::{Allocation, DiskImage, ImageSink};
/// use vdisk_vmdk::writer::{self, Subformat, WriteOptions};
/// use vdisk_vmdk::VmdkLayer;
///
/// let dir = tempfile::tempdir()?;
/// let dst = dir.path().join("disk.vmdk");
/// let opts = WriteOptions::default();
/// let mut sink = writer::create(&dst, 1 << 20, Subformat::MonolithicSparse, &opts)?;
/// let grain = sink.block_size();
/// assert_eq!(grain, 64 << 10);
/// let data = vec![0x5a; grain as usize];
/// let zeros = vec![0u8; grain as usize];
/// sink.put(&[(0, &data), (grain, &zeros), (3 * grain, &data)])?;
/// sink.finish()?;
///
/// let img = VmdkLayer::open(&dst)?;
/// assert_eq!(img.size(), 1 << 20);
/// let mut back = vec![0u8; 4 * grain as usize];
/// img.read_at(&mut back, 0)?;
/// assert_eq!(back, [&data[..], &zeros, &zeros, &data].concat());
/// // The all-zero block was not stored.
/// let map = img.allocation(0, 4 * grain)?;
/// let kinds: Vec<_> = map.iter().map(|e| (e.start / grain, e.allocation)).collect();
/// assert_eq!(kinds, [(0, Allocation::Data), (1, Allocation::Unallocated), (3, Allocation::Data)]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn create(
    dst: &Path,
    size: u64,
    subformat: Subformat,
    opts: &WriteOptions,
) -> Result<Box<dyn ImageSink>> {
    let sectors = size.div_ceil(SECTOR);
    let files = OutputFiles::new(dst, &opts.policy)?;
    Ok(match subformat {
        Subformat::MonolithicSparse => Box::new(SparseImage::create(
            files,
            sectors,
            Layout::Monolithic,
            opts,
            None,
        )?),
        Subformat::TwoGbMaxExtentSparse => Box::new(SparseImage::create(
            files,
            sectors,
            Layout::Split,
            opts,
            None,
        )?),
        Subformat::MonolithicFlat | Subformat::TwoGbMaxExtentFlat => {
            Box::new(flat::FlatImage::create(files, sectors, subformat, opts)?)
        }
        Subformat::StreamOptimized => Box::new(stream::StreamImage::create(files, sectors, opts)?),
    })
}

/// How a sparse image's extents are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One file, the descriptor embedded (monolithicSparse).
    Monolithic,
    /// A descriptor file and extents of at most 2 GiB (twoGbMaxExtentSparse).
    Split,
    /// A descriptor file and extents cut along the data, tables only where grains are: what
    /// backup points are written as, so that a point costs its data, not its disk's size
    /// (see the `clustered` module). New images only.
    Clustered,
}

impl Layout {
    /// The layout of a sparse subformat (`None` for flat and streamOptimized ones).
    pub fn of(subformat: Subformat) -> Option<Layout> {
        match subformat {
            Subformat::MonolithicSparse => Some(Layout::Monolithic),
            Subformat::TwoGbMaxExtentSparse => Some(Layout::Split),
            _ => None,
        }
    }
}

/// Start writing a sparse VMDK of `size` bytes at `dst` in `layout` (no parent).
pub fn create_sparse(
    dst: &Path,
    size: u64,
    layout: Layout,
    opts: &WriteOptions,
) -> Result<Box<dyn ImageSink>> {
    let sectors = size.div_ceil(SECTOR);
    let files = OutputFiles::new(dst, &opts.policy)?;
    Ok(match layout {
        Layout::Clustered => Box::new(clustered::ClusteredImage::create(
            Box::new(files),
            sectors,
            opts,
            None,
        )?),
        l => Box::new(SparseImage::create(files, sectors, l, opts, None)?),
    })
}

/// Start writing a sparse VMDK of `size` bytes in the clustered layout (no parent) into
/// `out` (local files, or another storage's).
pub fn create_clustered(
    out: Box<dyn ImageOutput>,
    size: u64,
    opts: &WriteOptions,
) -> Result<Box<dyn ImageSink>> {
    Ok(Box::new(clustered::ClusteredImage::create(
        out,
        size.div_ceil(SECTOR),
        opts,
        None,
    )?))
}

/// The files of an image at `dst` on the local file system, for a writer that takes an
/// [`ImageOutput`]: unnamed until complete, published together, extents first.
pub fn local_output(dst: &Path, policy: &OutputPolicy) -> Result<Box<dyn ImageOutput>> {
    Ok(Box::new(OutputFiles::new(dst, policy)?))
}

impl ImageOutput for OutputFiles {
    fn dst(&self) -> &Path {
        &self.dst
    }
    fn exists(&self, name: &Path) -> Result<bool> {
        Ok(std::fs::symlink_metadata(self.dst.with_file_name(name)).is_ok())
    }
    fn create(&mut self, name: Option<&Path>) -> Result<Box<dyn OutputFile>> {
        Ok(Box::new(self.open(name, 0)?))
    }
    fn keep(&mut self, file: Box<dyn SealedOutput>) -> Result<()> {
        self.pending.push(file);
        Ok(())
    }
    fn commit(self: Box<Self>, main: Box<dyn SealedOutput>) -> Result<()> {
        self.publish(main)
    }
}

/// The files of one output image: created unnamed, published together, extents first.
pub(crate) struct OutputFiles {
    dst: PathBuf,
    policy: OutputPolicy,
    /// Extent files, complete and synced, published before the descriptor.
    pending: Vec<Box<dyn SealedOutput>>,
    /// Extent names of the new image.
    names: Vec<PathBuf>,
    /// Files of the image at `dst` that this one replaces, removed once it is in place.
    replaced: Vec<PathBuf>,
}

impl OutputFiles {
    /// Check the destination (an existing one is refused unless the policy replaces it) and
    /// note the files of the image it replaces.
    pub(crate) fn new(dst: &Path, policy: &OutputPolicy) -> Result<Self> {
        if dst.file_name().is_none() {
            return Err(Error::new(ErrorKind::InvalidArgument, "not a file name").with_path(dst));
        }
        policy.protected.check(dst)?;
        let exists = std::fs::symlink_metadata(dst).is_ok();
        if exists && policy.existing == Existing::Refuse {
            return Err(Error::new(ErrorKind::AlreadyExists, "already exists").with_path(dst));
        }
        recover_journal(dst);
        let replaced = if exists {
            old_extent_files(dst, policy)
        } else {
            Vec::new()
        };
        Ok(OutputFiles {
            dst: dst.to_path_buf(),
            policy: policy.clone(),
            pending: Vec::new(),
            names: Vec::new(),
            replaced,
        })
    }

    /// The destination path the user named.
    pub(crate) fn dst(&self) -> &Path {
        &self.dst
    }

    /// Fresh names beside the destination for extents with these suffixes:
    /// `NAME{suffix}.vmdk`, or `NAME-N{suffix}.vmdk` with the smallest N for which no file of
    /// the set exists yet (the image being replaced keeps its files until the switch).
    pub(crate) fn extent_names(&mut self, suffixes: &[String]) -> Vec<PathBuf> {
        let stem = self.dst.file_stem().unwrap_or_default().to_string_lossy();
        let names_for = |n: u32| -> Vec<PathBuf> {
            let infix = if n == 0 {
                String::new()
            } else {
                format!("-{n}")
            };
            suffixes
                .iter()
                .map(|s| PathBuf::from(format!("{stem}{infix}{s}.vmdk")))
                .collect()
        };
        let taken = |names: &[PathBuf]| {
            names
                .iter()
                .any(|n| std::fs::symlink_metadata(self.dst.with_file_name(n)).is_ok())
        };
        let mut n = 0;
        let mut names = names_for(0);
        while taken(&names) && n < 10_000 {
            n += 1;
            names = names_for(n);
        }
        self.names.clone_from(&names);
        names
    }

    /// Open a file beside the destination (`name` relative to its folder, or the destination
    /// itself when `None`) for writing, `size` bytes long.
    pub(crate) fn open(&self, name: Option<&Path>, size: u64) -> Result<SparseWriter> {
        let path = match name {
            Some(n) => self.dst.with_file_name(n),
            None => self.dst.clone(),
        };
        SparseWriter::create(&path, size, &self.policy)
    }

    /// Seal a finished extent file (sync, keep it unnamed) to publish with the rest.
    pub(crate) fn keep(&mut self, file: SparseWriter) -> Result<()> {
        self.pending.push(Box::new(file.seal()?));
        Ok(())
    }

    /// Publish the extents, then `main` (the destination), then remove the files of the image
    /// it replaced. While extents are published and the descriptor is not yet, a journal
    /// beside the destination names them, so that a run killed in that window leaves files
    /// the next run writing the destination knows to be its own and removes.
    pub(crate) fn commit(self, main: SparseWriter) -> Result<()> {
        self.publish(Box::new(main.seal()?))
    }

    /// [`OutputFiles::commit`] of a sealed main file.
    fn publish(self, main: Box<dyn SealedOutput>) -> Result<()> {
        let journal = journal_path(&self.dst);
        if !self.pending.is_empty() {
            let names: String = self
                .pending
                .iter()
                .filter_map(|f| f.destination().file_name())
                .map(|n| format!("{}\n", n.to_string_lossy()))
                .collect();
            vdisk_io::write_file(&journal, names.as_bytes(), &OutputPolicy::replacing())?;
        }
        for f in self.pending {
            f.publish()?;
        }
        main.publish()?;
        let _ = std::fs::remove_file(&journal);
        for old in &self.replaced {
            let reused = old
                .file_name()
                .is_some_and(|n| self.names.iter().any(|m| m.as_os_str() == n));
            if !reused && old != &self.dst {
                let _ = std::fs::remove_file(old);
            }
        }
        Ok(())
    }
}

/// The journal of an image being published at `dst`: `.NAME.vdisk-extents`.
fn journal_path(dst: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(dst.file_name().unwrap_or_default());
    name.push(".vdisk-extents");
    dst.with_file_name(name)
}

/// Finish what a run killed while publishing an image at `dst` left: the extents its journal
/// names that the descriptor now at `dst` does not use are removed, then the journal.
fn recover_journal(dst: &Path) {
    let journal = journal_path(dst);
    let Ok(text) = vdisk_io::read_head(&journal, 1 << 20) else {
        return;
    };
    let in_use: Vec<PathBuf> = vdisk_io::read_head(dst, crate::descriptor::MAX_DESCRIPTOR_FILE)
        .ok()
        .filter(|t| crate::descriptor::looks_like_descriptor(t))
        .and_then(|t| Descriptor::parse(&t).ok())
        .map(|d| d.extents.into_iter().filter_map(|e| e.file).collect())
        .unwrap_or_default();
    for line in String::from_utf8_lossy(&text).lines() {
        let name = Path::new(line);
        // Only plain names beside the destination, as the journal was written.
        if line.is_empty() || name.components().count() != 1 || in_use.iter().any(|u| u == name) {
            continue;
        }
        let path = dst.with_file_name(name);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
            let _ = std::fs::remove_file(path);
        }
    }
    let _ = std::fs::remove_file(journal);
}

/// The extent files the descriptor at `dst` names, when it is a separate descriptor: files in
/// its folder that the image replacing it leaves unused. Inputs of the run are never listed
/// (an image may name another image's extents).
fn old_extent_files(dst: &Path, policy: &OutputPolicy) -> Vec<PathBuf> {
    let Ok(text) = vdisk_io::read_head(dst, crate::descriptor::MAX_DESCRIPTOR_FILE) else {
        return Vec::new();
    };
    if !crate::descriptor::looks_like_descriptor(&text) {
        return Vec::new();
    }
    let Ok(d) = Descriptor::parse(&text) else {
        return Vec::new();
    };
    let dir = dst.parent().unwrap_or(Path::new(""));
    d.extents
        .iter()
        .filter_map(|e| e.file.as_deref())
        .filter_map(|f| resolve_relative(dir, f, false, "extent file").ok())
        .filter(|p| policy.protected.check(p).is_ok())
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .collect()
}

/// A descriptor for a new image.
pub(crate) fn new_descriptor(
    subformat: &str,
    extents: Vec<ExtentLine>,
    sectors: u64,
    opts: &WriteOptions,
    parent: Option<(u32, PathBuf)>,
) -> Descriptor {
    let (parent_cid, parent_hint) = match parent {
        Some((cid, hint)) => (cid, Some(hint)),
        None => (NO_PARENT_CID, None),
    };
    Descriptor {
        version: Some(1),
        cid: Some(opts.cid.unwrap_or_else(new_cid)),
        parent_cid: Some(parent_cid),
        create_type: Some(subformat.to_string()),
        parent_hint,
        extents,
        ddb: ddb_for(sectors, opts.adapter),
        encoding: None,
    }
}

/// An extent line of a written image.
pub(crate) fn extent_line(sectors: u64, kind: ExtentType, file: PathBuf) -> ExtentLine {
    ExtentLine {
        access: Access::Rw,
        sectors,
        kind,
        file: Some(file),
        offset: 0,
    }
}

/// An extent file being written; finishing it yields the file to seal.
pub(crate) trait ExtentFile: Sized {
    /// Write what is left (tables, header) and hand back the file.
    fn finish_file(self) -> Result<SparseWriter>;
}

impl ExtentFile for SparseWriter {
    fn finish_file(self) -> Result<SparseWriter> {
        Ok(self)
    }
}

/// The extent files of an image, written one at a time in disk order: only the current one
/// is open; earlier ones are finished and sealed, later ones not yet created. An image of any
/// size holds one file descriptor at a time.
pub(crate) struct ExtentCursor<W> {
    /// The extent being written and its index.
    current: Option<(u64, W)>,
    /// Extents before this index are finished.
    done: u64,
}

impl<W: ExtentFile> ExtentCursor<W> {
    pub(crate) fn new() -> Self {
        ExtentCursor {
            current: None,
            done: 0,
        }
    }

    /// Finish and seal into `files` every extent before `end`; `open` creates those that got
    /// no data, so they exist (empty) too.
    pub(crate) fn finish_before(
        &mut self,
        end: u64,
        files: &mut OutputFiles,
        open: &dyn Fn(&OutputFiles, u64) -> Result<W>,
    ) -> Result<()> {
        while self.done < end {
            let w = match self.current.take() {
                Some((i, w)) if i == self.done => w,
                other => {
                    self.current = other;
                    open(files, self.done)?
                }
            };
            files.keep(w.finish_file()?)?;
            self.done += 1;
        }
        Ok(())
    }

    /// The writer of extent `index` (extents come in increasing order), finishing those
    /// before it.
    pub(crate) fn get(
        &mut self,
        index: u64,
        files: &mut OutputFiles,
        open: &dyn Fn(&OutputFiles, u64) -> Result<W>,
    ) -> Result<&mut W> {
        if index < self.done {
            return Err(Error::invalid(
                "extents must be written in increasing order",
            ));
        }
        self.finish_before(index, files, open)?;
        if !matches!(&self.current, Some((i, _)) if *i == index) {
            self.current = Some((index, open(files, index)?));
        }
        match &mut self.current {
            Some((_, w)) => Ok(w),
            None => Err(Error::invalid("no extent open")),
        }
    }

    /// The open extent, if any, taken out of the cursor.
    pub(crate) fn take(&mut self) -> Option<W> {
        self.current.take().map(|(_, w)| w)
    }
}
