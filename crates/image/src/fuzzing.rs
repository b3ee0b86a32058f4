//! Entry points for the cargo-fuzz targets in `fuzz/` that need the registry, shared with the
//! corpus replay tests. Each takes arbitrary bytes and must not panic.

use std::path::Path;

use vdisk_core::DiskImage;
use vdisk_io::{CreateOptions, Format, OutputPolicy};

use crate::{convert, open_with, registry, ConvertOptions, OpenOptions};

/// Every output a registered writer makes: each writable format, in each of its subformats.
fn outputs() -> Vec<(&'static dyn Format, Option<&'static str>)> {
    let mut out = Vec::new();
    for f in registry::formats().iter().copied().filter(|f| f.writable()) {
        match f.subformats() {
            [] => out.push((f, None)),
            subs => out.extend(subs.iter().map(|s| (f, Some(*s)))),
        }
    }
    out
}

/// The writers' inverse: arbitrary bytes describe a disk (size, runs of content) and an
/// output (a format and subformat); the disk is written as a raw file, converted, read back,
/// and must be identical. Files go to `dir`, which the caller owns.
pub fn write_roundtrip(data: &[u8], dir: &Path) {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let Some((size_bytes, mut rest)) = rest.split_first_chunk::<2>() else {
        return;
    };
    // Up to 2 MiB: the point is the layout logic (grain and table edges, odd tails), not volume.
    let sectors = u64::from(u16::from_le_bytes(*size_bytes) % 4096) + 1;
    let size = sectors * 512;
    let mut disk = vec![0u8; size as usize];
    while let Some((run, more)) = rest.split_first_chunk::<7>() {
        rest = more;
        let start = u64::from(u32::from_le_bytes([run[0], run[1], run[2], run[3]])) % size;
        let len = u64::from(u16::from_le_bytes([run[4], run[5]])) * 16;
        let end = (start + len).min(size);
        disk[start as usize..end as usize].fill(run[6]);
    }
    let src = dir.join("fuzz-src.raw");
    if std::fs::write(&src, &disk).is_err() {
        return;
    }
    let outputs = outputs();
    let (format, subformat) = outputs[usize::from(choice) % outputs.len()];
    let dst = dir.join("fuzz-out.img");
    let opts = ConvertOptions {
        create: CreateOptions {
            policy: OutputPolicy::replacing(),
            subformat: subformat.map(String::from),
            ..Default::default()
        },
        ..Default::default()
    };
    // Formats are given, not detected: a disk whose first bytes spell a magic or a
    // descriptor header is still a raw disk (and a raw output of it still raw).
    let open_as = |path: &Path, format: &str| {
        let opts = OpenOptions {
            format: Some(format.to_string()),
            ..Default::default()
        };
        open_with(path, &opts)
    };
    let img = open_as(&src, "raw").expect("a raw file written just now opens");
    convert(&img, &dst, format, &opts).expect("converting a valid raw image succeeds");
    let back = open_as(&dst, format.name()).expect("vdisk reads its own output");
    // Formats count whole sectors at least: the size rounds up, the tail reads as zero.
    assert!(back.size() >= size, "{} {subformat:?}", format.name());
    let mut buf = vec![0u8; back.size() as usize];
    back.read_at(&mut buf, 0).expect("reading back succeeds");
    assert!(
        buf[..size as usize] == disk[..] && buf[size as usize..].iter().all(|&b| b == 0),
        "read back differs from what was written ({} {subformat:?})",
        format.name()
    );
}
