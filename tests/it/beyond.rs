//! Where vdisk goes beyond qemu-img: extents qemu drops, chains qemu hangs on, paths qemu
//! follows blindly, and damage `vdisk check` finds.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

fn info_json(dir: &Path, img: &str) -> Value {
    let r = vdisk_in(dir, &["info", img, "--json"]);
    r.expect_code(0, "info");
    serde_json::from_str(&r.stdout).unwrap()
}

fn one_line_error(r: &Run, file: &str, needle: &str) {
    assert_eq!(r.code, Some(2), "{r:#?}");
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.starts_with(&format!("vdisk: error: {file}")),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(needle),
        "expected {needle:?} in {}",
        r.stderr
    );
}

#[test]
fn rdonly_noaccess_and_zero_extents_count_toward_the_size() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let a = pattern(20, 1 << 20);
    let b = pattern(21, 1 << 20);
    std::fs::write(dir.join("a.flat"), &a).unwrap();
    std::fs::write(dir.join("b.flat"), &b).unwrap();
    std::fs::write(dir.join("c.flat"), pattern(22, 512 << 10)).unwrap();
    std::fs::write(
        dir.join("mixed.vmdk"),
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n\
         RW 2048 FLAT \"a.flat\" 0\n\
         RDONLY 1024 FLAT \"b.flat\" 1024\n\
         NOACCESS 1024 FLAT \"c.flat\" 0\n\
         RW 1024 ZERO\n\
         RW 2048 VMFS \"a.flat\"\n",
    )
    .unwrap();
    let info = info_json(dir, "mixed.vmdk");
    assert_eq!(info["virtual_size"], 7168u64 * 512);
    assert_eq!(info["chain"][0]["extents"].as_array().unwrap().len(), 5);
    vdisk_in(dir, &["convert", "mixed.vmdk", "out.raw"]).expect_code(0, "convert");
    let out = std::fs::read(dir.join("out.raw")).unwrap();
    let mut want = a.clone();
    want.extend_from_slice(&b[512 << 10..]); // RDONLY, from sector 1024 of b.flat
    want.extend_from_slice(&vec![0u8; 512 << 10]); // NOACCESS reads as zero
    want.extend_from_slice(&vec![0u8; 512 << 10]); // ZERO
    want.extend_from_slice(&a);
    assert_eq!(out.len(), want.len());
    assert!(out == want);
}

/// A qemu link whose embedded parentFileNameHint is rewritten in place (same length).
fn rewrite_hint(path: &Path, from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let mut data = std::fs::read(path).unwrap();
    let needle = format!("parentFileNameHint=\"{from}\"");
    let pos = data
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .expect("hint");
    let repl = format!("parentFileNameHint=\"{to}\"");
    data[pos..pos + repl.len()].copy_from_slice(repl.as_bytes());
    std::fs::write(path, data).unwrap();
}

#[test]
fn a_link_naming_itself_or_a_loop_is_an_error_not_a_hang() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    qemu_create_vmdk(dir, "zzzz.vmdk", "1M", &[]);
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            "zzzz.vmdk",
            "-F",
            "vmdk",
            "self.vmdk",
        ],
    );
    rewrite_hint(&dir.join("self.vmdk"), "zzzz.vmdk", "self.vmdk");
    // bbbb -> aaaa -> bbbb
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            "zzzz.vmdk",
            "-F",
            "vmdk",
            "aaaa.vmdk",
        ],
    );
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            "aaaa.vmdk",
            "-F",
            "vmdk",
            "bbbb.vmdk",
        ],
    );
    rewrite_hint(&dir.join("aaaa.vmdk"), "zzzz.vmdk", "bbbb.vmdk");
    for (img, file) in [("self.vmdk", "self.vmdk"), ("bbbb.vmdk", "aaaa.vmdk")] {
        for cmd in ["info", "map", "check", "convert"] {
            let mut args = vec![cmd, img];
            if cmd == "convert" {
                args.push("out.raw");
            }
            let r = vdisk_in(dir, &args);
            assert!(
                r.elapsed < Duration::from_secs(5),
                "{cmd} {img} took {:?}",
                r.elapsed
            );
            if cmd == "check" {
                // check examined the image: the loop is damage it reports (exit 1).
                assert_eq!(r.code, Some(1), "{r:#?}");
                assert!(
                    r.stdout
                        .contains(&format!("ERROR: {file}: cannot be opened"))
                        && r.stdout.contains("loop"),
                    "{}",
                    r.stdout
                );
                continue;
            }
            one_line_error(&r, file, "loop");
        }
    }
}

