//! Backup repositories, with qemu-img as the independent reader of every point.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;
use crate::s3server::{s3, Loc};

const MIB: u64 = 1 << 20;

/// Run `scenario` on a local folder, then on a fresh prefix of the test S3 server (skipped,
/// with a printed reason, only where the server cannot be had and it is not required).
fn on_both(scenario: impl Fn(&Path, &Loc)) {
    let tmp = tempfile::tempdir().unwrap();
    scenario(tmp.path(), &Loc::folder("repo"));
    if let Some(server) = s3() {
        let tmp = tempfile::tempdir().unwrap();
        scenario(tmp.path(), &Loc::s3(server, server.port, "repo"));
    }
}

/// A 128 MiB source disk: 24 MiB of data in a few runs, the rest holes.
fn make_source(dir: &Path) -> Vec<u8> {
    let mut disk = vec![0u8; 128 << 20];
    for (i, at) in [0u64, 20, 64, 100].iter().enumerate() {
        let at = (at * MIB) as usize;
        disk[at..at + (6 << 20)].copy_from_slice(&pattern(200 + i as u64, 6 << 20));
    }
    write_disk(dir, "disk.raw", &disk);
    disk
}

fn write_disk(dir: &Path, name: &str, disk: &[u8]) {
    let f = std::fs::File::create(dir.join(name)).unwrap();
    f.set_len(disk.len() as u64).unwrap();
    for (i, c) in disk.chunks(1 << 16).enumerate() {
        if c.iter().any(|&b| b != 0) {
            f.write_all_at(c, (i << 16) as u64).unwrap();
        }
    }
}

fn ok(dir: &Path, args: &[&str]) -> Run {
    let r = vdisk_in(dir, args);
    r.expect_code(0, &args.join(" "));
    r
}

