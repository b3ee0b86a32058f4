//! Images vdisk writes must pass `qemu-img check` and compare identical with `qemu-img compare`.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;
use crate::interop::mixed_source;

const SUBFORMATS: [&str; 5] = [
    "monolithicSparse",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "streamOptimized",
];

/// Bytes on disk of every file in `dir` whose name starts with `stem`.
fn usage(dir: &Path, stem: &str) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with(stem))
        .map(|e| e.metadata().unwrap().blocks() * 512)
        .sum()
}

#[test]
fn every_subformat_passes_qemu_check_and_compare() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    mixed_source(dir, "src.raw");
    // Sources of every kind: raw, a qemu sparse image, a qemu stream, a qemu chain.
    qemu_img(
        dir,
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "src.raw",
            "qsparse.vmdk",
        ],
    );
    qemu_to_vmdk(dir, "streamOptimized", "src.raw", "qstream.vmdk");
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            "qsparse.vmdk",
            "-F",
            "vmdk",
            "qlink.vmdk",
        ],
    );
    qemu_io(
        dir,
        "vmdk",
        "qlink.vmdk",
        &["write -P 0x99 100k 300k", "write -z 3M 64k"],
    );
    for src in ["src.raw", "qsparse.vmdk", "qstream.vmdk", "qlink.vmdk"] {
        for sf in SUBFORMATS {
            let out = format!("out-{sf}.vmdk");
            vdisk_in(
                dir,
                &[
                    "convert",
                    src,
                    &out,
                    "-O",
                    "vmdk",
                    "--subformat",
                    sf,
                    "--adapter",
                    "lsilogic",
                ],
            )
            .expect_code(0, &format!("{src} -> {sf}"));
            qemu_img(dir, &["check", &out]);
            qemu_img(dir, &["compare", src, &out]);
            // And vdisk reads its own output back the same.
            vdisk_in(dir, &["convert", &out, "back.raw", "--force"]).expect_code(0, "read back");
            qemu_img(dir, &["convert", "-O", "raw", src, "want.raw"]);
            assert_same_bytes(&dir.join("want.raw"), &dir.join("back.raw"));
            let info: Value =
                serde_json::from_str(&vdisk_in(dir, &["info", "--json", &out]).stdout).unwrap();
            assert_eq!(info["subformat"], sf);
            assert_eq!(info["chain"][0]["adapter_type"], "lsilogic");
            vdisk_in(dir, &["check", &out]).expect_code(0, "vdisk check");
            for f in std::fs::read_dir(dir).unwrap() {
                let name = f.unwrap().file_name().to_string_lossy().into_owned();
                assert!(!name.contains("vdisk-partial"), "left behind: {name}");
                if name.starts_with("out-") {
                    std::fs::remove_file(dir.join(name)).unwrap();
                }
            }
        }
    }
}

#[test]
fn seven_mib_of_data_in_300_mib_stays_small_on_disk() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let f = std::fs::File::create(dir.join("src.raw")).unwrap();
    f.set_len(300 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    for i in 0..7u64 {
        f.write_all_at(&pattern(70 + i, 1 << 20), i * (40 << 20) + 12345 * 512)
            .unwrap();
    }
    drop(f);
    for sf in SUBFORMATS {
        let out = format!("{sf}.vmdk");
        vdisk_in(
            dir,
            &["convert", "src.raw", &out, "-O", "vmdk", "--subformat", sf],
        )
        .expect_code(0, sf);
        let used = usage(dir, sf);
        // 7 MiB of data touches 7 MiB + 7 partial grains (an unaligned 1 MiB run straddles
        // 17 grains): at most 7.5 MiB, plus metadata.
        assert!(used <= 8 << 20, "{sf}: {used} bytes on disk");
        qemu_img(dir, &["compare", "src.raw", &out]);
    }
}

