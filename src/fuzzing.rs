//! Entry points for the cargo-fuzz targets in `fuzz/` that need the whole toolkit, shared with
//! the corpus replay tests. Each takes arbitrary bytes and must not panic.

use std::path::Path;

use vdisk_core::DiskImage;
use vdisk_vmdk::writer::Subformat;

use crate::{convert_with, ConvertOptions, Format, OpenOptions, OutputPolicy, Target};

/// The writer's inverse: arbitrary bytes describe a disk (size, runs of content) and a
/// subformat; the disk is written as a raw file, converted, read back, and must be identical.
/// Files go to `dir`, which the caller owns.
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
    let target = match choice % 6 {
        5 => Target::Raw,
        n => Target::Vmdk(Subformat::ALL[n as usize]),
    };
    let dst = dir.join("fuzz-out.vmdk");
    let opts = ConvertOptions {
        policy: OutputPolicy::replacing(),
        ..Default::default()
    };
    // Formats are given, not detected: a disk whose first bytes spell a VMDK magic or a
    // descriptor header is still a raw disk (and a raw output of it still raw).
    let open_as = |path: &Path, format| {
        let opts = OpenOptions {
            format: Some(format),
            ..Default::default()
        };
        crate::open_with(path, &opts)
    };
    let img = open_as(&src, Format::Raw).expect("a raw file written just now opens");
    convert_with(&img, &dst, target, &opts).expect("converting a valid raw image succeeds");
    let out_format = match target {
        Target::Raw => Format::Raw,
        Target::Vmdk(_) => Format::Vmdk,
    };
    let back = open_as(&dst, out_format).expect("vdisk reads its own output");
    assert_eq!(back.size(), size);
    let mut buf = vec![0u8; size as usize];
    back.read_at(&mut buf, 0).expect("reading back succeeds");
    assert!(
        buf == disk,
        "read back differs from what was written ({target:?})"
    );
}
