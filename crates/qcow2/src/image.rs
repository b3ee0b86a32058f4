//! Opening a qcow2 layer: the header checked, the active L1 table loaded, the external data
//! file opened (its name confined to the image's folder), snapshots and bitmaps listed.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use byteorder::{BigEndian, ByteOrder};
use vdisk_core::{Error, Result};
use vdisk_io::{Backing, Bytes, FileStore, OpenContext};

use crate::bitmap::{read_directory, Bitmaps};
use crate::header::{Header, MAX_CLUSTER_BITS};
use crate::snapshot::{read_snapshots, Snapshot};
use crate::tables::{Geometry, Mapping, OFFSET_MASK};

/// A qcow2 image file (one layer of a chain: its backing file is only named).
///
/// Reads are positional and take `&self`: tables are read from the file's memory map where
/// there is one, so any number of threads read at once.
#[derive(Debug)]
pub struct Qcow2Image {
    pub(crate) bytes: Bytes,
    /// The external data file, when the image keeps its data in one.
    pub(crate) data: Option<Bytes>,
    pub(crate) header: Header,
    pub(crate) geo: Geometry,
    /// The active L1 table, as many entries as the disk needs.
    pub(crate) l1: Vec<u64>,
    pub(crate) backing: Option<Backing>,
    pub(crate) snapshots: Vec<Snapshot>,
    /// Bytes the snapshot table takes.
    pub(crate) snapshot_table_len: u64,
    pub(crate) bitmaps: Bitmaps,
}

/// Whether a file starting with `head` is a qcow image: the magic "QFI\xfb", whatever the
/// version, so that a version vdisk does not read (the old qcow, version 1) is refused by
/// name when opened rather than read as a raw disk.
pub fn probe(head: &[u8]) -> bool {
    head.len() >= 4 && head[..4] == *b"QFI\xfb"
}

impl Qcow2Image {
    /// Open `path` from the local file system; an external data file is looked for beside
    /// it, and refused when its name leaves the image's folder.
    pub fn open(path: &Path) -> Result<Self> {
        let store = vdisk_io::FsStore::default();
        let bytes = store.load(path)?;
        Self::from_bytes(
            bytes,
            &OpenContext {
                files: &store,
                path,
                allow_outside_paths: false,
            },
        )
    }

    /// Open the image whose bytes are `bytes`.
    pub fn from_bytes(bytes: Bytes, cx: &OpenContext<'_>) -> Result<Self> {
        let path = bytes.path().to_path_buf();
        Self::open_inner(bytes, cx).map_err(|e| e.with_path(path))
    }

    fn open_inner(bytes: Bytes, cx: &OpenContext<'_>) -> Result<Self> {
        let len = bytes.len();
        // The header and its extensions lie in the first cluster (at most 2 MiB).
        let head_len = len.min(1 << MAX_CLUSTER_BITS) as usize;
        let head: Cow<'_, [u8]> = match bytes.slice() {
            Some(s) => Cow::Borrowed(&s[..head_len]),
            None => {
                let mut first = vec![0u8; len.min(4096) as usize];
                bytes.read_at(&mut first, 0)?;
                let bits = if first.len() >= 24 {
                    BigEndian::read_u32(&first[20..]).min(MAX_CLUSTER_BITS)
                } else {
                    0
                };
                let want = len.min(1 << bits) as usize;
                if want > first.len() {
                    first.resize(want, 0);
                    bytes.read_at(&mut first, 0)?;
                }
                Cow::Owned(first)
            }
        };
        let header = Header::parse(&head, len)?;
        drop(head);
        let geo = Geometry::of(&header);

        let n = header.l1_entries_needed() as usize;
        // Bounded by the file: the header checked the table lies inside it.
        let mut raw_l1 = vec![0u8; n * 8];
        bytes.read_at(&mut raw_l1, header.raw.l1_table_offset)?;
        let l1 = raw_l1
            .chunks_exact(8)
            .map(BigEndian::read_u64)
            .collect::<Vec<_>>();

