//! Other hypervisors' formats, as qemu-img writes them: each is read byte for byte by the
//! registry's driver for it, or refused by name (exit 2, one line, nothing written), never
//! read as a raw disk.

use std::path::Path;

use crate::common::*;

/// The formats qemu-img writes besides raw and VMDK, with the `-O` name qemu takes and the
/// name vdisk refuses them by.
const OTHERS: &[(&str, &str)] = &[
    ("qcow2", "qcow2"),
    ("vhdx", "VHDX"),
    ("vpc", "VHD"),
    ("vdi", "VDI"),
    ("qed", "QED"),
    ("parallels", "Parallels"),
];

/// A copy of the fixture chain as one raw disk, with data.
fn raw_fixture(dir: &Path) {
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/chain/top.vmdk");
    vdisk_in(
        dir,
        &["convert", top.to_str().unwrap(), "fixture.raw", "-O", "raw"],
    )
    .expect_code(0, "fixture to raw");
}

#[test]
fn every_format_qemu_writes_is_read_exactly_or_refused_by_name() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    raw_fixture(dir);
    for &(qemu, name) in OTHERS {
        let img = format!("disk.{qemu}");
        qemu_img(
            dir,
            &["convert", "-f", "raw", "-O", qemu, "fixture.raw", &img],
        );
        let info = vdisk_in(dir, &["info", &img]);
        let repo = format!("repo-{qemu}");
        match info.code {
            // Read: the disk is the fixture's, byte for byte.
            Some(0) => {
                let out = format!("back-{qemu}.raw");
                vdisk_in(dir, &["convert", &img, &out]).expect_code(0, &img);
                qemu_img(
                    dir,
                    &["compare", "-f", "raw", "-F", "raw", "fixture.raw", &out],
                );
                vdisk_in(dir, &["backup", &img, &repo]).expect_code(0, &img);
            }
            // Refused: by name, in one line, and a backup leaves no repository behind.
            _ => {
                info.expect_code(2, &img);
                let want = format!("vdisk: error: {img}: a {name} image (not supported yet)\n");
                assert_eq!(info.stderr, want, "{qemu}");
                let b = vdisk_in(dir, &["backup", &img, &repo]);
                b.expect_code(2, &img);
                assert_eq!(b.stderr.lines().count(), 1, "{}", b.stderr);
                assert!(
                    b.stderr.contains(&format!("a {name} image")),
                    "{}",
                    b.stderr
                );
                assert!(!dir.join(&repo).exists(), "{qemu}: a repository was made");
                // Forced, it is read as the raw file it also is.
                let raw = vdisk_in(dir, &["-f", "raw", "info", "--json", &img]);
                raw.expect_code(0, &img);
                let v: serde_json::Value = serde_json::from_str(&raw.stdout).unwrap();
                assert_eq!(v["format"], "raw", "{qemu}");
            }
        }
    }
}

#[test]
fn a_refused_format_changes_nothing_in_an_existing_repository() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    raw_fixture(dir);
    vdisk_in(dir, &["backup", "fixture.raw", "repo"]).expect_code(0, "first backup");
    let before = file_tree(&dir.join("repo"));
    // QED: a format no driver of vdisk reads.
    qemu_img(
        dir,
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qed",
            "fixture.raw",
            "disk.qed",
        ],
    );
    let r = vdisk_in(dir, &["backup", "disk.qed", "repo", "--force"]);
    r.expect_code(2, "backup of a QED image");
    assert!(
        r.stderr.contains("a QED image (not supported yet)"),
        "{}",
        r.stderr
    );
    assert!(
        file_tree(&dir.join("repo")) == before,
        "the repository changed"
    );
}

/// What `qemu-img` calls each format vdisk writes, and the extension that selects it.
const WRITERS: &[(&str, &str)] = &[
    ("raw", "raw"),
    ("vmdk", "vmdk"),
    ("qcow2", "qcow2"),
    ("vhdx", "vhdx"),
    ("vpc", "vhd"),
];

/// `qemu-img info --output=json` of `img`, parsed.
fn qemu_info(dir: &Path, img: &str, chain: bool) -> serde_json::Value {
    let mut args = vec!["info", "--output=json"];
    if chain {
        args.push("--backing-chain");
    }
    args.push(img);
    serde_json::from_str(&qemu_img(dir, &args)).unwrap()
}

