//! What a format crate gives the registry: a [`Format`] driver that probes, opens one
//! [`Layer`] (a file set without its backing file) and creates outputs.
//!
//! Formats know nothing of each other: a layer only *names* its backing file
//! ([`Layer::backing`]); the registry (`vdisk-image`) resolves that name, confines it to the
//! layer's folder, probes the file, opens it with whichever driver recognises it, checks the
//! link ([`Layer::link_id`]), and reads the chain. Adding a format is a crate with a
//! `Format` value and one registration line in the registry.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use vdisk_core::{DiskImage, Error, ErrorKind, Finding, ImageSink, Result};

use crate::bytes::{Bytes, FileStore};
use crate::files::ImageOutput;
use crate::output::OutputPolicy;

/// The identity of a layer as its children record it, so that a child is never read over a
/// parent that changed after the child was made (a VMDK's CID and parentCID). Compared only
/// when the parent offers an identity of the same `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LinkId {
    /// What kind of identity (`"vmdk-cid"`): identities of different kinds are not compared.
    pub kind: &'static str,
    /// The value, as the format prints it (`"a1b2c3d4"`).
    pub value: String,
}

/// The backing file (parent) a layer names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backing {
    /// The names as written in the layer, most preferred first: relative names resolve
    /// against the layer's folder; absolute names, and names that leave it, are refused
    /// unless outside paths are allowed. The first that exists is opened.
    pub names: Vec<PathBuf>,
    /// The backing file's format, when the layer records it (qcow2's backing format).
    pub format: Option<String>,
    /// The parent's identity as the layer records it.
    pub link: Option<LinkId>,
}

/// A persistent dirty bitmap an image keeps (qcow2's bitmaps extension): QEMU's
/// changed-block tracking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapInfo {
    /// Its name.
    pub name: String,
    /// Bytes of disk per bit.
    pub granularity: u64,
    /// Whether QEMU records writes in it.
    pub enabled: bool,
    /// Whether a QEMU process has it open (a VM runs on the image): its contents on disk are
    /// stale until QEMU closes it.
    pub in_use: bool,
}

/// Byte ranges of one file of a layer that hold metadata (headers, tables): checksummed by
/// repositories so that any flipped byte of metadata is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataRegion {
    /// The file, as the layer named it when opening it.
    pub file: PathBuf,
    /// `(offset, length)` ranges, sorted.
    pub ranges: Vec<(u64, u64)>,
}

/// What `vdisk info` shows of one layer, beyond what every image has (path, format, sizes).
#[derive(Debug, Clone, Default)]
pub struct LayerInfo {
    /// The format's details of this file, in its entry of `info --json`'s `chain` (after
    /// `path`, `format`, `virtual_size` and `disk_usage`, which the registry adds).
    pub fields: Map<String, Value>,
    /// Fields the whole image shows at the top of `info --json` when this layer is the one
    /// opened (subformat, cluster size, header version, ...).
    pub headline: Map<String, Value>,
    /// Lines of text output for this file (`key: value`), without indentation.
    pub text: Vec<String>,
}

/// One file set of an image, without its backing file: what a [`Format`] opens.
///
/// As a [`DiskImage`], a layer reads its own data: ranges it does not store read as zero and
/// are [`vdisk_core::Allocation::Unallocated`] in its map (the registry reads them from the
/// backing file), ranges it stores as zero are [`vdisk_core::Allocation::Zero`] (they mask
/// the backing file). Its size is its own virtual size.
pub trait Layer: DiskImage {
    /// The file this layer was opened from.
    fn path(&self) -> &Path;

    /// The backing file this layer names, if any.
    fn backing(&self) -> Option<&Backing> {
        None
    }

    /// This layer's identity, as a child layer would record it.
    fn link_id(&self) -> Option<LinkId> {
        None
    }

    /// Bytes this layer's files take on disk.
    fn disk_usage(&self) -> u64;

    /// The details `vdisk info` shows.
    fn info(&self) -> LayerInfo {
        LayerInfo::default()
    }

    /// Metadata consistency findings (`vdisk check`); none for a format without metadata.
    fn check(&self) -> Vec<Finding> {
        Vec::new()
    }

    /// Where this layer's metadata lies, file by file.
    fn metadata(&self) -> Vec<MetadataRegion> {
        Vec::new()
    }

    /// The persistent dirty bitmaps the layer keeps.
    fn bitmaps(&self) -> Vec<BitmapInfo> {
        Vec::new()
    }

    /// Hand `dirty` the ranges `(offset, length)` that the bitmap `name` marks, in order;
    /// returns its granularity. A bitmap another program has open (in use) is refused.
    fn read_bitmap(
        &self,
        name: &str,
        dirty: &mut dyn FnMut(u64, u64) -> Result<()>,
    ) -> Result<u64> {
        let _ = dirty;
        Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "has no bitmap \"{name}\" (a {} image keeps no dirty bitmaps)",
                self.format_name()
            ),
        )
        .with_path(self.path()))
    }
}

/// What a probe looks at: the first and last bytes of a file.
#[derive(Debug, Clone, Copy)]
pub struct ProbeBytes<'a> {
    /// The first [`PROBE_HEAD`] bytes (fewer if the file is shorter).
    pub head: &'a [u8],
    /// The last [`PROBE_TAIL`] bytes (fewer if the file is shorter).
    pub tail: &'a [u8],
    /// The file's length.
    pub len: u64,
}