fn list(dir: &Path, loc: &Loc) -> Vec<Value> {
    let r = loc.ok(dir, &["list", "--json", "REPO"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    v["points"].as_array().unwrap().clone()
}

/// Every point restores to its disk, raw (every block checked), and as a qcow2 file that
/// qemu-img reads as that disk (`restore -O qcow2`: how a point reaches qemu-img as a file).
fn check_points(dir: &Path, loc: &Loc, versions: &[(u64, Vec<u8>)]) {
    check_points_of(dir, loc, "disk", versions)
}

/// [`check_points`] for the points of `name`.
fn check_points_of(dir: &Path, loc: &Loc, name: &str, versions: &[(u64, Vec<u8>)]) {
    for (n, disk) in versions {
        std::fs::write(dir.join("want.raw"), disk).unwrap();
        let out = format!("restored-{n}.raw");
        let p = n.to_string();
        loc.ok(
            dir,
            &[
                "restore", "REPO", &out, "--name", name, "--point", &p, "--force",
            ],
        );
        assert_same_bytes(&dir.join("want.raw"), &dir.join(&out));
        std::fs::remove_file(dir.join(out)).unwrap();
        let q = format!("restored-{n}.qcow2");
        loc.ok(
            dir,
            &[
                "restore", "REPO", &q, "--name", name, "--point", &p, "-O", "qcow2", "--force",
            ],
        );
        qemu_img(dir, &["check", &q]);
        qemu_img(
            dir,
            &["compare", "-f", "qcow2", "-F", "raw", &q, "want.raw"],
        );
        std::fs::remove_file(dir.join(q)).unwrap();
    }
}

/// Bytes point `n` added to the repository (its new blocks and chunks, as stored).
fn point_bytes(dir: &Path, loc: &Loc, n: u64) -> u64 {
    list(dir, loc).iter().find(|p| p["point"] == n).unwrap()["added_bytes"]
        .as_u64()
        .unwrap()
}

#[test]
fn full_hash_and_cbt_incrementals_restore_every_point() {
    require_qemu();
    on_both(full_hash_and_cbt);
}

fn full_hash_and_cbt(dir: &Path, loc: &Loc) {
    let mut disk = make_source(dir);
    let mut versions = Vec::new();
    loc.ok(dir, &["backup", "disk.raw", "REPO"]);
    versions.push((1, disk.clone()));

    // 1 % of the disk changes (1.28 MiB in 20 places), found by hashing.
    for i in 0..20u64 {
        let at = (i * 6 * MIB + 12345) as usize;
        disk[at..at + 65536].copy_from_slice(&pattern(300 + i, 65536));
    }
    write_disk(dir, "disk.raw", &disk);
    loc.ok(dir, &["backup", "disk.raw", "REPO"]);
    versions.push((2, disk.clone()));
    let inc = point_bytes(dir, loc, 2);
    // 20 blocks (and their neighbours, where a change straddles two), and the leaves.
    assert!(
        inc <= 40 * 65_536 + (1 << 20),
        "1 % incremental takes {inc} bytes"
    );

    // Data that becomes zero is masked, not stored as data.
    disk[(20 * MIB) as usize..(21 * MIB) as usize].fill(0);
    write_disk(dir, "disk.raw", &disk);
    loc.ok(dir, &["backup", "disk.raw", "REPO"]);
    versions.push((3, disk.clone()));
    assert!(
        point_bytes(dir, loc, 3) < 512 << 10,
        "zeroed data took {} bytes",
        point_bytes(dir, loc, 3)
    );

    // CBT: the hypervisor's list, with a false positive (a range that did not change).
    disk[(90 * MIB) as usize..(90 * MIB) as usize + 4096].copy_from_slice(&pattern(400, 4096));
    write_disk(dir, "disk.raw", &disk);
    std::fs::write(
        dir.join("cbt.json"),
        format!(
            r#"{{"changedArea":[{{"start":{},"length":4096}},{{"start":{},"length":65536}}]}}"#,
            90 * MIB,
            2 * MIB
        ),
    )
    .unwrap();
    ok(
        dir,
        &[
            "bitmap", "import", "cbt.json", "--size", "128M", "-o", "cbt.bm",
        ],
    );
    loc.ok(dir, &["backup", "disk.raw", "REPO", "--changed", "cbt.bm"]);
    versions.push((4, disk.clone()));

    let points = list(dir, loc);
    assert_eq!(points.len(), 4);
    assert_eq!(points[0]["kind"], "full");
    assert!(points[1..].iter().all(|p| p["kind"] == "incremental"));
    // The listed blocks (one of them unchanged: stored nowhere again) and two leaves.
    let cbt = points[3]["added_bytes"].as_u64().unwrap();
    assert!(
        (65_536..=65_536 + 2 * 50_000).contains(&cbt),
        "the CBT point stores the changed block: {cbt}"
    );
    check_points(dir, loc, &versions);
    loc.ok(dir, &["verify", "REPO"]);

    // A source whose size changed: grown, then shrunk.
    disk.resize((160 << 20) + 4096, 0);
    let len = disk.len();
    disk[len - 100..].fill(7);
    write_disk(dir, "disk.raw", &disk);
    loc.ok(dir, &["backup", "disk.raw", "REPO"]);
    versions.push((5, disk.clone()));
    disk.truncate(100 << 20);
    write_disk(dir, "disk.raw", &disk);
    loc.ok(dir, &["backup", "disk.raw", "REPO"]);
    versions.push((6, disk.clone()));
    check_points(dir, loc, &versions);
    loc.ok(dir, &["verify", "REPO"]);
}

/// Every object of a repository, by name relative to it.
fn objects(repo: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(root, &e.path(), out);
            } else {
                out.push(
                    e.path()
                        .strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    let mut v = Vec::new();
    walk(repo, repo, &mut v);
    v.sort();
    v
}

#[test]
fn verify_finds_a_flipped_byte_anywhere_and_names_the_point() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut disk = make_source(dir);
    ok(dir, &["backup", "disk.raw", "repo"]);
    disk[(70 * MIB) as usize] ^= 1;
    write_disk(dir, "disk.raw", &disk);
    ok(dir, &["backup", "disk.raw", "repo"]);
    disk[(30 * MIB) as usize] ^= 1;
    write_disk(dir, "disk.raw", &disk);
    ok(dir, &["backup", "disk.raw", "repo"]);
    let repo = dir.join("repo");
    let pristine: Vec<(String, Vec<u8>)> = objects(&repo)
        .into_iter()
        .map(|n| {
            let b = std::fs::read(repo.join(&n)).unwrap();
            (n, b)
        })
        .collect();
    // Flip one byte in each object: near its start, in the middle, near its end.
    let mut cases = 0;
    for (name, bytes) in &pristine {
        for at in [7, bytes.len() / 2, bytes.len() - 3] {
            let mut b = bytes.clone();
            b[at] ^= 0x10;
            std::fs::write(repo.join(name), &b).unwrap();
            let r = vdisk_in(dir, &["verify", "--json", "repo"]);
            if name == "config" {
                assert_eq!(r.code, Some(2), "{name}@{at}: {r:#?}");
                assert!(r.stderr.contains("config"), "{}", r.stderr);
            } else {
                assert_eq!(r.code, Some(1), "{name}@{at} was not found: {r:#?}");
                let v: Value = serde_json::from_str(&r.stdout).unwrap();
                let bad: Vec<&Value> = v["points"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|p| p["status"] != "ok")
                    .collect();
                assert!(!bad.is_empty(), "{name}@{at}: {v}");
                // A point names the damage as the point's, an object as itself.
                if name.starts_with("points/") {
                    assert!(
                        bad.iter().any(|p| p["object"] == name.as_str()),
                        "{name}@{at}: {v}"
                    );
                }
            }
            std::fs::write(repo.join(name), bytes).unwrap();
            cases += 1;
        }
    }
    assert!(cases >= 15, "{cases}");
    ok(dir, &["verify", "repo"]);
}

#[test]
fn prune_keeps_numbers_and_content_and_returns_space() {
    require_qemu();
    on_both(prune_keeps_numbers);
}

fn prune_keeps_numbers(dir: &Path, loc: &Loc) {
    let mut disk = make_source(dir);
    let mut versions = Vec::new();
    for round in 0..5u64 {
        if round > 0 {
            let at = (round * 7 * MIB) as usize;
            disk[at..at + (2 << 20)].copy_from_slice(&pattern(500 + round, 2 << 20));
            write_disk(dir, "disk.raw", &disk);
        }
        loc.ok(dir, &["backup", "disk.raw", "REPO"]);
        versions.push((round + 1, disk.clone()));
    }
    let usage = |dir: &Path| -> u64 {
        let v: Value =
            serde_json::from_str(&loc.ok(dir, &["list", "--json", "REPO"]).stdout).unwrap();
        v["stored_bytes"].as_u64().unwrap()
    };
    let before = usage(dir);
    // The grace period over at once: the second prune deletes what the first condemned.
    let mut now = loc.clone();
    now.env.push(("VDISK_GC_GRACE_SECS".into(), "0".into()));
    now.ok(dir, &["prune", "REPO", "--keep-last", "2"]);
    let points = list(dir, loc);
    assert_eq!(
        points
            .iter()
            .map(|p| p["point"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![4, 5]
    );
    loc.ok(dir, &["verify", "REPO"]);
    check_points(dir, loc, &versions[3..]);
    now.ok(dir, &["prune", "REPO", "--keep-last", "2"]);
    assert!(usage(dir) <= before, "{} > {before}", usage(dir));
    // A NAME whose new point shares nothing with the old: the old one's packs go.
    std::fs::write(dir.join("junk.raw"), pattern(901, 8 << 20)).unwrap();
    loc.ok(dir, &["backup", "junk.raw", "REPO"]);
    std::fs::write(dir.join("junk.raw"), pattern(902, 8 << 20)).unwrap();
    loc.ok(dir, &["backup", "junk.raw", "REPO"]);
    let with_junk = usage(dir);
    now.ok(
        dir,
        &["prune", "REPO", "--name", "junk", "--keep-last", "1"],
    );
    now.ok(
        dir,
        &["prune", "REPO", "--name", "junk", "--keep-last", "1"],
    );
    let freed = with_junk - usage(dir);
    assert!(freed >= 7 << 20, "freed {freed} of {with_junk}");
    loc.ok(dir, &["verify", "REPO"]);
    // Later backups and prunes go on from there.
    disk[5] ^= 0xff;
    write_disk(dir, "disk.raw", &disk);
    loc.ok(dir, &["backup", "disk.raw", "REPO"]);
    versions.push((6, disk.clone()));
    now.ok(dir, &["prune", "REPO", "--keep-last", "1"]);
    check_points(dir, loc, &versions[5..]);
    loc.ok(dir, &["verify", "REPO"]);
    let r = loc.run(
        dir,
        &["restore", "REPO", "x.raw", "--name", "disk", "--point", "4"],
    );
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("no point 4"), "{}", r.stderr);
}

/// Start `vdisk ARGS` slowed by --io-limit, SIGKILL it after `ms`, and wait.
fn kill_after(dir: &Path, args: &[&str], ms: u64) {
    let mut c = Command::new(vdisk_bin());
    c.args(["--io-limit", "20M"]).args(args).current_dir(dir);
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    let _ = child.kill();
    child.wait().unwrap();
}

#[test]
fn kill_9_at_any_instant_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let local = Loc::folder("repo");
    let mut disk = make_source(dir);
    let mut versions = vec![];
    // A killed first backup leaves a repository that the next run completes.
    kill_after(dir, &["backup", "disk.raw", "repo"], 300);
    ok(dir, &["backup", "disk.raw", "repo"]);
    versions.push((1, disk.clone()));
    ok(dir, &["verify", "repo"]);
    for (round, ms) in [50u64, 200, 400, 700, 1000].into_iter().enumerate() {
        let at = ((round as u64 + 1) * 9 * MIB) as usize;
        disk[at..at + (4 << 20)].copy_from_slice(&pattern(600 + round as u64, 4 << 20));
        write_disk(dir, "disk.raw", &disk);
        let before = list(dir, &local);
        kill_after(dir, &["backup", "disk.raw", "repo"], ms);
        // Nothing changed: same points, verify passes, earlier points restore.
        let after = list(dir, &local);
        assert!(
            after.len() == before.len() || after.len() == before.len() + 1,
            "{ms} ms"
        );
        if after.len() > before.len() {
            // The run finished before the kill: it is a whole point.
            versions.push((
                after.last().unwrap()["point"].as_u64().unwrap(),
                disk.clone(),
            ));
        } else {
            ok(dir, &["backup", "disk.raw", "repo"]);
            versions.push((
                list(dir, &local).last().unwrap()["point"].as_u64().unwrap(),
                disk.clone(),
            ));
        }
        ok(dir, &["verify", "repo"]);
    }
    check_points_raw(dir, &versions);
    // And during prune.
    for ms in [30u64, 150, 400] {
        let before = list(dir, &local);
        kill_after(dir, &["prune", "repo", "--keep-last", "3"], ms);
        ok(dir, &["verify", "repo"]);
        let after = list(dir, &local);
        assert!(
            after.len() >= 3
                && after.len() <= before.len()
                && after[after.len() - 3..] == before[before.len() - 3..],
            "{ms} ms: {before:?} -> {after:?}"
        );
    }
    ok(dir, &["prune", "repo", "--keep-last", "3"]);
    ok(dir, &["verify", "repo"]);
    let kept: Vec<u64> = list(dir, &local)
        .iter()
        .map(|p| p["point"].as_u64().unwrap())
        .collect();
    let kept_versions: Vec<(u64, Vec<u8>)> = versions
        .into_iter()
        .filter(|(n, _)| kept.contains(n))
        .collect();
    check_points_raw(dir, &kept_versions);
    // No leftovers from killed runs once a prune has run past the grace period.
    for _ in 0..2 {
        let mut c = Command::new(vdisk_bin());
        c.args(["prune", "repo", "--keep-last", "3"])
            .env("VDISK_GC_GRACE_SECS", "0")
            .current_dir(dir);
        run(c).expect_code(0, "prune");
    }
    for name in objects(&dir.join("repo")) {
        assert!(
            !name.contains("/.") && !name.starts_with("locks/") && !name.starts_with("condemned/"),
            "{name}"
        );
    }
    check_points_raw(dir, &kept_versions);
}

fn check_points_raw(dir: &Path, versions: &[(u64, Vec<u8>)]) {
    for (n, disk) in versions {
        std::fs::write(dir.join("want.raw"), disk).unwrap();
        ok(
            dir,
            &[
                "restore",
                "repo",
                "got.raw",
                "--point",
                &n.to_string(),
                "--force",
            ],
        );
        assert_same_bytes(&dir.join("want.raw"), &dir.join("got.raw"));
    }
}

#[test]
fn errors_are_clean() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_source(dir);
    let one_line = |r: &Run, needle: &str| {
        assert_eq!(r.code, Some(2), "{r:#?}");
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        assert!(
            r.stderr.starts_with("vdisk: error: ") && r.stderr.contains(needle),
            "{needle}: {}",
            r.stderr
        );
    };
    one_line(&vdisk_in(dir, &["list", "nope"]), "no repository here");
    one_line(&vdisk_in(dir, &["verify", "nope"]), "no repository here");
    one_line(
        &vdisk_in(dir, &["restore", "nope", "x.raw"]),
        "no repository here",
    );
    std::fs::create_dir(dir.join("foreign")).unwrap();
    std::fs::write(dir.join("foreign/notes.txt"), "mine").unwrap();
    one_line(
        &vdisk_in(dir, &["backup", "disk.raw", "foreign"]),
        "not a vdisk repository",
    );
    one_line(
        &vdisk_in(dir, &["list", "foreign"]),
        "not a vdisk repository",
    );
    assert_eq!(std::fs::read_dir(dir.join("foreign")).unwrap().count(), 1);

    ok(dir, &["backup", "disk.raw", "repo"]);
    one_line(
        &vdisk_in(dir, &["restore", "repo", "x.raw", "--point", "9"]),
        "no point 9",
    );
    // Another disk under the NAME is refused unless forced; under its own NAME it is fine.
    std::fs::copy(dir.join("disk.raw"), dir.join("other.raw")).unwrap();
    one_line(
        &vdisk_in(dir, &["backup", "other.raw", "repo", "--name", "disk"]),
        "--force",
    );
    ok(
        dir,
        &["backup", "other.raw", "repo", "--name", "disk", "--force"],
    );
    ok(dir, &["backup", "other.raw", "repo"]);
    // Two NAMEs now: restore asks which.
    one_line(&vdisk_in(dir, &["restore", "repo", "x.raw"]), "--name");
    // A source that was not closed cleanly is refused unless forced, saying why.
    qemu_create_vmdk(dir, "dirty.vmdk", "8M", &[]);
    qemu_io(dir, "vmdk", "dirty.vmdk", &["write -P 1 0 1M"]);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("dirty.vmdk"))
        .unwrap();
    f.write_all_at(&[1], 72).unwrap();
    one_line(
        &vdisk_in(dir, &["backup", "dirty.vmdk", "repo2"]),
        "uncleanShutdown",
    );
    ok(dir, &["backup", "dirty.vmdk", "repo2", "--force"]);
    // A leftover lock file, or a registration of any content, does not stop a writer.
    std::fs::write(dir.join("repo/.vdisk-lock"), "1\n").unwrap();
    std::fs::write(
        dir.join("repo/locks/00000000000000000000000000000001"),
        "1\n",
    )
    .unwrap();
    ok(dir, &["backup", "disk.raw", "repo", "--force"]);
    ok(dir, &["verify", "repo"]);
}