#[test]
fn every_format_converts_to_every_format_by_its_name_and_qemu_agrees() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    crate::interop::mixed_source(dir, "src.raw");
    for &(qfrom, efrom) in WRITERS {
        let src = format!("src.{efrom}");
        if qfrom != "raw" {
            qemu_img(dir, &["convert", "-f", "raw", "-O", qfrom, "src.raw", &src]);
        }
        for &(qto, eto) in WRITERS {
            let dst = format!("from-{efrom}.{eto}");
            // No -O: the output's name decides its format.
            vdisk_in(dir, &["convert", &src, &dst]).expect_code(0, &dst);
            let info = qemu_info(dir, &dst, false);
            assert_eq!(info["format"], qto, "{src} -> {dst}");
            qemu_img(dir, &["compare", "-f", qfrom, "-F", qto, &src, &dst]);
            if matches!(qto, "qcow2" | "vmdk" | "vhdx") {
                qemu_img(dir, &["check", "-f", qto, &dst]);
            }
            // And vdisk reads back what it wrote, as the source.
            let d = vdisk_in(dir, &["diff", &src, &dst]);
            d.expect_code(0, &format!("diff {src} {dst}"));
        }
    }
}

#[test]
fn an_output_format_that_contradicts_the_name_is_refused() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    crate::interop::mixed_source(dir, "src.raw");
    let r = vdisk_in(dir, &["convert", "src.raw", "out.qcow2", "-O", "vhdx"]);
    r.expect_code(2, "-O vhdx to a .qcow2");
    assert!(r.stderr.contains("the name says qcow2"), "{}", r.stderr);
    assert!(!dir.join("out.qcow2").exists());
    // A name that says nothing takes any format.
    vdisk_in(dir, &["convert", "src.raw", "out.img", "-O", "qcow2"]).expect_code(0, "out.img");
    assert_eq!(qemu_info(dir, "out.img", false)["format"], "qcow2");
    // A format vdisk reads but does not write is refused by name.
    let r = vdisk_in(dir, &["convert", "src.raw", "out.vdi"]);
    assert!(
        r.code == Some(0),
        "a .vdi name is not a format vdisk writes: raw"
    );
    let r = vdisk_in(dir, &["convert", "src.raw", "x.bin", "-O", "vdi"]);
    r.expect_code(2, "-O vdi");
    assert!(r.stderr.contains("invalid value 'vdi'"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("possible values: vmdk, qcow2, vhdx, vhd, raw;"),
        "{}",
        r.stderr
    );
}

#[test]
fn chains_mix_formats_a_qcow2_over_a_vmdk_and_a_raw_file() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    crate::interop::mixed_source(dir, "src.raw");
    qemu_img(
        dir,
        &["convert", "-f", "raw", "-O", "vmdk", "src.raw", "base.vmdk"],
    );
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.vmdk",
            "-F",
            "vmdk",
            "mid.qcow2",
        ],
    );
    qemu_io(
        dir,
        "qcow2",
        "mid.qcow2",
        &["write -P 0x61 64k 192k", "write -z 1M 64k"],
    );
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    qemu_io(dir, "qcow2", "top.qcow2", &["write -P 0x62 100k 5k"]);
    let info: serde_json::Value =
        serde_json::from_str(&vdisk_in(dir, &["info", "--json", "top.qcow2"]).stdout).unwrap();
    let formats: Vec<&str> = info["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["format"].as_str().unwrap())
        .collect();
    assert_eq!(formats, ["qcow2", "qcow2", "vmdk"]);
    qemu_img(dir, &["convert", "-O", "raw", "top.qcow2", "qemu.raw"]);
    vdisk_in(dir, &["convert", "top.qcow2", "vdisk.raw"]).expect_code(0, "convert chain");
    assert_same_bytes(&dir.join("qemu.raw"), &dir.join("vdisk.raw"));
    // A qcow2 over a raw file.
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "src.raw",
            "-F",
            "raw",
            "over-raw.qcow2",
        ],
    );
    qemu_io(dir, "qcow2", "over-raw.qcow2", &["write -P 0x63 0 4k"]);
    vdisk_in(dir, &["convert", "over-raw.qcow2", "b.raw"]).expect_code(0, "over raw");
    qemu_img(dir, &["compare", "-F", "raw", "over-raw.qcow2", "b.raw"]);
}

#[test]
fn deltas_in_each_format_name_old_relatively_and_read_as_new() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    crate::interop::mixed_source(dir, "old.raw");
    let mut new = std::fs::read(dir.join("old.raw")).unwrap();
    new[70_000..80_000].fill(0x5a);
    new[(2 << 20)..(2 << 20) + 65536].fill(0); // zeroed: must mask the parent
    std::fs::write(dir.join("new.raw"), &new).unwrap();
    for (qemu, ext) in [
        ("qcow2", "qcow2"),
        ("vhdx", "vhdx"),
        ("vpc", "vhd"),
        ("vmdk", "vmdk"),
    ] {
        let old = format!("old.{ext}");
        qemu_img(dir, &["convert", "-f", "raw", "-O", qemu, "old.raw", &old]);
        let delta = format!("delta.{ext}");
        let r = vdisk_in(dir, &["diff", &old, "new.raw", "--delta", &delta]);
        r.expect_code(1, &delta);
        // Read through the delta (vdisk follows the parent the delta names), the disk is new.
        vdisk_in(dir, &["diff", &delta, "new.raw"]).expect_code(0, &delta);
        let info: serde_json::Value =
            serde_json::from_str(&vdisk_in(dir, &["info", "--json", &delta]).stdout).unwrap();
        assert_eq!(info["chain"].as_array().unwrap().len(), 2, "{delta}");
        // qemu follows qcow2 and VMDK parents (it does not read VHDX or VHD differencing
        // disks).
        if matches!(qemu, "qcow2" | "vmdk") {
            qemu_img(dir, &["compare", "-F", "raw", &delta, "new.raw"]);
            qemu_img(dir, &["check", &delta]);
            let chain = qemu_info(dir, &delta, true);
            assert_eq!(
                chain[1]["filename"],
                old.as_str(),
                "{delta}: named relatively"
            );
        }
    }
}

