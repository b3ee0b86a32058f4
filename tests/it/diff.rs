//! `vdisk diff`, `hash`, `bitmap` and `merge BITMAP…`: the changed set must be exact, checked
//! against a set computed here independently from the bytes.

use std::path::Path;

use serde_json::Value;

use crate::common::*;

/// The changed blocks of `new` against `old` (zero past the old end), as joined extents
/// clipped to the new size: the contract of `diff --json`.
fn expected_extents(old: &[u8], new: &[u8], g: usize) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (b, block) in new.chunks(g).enumerate() {
        let start = b * g;
        let changed = block
            .iter()
            .enumerate()
            .any(|(i, &x)| x != old.get(start + i).copied().unwrap_or(0));
        if changed {
            let len = block.len() as u64;
            match out.last_mut() {
                Some(last) if last.0 + last.1 == start as u64 => last.1 += len,
                _ => out.push((start as u64, len)),
            }
        }
    }
    out
}

fn extents_of(v: &Value) -> Vec<(u64, u64)> {
    v["extents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect()
}

fn diff_json(dir: &Path, args: &[&str]) -> (Option<i32>, Value) {
    let mut all = vec!["diff", "--json"];
    all.extend_from_slice(args);
    let r = vdisk_in(dir, &all);
    assert!(matches!(r.code, Some(0 | 1)), "{all:?}: {r:#?}");
    (
        r.code,
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout)),
    )
}

/// An old disk and a new one: random data, holes, one-byte changes on both edges of blocks at
/// every granularity tested, a run that became zero, and a grown tail.
fn old_and_new(dir: &Path, grow: bool) -> (Vec<u8>, Vec<u8>) {
    let size = 6 << 20;
    let mut old = vec![0u8; size];
    old[..2 << 20].copy_from_slice(&pattern(100, 2 << 20));
    old[4 << 20..5 << 20].copy_from_slice(&pattern(101, 1 << 20));
    let mut new = old.clone();
    for edge in [4096usize, 65536, 1 << 20, 3 << 20] {
        new[edge - 1] ^= 0xff; // last byte of a block
        new[edge] ^= 0x01; // first byte of the next
    }
    new[300_000..300_000 + 10_000].copy_from_slice(&pattern(102, 10_000));
    new[4 << 20..(4 << 20) + 200_000].fill(0); // data that became zero
    if grow {
        new.resize(size + (3 << 20) + 512, 0);
        new[size + (1 << 20)..size + (1 << 20) + 7].copy_from_slice(b"grown!!");
    }
    let write_sparse = |name: &str, data: &[u8]| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(dir.join(name)).unwrap();
        f.set_len(data.len() as u64).unwrap();
        for (i, c) in data.chunks(65536).enumerate() {
            if c.iter().any(|&b| b != 0) {
                f.write_all_at(c, (i * 65536) as u64).unwrap();
            }
        }
    };
    write_sparse("old.raw", &old);
    write_sparse("new.raw", &new);
    (old, new)
}

#[test]
fn raw_against_raw_is_exact_at_every_granularity() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (old, new) = old_and_new(dir, false);
    for (g, gs) in [(4096usize, "4K"), (65536, "64K"), (1 << 20, "1M")] {
        let (code, v) = diff_json(dir, &["--granularity", gs, "old.raw", "new.raw"]);
        assert_eq!(code, Some(1));
        assert_eq!(
            extents_of(&v),
            expected_extents(&old, &new, g),
            "granularity {gs}"
        );
        assert_eq!(v["granularity"], g as u64);
        assert_eq!(v["old_size"], old.len() as u64);
        assert_eq!(v["new_size"], new.len() as u64);
        let blocks = expected_extents(&old, &new, g)
            .iter()
            .map(|e| e.1.div_ceil(g as u64))
            .sum::<u64>();
        assert_eq!(v["changed_blocks"], blocks);
    }
    let (code, v) = diff_json(dir, &["old.raw", "old.raw"]);
    assert_eq!(code, Some(0), "identical");
    assert_eq!(v["changed_blocks"], 0);
}

