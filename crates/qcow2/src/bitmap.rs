//! Persistent dirty bitmaps (QEMU's changed-block tracking): the bitmap directory the bitmaps
//! extension points at, and each bitmap's one-level table of data clusters.
//!
//! Bit `n` of a bitmap (byte `n / 8`, bit `n % 8` counted from the least significant) covers
//! bytes `[n * granularity, (n + 1) * granularity)` of the disk.

use byteorder::{BigEndian, ByteOrder};
use vdisk_core::{Error, ErrorKind, Result};
use vdisk_io::Bytes;

use crate::header::{autoclear, Header};
use crate::tables::OFFSET_MASK;

/// qemu's limit on bitmaps per image.
pub const MAX_BITMAPS: u32 = 65535;
/// qemu's limit on the directory: 1 KiB per bitmap.
const MAX_DIRECTORY: u64 = 1024 * MAX_BITMAPS as u64;
/// Bytes of a directory entry before its extra data and name.
const ENTRY_FIXED: usize = 24;

/// Flag bits of a directory entry.
pub mod flags {
    /// QEMU has the bitmap open: what is on disk is stale.
    pub const IN_USE: u32 = 1 << 0;
    /// The bitmap records writes (enabled).
    pub const AUTO: u32 = 1 << 1;
    /// Unknown extra data may be ignored.
    pub const EXTRA_DATA_COMPATIBLE: u32 = 1 << 2;
}

/// One bitmap directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapEntry {
    /// Its name (unique in the image).
    pub name: String,
    /// Where its bitmap table is.
    pub table_offset: u64,
    /// Entries of the table.
    pub table_size: u32,
    /// Flag bits: 0 in use, 1 auto (enabled), 2 extra data compatible.
    pub flags: u32,
    /// 1: dirty tracking bitmap.
    pub kind: u8,
    /// log2 of the bytes of disk per bit.
    pub granularity_bits: u8,
    /// Bytes of type-specific extra data.
    pub extra_data_size: u32,
}

impl BitmapEntry {
    /// Bytes of disk per bit, when the granularity is one qemu writes (512 B to 2 GiB).
    pub fn granularity(&self) -> Option<u64> {
        (9..=31)
            .contains(&self.granularity_bits)
            .then(|| 1u64 << self.granularity_bits)
    }

    /// Whether QEMU has it open.
    pub fn in_use(&self) -> bool {
        self.flags & flags::IN_USE != 0
    }

    /// Whether it records writes.
    pub fn enabled(&self) -> bool {
        self.flags & flags::AUTO != 0
    }

    /// Flag names as qemu-img prints them.
    pub fn flag_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.in_use() {
            v.push("in-use");
        }
        if self.enabled() {
            v.push("auto");
        }
        v
    }
}

/// The bitmaps of an image, or why they cannot be used (a damaged directory does not stop
/// the disk from being read).
#[derive(Debug, Clone)]
pub enum Bitmaps {
    /// No bitmaps extension.
    None,
    /// The directory, read.
    Directory(Vec<BitmapEntry>),
    /// The extension is there but cannot be used.
    Unusable(String),
}

impl Bitmaps {
    /// The entries, when the directory is usable.
    pub fn entries(&self) -> &[BitmapEntry] {
        match self {
            Bitmaps::Directory(v) => v,
            _ => &[],
        }
    }
}

/// Read the bitmap directory the header's bitmaps extension points at.
pub fn read_directory(bytes: &Bytes, h: &Header) -> Bitmaps {
    let Some(ext) = h.bitmaps else {
        return Bitmaps::None;
    };
    if h.raw.autoclear_features & autoclear::BITMAPS == 0 {
        return Bitmaps::Unusable(
            "the bitmaps extension is inconsistent (its autoclear bit is clear: a program that \
             does not know bitmaps wrote to the image)"
                .into(),
        );
    }
    match parse_directory(
        bytes,
        h,
        ext.count,
        ext.directory_size,
        ext.directory_offset,
    ) {
        Ok(v) => Bitmaps::Directory(v),
        Err(e) => Bitmaps::Unusable(e.message().to_string()),
    }
}

fn parse_directory(
    bytes: &Bytes,
    h: &Header,
    count: u32,
    size: u64,
    offset: u64,
) -> Result<Vec<BitmapEntry>> {
    if count == 0 || count > MAX_BITMAPS {
        return Err(Error::corrupt(format!(
            "bitmaps extension counts {count} bitmaps (1 to {MAX_BITMAPS})"
        )));
    }
    if size > MAX_DIRECTORY || size < (ENTRY_FIXED as u64 + 1) * u64::from(count) {
        return Err(Error::corrupt(format!(
            "bitmap directory of {size} bytes for {count} bitmaps"
        )));
    }
    h.check_table("bitmap directory", offset, size, bytes.len())?;
    let mut dir = vec![0u8; size as usize];
    bytes.read_at(&mut dir, offset)?;
    let mut pos = 0usize;
    let mut out: Vec<BitmapEntry> = Vec::new();
    for i in 0..count {
        let fixed = dir
            .get(pos..pos + ENTRY_FIXED)
            .ok_or_else(|| Error::corrupt(format!("bitmap directory entry {i} is cut short")))?;
        let name_size = usize::from(BigEndian::read_u16(&fixed[18..]));
        let extra = BigEndian::read_u32(&fixed[20..]);
        let var_end = pos + ENTRY_FIXED + extra as usize + name_size;
        let name = dir
            .get(pos + ENTRY_FIXED + extra as usize..var_end)
            .ok_or_else(|| Error::corrupt(format!("bitmap directory entry {i} is cut short")))?;
        if name_size == 0 {
            return Err(Error::corrupt(format!(
                "bitmap directory entry {i} has no name"
            )));
        }
        let e = BitmapEntry {
            name: String::from_utf8_lossy(name).into_owned(),
            table_offset: BigEndian::read_u64(&fixed[0..]),
            table_size: BigEndian::read_u32(&fixed[8..]),
            flags: BigEndian::read_u32(&fixed[12..]),
            kind: fixed[16],
            granularity_bits: fixed[17],
            extra_data_size: extra,
        };
        if out.iter().any(|o| o.name == e.name) {
            return Err(Error::corrupt(format!(
                "two bitmaps are named \"{}\"",
                e.name
            )));
        }
        out.push(e);
        pos = var_end.next_multiple_of(8);
    }
    if pos as u64 != size {
        return Err(Error::corrupt(format!(
            "bitmap directory entries take {pos} bytes, not the {size} the extension says"
        )));
    }
    Ok(out)
}

