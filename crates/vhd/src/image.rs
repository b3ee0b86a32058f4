//! Opening a VHD: finding the footer in use, the dynamic header, the block allocation table
//! and a differencing disk's parent.

use std::path::{Path, PathBuf};

use vdisk_core::{Error, Result};
use vdisk_io::{resolve_relative, Backing, Bytes, FileStore, FsStore, LinkId};

use crate::bat::BlockAllocationTable;
use crate::footer::{footer_at, footer_at_end, DiskType, Footer, RawFooter, FOOTER_SIZE};
use crate::header::{DynamicHeader, ParentLocator, Platform, RawDynamicHeader, HEADER_SIZE};
use crate::locator::{self, LocatorName, MAX_LOCATOR_BYTES};
use crate::uuid::Uuid;

/// The kind of identity a VHD's unique id is, for [`LinkId`]s.
pub const LINK_KIND: &str = "vhd-uuid";

/// A VHD file opened for reading: a fixed disk (raw data and a footer), a dynamic disk, or a
/// differencing disk (read as one layer: what it does not store is unallocated, and the
/// registry reads it from the parent it names).
///
/// ```no_run
/// use vdisk_core::DiskImage;
/// let img = vdisk_vhd::VhdImage::open(std::path::Path::new("disk.vhd"))?;
/// let mut first = vec![0u8; 512];
/// img.read_at(&mut first, 0)?;
/// println!("{} bytes, {}", img.size(), img.disk_type().name());
/// # Ok::<(), vdisk_core::Error>(())
/// ```
#[derive(Debug)]
pub struct VhdImage {
    pub(crate) bytes: Bytes,
    /// The footer in use.
    pub(crate) footer: Footer,
    /// Where it was read.
    pub(crate) footer_offset: u64,
    /// What was found at offset 0 and at the end, for the check.
    pub(crate) copies: FooterCopies,
    pub(crate) layout: Layout,
    pub(crate) parent: Option<ParentLink>,
    pub(crate) backing: Option<Backing>,
}

/// The footer copies found in the file.
#[derive(Debug, Clone, Default)]
pub(crate) struct FooterCopies {
    /// The 512 bytes at offset 0, when they have the cookie (checksum unchecked).
    pub(crate) head: Option<RawFooter>,
    /// Whether the head copy's checksum is right.
    pub(crate) head_ok: bool,
    /// The footer at the end, when it has the cookie and a right checksum, and its length
    /// (512, or 511 in images of Virtual PC before 2004).
    pub(crate) tail: Option<(RawFooter, usize)>,
}

/// How the disk's data is laid out in the file.
#[derive(Debug)]
pub(crate) enum Layout {
    /// Raw data from offset 0; `data_len` bytes of it are in the file before the footer.
    Fixed { data_len: u64 },
    /// Blocks through a block allocation table.
    Sparse(Box<Sparse>),
}

/// A dynamic or differencing disk's structures.
#[derive(Debug)]
pub(crate) struct Sparse {
    pub(crate) header: DynamicHeader,
    /// Where the dynamic header is.
    pub(crate) header_offset: u64,
    /// Whether its checksum is right.
    pub(crate) header_checksum_ok: bool,
    pub(crate) bat: BlockAllocationTable,
}

/// What a differencing disk records of its parent.
#[derive(Debug, Clone)]
pub struct ParentLink {
    /// The parent's unique id.
    pub unique_id: Uuid,
    /// The parent's modification time, seconds since 2000-01-01 UTC.
    pub timestamp: u32,
    /// The parent's file name, from the dynamic header.
    pub name: String,
    /// The locators in use, decoded where they could be.
    pub locators: Vec<(ParentLocator, Option<LocatorName>)>,
}

