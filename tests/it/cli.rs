//! The CLI contract on the committed fixture: the README's example, exit statuses and errors.

use std::path::{Path, PathBuf};

use crate::common::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

#[test]
fn readme_example_chain_converts_like_qemu() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let top = fixtures().join("chain/top.vmdk");
    let top = top.to_str().unwrap();
    let r = vdisk_in(tmp.path(), &["info", top]);
    r.expect_code(0, "info");
    assert!(r.stdout.contains("chain: 3 file(s)"), "{}", r.stdout);
    vdisk_in(tmp.path(), &["convert", top, "v.raw"]).expect_code(0, "convert");
    qemu_img(tmp.path(), &["convert", "-O", "raw", top, "q.raw"]);
    assert_same_bytes(&tmp.path().join("q.raw"), &tmp.path().join("v.raw"));
    // The provenance in fixtures/README.md, checked independently of qemu too.
    let data = std::fs::read(tmp.path().join("v.raw")).unwrap();
    let k = 64 << 10;
    assert!(data[..k].iter().all(|&b| b == 0x42));
    assert!(data[k..2 * k].iter().all(|&b| b == 0x4d));
    assert!(data[2 * k..3 * k].iter().all(|&b| b == 0x54));
    assert!(data[3 * k..].iter().all(|&b| b == 0));
}

#[test]
fn convert_refuses_an_existing_destination_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let top = fixtures().join("chain/top.vmdk");
    std::fs::write(tmp.path().join("keep.raw"), b"precious").unwrap();
    let r = vdisk_in(tmp.path(), &["convert", top.to_str().unwrap(), "keep.raw"]);
    r.expect_code(2, "existing destination");
    assert!(
        r.stderr.contains("keep.raw: already exists") && r.stderr.contains("--force"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read(tmp.path().join("keep.raw")).unwrap(),
        b"precious"
    );
    vdisk_in(
        tmp.path(),
        &["convert", top.to_str().unwrap(), "keep.raw", "--force"],
    )
    .expect_code(0, "forced");
    assert_eq!(
        std::fs::metadata(tmp.path().join("keep.raw"))
            .unwrap()
            .len(),
        256 << 10
    );
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn usage_errors_are_one_line_with_status_2() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [
        &["info"][..],
        &["frobnicate"],
        &["convert", "a"],
        &["--threads", "0", "info", "x"],
        &["--io-limit", "lots", "info", "x"],
    ] {
        let r = vdisk_in(tmp.path(), args);
        assert_eq!(r.code, Some(2), "{args:?}: {r:#?}");
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.starts_with("vdisk: error: "),
            "{args:?}: {}",
            r.stderr
        );
    }
    vdisk_in(tmp.path(), &["--help"]).expect_code(0, "help");
}

#[test]
fn raw_images_map_their_holes_and_convert_sparse() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let f = std::fs::File::create(dir.join("disk.raw")).unwrap();
    f.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&pattern(60, 1 << 20), 10 << 20).unwrap();
    drop(f);
    let r = vdisk_in(dir, &["map", "--json", "disk.raw"]);
    r.expect_code(0, "map");
    let map: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let data: u64 = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert!((1 << 20..8 << 20).contains(&data), "{data}");
    vdisk_in(dir, &["convert", "disk.raw", "copy.raw"]).expect_code(0, "convert");
    assert_same_bytes(&dir.join("disk.raw"), &dir.join("copy.raw"));
    use std::os::unix::fs::MetadataExt;
    let used = std::fs::metadata(dir.join("copy.raw")).unwrap().blocks() * 512;
    assert!(used < 4 << 20, "the copy should stay sparse, uses {used}");
    let info: serde_json::Value =
        serde_json::from_str(&vdisk_in(dir, &["info", "--json", "disk.raw"]).stdout).unwrap();
    assert_eq!(info["format"], "raw");
    assert_eq!(info["virtual_size"], 64u64 << 20);
    vdisk_in(dir, &["check", "disk.raw"]).expect_code(0, "check raw");
}