#[test]
fn descriptor_paths_leaving_the_folder_are_refused_unless_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("vm")).unwrap();
    std::fs::write(dir.join("outside.flat"), pattern(30, 1 << 20)).unwrap();
    let abs = dir.join("outside.flat");
    for (name, target) in [
        ("up.vmdk", "../outside.flat".to_string()),
        ("abs.vmdk", abs.display().to_string()),
    ] {
        std::fs::write(
            dir.join("vm").join(name),
            format!("# Disk DescriptorFile\nCID=00000001\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"{target}\" 0\n"),
        )
        .unwrap();
        let img = format!("vm/{name}");
        for cmd in ["info", "convert"] {
            let mut args = vec![cmd, img.as_str()];
            if cmd == "convert" {
                args.push("out.raw");
            }
            one_line_error(&vdisk_in(dir, &args), "vm/", "--allow-outside-paths");
        }
        assert!(!dir.join("out.raw").exists());
        vdisk_in(
            dir,
            &[
                "--allow-outside-paths",
                "convert",
                &img,
                "out.raw",
                "--force",
            ],
        )
        .expect_code(0, "allowed");
        assert_eq!(
            std::fs::read(dir.join("out.raw")).unwrap(),
            pattern(30, 1 << 20)
        );
        std::fs::remove_file(dir.join("out.raw")).unwrap();
    }
}

#[test]
fn a_parent_outside_the_folder_is_refused_unless_allowed() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("vm")).unwrap();
    qemu_create_vmdk(dir, "base.vmdk", "1M", &[]);
    qemu_io(dir, "vmdk", "base.vmdk", &["write -P 0x42 0 64k"]);
    qemu_img(
        &dir.join("vm"),
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            "../base.vmdk",
            "-F",
            "vmdk",
            "link.vmdk",
        ],
    );
    one_line_error(
        &vdisk_in(dir, &["info", "vm/link.vmdk"]),
        "vm/link.vmdk",
        "--allow-outside-paths",
    );
    vdisk_in(
        dir,
        &["--allow-outside-paths", "convert", "vm/link.vmdk", "v.raw"],
    )
    .expect_code(0, "allowed");
    qemu_img(dir, &["convert", "-O", "raw", "vm/link.vmdk", "q.raw"]);
    assert_same_bytes(&dir.join("q.raw"), &dir.join("v.raw"));
}

#[test]
fn a_parent_whose_cid_changed_is_refused() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    qemu_create_vmdk(dir, "base.vmdk", "1M", &["subformat=monolithicFlat"]);
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            "base.vmdk",
            "-F",
            "vmdk",
            "link.vmdk",
        ],
    );
    vdisk_in(dir, &["info", "link.vmdk"]).expect_code(0, "intact chain");
    let text = std::fs::read_to_string(dir.join("base.vmdk")).unwrap();
    let line = text.lines().find(|l| l.starts_with("CID=")).unwrap();
    let changed = text.replace(line, "CID=0badc0de");
    std::fs::write(dir.join("base.vmdk"), changed).unwrap();
    one_line_error(
        &vdisk_in(dir, &["convert", "link.vmdk", "out.raw"]),
        "link.vmdk",
        "parentCID",
    );
}

/// Offsets of a qemu monolithicSparse image's directories, read straight from the header
/// bytes (rgdOffset at byte 48, gdOffset at byte 56, in sectors).
fn directories(path: &Path) -> (u64, u64) {
    let data = std::fs::read(path).unwrap();
    let rgd = u64::from_le_bytes(data[48..56].try_into().unwrap()) * 512;
    let gd = u64::from_le_bytes(data[56..64].try_into().unwrap()) * 512;
    (gd, rgd)
}

fn read_u32(path: &Path, at: u64) -> u32 {
    let mut b = [0u8; 4];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut b, at)
        .unwrap();
    u32::from_le_bytes(b)
}

fn write_u32(path: &Path, at: u64, v: u32) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&v.to_le_bytes(), at).unwrap();
}

/// A 4 MiB qemu image with data in its first grains, its raw contents, and its directories.
fn damaged_candidate(dir: &Path, name: &str) -> (std::path::PathBuf, u64, u64) {
    qemu_create_vmdk(dir, name, "40M", &[]);
    qemu_io(
        dir,
        "vmdk",
        name,
        &["write -P 0x61 0 256k", "write -P 0x62 33M 64k"],
    );
    let path = dir.join(name);
    let (gd, rgd) = directories(&path);
    (path, gd, rgd)
}