impl VhdImage {
    /// Open the VHD at `path` (memory-mapped).
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_bytes(FsStore::default().load(path)?)
    }

    /// Open the VHD whose bytes are `bytes`. A differencing disk's [`Layer::backing`]
    /// names only the parent's names that stay in the disk's folder (see
    /// [`VhdImage::from_bytes_with`]).
    ///
    /// [`Layer::backing`]: vdisk_io::Layer::backing
    pub fn from_bytes(bytes: Bytes) -> Result<Self> {
        Self::from_bytes_with(bytes, false)
    }

    /// Open the VHD whose bytes are `bytes`; when `allow_outside_paths` is false, a
    /// differencing disk's backing names leave out the absolute names and those that leave
    /// the disk's folder (a Hyper-V disk names its parent both relatively and absolutely:
    /// the relative name is the one to follow), unless it has no other.
    pub fn from_bytes_with(bytes: Bytes, allow_outside_paths: bool) -> Result<Self> {
        let path = bytes.path().to_path_buf();
        open(bytes, allow_outside_paths).map_err(|e| e.with_path(path))
    }

    /// The disk type.
    pub fn disk_type(&self) -> DiskType {
        self.footer.disk_type
    }

    /// The footer in use (the copy at offset 0 for dynamic and differencing disks, as qemu
    /// reads them; the one at the end if that copy is damaged).
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// The dynamic header of a dynamic or differencing disk.
    pub fn dynamic_header(&self) -> Option<&DynamicHeader> {
        match &self.layout {
            Layout::Sparse(s) => Some(&s.header),
            Layout::Fixed { .. } => None,
        }
    }

    /// What a differencing disk records of its parent.
    pub fn parent(&self) -> Option<&ParentLink> {
        self.parent.as_ref()
    }

    /// The disk's identity as children record it.
    pub fn unique_id(&self) -> Uuid {
        self.footer.raw.unique_id
    }

    /// The identity children record, as a [`LinkId`].
    pub fn link(&self) -> LinkId {
        LinkId {
            kind: LINK_KIND,
            value: self.unique_id().to_string(),
        }
    }

    /// The bytes of the file.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

fn open(bytes: Bytes, allow_outside_paths: bool) -> Result<VhdImage> {
    let len = bytes.len();
    if len < crate::footer::OLD_FOOTER_SIZE as u64 {
        return Err(Error::invalid(format!(
            "too small to be a VHD ({len} bytes; a footer takes 512)"
        )));
    }
    let mut head_bytes = [0u8; FOOTER_SIZE];
    bytes.read_at(&mut head_bytes, 0)?;
    let mut tail_bytes = [0u8; FOOTER_SIZE];
    let tail_at = len.saturating_sub(FOOTER_SIZE as u64);
    bytes.read_at(&mut tail_bytes[..(len - tail_at) as usize], tail_at)?;
    let tail_bytes = &tail_bytes[..(len - tail_at) as usize];

    let head = RawFooter::parse(&head_bytes).ok();
    let head_ok = head.is_some() && footer_at(&head_bytes).is_some();
    let tail = footer_at_end(tail_bytes);
    let copies = FooterCopies {
        head,
        head_ok,
        tail,
    };
    let sparse_type = |f: &RawFooter| matches!(f.disk_type, 3 | 4);

    // A fixed footer at the end makes a fixed disk, whatever its data starts with (a disk
    // holding a VHD file at sector 0 starts with a footer too). Otherwise the copy at
    // offset 0 is the one qemu reads; the end's copy stands in when it is damaged.
    let (raw, footer_offset) = match (&copies.tail, &copies.head) {
        (Some((t, n)), _) if t.disk_type == 2 => (*t, len - *n as u64),
        (_, Some(h)) if head_ok && sparse_type(h) => (*h, 0),
        (Some((t, n)), _) if sparse_type(t) => (*t, len - *n as u64),
        (_, Some(h)) if !head_ok => {
            return Err(Error::corrupt(format!(
                "VHD footer at offset 0 has checksum {:#010x}, its fields call for {:#010x}, \
                 and there is no intact copy at the end",
                h.checksum,
                h.computed_checksum()
            )))
        }
        (_, Some(h)) if h.disk_type == 2 => {
            return Err(Error::corrupt(
                "VHD footer at offset 0 says a fixed disk, whose footer belongs at the end, \
                 and there is none at the end",
            ))
        }
        (_, Some(h)) => (*h, 0),
        (Some((t, n)), None) => (*t, len - *n as u64),
        (None, None) => {
            return Err(Error::invalid(
                "not a VHD: no \"conectix\" footer at the start or at the end",
            ))
        }
    };
    let footer = raw.validate()?;

    let (layout, parent) = match footer.disk_type {
        DiskType::Fixed => (
            Layout::Fixed {
                data_len: footer_offset,
            },
            None,
        ),
        DiskType::Dynamic | DiskType::Differencing => {
            let (sparse, parent) = open_sparse(&bytes, &footer)?;
            (Layout::Sparse(Box::new(sparse)), parent)
        }
    };
    let backing = parent.as_ref().map(|p| backing_of(p, allow_outside_paths));
    Ok(VhdImage {
        bytes,
        footer,
        footer_offset,
        copies,
        layout,
        parent,
        backing,
    })
}