        let data = match &header.data_file {
            Some(name) => {
                let dir = cx.path.parent().unwrap_or(Path::new(""));
                let resolved = vdisk_io::resolve_relative(
                    dir,
                    name,
                    cx.allow_outside_paths,
                    "external data file",
                )?;
                Some(cx.files.load(&resolved)?)
            }
            None => None,
        };
        let backing = header.backing_file.as_ref().map(|name| Backing {
            names: vec![name.clone()],
            format: header.backing_format.clone(),
            link: None,
        });
        let (snapshots, snapshot_table_len) = read_snapshots(&bytes, &header)?;
        let bitmaps = read_directory(&bytes, &header);
        Ok(Qcow2Image {
            bytes,
            data,
            header,
            geo,
            l1,
            backing,
            snapshots,
            snapshot_table_len,
            bitmaps,
        })
    }

    /// The checked header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The internal snapshots.
    pub fn snapshots(&self) -> &[Snapshot] {
        &self.snapshots
    }

    /// The external data file's path as written, if any.
    pub fn data_file(&self) -> Option<&PathBuf> {
        self.header.data_file.as_ref()
    }

    /// The file guest data is read from: the external data file, or the image itself.
    pub(crate) fn data_bytes(&self) -> &Bytes {
        self.data.as_ref().unwrap_or(&self.bytes)
    }

    /// The L2 table of L1 entry `index`, or `None` when the entry maps nothing. Borrowed
    /// from the memory map when there is one.
    pub(crate) fn l2_table(&self, index: u64) -> Result<Option<Cow<'_, [u8]>>> {
        let Some(&entry) = self.l1.get(index as usize) else {
            return Ok(None);
        };
        let off = entry & OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        let cs = self.geo.cluster_size;
        let len = self.bytes.len();
        if !off.is_multiple_of(cs) {
            return Err(Error::corrupt(format!(
                "L1 entry {index} points at offset {off:#x}, not a cluster boundary"
            )));
        }
        if off.checked_add(cs).is_none_or(|end| end > len) {
            return Err(Error::corrupt(format!(
                "L2 table of L1 entry {index} (offset {off:#x}) runs past the end of the file"
            )));
        }
        Ok(Some(match self.bytes.slice() {
            Some(s) => Cow::Borrowed(&s[off as usize..(off + cs) as usize]),
            None => {
                let mut t = vec![0u8; cs as usize];
                self.bytes.read_at(&mut t, off)?;
                Cow::Owned(t)
            }
        }))
    }

    /// Walk `[offset, offset + len)` of the disk (inside it) as runs of one mapping each, in
    /// order: touching unallocated or zero runs are joined, and so are data runs that are
    /// contiguous in the file (so that reads are few and large). Compressed runs are handed
    /// one cluster (or part of one) at a time.
    pub(crate) fn walk(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(u64, u64, Mapping) -> Result<()>,
    ) -> Result<()> {
        let end = offset + len;
        let geo = &self.geo;
        let cs = geo.cluster_size;
        let cov = geo.l2_coverage();
        let mut pending: Option<(u64, u64, Mapping)> = None;
        let mut emit = |start: u64, len: u64, m: Mapping| -> Result<()> {
            if let Some((ps, pl, pm)) = &mut pending {
                let joins = match (*pm, m) {
                    (Mapping::Unallocated, Mapping::Unallocated)
                    | (Mapping::Zero, Mapping::Zero) => true,
                    (Mapping::Data(a), Mapping::Data(b)) => a + *pl == b,
                    _ => false,
                };
                if joins && *ps + *pl == start {
                    *pl += len;
                    return Ok(());
                }
            }
            if let Some((s, l, m)) = pending.replace((start, len, m)) {
                f(s, l, m)?;
            }
            Ok(())
        };
        let mut pos = offset;
        while pos < end {
            let index = pos / cov;
            let table_end = end.min((index + 1).saturating_mul(cov));
            match self.l2_table(index)? {
                None => emit(pos, table_end - pos, Mapping::Unallocated)?,
                Some(table) => {
                    let mut p = pos;
                    while p < table_end {
                        let cstart = p & !(cs - 1);
                        let cend = table_end.min(cstart + cs);
                        let i = ((cstart % cov) / cs) as usize;
                        let (e, bitmap) = geo.raw_entry(&table, i);
                        let m = geo.decode(e, bitmap).map_err(|err| {
                            Error::corrupt(format!(
                                "{} (guest offset {cstart}, L2 table of L1 entry {index})",
                                err.message()
                            ))
                        })?;
                        m.runs(geo, p - cstart, cend - cstart, |s, l, m| {
                            emit(cstart + s, l, m)
                        })?;
                        p = cend;
                    }
                }
            }
            pos = table_end;
        }
        if let Some((s, l, m)) = pending {
            f(s, l, m)?;
        }
        Ok(())
    }
}
