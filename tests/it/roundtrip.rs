//! Round trips through the writer: random sparse contents -> each subformat -> read back.
//! And delta links written by the library, checked by qemu-img.

use std::os::unix::fs::FileExt;
use std::path::Path;

use proptest::prelude::*;
use vdisk::vmdk::writer::Subformat;
use vdisk::{ConvertOptions, CreateOptions, DiskImage};

use crate::common::*;

/// A run of the disk: where, how long, and what it holds.
#[derive(Debug, Clone)]
enum Fill {
    Random(u64),
    Byte(u8),
    Zero,
}

fn runs() -> impl Strategy<Value = (u64, Vec<(u64, u64, Fill)>)> {
    (1u64..=8192).prop_flat_map(|sectors| {
        let size = sectors * 512;
        let run = (
            0..size,
            1u64..=300_000,
            prop_oneof![
                any::<u64>().prop_map(Fill::Random),
                any::<u8>().prop_map(Fill::Byte),
                Just(Fill::Zero)
            ],
        );
        (Just(size), proptest::collection::vec(run, 0..12))
    })
}

fn build(dir: &Path, size: u64, runs: &[(u64, u64, Fill)]) -> Vec<u8> {
    let mut disk = vec![0u8; size as usize];
    let f = std::fs::File::create(dir.join("src.raw")).unwrap();
    f.set_len(size).unwrap();
    for (start, len, fill) in runs {
        let end = (start + len).min(size);
        let bytes = match fill {
            Fill::Random(seed) => pattern(*seed, (end - start) as usize),
            Fill::Byte(b) => vec![*b; (end - start) as usize],
            Fill::Zero => vec![0; (end - start) as usize],
        };
        disk[*start as usize..end as usize].copy_from_slice(&bytes);
        f.write_all_at(&bytes, *start).unwrap();
    }
    disk
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn every_subformat_reads_back_what_was_written((size, runs) in runs()) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let disk = build(dir, size, &runs);
        let src = vdisk::open(dir.join("src.raw")).unwrap();
        for sf in Subformat::ALL {
            let dst = dir.join(format!("{}.vmdk", sf.name()));
            let opts = ConvertOptions {
                create: CreateOptions {
                    subformat: Some(sf.name().into()),
                    ..Default::default()
                },
                ..Default::default()
            };
            vdisk::convert(&src, &dst, &vdisk::vmdk::VMDK, &opts).unwrap();
            let back = vdisk::open(&dst).unwrap();
            prop_assert_eq!(back.size(), size);
            let mut buf = vec![0u8; size as usize];
            back.read_at(&mut buf, 0).unwrap();
            prop_assert!(buf == disk, "{} differs", sf.name());
        }
    }
}

#[test]
fn delta_links_read_as_the_new_disk_and_hold_only_the_changes() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    qemu_create_vmdk(dir, "parent.vmdk", "8M", &[]);
    qemu_io(dir, "vmdk", "parent.vmdk", &["write -P 0x11 0 4M"]);
    // The new disk: parent's content with changes, including data that became zero.
    let mut new = vec![0u8; 8 << 20];
    new[..4 << 20].fill(0x11);
    let changes: Vec<(u64, u64)> = vec![
        (100 << 10, 5000),    // a small write inside one grain
        (1 << 20, 256 << 10), // data that is now zero: zeroed grains must mask the parent
        (6 << 20, 300 << 10), // new data where the parent had none
        (7 << 20, 64 << 10),  // zero where the parent is zero too: nothing to store
    ];
    new[(100 << 10)..(100 << 10) + 5000].copy_from_slice(&pattern(90, 5000));
    new[1 << 20..(1 << 20) + (256 << 10)].fill(0);
    new[6 << 20..(6 << 20) + (300 << 10)].copy_from_slice(&pattern(91, 300 << 10));
    std::fs::write(dir.join("new.raw"), &new).unwrap();

    let parent = vdisk::open(dir.join("parent.vmdk")).unwrap();
    let new_img = vdisk::open(dir.join("new.raw")).unwrap();
    let stats = vdisk::write_delta(
        &parent,
        &new_img,
        changes,
        &dir.join("link.vmdk"),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(stats.zeroed_blocks, 4);
    assert_eq!(stats.data_blocks, 1 + 5); // 300 KiB at 6 MiB covers 5 grains
    qemu_img(dir, &["compare", "link.vmdk", "new.raw"]);
    qemu_img(dir, &["check", "link.vmdk"]);
    let info = qemu_img(dir, &["info", "link.vmdk"]);
    assert!(info.contains("backing file: parent.vmdk"), "{info}");
    // Changed data plus metadata: 6 grains, a header area of 64 KiB, tables.
    let len = std::fs::metadata(dir.join("link.vmdk")).unwrap().len();
    assert!(len <= 6 * 65536 + 128 * 1024, "{len} bytes");
}
