//! vdisk against qemu-img and qemu-io: images they make must read back byte for byte.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::*;

const SUBFORMATS: [&str; 5] = [
    "monolithicSparse",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "streamOptimized",
];

/// A raw source mixing random data, a zero run written as data, holes, a grain-unaligned
/// write, and an odd tail: 5 MiB + 1.5 KiB, not a whole number of 64 KiB grains.
pub(crate) fn mixed_source(dir: &Path, name: &str) -> PathBuf {
    let size: u64 = (5 << 20) + 1536;
    let path = dir.join(name);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(size).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&pattern(1, 300 << 10), 0).unwrap();
    f.write_all_at(&vec![0u8; 128 << 10], 1 << 20).unwrap(); // zeros written as data
    f.write_all_at(&pattern(2, 5000), (2 << 20) + 777).unwrap(); // straddles grains
    f.write_all_at(&[b'x'; 100 << 10], 3 << 20).unwrap(); // compressible
    f.write_all_at(&pattern(3, 1536 + 4096), size - 1536 - 4096)
        .unwrap(); // the odd tail
    path
}

fn convert_both(dir: &Path, image: &str, tag: &str) -> (PathBuf, PathBuf) {
    let q = dir.join(format!("{tag}.qemu.raw"));
    let v = dir.join(format!("{tag}.vdisk.raw"));
    qemu_img(dir, &["convert", "-O", "raw", image, q.to_str().unwrap()]);
    vdisk_in(dir, &["convert", image, v.to_str().unwrap(), "-O", "raw"])
        .expect_code(0, "vdisk convert");
    (q, v)
}

#[test]
fn every_qemu_subformat_converts_like_qemu() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = mixed_source(dir, "src.raw");
    for sf in SUBFORMATS {
        let img = format!("{sf}.vmdk");
        qemu_to_vmdk(dir, sf, "src.raw", &img);
        let (q, v) = convert_both(dir, &img, sf);
        assert_same_bytes(&q, &v);
        assert_same_bytes(&src, &v);
        let info: Value =
            serde_json::from_str(&vdisk_in(dir, &["info", &img, "--json"]).stdout).unwrap();
        assert_eq!(info["subformat"], sf);
        assert_eq!(info["virtual_size"], (5u64 << 20) + 1536);
        vdisk_in(dir, &["check", &img]).expect_code(0, sf);
    }
}

#[test]
fn zeroed_grains_read_as_zero_and_mask_the_parent() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    qemu_create_vmdk(dir, "base.vmdk", "4M", &["zeroed_grain=on"]);
    qemu_io(
        dir,
        "vmdk",
        "base.vmdk",
        &["write -P 0x5a 0 1M", "write -z 256k 128k"],
    );
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "zeroed_grain=on",
            "-b",
            "base.vmdk",
            "-F",
            "vmdk",
            "link.vmdk",
        ],
    );
    qemu_io(
        dir,
        "vmdk",
        "link.vmdk",
        &["write -z 512k 64k", "write -P 0x77 3M 64k"],
    );
    for img in ["base.vmdk", "link.vmdk"] {
        let (q, v) = convert_both(dir, img, img);
        assert_same_bytes(&q, &v);
    }
    let data = std::fs::read(dir.join("link.vmdk.vdisk.raw")).unwrap();
    assert!(data[..256 << 10].iter().all(|&b| b == 0x5a));
    assert!(data[256 << 10..384 << 10].iter().all(|&b| b == 0));
    assert!(
        data[512 << 10..576 << 10].iter().all(|&b| b == 0),
        "zeroed grain must mask the parent"
    );
    assert!(data[576 << 10..1 << 20].iter().all(|&b| b == 0x5a));
    // The map reports the zeroed grain as zero at depth 0, and the parent's data at depth 1.
    let map: Value =
        serde_json::from_str(&vdisk_in(dir, &["map", "link.vmdk", "--json"]).stdout).unwrap();
    let at = |off: u64| {
        map.as_array()
            .unwrap()
            .iter()
            .find(|e| {
                e["start"].as_u64().unwrap() <= off
                    && off < e["start"].as_u64().unwrap() + e["length"].as_u64().unwrap()
            })
            .cloned()
            .unwrap()
    };
    assert_eq!(
        (
            at(512 << 10)["data"].clone(),
            at(512 << 10)["depth"].clone()
        ),
        (Value::Bool(false), Value::from(0))
    );
    assert_eq!(
        (at(0)["data"].clone(), at(0)["depth"].clone()),
        (Value::Bool(true), Value::from(1))
    );
}