#[test]
fn merge_collapses_a_qemu_chain_whole_or_above_a_base() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    qemu_create_vmdk(dir, "base.vmdk", "4M", &[]);
    qemu_io(dir, "vmdk", "base.vmdk", &["write -P 0x01 0 4M"]);
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
            "mid.vmdk",
        ],
    );
    qemu_io(
        dir,
        "vmdk",
        "mid.vmdk",
        &["write -P 0x02 64k 1M", "write -z 2M 128k"],
    );
    qemu_img(
        dir,
        &[
            "create", "-q", "-f", "vmdk", "-b", "mid.vmdk", "-F", "vmdk", "top.vmdk",
        ],
    );
    qemu_io(
        dir,
        "vmdk",
        "top.vmdk",
        &["write -P 0x03 512k 100k", "write -P 0x04 4000k 10k"],
    );

    vdisk_in(dir, &["merge", "top.vmdk", "-o", "whole.vmdk"]).expect_code(0, "merge");
    qemu_img(dir, &["check", "whole.vmdk"]);
    qemu_img(dir, &["compare", "top.vmdk", "whole.vmdk"]);
    let info: Value =
        serde_json::from_str(&vdisk_in(dir, &["info", "--json", "whole.vmdk"]).stdout).unwrap();
    assert_eq!(info["chain"].as_array().unwrap().len(), 1, "no parent");
    assert_eq!(info["parent_cid"], "ffffffff");
    assert!(!qemu_img(dir, &["info", "whole.vmdk"]).contains("backing file"));

    vdisk_in(
        dir,
        &[
            "merge",
            "top.vmdk",
            "-o",
            "above.vmdk",
            "--base",
            "base.vmdk",
        ],
    )
    .expect_code(0, "merge --base");
    qemu_img(dir, &["check", "above.vmdk"]);
    qemu_img(dir, &["compare", "top.vmdk", "above.vmdk"]);
    let info: Value =
        serde_json::from_str(&vdisk_in(dir, &["info", "--json", "above.vmdk"]).stdout).unwrap();
    let chain = info["chain"].as_array().unwrap();
    assert_eq!(chain.len(), 2, "one link above the base");
    assert_eq!(chain[1]["path"], "base.vmdk");
    assert_eq!(chain[0]["parent_cid"], chain[1]["cid"]);
    // The zeroed grains of mid mask the base in the merged link too.
    vdisk_in(dir, &["convert", "above.vmdk", "a.raw"]).expect_code(0, "read");
    let data = std::fs::read(dir.join("a.raw")).unwrap();
    assert!(data[2 << 20..(2 << 20) + (128 << 10)]
        .iter()
        .all(|&b| b == 0));
    // --base naming something outside the chain, or the image itself, is an error.
    let r = vdisk_in(
        dir,
        &["merge", "top.vmdk", "-o", "x.vmdk", "--base", "whole.vmdk"],
    );
    assert!(
        r.code == Some(2) && r.stderr.contains("not a link of the chain"),
        "{r:#?}"
    );
    let r = vdisk_in(
        dir,
        &["merge", "top.vmdk", "-o", "x.vmdk", "--base", "top.vmdk"],
    );
    assert_eq!(r.code, Some(2), "{r:#?}");
    assert!(!dir.join("x.vmdk").exists());
}

#[test]
fn existing_outputs_are_refused_without_force() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    mixed_source(dir, "src.raw");
    std::fs::write(dir.join("taken.vmdk"), b"mine").unwrap();
    let r = vdisk_in(dir, &["convert", "src.raw", "taken.vmdk", "-O", "vmdk"]);
    assert!(r.code == Some(2) && r.stderr.contains("--force"), "{r:#?}");
    assert_eq!(std::fs::read(dir.join("taken.vmdk")).unwrap(), b"mine");
    // A file at an extent name the output would use is the user's too: the new image takes
    // fresh extent names and leaves it alone.
    std::fs::write(dir.join("split-s001.vmdk"), b"also mine").unwrap();
    let r = vdisk_in(
        dir,
        &[
            "convert",
            "src.raw",
            "split.vmdk",
            "-O",
            "vmdk",
            "--subformat",
            "twoGbMaxExtentSparse",
        ],
    );
    r.expect_code(0, "split output beside a foreign extent name");
    assert_eq!(
        std::fs::read(dir.join("split-s001.vmdk")).unwrap(),
        b"also mine"
    );
    let desc = std::fs::read_to_string(dir.join("split.vmdk")).unwrap();
    assert!(desc.contains("\"split-1-s001.vmdk\""), "{desc}");
    qemu_img(dir, &["compare", "split.vmdk", "src.raw"]);
    vdisk_in(
        dir,
        &[
            "convert",
            "src.raw",
            "split.vmdk",
            "-O",
            "vmdk",
            "--subformat",
            "twoGbMaxExtentSparse",
            "--force",
        ],
    )
    .expect_code(0, "forced");
    qemu_img(dir, &["compare", "src.raw", "split.vmdk"]);
    // The replaced image's extents are gone; the user's file is not.
    assert!(!dir.join("split-1-s001.vmdk").exists());
    assert!(dir.join("split-2-s001.vmdk").exists());
    assert_eq!(
        std::fs::read(dir.join("split-s001.vmdk")).unwrap(),
        b"also mine"
    );
    // A symbolic link at the destination is replaced, never written through.
    std::fs::write(dir.join("victim"), b"untouched").unwrap();
    std::os::unix::fs::symlink("victim", dir.join("link.vmdk")).unwrap();
    vdisk_in(
        dir,
        &["convert", "src.raw", "link.vmdk", "-O", "vmdk", "--force"],
    )
    .expect_code(0, "over a symlink");
    assert_eq!(std::fs::read(dir.join("victim")).unwrap(), b"untouched");
}