#[test]
fn a_grown_disk_counts_blocks_past_the_old_end_unless_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (old, new) = old_and_new(dir, true);
    for (g, gs) in [(4096usize, "4K"), (65536, "64K")] {
        let (_, v) = diff_json(dir, &["--granularity", gs, "old.raw", "new.raw"]);
        assert_eq!(
            extents_of(&v),
            expected_extents(&old, &new, g),
            "granularity {gs}"
        );
        let last = *extents_of(&v).last().unwrap();
        assert!(last.0 + last.1 <= new.len() as u64);
    }
    // Through a manifest too.
    vdisk_in(
        dir,
        &[
            "hash",
            "old.raw",
            "-o",
            "old.manifest",
            "--granularity",
            "4K",
        ],
    )
    .expect_code(0, "hash");
    let (_, v) = diff_json(dir, &["old.manifest", "new.raw"]);
    assert_eq!(extents_of(&v), expected_extents(&old, &new, 4096));
    assert_eq!(v["old_size"], old.len() as u64);
}

#[test]
fn vmdk_against_stream_optimized_is_exact() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (old, new) = old_and_new(dir, false);
    qemu_img(dir, &["convert", "-O", "vmdk", "old.raw", "old.vmdk"]);
    qemu_to_vmdk(dir, "streamOptimized", "new.raw", "new.vmdk");
    for (g, gs) in [(4096usize, "4K"), (65536, "64K"), (1 << 20, "1M")] {
        let (_, v) = diff_json(dir, &["--granularity", gs, "old.vmdk", "new.vmdk"]);
        assert_eq!(
            extents_of(&v),
            expected_extents(&old, &new, g),
            "granularity {gs}"
        );
    }
    // Flat extents are compared straight from their memory maps.
    qemu_to_vmdk(dir, "monolithicFlat", "old.raw", "oldflat.vmdk");
    qemu_to_vmdk(dir, "twoGbMaxExtentFlat", "new.raw", "newflat.vmdk");
    let (_, v) = diff_json(
        dir,
        &["--granularity", "4K", "oldflat.vmdk", "newflat.vmdk"],
    );
    assert_eq!(extents_of(&v), expected_extents(&old, &new, 4096));
}

#[test]
fn image_against_manifest_is_exact() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (old, new) = old_and_new(dir, false);
    qemu_img(dir, &["convert", "-O", "vmdk", "old.raw", "old.vmdk"]);
    for (g, gs) in [(4096usize, "4K"), (65536, "64K"), (1 << 20, "1M")] {
        let m = format!("old-{gs}.manifest");
        vdisk_in(dir, &["hash", "old.vmdk", "-o", &m, "--granularity", gs]).expect_code(0, "hash");
        let (_, v) = diff_json(dir, &[&m, "new.raw"]);
        assert_eq!(
            extents_of(&v),
            expected_extents(&old, &new, g),
            "granularity {gs}"
        );
    }
    // A coarser diff from a finer manifest is the resampled set; a finer one is refused.
    let (_, v) = diff_json(dir, &["--granularity", "1M", "old-4K.manifest", "new.raw"]);
    assert_eq!(extents_of(&v), expected_extents(&old, &new, 1 << 20));
    let r = vdisk_in(
        dir,
        &["diff", "--granularity", "4K", "old-64K.manifest", "new.raw"],
    );
    assert_eq!(r.code, Some(2), "{r:#?}");
    // A damaged manifest is an error, not a wrong answer.
    let mut bytes = std::fs::read(dir.join("old-64K.manifest")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(dir.join("bad.manifest"), bytes).unwrap();
    let r = vdisk_in(dir, &["diff", "bad.manifest", "new.raw"]);
    assert_eq!(r.code, Some(2), "{r:#?}");
    assert!(
        r.stderr.starts_with("vdisk: error: bad.manifest: ") && r.stderr.contains("checksum"),
        "{}",
        r.stderr
    );
}

#[test]
fn delta_link_reads_as_new_in_qemu_and_holds_only_changes() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (old, new) = old_and_new(dir, false);
    qemu_img(dir, &["convert", "-O", "vmdk", "old.raw", "old.vmdk"]);
    let (code, v) = diff_json(
        dir,
        &[
            "old.vmdk",
            "new.raw",
            "--delta",
            "link.vmdk",
            "--bitmap",
            "changes.bitmap",
        ],
    );
    assert_eq!(code, Some(1));
    qemu_img(dir, &["compare", "link.vmdk", "new.raw"]);
    let changed: u64 = expected_extents(&old, &new, 65536)
        .iter()
        .map(|e| e.1)
        .sum();
    let len = std::fs::metadata(dir.join("link.vmdk")).unwrap().len();
    assert!(
        len <= changed + (128 << 10),
        "link {len} bytes for {changed} changed bytes"
    );
    // The bitmap written on the way says the same as the JSON.
    let r = vdisk_in(dir, &["bitmap", "show", "--json", "changes.bitmap"]);
    r.expect_code(0, "show");
    let shown: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(extents_of(&shown), extents_of(&v));
    assert_eq!(shown["granularity"], 65536);
    // --delta needs a VMDK as OLD.
    let r = vdisk_in(dir, &["diff", "old.raw", "new.raw", "--delta", "x.vmdk"]);
    assert_eq!(r.code, Some(2), "{r:#?}");
    assert!(!dir.join("x.vmdk").exists());
}