#[test]
fn merge_collapses_a_qcow2_chain_whole_or_above_a_base() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    qemu_img(dir, &["create", "-q", "-f", "qcow2", "base.qcow2", "8M"]);
    qemu_io(dir, "qcow2", "base.qcow2", &["write -P 0x11 0 4M"]);
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "mid.qcow2",
        ],
    );
    qemu_io(
        dir,
        "qcow2",
        "mid.qcow2",
        &["write -P 0x22 1M 1M", "write -z 3M 64k"],
    );
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    qemu_io(dir, "qcow2", "top.qcow2", &["write -P 0x33 6M 64k"]);
    vdisk_in(dir, &["merge", "top.qcow2", "-o", "whole.qcow2"]).expect_code(0, "merge");
    assert!(qemu_info(dir, "whole.qcow2", false)
        .get("backing-filename")
        .is_none());
    qemu_img(dir, &["compare", "top.qcow2", "whole.qcow2"]);
    qemu_img(dir, &["check", "whole.qcow2"]);
    vdisk_in(
        dir,
        &[
            "merge",
            "top.qcow2",
            "-o",
            "above.qcow2",
            "--base",
            "base.qcow2",
        ],
    )
    .expect_code(0, "merge --base");
    let chain = qemu_info(dir, "above.qcow2", true);
    assert_eq!(chain[1]["filename"], "base.qcow2");
    qemu_img(dir, &["compare", "top.qcow2", "above.qcow2"]);
    qemu_img(dir, &["check", "above.qcow2"]);
}

#[test]
fn qcow2_info_lists_snapshots_and_bitmaps_and_check_finds_leaks() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    qemu_img(dir, &["create", "-q", "-f", "qcow2", "d.qcow2", "4M"]);
    qemu_io(dir, "qcow2", "d.qcow2", &["write -P 0x11 0 1M"]);
    qemu_img(dir, &["snapshot", "-c", "before-upgrade", "d.qcow2"]);
    qemu_img(dir, &["bitmap", "--add", "d.qcow2", "daily"]);
    let r = vdisk_in(dir, &["info", "d.qcow2"]);
    r.expect_code(0, "info");
    assert!(r.stdout.contains("before-upgrade"), "{}", r.stdout);
    assert!(r.stdout.contains("daily"), "{}", r.stdout);
    let j: serde_json::Value =
        serde_json::from_str(&vdisk_in(dir, &["info", "--json", "d.qcow2"]).stdout).unwrap();
    let text = j.to_string();
    assert!(
        text.contains("before-upgrade") && text.contains("daily"),
        "{text}"
    );
    vdisk_in(dir, &["check", "d.qcow2"]).expect_code(0, "clean");
    // A leaked cluster: bump the refcount of a cluster past the end of what is used, by
    // appending a cluster and counting it (qemu-img check -r leaks would free it again).
    qemu_img(dir, &["create", "-q", "-f", "qcow2", "leak.qcow2", "4M"]);
    qemu_io(dir, "qcow2", "leak.qcow2", &["write -P 0x11 0 128k"]);
    qemu_io(dir, "qcow2", "leak.qcow2", &["discard 0 64k"]);
    let q = run({
        let mut c = std::process::Command::new("qemu-img");
        c.args(["check", "leak.qcow2"]).current_dir(dir);
        c
    });
    let r = vdisk_in(dir, &["check", "--json", "leak.qcow2"]);
    // vdisk agrees with qemu-img on whether the image is clean.
    let clean = serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()["clean"] == true;
    assert_eq!(
        clean,
        q.code == Some(0),
        "vdisk: {} qemu: {}",
        r.stdout,
        q.stdout
    );
}

