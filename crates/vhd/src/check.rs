//! `vdisk check` for a VHD: footer copies, checksums, the block allocation table and a
//! differencing disk's parent locators.

use vdisk_core::{Finding, SECTOR};

use crate::footer::{RawFooter, FOOTER_SIZE};
use crate::header::{HEADER_SIZE, UNALLOCATED};
use crate::image::{Layout, Sparse, VhdImage};

/// Findings of one kind reported one by one; past this, one more line counts the rest.
const MAX_PER_KIND: usize = 20;

/// Findings of one kind, capped.
struct Capped<'a> {
    out: &'a mut Vec<Finding>,
    file: &'a std::path::Path,
    what: &'static str,
    shown: usize,
    more: usize,
}

impl<'a> Capped<'a> {
    fn new(out: &'a mut Vec<Finding>, file: &'a std::path::Path, what: &'static str) -> Self {
        Capped {
            out,
            file,
            what,
            shown: 0,
            more: 0,
        }
    }

    fn error(&mut self, message: String) {
        if self.shown < MAX_PER_KIND {
            self.out.push(Finding::error(self.file, message));
            self.shown += 1;
        } else {
            self.more += 1;
        }
    }
}

impl Drop for Capped<'_> {
    fn drop(&mut self) {
        if self.more > 0 {
            self.out.push(Finding::error(
                self.file,
                format!("{} more {}", self.more, self.what),
            ));
        }
    }
}

/// Check the image's metadata.
pub(crate) fn check(img: &VhdImage) -> Vec<Finding> {
    let mut out = Vec::new();
    let file = img.bytes.path();
    let raw = &img.footer.raw;
    match &img.layout {
        Layout::Fixed { data_len } => {
            if *data_len < img.footer.size {
                out.push(Finding::error(
                    file,
                    format!(
                        "the file holds {data_len} bytes of data before its footer, but the disk \
                         is {} bytes: the file was truncated",
                        img.footer.size
                    ),
                ));
            }
        }
        Layout::Sparse(s) => {
            check_copies(img, &mut out);
            if !s.header_checksum_ok {
                out.push(Finding::error(
                    file,
                    format!(
                        "the dynamic header's checksum is {:#010x}, its fields call for {:#010x}",
                        s.header.raw.checksum,
                        s.header.raw.computed_checksum()
                    ),
                ));
            }
            check_table(img, s, &mut out);
            check_parent(img, &mut out);
        }
    }
    if raw.saved_state != 0 {
        out.push(Finding::warning(
            file,
            "the disk is in a saved state: a virtual machine was suspended on it",
        ));
    }
    out
}

/// A dynamic disk has a footer at offset 0 (qemu reads it) and the same one at the end
/// (Hyper-V and Virtual PC read that one).
fn check_copies(img: &VhdImage, out: &mut Vec<Finding>) {
    let file = img.bytes.path();
    let c = &img.copies;
    match (&c.head, c.head_ok) {
        (None, _) => out.push(Finding::error(
            file,
            "no footer copy at offset 0 (qemu cannot open the disk)",
        )),
        (Some(h), false) => out.push(Finding::error(
            file,
            format!(
                "the footer copy at offset 0 has checksum {:#010x}, its fields call for {:#010x}",
                h.checksum,
                h.computed_checksum()
            ),
        )),
        _ => {}
    }
    let Some((tail, n)) = &c.tail else {
        out.push(Finding::error(
            file,
            "no intact footer at the end of the file (Hyper-V and Virtual PC read it there)",
        ));
        return;
    };
    if *n != FOOTER_SIZE {
        out.push(Finding::error(
            file,
            "the footer at the end is 511 bytes long, as only fixed disks of old Virtual PC \
             versions had",
        ));
    }
    if let (Some(head), true) = (&c.head, c.head_ok) {
        let differ = differing_fields(head, tail);
        if !differ.is_empty() {
            out.push(Finding::error(
                file,
                format!(
                    "the footer copies at offset 0 and at the end disagree on {}",
                    differ.join(", ")
                ),
            ));
        } else if head.to_bytes() != tail.to_bytes() {
            out.push(Finding::warning(
                file,
                "the footer copies at offset 0 and at the end differ in fields that do not change \
                 what the disk holds",
            ));
        }
    }
}

