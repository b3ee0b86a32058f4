//! The driver as the registry uses it: probe, open, create through `Format`.

mod common;

use std::path::Path;

use common::*;
use vdisk_core::{copy_into, CopyOptions, DiskImage};
use vdisk_io::{CreateOptions, FileStore, Format, FsStore, OpenContext, ProbeBytes};
use vdisk_vhdx::VHDX;

#[test]
fn probe_open_and_create_through_the_driver() {
    let dir = tmp();
    let raw_path = dir.path().join("d.raw");
    let raw = make_raw(&raw_path, 5 << 20, &[(4096, 8192, 4)]);
    let out = dir.path().join("d.vhdx");
    let src = vdisk_raw::RawImage::open(&raw_path).unwrap();
    let opts = CreateOptions {
        subformat: Some("fixed".into()),
        cluster_size: Some(1 << 20),
        ..Default::default()
    };
    copy_into(
        &src,
        VHDX.create(&out, src.size(), &opts).unwrap(),
        &CopyOptions::default(),
    )
    .unwrap();
    let head = std::fs::read(&out).unwrap();
    assert!(VHDX.probe(&ProbeBytes {
        head: &head[..4096],
        tail: &head[head.len() - 512..],
        len: head.len() as u64
    }));
    assert!(!VHDX.probe(&ProbeBytes {
        head: b"conectix",
        tail: &[],
        len: 8
    }));
    let store = FsStore::default();
    let cx = OpenContext {
        files: &store,
        path: &out,
        allow_outside_paths: false,
    };
    let layer = VHDX.open(store.load(&out).unwrap(), &cx).unwrap();
    assert_eq!(layer.format_name(), "vhdx");
    assert_eq!(read_all(&*layer), raw);
    assert_eq!(layer.info().fields["subformat"], "fixed");
    assert_eq!(VHDX.name(), "vhdx");
    assert_eq!(VHDX.extensions(), ["vhdx"]);
    assert!(VHDX.writable());
    assert_eq!(VHDX.subformats(), ["dynamic", "fixed"]);
    // Not a VHDX: one error line naming the file.
    let e = VHDX
        .open(store.load(&raw_path).unwrap(), &cx)
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("d.raw") && e.to_string().contains("vhdxfile"),
        "{e}"
    );
    // A bad subformat is refused before anything is created.
    let bad = CreateOptions {
        subformat: Some("sparse".into()),
        ..Default::default()
    };
    assert!(VHDX
        .create(&dir.path().join("x.vhdx"), 1 << 20, &bad)
        .is_err());
    assert!(!Path::new(&dir.path().join("x.vhdx")).exists());
    if have_qemu() {
        must("qemu-img", &["check", "-q", "-f", "vhdx", s(&out)]);
        assert_eq!(qemu_raw(&out, "vhdx"), raw);
    }
}