#[test]
fn io_limit_paces_the_reads() {
    on_both(io_limit_paces);
}

fn io_limit_paces(dir: &Path, loc: &Loc) {
    make_source(dir);
    // 24 MiB of data at 8 MiB/s: about 3 s, never much less.
    let r = loc.run(dir, &["--io-limit", "8M", "backup", "disk.raw", "REPO"]);
    r.expect_code(0, "backup");
    assert!(r.elapsed >= Duration::from_millis(2600), "{:?}", r.elapsed);
    assert!(r.stderr.contains("read 24.00 MiB"), "{}", r.stderr);
}

/// A VMDK source (a VM's own disk, read through its grain tables rather than a map): full,
/// then hash-based incrementals after qemu-io writes, each point equal to qemu-img's reading
/// of the source at that time.
#[test]
fn a_vmdk_source_backs_up_and_restores_as_qemu_reads_it() {
    require_qemu();
    on_both(vmdk_source);
}

fn vmdk_source(dir: &Path, loc: &Loc) {
    qemu_img(dir, &["create", "-f", "vmdk", "vm.vmdk", "96M"]);
    qemu_io(
        dir,
        "vmdk",
        "vm.vmdk",
        &[
            "write -P 0x11 0 5M",
            "write -P 0x22 40M 3M",
            "write -P 0x33 95M 1M",
        ],
    );
    let snapshot = |n: u64| {
        let name = format!("want-{n}.raw");
        qemu_img(dir, &["convert", "-O", "raw", "vm.vmdk", &name]);
        (n, std::fs::read(dir.join(&name)).unwrap())
    };
    loc.ok(dir, &["backup", "vm.vmdk", "REPO"]);
    let mut versions = vec![snapshot(1)];
    // Changes inside grains, across grain edges, in a hole, and a zeroed range over data.
    qemu_io(
        dir,
        "vmdk",
        "vm.vmdk",
        &[
            "write -P 0x44 4k 1k",
            "write -P 0x55 65535 2",
            "write -P 0x66 70M 128k",
            "write -z 40M 1M",
        ],
    );
    loc.ok(dir, &["backup", "vm.vmdk", "REPO"]);
    versions.push(snapshot(2));
    qemu_io(dir, "vmdk", "vm.vmdk", &["write -P 0x77 1M 3M"]);
    loc.ok(dir, &["backup", "vm.vmdk", "REPO"]);
    versions.push(snapshot(3));
    let points = list(dir, loc);
    assert_eq!(points.len(), 3);
    // Point 2 holds the blocks of its changes, not the disk: block 0 (the 1 KiB write and
    // the first byte of the 2-byte one), block 1, two at 70 MiB (the zeroed ones: nothing),
    // compressed, and its leaves.
    let p2 = points[1]["added_bytes"].as_u64().unwrap();
    assert!(p2 > 0 && p2 < 4 * 65536 + 3 * 50_000, "{p2}");
    check_points_of(dir, loc, "vm", &versions);
    loc.ok(dir, &["verify", "REPO"]);
}
