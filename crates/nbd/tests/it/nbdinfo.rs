//! libnbd's nbdinfo as a client (skipped with a message when it is not installed).

use vdisk_nbd::ExportConfig;

use crate::common::*;

#[test]
fn nbdinfo_list_shows_the_export_and_its_description() {
    if !have_nbdinfo() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = raw_image(dir);
    let config = ExportConfig::new("disk").with_description("restore point 3 of vm1");
    let srv = Running::unix(dir, open_raw(&src), config);
    let out = ok(dir, "nbdinfo", &["--list", &srv.uri]);
    assert!(out.contains("export=\"disk\""), "{out}");
    assert!(out.contains("restore point 3 of vm1"), "{out}");
    assert!(out.contains("export-size: 8388608"), "{out}");
    assert!(out.contains("base:allocation"), "{out}");

    let json = ok(dir, "nbdinfo", &["--json", &srv.uri]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let e = &v["exports"][0];
    assert_eq!(e["export-size"], 8388608);
    assert_eq!(e["is_read_only"], true);
    assert_eq!(e["can_multi_conn"], true);
    assert_eq!(e["can_df"], true);
    assert_eq!(e["can_zero"], false);
    assert_eq!(e["can_trim"], false);
    assert_eq!(e["block_size_minimum"], 1);
    assert_eq!(e["block_size_preferred"], 4096);
    assert_eq!(e["block_size_maximum"], 32 << 20);
    assert_eq!(v["protocol"], "newstyle-fixed");
}

#[test]
fn nbdinfo_map_reports_data_holes_and_zeroes() {
    if !have_nbdinfo() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = raw_image(dir);
    let srv = Running::unix(dir, open_raw(&src), ExportConfig::new("disk"));
    let out = ok(dir, "nbdinfo", &["--map", &srv.uri]);
    let rows: Vec<(u64, u64, u32)> = out
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    let m = 1u64 << 20;
    assert_eq!(rows[0], (0, m, 0), "{out}");
    assert_eq!(rows[1], (m, 2 * m, 3), "{out}");
    assert_eq!(rows[2], (3 * m, m / 2, 0), "{out}");
    let total: u64 = rows.iter().map(|r| r.1).sum();
    assert_eq!(total, 8 * m);
    // Touching rows always differ (the server joins runs).
    for w in rows.windows(2) {
        assert_ne!(w[0].2, w[1].2, "{out}");
    }

    // A VMDK chain: zeroed grains are zero (2) but not holes; unallocated is hole|zero (3).
    let link = vmdk_chain(dir);
    drop(srv);
    std::fs::remove_file(dir.join("nbd.sock")).unwrap();
    let img = std::sync::Arc::new(vdisk_image::open(&link).unwrap());
    let srv = Running::unix(dir, img, ExportConfig::new("chain"));
    let out = ok(dir, "nbdinfo", &["--map", &srv.uri]);
    let k = 1u64 << 10;
    let expect = [
        (0, 256 * k, 0),
        (256 * k, 128 * k, 2),
        (384 * k, 128 * k, 0),
        (512 * k, 64 * k, 2),
        (576 * k, 2048 * k - 576 * k, 0),
        (2 * m, m, 3),
        (3 * m, 64 * k, 0),
        (3 * m + 64 * k, 5 * m - 64 * k, 3),
    ];
    let rows: Vec<(u64, u64, u32)> = out
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows, expect, "{out}");
}