/// Entries a bitmap table of a disk of `size` bytes must have, for this granularity.
pub fn table_entries(size: u64, granularity: u64, cluster_size: u64) -> u64 {
    size.div_ceil(granularity)
        .div_ceil(8)
        .div_ceil(cluster_size)
}

/// Check `e` can be read: not in use, of a known kind and granularity, table in the file.
pub fn check_readable(e: &BitmapEntry, h: &Header, file_len: u64) -> Result<u64> {
    if e.in_use() {
        return Err(Error::new(
            ErrorKind::InUse,
            format!(
                "bitmap {} is in use: a VM still runs on this image; stop it, or use the NBD \
                 export of the running VM",
                e.name
            ),
        ));
    }
    if e.kind != 1 {
        return Err(Error::unsupported(format!(
            "bitmap {} is of type {} (vdisk reads dirty tracking bitmaps, type 1)",
            e.name, e.kind
        )));
    }
    if e.extra_data_size != 0 && e.flags & flags::EXTRA_DATA_COMPATIBLE == 0 {
        return Err(Error::unsupported(format!(
            "bitmap {} has extra data vdisk does not know",
            e.name
        )));
    }
    let g = e.granularity().ok_or_else(|| {
        Error::corrupt(format!(
            "bitmap {} has granularity bits {} (9 to 31)",
            e.name, e.granularity_bits
        ))
    })?;
    let want = table_entries(h.size, g, h.cluster_size);
    if u64::from(e.table_size) != want {
        return Err(Error::corrupt(format!(
            "bitmap {} has a table of {} entries, not the {want} its granularity needs",
            e.name, e.table_size
        )));
    }
    h.check_table(
        &format!("bitmap {} table", e.name),
        e.table_offset,
        want * 8,
        file_len,
    )?;
    Ok(g)
}

/// Hand `dirty` the ranges bitmap `e` marks, in order and joined; returns its granularity.
pub fn read_bitmap(
    bytes: &Bytes,
    h: &Header,
    e: &BitmapEntry,
    dirty: &mut dyn FnMut(u64, u64) -> Result<()>,
) -> Result<u64> {
    let file_len = bytes.len();
    let g = check_readable(e, h, file_len)?;
    let cs = h.cluster_size;
    let entries = u64::from(e.table_size);
    let mut table = vec![0u8; (entries * 8) as usize];
    bytes.read_at(&mut table, e.table_offset)?;
    // Bytes of disk one cluster of bitmap data covers.
    let span = cs * 8 * g;
    let mut run: Option<(u64, u64)> = None;
    let mut mark = |start: u64, len: u64| -> Result<()> {
        let end = (start + len).min(h.size);
        if start >= end {
            return Ok(());
        }
        match &mut run {
            Some((s, l)) if *s + *l == start => *l = end - *s,
            _ => {
                if let Some((s, l)) = run.replace((start, end - start)) {
                    dirty(s, l)?;
                }
            }
        }
        Ok(())
    };
    let mut data = vec![0u8; cs as usize];
    for (i, raw) in table.chunks_exact(8).enumerate() {
        let entry = BigEndian::read_u64(raw);
        let base = i as u64 * span;
        let off = entry & OFFSET_MASK;
        if off == 0 {
            if entry & 1 != 0 {
                mark(base, span)?;
            }
            continue;
        }
        if !off.is_multiple_of(cs) || off.checked_add(cs).is_none_or(|end| end > file_len) {
            return Err(Error::corrupt(format!(
                "bitmap {} data cluster {i} at offset {off} is unaligned or past the end of the file",
                e.name
            )));
        }
        bytes.read_at(&mut data, off)?;
        for (w, word) in data.chunks_exact(8).enumerate() {
            let mut bits = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            let word_base = base + w as u64 * 64 * g;
            while bits != 0 {
                let first = u64::from(bits.trailing_zeros());
                let ones = u64::from((bits >> first).trailing_ones());
                mark(word_base + first * g, ones * g)?;
                bits = if first + ones >= 64 {
                    0
                } else {
                    bits & !((1u64 << (first + ones)) - 1)
                };
            }
        }
    }
    if let Some((s, l)) = run {
        dirty(s, l)?;
    }
    Ok(g)
}
