//! What `check` and `info` report: damaged redundant copies are warnings (the file still
//! reads), blocks sharing bytes are errors; info names the subformat, sizes and the parent.

mod common;

use common::*;
use vdisk_core::{DiskImage, Severity};
use vdisk_io::Layer;
use vdisk_vhdx::WriteOptions;

const MIB: u64 = 1 << 20;

fn sample(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let raw = dir.join("s.raw");
    let data = make_raw(
        &raw,
        8 * MIB,
        &[(0, 8192, 1), (3 * MIB as usize as u64, 4096, 2)],
    );
    let p = dir.join("s.vhdx");
    write_vhdx(
        &raw,
        &p,
        &WriteOptions {
            block_size: MIB,
            ..Default::default()
        },
    );
    (p, data)
}

#[test]
fn damaged_second_copies_are_warnings() {
    let dir = tmp();
    let (p, data) = sample(dir.path());
    let mut f = std::fs::read(&p).unwrap();
    f[(128 << 10) + 200] ^= 1; // header 2 (the current one: sequence 2)
    f[(256 << 10) + 300] ^= 1; // region table 2
    std::fs::write(&p, &f).unwrap();
    let img = open(&p);
    assert_eq!(read_all(&img), data);
    let found = img.check();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found.iter().all(|f| f.severity == Severity::Warning));
    assert!(
        found[0].message.contains("header copy at 128 KiB"),
        "{found:?}"
    );
    assert!(
        found[1].message.contains("region table copy at 256 KiB"),
        "{found:?}"
    );
}

#[test]
fn blocks_sharing_bytes_are_errors() {
    let dir = tmp();
    let (p, _) = sample(dir.path());
    let img = open(&p);
    let bat = img.regions().bat.offset as usize;
    drop(img);
    let mut f = std::fs::read(&p).unwrap();
    // Point payload block 5 at block 0's bytes.
    let e0: [u8; 8] = f[bat..bat + 8].try_into().unwrap();
    f[bat + 40..bat + 48].copy_from_slice(&e0);
    std::fs::write(&p, &f).unwrap();
    let img = open(&p);
    let found = img.check();
    assert!(
        found
            .iter()
            .any(|f| f.severity == Severity::Error && f.message.contains("share bytes")),
        "{found:?}"
    );
    // Both read the same bytes.
    let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 4096]);
    img.read_at(&mut a, 0).unwrap();
    img.read_at(&mut b, 5 * MIB).unwrap();
    assert_eq!(a, b);
}

#[test]
fn info_names_what_the_file_is() {
    let dir = tmp();
    let (p, _) = sample(dir.path());
    let img = open(&p);
    let info = img.info();
    assert_eq!(info.fields["subformat"], "dynamic");
    assert_eq!(info.fields["block_size"], MIB);
    assert_eq!(info.fields["logical_sector_size"], 512);
    assert_eq!(info.fields["log"], "empty");
    assert!(info.fields["creator"]
        .as_str()
        .unwrap()
        .starts_with("vdisk"));
    assert_eq!(info.headline["cluster_size"], MIB);
    assert!(
        info.text.iter().any(|l| l == "subformat: dynamic"),
        "{:?}",
        info.text
    );
    assert_eq!(
        info.fields["data_write_guid"],
        img.link_id().unwrap().value.as_str()
    );
    let md = img.metadata();
    assert_eq!(md[0].ranges[0], (0, MIB));
    assert_eq!(md[0].ranges.len(), 4);
}