/// Bytes at the start of a file a probe is given.
pub const PROBE_HEAD: usize = 4096;
/// Bytes at the end of a file a probe is given (a fixed VHD's footer).
pub const PROBE_TAIL: usize = 512;

/// Where and how a layer is opened.
pub struct OpenContext<'a> {
    /// Where the layer's other files come from (extents, data files).
    pub files: &'a dyn FileStore,
    /// The path of the file being opened: messages name it, and names inside it resolve
    /// against its folder.
    pub path: &'a Path,
    /// Follow names inside the layer that are absolute or leave its folder.
    pub allow_outside_paths: bool,
}

/// How an output is created.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// What happens to an existing destination, and which files it must never be.
    pub policy: OutputPolicy,
    /// The format's variant (a VMDK subformat, a VHD's `fixed` or `dynamic`).
    pub subformat: Option<String>,
    /// Compress where the format can (qcow2: zstd clusters).
    pub compress: bool,
    /// The cluster, grain or block size, where the format lets it be chosen.
    pub cluster_size: Option<u64>,
    /// The adapter type a VMDK records.
    pub adapter: Option<String>,
    /// The identity the new image gets (a VMDK CID), when it must keep an old one.
    pub link_id: Option<LinkId>,
}

/// The parent of a delta being created.
#[derive(Clone, Copy)]
pub struct DeltaParent<'a> {
    /// How the delta names it: relative to the delta's folder where possible.
    pub name: &'a Path,
    /// Its format's name.
    pub format: &'static str,
    /// Its top layer, opened (its identity and size).
    pub layer: &'a dyn Layer,
}

/// A format vdisk reads (and perhaps writes): the driver the registry holds.
///
/// Sinks from [`Format::create`] store what they are given; blocks never given read as zero.
/// Sinks from [`Format::create_delta`] store *every* block they are given, all-zero ones as
/// explicit zeros that mask the parent; blocks never given read from the parent.
pub trait Format: Send + Sync {
    /// The name users type after `-f` and `-O` (`"qcow2"`).
    fn name(&self) -> &'static str;

    /// Other names it answers to (`"vpc"` for VHD).
    fn aliases(&self) -> &'static [&'static str] {
        &[]
    }

    /// File extensions, without the dot, that select it as an output format.
    fn extensions(&self) -> &'static [&'static str] {
        &[]
    }

    /// Whether the bytes are this format's.
    fn probe(&self, bytes: &ProbeBytes<'_>) -> bool;

    /// Open the layer whose main file is `bytes`.
    fn open(&self, bytes: Bytes, cx: &OpenContext<'_>) -> Result<Box<dyn Layer>>;

    /// Other files the main file names as parts of itself (a VMDK descriptor's extents), so
    /// that an archive does not list them as disks of their own.
    fn parts(&self, main: &[u8]) -> Vec<PathBuf> {
        let _ = main;
        Vec::new()
    }

    /// The variants [`CreateOptions::subformat`] may name.
    fn subformats(&self) -> &'static [&'static str] {
        &[]
    }

    /// Whether vdisk writes this format.
    fn writable(&self) -> bool {
        false
    }

    /// Start writing an image of `size` bytes at `dst`.
    fn create(&self, dst: &Path, size: u64, opts: &CreateOptions) -> Result<Box<dyn ImageSink>> {
        let _ = (size, opts);
        Err(self.not_writable(dst))
    }

    /// Start writing an image of `size` bytes into `out` (a repository's files).
    fn create_in(
        &self,
        out: Box<dyn ImageOutput>,
        size: u64,
        opts: &CreateOptions,
    ) -> Result<Box<dyn ImageSink>> {
        let _ = (size, opts);
        Err(self.not_writable(out.dst()))
    }

    /// Start writing at `dst` a delta of `size` bytes on `parent`.
    fn create_delta(
        &self,
        dst: &Path,
        parent: &DeltaParent<'_>,
        size: u64,
        opts: &CreateOptions,
    ) -> Result<Box<dyn ImageSink>> {
        let _ = (parent, size, opts);
        Err(Error::new(
            ErrorKind::Unsupported,
            format!("vdisk does not write {} deltas", self.name()),
        )
        .with_path(dst))
    }

    /// Start writing into `out` a delta of `size` bytes on `parent` (a repository's files).
    fn create_delta_in(
        &self,
        out: Box<dyn ImageOutput>,
        parent: &DeltaParent<'_>,
        size: u64,
        opts: &CreateOptions,
    ) -> Result<Box<dyn ImageSink>> {
        let _ = (parent, size, opts);
        Err(Error::new(
            ErrorKind::Unsupported,
            format!("vdisk does not write {} deltas", self.name()),
        )
        .with_path(out.dst()))
    }

    /// The main file `main` of a layer, naming `parent` as its backing file instead of the
    /// one it names (`qemu-img rebase -u`): the new bytes of the main file, for a format
    /// whose backing name lives in a small main file of its own (a VMDK descriptor).
    fn rebase(&self, main: &[u8], parent: &Path) -> Result<Vec<u8>> {
        let _ = (main, parent);
        Err(Error::new(
            ErrorKind::Unsupported,
            format!("vdisk cannot rename the parent of a {} image", self.name()),
        ))
    }

    /// The error for a format vdisk reads but does not write.
    fn not_writable(&self, dst: &Path) -> Error {
        Error::new(
            ErrorKind::Unsupported,
            format!("vdisk reads {} images but does not write them", self.name()),
        )
        .with_path(dst)
    }
}