fn open_sparse(bytes: &Bytes, footer: &Footer) -> Result<(Sparse, Option<ParentLink>)> {
    let len = bytes.len();
    let at = footer.raw.data_offset;
    match at.checked_add(HEADER_SIZE as u64) {
        Some(end) if end <= len => {}
        _ => {
            return Err(Error::corrupt(format!(
                "VHD dynamic header at offset {at} (the footer's data offset) is past the end \
                 of the file ({len} bytes)"
            )))
        }
    }
    let mut hb = [0u8; HEADER_SIZE];
    bytes.read_at(&mut hb, at)?;
    let raw = RawDynamicHeader::parse(&hb).map_err(|e| e.at(at))?;
    let header_checksum_ok = raw.checksum == raw.computed_checksum();
    let header = raw.validate(footer.size, len).map_err(|e| e.at(at))?;
    let bat = BlockAllocationTable::load(bytes, raw.table_offset, header.blocks)?;
    let parent = (footer.disk_type == DiskType::Differencing).then(|| parent_link(bytes, &raw));
    Ok((
        Sparse {
            header,
            header_offset: at,
            header_checksum_ok,
            bat,
        },
        parent,
    ))
}

/// Decode what a differencing header says of the parent; locators whose data lies outside
/// the file, or is longer than any path, are kept undecoded (the check reports them).
fn parent_link(bytes: &Bytes, raw: &RawDynamicHeader) -> ParentLink {
    let len = bytes.len();
    let locators = raw
        .locators
        .iter()
        .filter(|l| l.platform() != Platform::None)
        .map(|l| {
            let inside = l
                .data_offset
                .checked_add(u64::from(l.data_length))
                .is_some_and(|end| end <= len);
            let name = (inside && l.data_length <= MAX_LOCATOR_BYTES)
                .then(|| {
                    let mut data = vec![0u8; l.data_length as usize];
                    bytes.read_at(&mut data, l.data_offset).ok()?;
                    locator::decode(l, &data)
                })
                .flatten();
            (*l, name)
        })
        .collect();
    ParentLink {
        unique_id: raw.parent_unique_id,
        timestamp: raw.parent_timestamp,
        name: raw.parent_name(),
        locators,
    }
}

/// The names a differencing disk gives its parent, relative ones first: the relative
/// locators, the parent's file name, then absolute locators: only those that stay in the
/// disk's folder unless outside paths are allowed (or no name does).
fn backing_of(p: &ParentLink, allow_outside_paths: bool) -> Backing {
    let mut names: Vec<PathBuf> = Vec::new();
    let mut add = |path: Option<PathBuf>| {
        if let Some(path) = path {
            if !path.as_os_str().is_empty() && !names.contains(&path) {
                names.push(path);
            }
        }
    };
    let by = |platforms: &[Platform]| {
        p.locators
            .iter()
            .filter_map(|(_, n)| n.as_ref())
            .filter(|n| platforms.contains(&n.platform))
            .filter_map(|n| n.path.clone())
            .collect::<Vec<_>>()
    };
    for path in by(&[Platform::W2ru, Platform::Wi2r]) {
        add(Some(path));
    }
    add(locator::local_path(&p.name));
    for path in by(&[Platform::W2ku, Platform::Wi2k, Platform::MacX]) {
        add(Some(path));
    }
    let inside = |n: &PathBuf| resolve_relative(Path::new("."), n, false, "parent").is_ok();
    if !allow_outside_paths && names.iter().any(inside) {
        names.retain(inside);
    }
    Backing {
        names,
        format: None,
        link: (!p.unique_id.is_nil()).then(|| LinkId {
            kind: LINK_KIND,
            value: p.unique_id.to_string(),
        }),
    }
}