/// base <- mid <- top, each link writing over the last, in a sub-folder, opened from the
/// folder above and from elsewhere.
fn three_link_chain(dir: &Path) {
    std::fs::create_dir(dir.join("vm")).unwrap();
    let vm = dir.join("vm");
    qemu_img(&vm, &["create", "-q", "-f", "vmdk", "base.vmdk", "3M"]);
    qemu_io(&vm, "vmdk", "base.vmdk", &["write -P 0x01 0 3M"]);
    qemu_img(
        &vm,
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            "base.vmdk",
            "-F",
            "vmdk",
            "mid.vmdk",
        ],
    );
    qemu_io(
        &vm,
        "vmdk",
        "mid.vmdk",
        &["write -P 0x02 64k 1M", "write -P 0x22 2000k 3k"],
    );
    qemu_img(
        &vm,
        &[
            "create", "-q", "-f", "vmdk", "-b", "mid.vmdk", "-F", "vmdk", "top.vmdk",
        ],
    );
    qemu_io(
        &vm,
        "vmdk",
        "top.vmdk",
        &["write -P 0x03 512k 100k", "write -P 0x33 3070k 2k"],
    );
}

#[test]
fn three_link_chains_read_like_qemu_from_any_working_directory() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    three_link_chain(dir);
    let q = dir.join("q.raw");
    qemu_img(dir, &["convert", "-O", "raw", "vm/top.vmdk", "q.raw"]);
    // Relative path from the folder above, and an absolute path from /.
    vdisk_in(dir, &["convert", "vm/top.vmdk", "v1.raw"]).expect_code(0, "relative");
    assert_same_bytes(&q, &dir.join("v1.raw"));
    let abs_out = dir.join("v2.raw");
    vdisk_in(
        Path::new("/"),
        &[
            "convert",
            dir.join("vm/top.vmdk").to_str().unwrap(),
            abs_out.to_str().unwrap(),
        ],
    )
    .expect_code(0, "absolute");
    assert_same_bytes(&q, &abs_out);
    let info: Value =
        serde_json::from_str(&vdisk_in(dir, &["info", "vm/top.vmdk", "--json"]).stdout).unwrap();
    let chain = info["chain"].as_array().unwrap();
    assert_eq!(chain.len(), 3);
    for w in chain.windows(2) {
        assert_eq!(w[0]["parent_cid"], w[1]["cid"]);
    }
    assert_eq!(chain[2]["parent_cid"], "ffffffff");
}

#[test]
fn map_data_ranges_match_qemu_img_map() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    three_link_chain(dir);
    for img in ["vm/top.vmdk", "vm/mid.vmdk"] {
        let ours: Value =
            serde_json::from_str(&vdisk_in(dir, &["map", img, "--json"]).stdout).unwrap();
        let theirs: Value =
            serde_json::from_str(&qemu_img(dir, &["map", "--output=json", img])).unwrap();
        let data_ranges = |v: &Value| {
            let mut out: Vec<(u64, u64)> = Vec::new();
            for e in v.as_array().unwrap() {
                if e["data"] == Value::Bool(true) {
                    let (s, l) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
                    match out.last_mut() {
                        Some(last) if last.0 + last.1 == s => last.1 += l,
                        _ => out.push((s, l)),
                    }
                }
            }
            out
        };
        assert_eq!(data_ranges(&ours), data_ranges(&theirs), "{img}");
    }
}

#[test]
fn writes_straddling_the_2gib_split_read_like_qemu() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // 2 GiB + 1 MiB + 512: the second extent is short and not a whole number of grains.
    let size = ((2u64 << 30) + (1 << 20) + 512).to_string();
    for sf in ["twoGbMaxExtentSparse", "twoGbMaxExtentFlat"] {
        let img = format!("{sf}.vmdk");
        qemu_create_vmdk(dir, &img, &size, &[&format!("subformat={sf}")]);
        qemu_io(
            dir,
            "vmdk",
            &img,
            &[
                "write -P 0xc1 2147450880 65536",
                "write -P 0xc2 0 4096",
                "write -P 0xc3 2148532224 512",
            ],
        );
        let (q, v) = convert_both(dir, &img, sf);
        assert_same_bytes(&q, &v);
        let mut buf = vec![0u8; 65536];
        use std::os::unix::fs::FileExt;
        std::fs::File::open(&v)
            .unwrap()
            .read_exact_at(&mut buf, 2147450880)
            .unwrap();
        assert!(buf.iter().all(|&b| b == 0xc1));
        std::fs::remove_file(q).unwrap();
        std::fs::remove_file(v).unwrap();
    }
}