#[test]
fn merged_bitmaps_cover_the_whole_change_and_mix_granularities() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let a = pattern(110, 4 << 20);
    let mut b = a.clone();
    b[1000..1100].fill(1);
    let mut c = b.clone();
    c[3 << 20..(3 << 20) + 5].fill(2);
    c[1050] = 9;
    for (name, d) in [("a.raw", &a), ("b.raw", &b), ("c.raw", &c)] {
        std::fs::write(dir.join(name), d).unwrap();
    }
    vdisk_in(
        dir,
        &[
            "diff",
            "--granularity",
            "4K",
            "a.raw",
            "b.raw",
            "--bitmap",
            "ab.bm",
        ],
    )
    .expect_code(1, "ab");
    vdisk_in(
        dir,
        &[
            "diff",
            "--granularity",
            "64K",
            "b.raw",
            "c.raw",
            "--bitmap",
            "bc.bm",
        ],
    )
    .expect_code(1, "bc");
    vdisk_in(dir, &["merge", "ab.bm", "bc.bm", "-o", "abc.bm"]).expect_code(0, "merge");
    let shown: Value =
        serde_json::from_str(&vdisk_in(dir, &["bitmap", "show", "--json", "abc.bm"]).stdout)
            .unwrap();
    assert_eq!(shown["granularity"], 4096, "the finer granularity wins");
    let merged = extents_of(&shown);
    for (s, l) in expected_extents(&a, &c, 4096) {
        assert!(
            merged.iter().any(|&(ms, ml)| ms <= s && s + l <= ms + ml),
            "{s}+{l} not covered by {merged:?}"
        );
    }
}

#[test]
fn bitmap_import_rounds_out_and_refuses_extents_past_the_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("cbt.json"), r#"{"extents":[{"start":100,"length":10},{"start":65530,"length":20},{"start":70000,"length":1}]}"#).unwrap();
    vdisk_in(
        dir,
        &[
            "bitmap",
            "import",
            "cbt.json",
            "--size",
            "1M",
            "--granularity",
            "64K",
            "-o",
            "cbt.bm",
        ],
    )
    .expect_code(0, "import");
    let shown: Value =
        serde_json::from_str(&vdisk_in(dir, &["bitmap", "show", "--json", "cbt.bm"]).stdout)
            .unwrap();
    assert_eq!(extents_of(&shown), vec![(0, 131072)]);
    assert_eq!(shown["size"], 1u64 << 20);
    std::fs::write(
        dir.join("vmware.json"),
        r#"{"changedArea":[{"start":1048000,"length":576}]}"#,
    )
    .unwrap();
    vdisk_in(
        dir,
        &[
            "bitmap",
            "import",
            "vmware.json",
            "--size",
            "1M",
            "--granularity",
            "4K",
            "-o",
            "vm.bm",
        ],
    )
    .expect_code(0, "vmware shape");
    std::fs::write(
        dir.join("past.json"),
        r#"{"extents":[{"start":1048000,"length":577}]}"#,
    )
    .unwrap();
    let r = vdisk_in(
        dir,
        &[
            "bitmap",
            "import",
            "past.json",
            "--size",
            "1M",
            "-o",
            "p.bm",
        ],
    );
    assert_eq!(r.code, Some(2), "{r:#?}");
    assert!(
        r.stderr.starts_with("vdisk: error: past.json: "),
        "{}",
        r.stderr
    );
    assert!(!dir.join("p.bm").exists());
    // A damaged bitmap is an error, never a wrong map.
    let mut bytes = std::fs::read(dir.join("cbt.bm")).unwrap();
    bytes[30] ^= 4;
    std::fs::write(dir.join("bad.bm"), bytes).unwrap();
    let r = vdisk_in(dir, &["bitmap", "show", "bad.bm"]);
    assert_eq!(r.code, Some(2), "{r:#?}");
}