#[test]
fn a_killed_conversion_leaves_nothing_at_the_destination() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("src.raw"), pattern(80, 48 << 20)).unwrap();
    for sf in ["streamOptimized", "twoGbMaxExtentFlat", "monolithicSparse"] {
        // --io-limit makes the run last seconds, so the kill lands in the middle.
        let mut c = Command::new(vdisk_bin());
        c.args([
            "--io-limit",
            "8M",
            "convert",
            "src.raw",
            "out.vmdk",
            "-O",
            "vmdk",
            "--subformat",
            sf,
        ])
        .current_dir(dir);
        let mut child = c.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(700));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.starts_with("out")),
            "{sf}: {names:?}"
        );
        // The next run succeeds and reuses (then removes) the temporary names.
        vdisk_in(
            dir,
            &[
                "convert",
                "src.raw",
                "out.vmdk",
                "-O",
                "vmdk",
                "--subformat",
                sf,
            ],
        )
        .expect_code(0, sf);
        let names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.contains("vdisk-partial")),
            "{sf}: {names:?}"
        );
        vdisk_in(dir, &["convert", "out.vmdk", "back.raw", "--force"]).expect_code(0, "read back");
        assert_same_bytes(&dir.join("src.raw"), &dir.join("back.raw"));
        for n in names.iter().filter(|n| n.starts_with("out")) {
            std::fs::remove_file(dir.join(n)).unwrap();
        }
    }
}

#[test]
fn streams_are_read_from_standard_input() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    mixed_source(dir, "src.raw");
    qemu_to_vmdk(dir, "streamOptimized", "src.raw", "qemu.vmdk");
    vdisk_in(
        dir,
        &[
            "convert",
            "src.raw",
            "ours.vmdk",
            "-O",
            "vmdk",
            "--subformat",
            "streamOptimized",
        ],
    )
    .expect_code(0, "write");
    let vmware_disk = crate::stream_spec::write_vmware_stream(&dir.join("vmware.vmdk"));
    std::fs::write(dir.join("vmware.raw"), &vmware_disk).unwrap();
    for (img, want) in [
        ("qemu.vmdk", "src.raw"),
        ("ours.vmdk", "src.raw"),
        ("vmware.vmdk", "vmware.raw"),
    ] {
        for (args, out) in [
            (&["convert", "-", "o.raw", "--force"][..], "o.raw"),
            (
                &["convert", "-", "o.vmdk", "-O", "vmdk", "--force"],
                "o.vmdk",
            ),
        ] {
            let mut c = Command::new("sh");
            let cmdline = format!("cat {img} | {} {}", vdisk_bin().display(), args.join(" "));
            c.args(["-c", &cmdline]).current_dir(dir);
            let r = run(c);
            assert_eq!(r.code, Some(0), "{cmdline}: {}", r.stderr);
            qemu_img(dir, &["compare", want, out]);
        }
    }
    // A truncated stream is a one-line error, and leaves no output.
    let bytes = std::fs::read(dir.join("ours.vmdk")).unwrap();
    std::fs::write(dir.join("cut.vmdk"), &bytes[..bytes.len() / 2 + 100]).unwrap();
    let mut c = Command::new("sh");
    c.args([
        "-c",
        &format!("{} convert - cut.raw < cut.vmdk", vdisk_bin().display()),
    ])
    .current_dir(dir);
    let r = run(c);
    assert_eq!(r.code, Some(2), "{r:#?}");
    assert!(
        r.stderr.starts_with("vdisk: error: <stdin>: ") && r.stderr.lines().count() == 1,
        "{}",
        r.stderr
    );
    assert!(!dir.join("cut.raw").exists());
}

#[test]
fn compressed_size_is_close_to_qemu_img() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    mixed_source(dir, "src.raw");
    qemu_to_vmdk(dir, "streamOptimized", "src.raw", "q.vmdk");
    vdisk_in(
        dir,
        &[
            "convert",
            "src.raw",
            "v.vmdk",
            "-O",
            "vmdk",
            "--subformat",
            "streamOptimized",
        ],
    )
    .expect_code(0, "write");
    let q = std::fs::metadata(dir.join("q.vmdk")).unwrap().len() as f64;
    let v = std::fs::metadata(dir.join("v.vmdk")).unwrap().len() as f64;
    // Smaller is fine (qemu-img reserves its tables up front; VMware's layout writes only the
    // tables in use); larger by more than 5% is not.
    assert!(v <= q * 1.05, "vdisk {v} bytes, qemu-img {q} bytes");
}