#[test]
fn compressed_qcow2_is_zstd_and_reads_back() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    crate::interop::mixed_source(dir, "src.raw");
    vdisk_in(dir, &["convert", "src.raw", "c.qcow2", "--compress"]).expect_code(0, "compress");
    let info = qemu_info(dir, "c.qcow2", false);
    assert_eq!(info["format-specific"]["data"]["compression-type"], "zstd");
    qemu_img(dir, &["compare", "-F", "raw", "c.qcow2", "src.raw"]);
    qemu_img(dir, &["check", "c.qcow2"]);
    let plain = std::fs::metadata(dir.join("src.raw")).unwrap().len();
    let packed = std::fs::metadata(dir.join("c.qcow2")).unwrap().len();
    assert!(packed < plain, "{packed} >= {plain}");
}

#[test]
fn every_format_backs_up_restores_and_serves() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    crate::interop::mixed_source(dir, "src.raw");
    for (qemu, ext) in [
        ("qcow2", "qcow2"),
        ("vhdx", "vhdx"),
        ("vpc", "vhd"),
        ("vdi", "vdi"),
    ] {
        let img = format!("d.{ext}");
        qemu_img(dir, &["convert", "-f", "raw", "-O", qemu, "src.raw", &img]);
        let repo = format!("repo-{ext}");
        vdisk_in(dir, &["backup", &img, &repo]).expect_code(0, &img);
        let out = format!("restored-{ext}.raw");
        vdisk_in(dir, &["restore", &repo, &out]).expect_code(0, &out);
        qemu_img(dir, &["compare", "-f", "raw", "-F", qemu, &out, &img]);
        let h = format!("h-{ext}");
        vdisk_in(dir, &["hash", &img, "-o", &h]).expect_code(0, &h);
        // (Some formats round the size up: the image, not src.raw, is what was hashed.)
        vdisk_in(dir, &["diff", &h, &out]).expect_code(0, "diff by manifest");
    }
    // Serve a qcow2 chain over NBD; qemu-img reads it as the disk.
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "d.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    qemu_io(dir, "qcow2", "top.qcow2", &["write -P 0x44 4k 8k"]);
    let sock = dir.join("s.sock");
    let served = serve(dir, &["top.qcow2", "--socket", sock.to_str().unwrap()]);
    qemu_img(dir, &["compare", "-F", "qcow2", &served.uri, "top.qcow2"]);
}

/// Decompress `fixtures/realworld/NAME.bz2` into `dir/NAME`.
fn realworld(dir: &Path, name: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/realworld")
        .join(format!("{name}.bz2"));
    let out = std::process::Command::new("bunzip2")
        .arg("-c")
        .arg(&src)
        .output()
        .expect("bunzip2 (Debian's bzip2) runs");
    assert!(out.status.success(), "bunzip2 {src:?}");
    std::fs::write(dir.join(name), out.stdout).unwrap();
}

#[test]
fn images_made_by_hyper_v_virtual_pc_disk2vhd_and_esxi_read_as_qemu_reads_them() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for (name, qemu) in [
        ("hyperv2012r2-dynamic.vhd", "vpc"),
        ("virtualpc-dynamic.vhd", "vpc"),
        ("d2v-zerofilled.vhd", "vpc"),
        ("iotest-dynamic-1G.vhdx", "vhdx"),
        ("test-disk2vhd.vhdx", "vhdx"),
        ("iotest-version3.vmdk", "vmdk"),
    ] {
        realworld(dir, name);
        vdisk_in(dir, &["check", name]).expect_code(0, name);
        let v = format!("{name}.vdisk.raw");
        vdisk_in(dir, &["convert", name, &v]).expect_code(0, name);
        // qemu-img compare reads both, holes and all, without a second copy on disk.
        qemu_img(dir, &["compare", "-f", qemu, "-F", "raw", name, &v]);
        std::fs::remove_file(dir.join(&v)).unwrap();
    }
    // A log left to replay: vdisk replays it in memory, qemu-img only on a writable copy.
    let name = "iotest-dirtylog-10G-4M.vhdx";
    realworld(dir, name);
    let before = std::fs::read(dir.join(name)).unwrap();
    vdisk_in(dir, &["convert", name, "dirty.vdisk.raw"]).expect_code(0, name);
    assert!(
        std::fs::read(dir.join(name)).unwrap() == before,
        "a reader wrote the log back"
    );
    std::fs::copy(dir.join(name), dir.join("copy.vhdx")).unwrap();
    qemu_img(dir, &["check", "-r", "all", "copy.vhdx"]);
    qemu_img(
        dir,
        &[
            "compare",
            "-f",
            "vhdx",
            "-F",
            "raw",
            "copy.vhdx",
            "dirty.vdisk.raw",
        ],
    );
    // A format no driver reads is refused by name.
    realworld(dir, "parallels-v1");
    let r = vdisk_in(dir, &["info", "parallels-v1"]);
    r.expect_code(2, "parallels");
    assert!(r.stderr.contains("a Parallels image"), "{}", r.stderr);
}
