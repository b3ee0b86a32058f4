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
    let before: Vec<_> = std::fs::read_dir(dir.join("repo"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name(), std::fs::read(e.path()).unwrap())
        })
        .collect();
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
    let mut after: Vec<_> = std::fs::read_dir(dir.join("repo"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    let mut before = before;
    before.sort();
    after.sort();
    assert!(before == after, "the repository changed");
}