#[test]
fn check_finds_grains_past_the_end_like_qemu_img_check() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (img, gd, rgd) = damaged_candidate(dir, "past.vmdk");
    for dir_off in [gd, rgd] {
        let table = u64::from(read_u32(&img, dir_off)) * 512;
        write_u32(&img, table + 4, 0x00ff_ffff); // grain 1 far past the end, in both copies
    }
    let r = vdisk_in(dir, &["check", "past.vmdk"]);
    r.expect_code(1, "check");
    assert!(
        r.stdout.contains("grain 1: offset") && r.stdout.contains("past the end"),
        "{}",
        r.stdout
    );
    let mut q = std::process::Command::new("qemu-img");
    q.args(["check", "past.vmdk"]).current_dir(dir);
    assert_ne!(run(q).code, Some(0), "qemu-img check should also complain");
    // Reading that grain is an error, not garbage.
    let r = vdisk_in(dir, &["convert", "past.vmdk", "out.raw"]);
    one_line_error(&r, "past.vmdk", "past the end");
    assert!(!dir.join("out.raw").exists());
}

#[test]
fn check_finds_overlapping_tables_and_disagreeing_directories() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (img, gd, rgd) = damaged_candidate(dir, "overlap.vmdk");
    let t0 = read_u32(&img, gd);
    write_u32(&img, gd + 4, t0); // table 1 is table 0 again
    let r = vdisk_in(dir, &["check", "overlap.vmdk"]);
    r.expect_code(1, "overlap");
    assert!(
        r.stdout
            .contains("grain table 1 of the grain directory overlaps grain table 0"),
        "{}",
        r.stdout
    );

    let (img, _gd, rgd2) = damaged_candidate(dir, "disagree.vmdk");
    let _ = rgd;
    write_u32(&img, rgd2 + 4, 0);
    let r = vdisk_in(dir, &["check", "--json", "disagree.vmdk"]);
    r.expect_code(1, "disagree");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["clean"], false);
    assert!(
        v["errors"].to_string().contains("disagree at entry 1"),
        "{v}"
    );
}

#[test]
fn a_damaged_primary_directory_falls_back_to_the_redundant_one() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (img, gd, _) = damaged_candidate(dir, "fallback.vmdk");
    qemu_img(dir, &["convert", "-O", "raw", "fallback.vmdk", "good.raw"]);
    // Primary directory entry 0 points past the end; entry 1 is wiped.
    write_u32(&img, gd, 0x0fff_ffff);
    write_u32(&img, gd + 4, 0);
    // A grain entry in the primary table 1 ... is gone with its entry, and a primary grain
    // pointer damaged in table 0 is irrelevant now: the redundant copy serves both.
    vdisk_in(dir, &["convert", "fallback.vmdk", "v.raw"]).expect_code(0, "fallback read");
    assert_same_bytes(&dir.join("good.raw"), &dir.join("v.raw"));
    let r = vdisk_in(dir, &["check", "fallback.vmdk"]);
    r.expect_code(1, "check reports the damage it worked around");
    assert!(r.stdout.contains("redundant"), "{}", r.stdout);
}

#[test]
fn a_damaged_grain_pointer_is_read_from_the_redundant_table() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (img, gd, _) = damaged_candidate(dir, "entry.vmdk");
    qemu_img(dir, &["convert", "-O", "raw", "entry.vmdk", "good.raw"]);
    let table = u64::from(read_u32(&img, gd)) * 512;
    write_u32(&img, table + 8, 0x7fff_ffff);
    vdisk_in(dir, &["convert", "entry.vmdk", "v.raw"]).expect_code(0, "fallback read");
    assert_same_bytes(&dir.join("good.raw"), &dir.join("v.raw"));
}

#[test]
fn unclean_shutdown_and_header_version_are_reported() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    qemu_create_vmdk(dir, "u.vmdk", "1M", &["zeroed_grain=on"]);
    let info = info_json(dir, "u.vmdk");
    assert_eq!(
        (info["unclean_shutdown"].clone(), info["version"].clone()),
        (Value::Bool(false), Value::from(2))
    );
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("u.vmdk"))
        .unwrap();
    f.write_all_at(&[1], 72).unwrap();
    let info = info_json(dir, "u.vmdk");
    assert_eq!(info["unclean_shutdown"], true);
    assert!(vdisk_in(dir, &["info", "u.vmdk"])
        .stdout
        .contains("unclean shutdown: yes"));
    let r = vdisk_in(dir, &["check", "u.vmdk"]);
    r.expect_code(0, "a warning is not an error");
    assert!(r.stdout.contains("uncleanShutdown"), "{}", r.stdout);
}