/// The fields that change what a disk reads as, where two footers differ.
fn differing_fields(a: &RawFooter, b: &RawFooter) -> Vec<&'static str> {
    let mut v = Vec::new();
    let mut cmp = |same: bool, name| {
        if !same {
            v.push(name)
        }
    };
    cmp(a.disk_type == b.disk_type, "the disk type");
    cmp(a.current_size == b.current_size, "the current size");
    cmp(a.geometry == b.geometry, "the geometry");
    cmp(a.creator_app == b.creator_app, "the creator");
    cmp(a.data_offset == b.data_offset, "the header offset");
    cmp(a.unique_id == b.unique_id, "the unique id");
    v
}

/// Every allocated block lies inside the file, clear of the metadata and of every other
/// block.
fn check_table(img: &VhdImage, s: &Sparse, out: &mut Vec<Finding>) {
    let file = img.bytes.path();
    let len = img.bytes.len();
    let block_span = s.header.bitmap_size + s.header.block_size;
    let mut metadata: Vec<(u64, u64, String)> = vec![
        (0, FOOTER_SIZE as u64, "the footer copy at offset 0".into()),
        (
            s.header_offset,
            s.header_offset + HEADER_SIZE as u64,
            "the dynamic header".into(),
        ),
        (
            s.header.raw.table_offset,
            s.header.table_end,
            "the block allocation table".into(),
        ),
        (
            len.saturating_sub(FOOTER_SIZE as u64),
            len,
            "the footer at the end".into(),
        ),
    ];
    if let Some(p) = &img.parent {
        for (l, _) in &p.locators {
            let end = l.data_offset.saturating_add(u64::from(l.data_length));
            if l.data_length > 0 {
                metadata.push((
                    l.data_offset,
                    end,
                    format!("the {} parent locator's data", l.platform().name()),
                ));
            }
        }
    }
    let mut blocks: Vec<(u64, u64, u64)> = Vec::new();
    {
        let mut past = Capped::new(out, file, "blocks past the end of the file");
        for i in 0..s.bat.len() {
            let e = s.bat.get(&img.bytes, i);
            if e == UNALLOCATED {
                continue;
            }
            let start = u64::from(e) * SECTOR;
            let end = start + block_span;
            if end > len {
                past.error(format!(
                    "block {i} at offset {start} ends at {end}, past the end of the file ({len} \
                     bytes)"
                ));
            }
            blocks.push((start, end, i));
        }
    }
    blocks.sort_unstable();
    {
        let mut overlaps = Capped::new(out, file, "blocks overlapping metadata");
        for &(start, end, i) in &blocks {
            for (ms, me, what) in &metadata {
                if start < *me && *ms < end {
                    overlaps.error(format!(
                        "block {i} at offset {start} overlaps {what} (offsets {ms}..{me})"
                    ));
                }
            }
        }
    }
    let mut overlaps = Capped::new(out, file, "overlapping blocks");
    // Sorted by start: a block overlaps another if it starts before the furthest end seen.
    let mut furthest: Option<(u64, u64)> = None;
    for &(start, end, i) in &blocks {
        if let Some((fend, fi)) = furthest {
            if start < fend {
                overlaps.error(format!(
                    "blocks {fi} and {i} overlap in the file (at offset {start})"
                ));
            }
        }
        if furthest.is_none_or(|(fend, _)| end > fend) {
            furthest = Some((end, i));
        }
    }
}

/// A differencing disk names its parent in a way that can be found and verified.
fn check_parent(img: &VhdImage, out: &mut Vec<Finding>) {
    let (Some(p), Some(b)) = (&img.parent, &img.backing) else {
        return;
    };
    let file = img.bytes.path();
    if p.unique_id.is_nil() {
        out.push(Finding::warning(
            file,
            "the differencing disk records no parent unique id: its parent cannot be verified",
        ));
    }
    for (l, name) in &p.locators {
        if name.is_none() && !matches!(l.platform(), crate::header::Platform::Mac) {
            out.push(Finding::error(
                file,
                format!(
                    "the {} parent locator's {} bytes at offset {} cannot be read as a name",
                    l.platform().name(),
                    l.data_length,
                    l.data_offset
                ),
            ));
        }
    }
    if b.names.is_empty() {
        out.push(Finding::error(
            file,
            "the differencing disk names no parent that can be found on this system",
        ));
    }
}