#[test]
fn a_mostly_empty_64_gib_image_converts_to_an_almost_empty_file() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let f = std::fs::File::create(dir.join("big.raw")).unwrap();
    f.set_len(64 << 30).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&pattern(61, 2 << 20), 40 << 30).unwrap();
    drop(f);
    qemu_create_vmdk(dir, "big.vmdk", "64G", &[]);
    qemu_io(dir, "vmdk", "big.vmdk", &["write -P 0x17 50G 3M"]);
    use std::os::unix::fs::MetadataExt;
    for src in ["big.raw", "big.vmdk"] {
        let r = vdisk_in(dir, &["convert", src, "out.raw", "--force"]);
        r.expect_code(0, src);
        let meta = std::fs::metadata(dir.join("out.raw")).unwrap();
        assert_eq!(meta.len(), 64 << 30);
        assert!(
            meta.blocks() * 512 < 16 << 20,
            "{src}: {} bytes used",
            meta.blocks() * 512
        );
    }
    let mut buf = vec![0u8; 3 << 20];
    std::fs::File::open(dir.join("out.raw"))
        .unwrap()
        .read_exact_at(&mut buf, 50 << 30)
        .unwrap();
    assert!(buf.iter().all(|&b| b == 0x17));
}

/// Usage errors keep clap's words on one line: what is missing, and the subcommand a typo
/// was probably meant to be.
#[test]
fn usage_errors_name_what_is_missing_and_suggest_the_command() {
    let tmp = tempfile::tempdir().unwrap();
    let r = vdisk_in(tmp.path(), &["backup", "disk.raw"]);
    assert_eq!(r.code, Some(2));
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("required arguments were not provided")
            && r.stderr.contains("vdisk backup --help"),
        "{}",
        r.stderr
    );
    let r = vdisk_in(tmp.path(), &["dif", "a", "b"]);
    assert_eq!(r.code, Some(2));
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("unrecognized subcommand 'dif'") && r.stderr.contains("'diff'"),
        "{}",
        r.stderr
    );
    let r = vdisk_in(tmp.path(), &["hash", "a", "-o", "m", "--granularity", "1T"]);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("power of two"), "{}", r.stderr);
}

/// Every command that reports a result prints one JSON document with `--json`.
#[test]
fn json_summaries_of_convert_hash_backup_restore_prune_merge() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut disk = vec![0u8; 4 << 20];
    disk[1 << 20..(1 << 20) + 70_000].copy_from_slice(&pattern(7, 70_000));
    std::fs::write(dir.join("d.raw"), &disk).unwrap();
    let json = |args: &[&str]| -> serde_json::Value {
        let r = vdisk_in(dir, args);
        r.expect_code(0, &args.join(" "));
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", r.stdout))
    };
    let v = json(&["convert", "d.raw", "d.vmdk", "-O", "vmdk", "--json"]);
    assert_eq!(v["virtual_size"], 4u64 << 20);
    assert_eq!(v["subformat"], "monolithicSparse");
    assert!(v["bytes_read"].as_u64().unwrap() >= 70_000);
    let v = json(&["hash", "d.raw", "-o", "d.hashes", "--json"]);
    assert_eq!(
        (v["size"].as_u64(), v["blocks"].as_u64()),
        (Some(4 << 20), Some(64))
    );
    let v = json(&["backup", "d.raw", "repo", "--json"]);
    assert_eq!(
        (v["point"].as_u64(), v["kind"].as_str()),
        (Some(1), Some("full"))
    );
    let v = json(&["backup", "d.raw", "repo", "--json"]);
    assert_eq!(v["kind"], "incremental");
    let v = json(&["restore", "repo", "back.raw", "--json"]);
    assert_eq!(
        (v["point"].as_u64(), v["size"].as_u64()),
        (Some(2), Some(4 << 20))
    );
    assert_same_bytes(&dir.join("d.raw"), &dir.join("back.raw"));
    let v = json(&["prune", "repo", "--keep-last", "1", "--json"]);
    assert_eq!(
        (
            v["removed"][0]["point"].as_u64(),
            v["kept"][0]["point"].as_u64()
        ),
        (Some(1), Some(2))
    );
    let v = json(&["merge", "d.vmdk", "-o", "m.vmdk", "--json"]);
    assert_eq!(v["virtual_size"], 4u64 << 20);
    qemu_img(dir, &["compare", "m.vmdk", "d.raw"]);
}

/// Shell completions for bash, zsh and fish name the subcommands.
#[test]
fn completions_for_bash_zsh_and_fish() {
    let tmp = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let r = vdisk_in(tmp.path(), &["completions", shell]);
        r.expect_code(0, shell);
        for sub in ["backup", "restore", "serve", "verify"] {
            assert!(r.stdout.contains(sub), "{shell}: no {sub}");
        }
    }
    assert_eq!(vdisk_in(tmp.path(), &["completions", "tcsh"]).code, Some(2));
}
