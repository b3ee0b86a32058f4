//! The seven attacks of issue 21, each reproduced against layout 3 (on folders and on the
//! test S3 server, through the fault-injecting proxy where the attack needs one).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;
use crate::s3server::*;

const MIB: usize = 1 << 20;

fn points(dir: &Path, loc: &Loc) -> Vec<(String, u64)> {
    let r = loc.ok(dir, &["list", "--json", "REPO"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["point"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn restores_to(dir: &Path, loc: &Loc, name: &str, point: u64, want: &[u8]) {
    std::fs::write(dir.join("want.raw"), want).unwrap();
    let p = point.to_string();
    loc.ok(
        dir,
        &[
            "restore", "REPO", "got.raw", "--name", name, "--point", &p, "--force",
        ],
    );
    assert_same_bytes(&dir.join("want.raw"), &dir.join("got.raw"));
}

fn one_line(r: &Run) {
    assert_eq!(r.code, Some(2), "{r:#?}");
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.starts_with("vdisk: error: "), "{}", r.stderr);
}

/// Run `scenario` on a folder, then on a fresh prefix of the test server (when there is one).
fn on_both(scenario: impl Fn(&Path, &Loc)) {
    let tmp = tempfile::tempdir().unwrap();
    scenario(tmp.path(), &Loc::folder("repo"));
    if let Some(server) = s3() {
        let tmp = tempfile::tempdir().unwrap();
        scenario(tmp.path(), &Loc::s3(server, server.port, "repo"));
    }
}

/// Attack 1: "A writer that lost its lease keeps writing": writer A's requests stall behind
/// a proxy long past the time its registration goes stale; writer B, elsewhere, backs up
/// the same NAME and commits; A's late requests land. B's point is never changed: it
/// restores to B's bytes, and A commits nothing over it.
#[test]
fn attack_1_a_stalled_writer_never_changes_what_another_committed() {
    let Some(server) = s3() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut loc = Loc::s3(server, server.port, "fenced");
    let quick = [
        ("VDISK_LOCK_STALE_SECS".to_string(), "2".to_string()),
        ("VDISK_LOCK_REFRESH_SECS".to_string(), "1".to_string()),
    ];
    loc.env.extend(quick.clone());
    let base = pattern(1, 2 * MIB);
    std::fs::write(dir.join("vm.raw"), &base).unwrap();
    loc.ok(dir, &["backup", "vm.raw", "REPO"]);
    let a_disk = pattern(2, 2 * MIB);
    let b_disk = pattern(3, 2 * MIB);
    std::fs::write(dir.join("a.raw"), &a_disk).unwrap();
    std::fs::write(dir.join("b.raw"), &b_disk).unwrap();
    // A: every request held 3 s on its way (a link that stalls), past the 2 s stale time.
    let proxy = Proxy::start(server.port);
    proxy.set(Faults {
        delay: Some(Duration::from_secs(3)),
        ..Default::default()
    });
    let mut slow = loc.via(proxy.port);
    slow.env.extend(quick);
    let mut a = slow.command(dir, &["backup", "a.raw", "REPO", "--name", "vm", "--force"]);
    a.stdout(Stdio::null()).stderr(Stdio::piped());
    let a = a.spawn().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    // B, on a good link, commits the next point of the NAME first.
    loc.ok(dir, &["backup", "b.raw", "REPO", "--name", "vm", "--force"]);
    assert_eq!(points(dir, &loc), [("vm".into(), 1), ("vm".into(), 2)]);
    let out = a.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("writer A: {:?} {err}", out.status.code());
    // B's point is B's; A's late objects changed nothing of it.
    restores_to(dir, &loc, "vm", 2, &b_disk);
    restores_to(dir, &loc, "vm", 1, &base);
    if out.status.success() {
        // A committed a point of its own after B's, never over it.
        assert_eq!(points(dir, &loc).len(), 3);
        restores_to(dir, &loc, "vm", 3, &a_disk);
    } else {
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("nothing was committed"), "{err}");
        assert_eq!(points(dir, &loc).len(), 2);
    }
    loc.ok(dir, &["verify", "REPO"]);
}

/// Attack 2: "Two live writers on one host", each with its own TMPDIR (PrivateTmp): exactly
/// one commits; the other is refused in one line having changed nothing; neither leaves a
/// file in its TMPDIR; the winner's point is whole and later backups work.
#[test]
fn attack_2_two_writers_on_one_host_with_different_tmpdirs() {
    on_both(|dir, loc| {
        let disk = pattern(21, 4 * MIB);
        std::fs::write(dir.join("vm.raw"), &disk).unwrap();
        loc.ok(dir, &["backup", "vm.raw", "REPO"]);
        let v2 = pattern(22, 4 * MIB);
        std::fs::write(dir.join("vm.raw"), &v2).unwrap();
        let tmps = [dir.join("tmp-a"), dir.join("tmp-b")];
        let children: Vec<_> = tmps
            .iter()
            .map(|t| {
                std::fs::create_dir(t).unwrap();
                let mut c = loc.command(dir, &["--io-limit", "2M", "backup", "vm.raw", "REPO"]);
                c.env("TMPDIR", t)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped());
                c.spawn().unwrap()
            })
            .collect();
        let outs: Vec<_> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let won = outs.iter().filter(|o| o.status.success()).count();
        assert_eq!(won, 1, "{outs:?}");
        let lost = outs.iter().find(|o| !o.status.success()).unwrap();
        let err = String::from_utf8_lossy(&lost.stderr);
        assert_eq!(lost.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("running") || err.contains("first"), "{err}");
        for t in &tmps {
            assert_eq!(
                std::fs::read_dir(t).unwrap().count(),
                0,
                "{} was written",
                t.display()
            );
        }
        assert_eq!(points(dir, loc), [("vm".into(), 1), ("vm".into(), 2)]);
        restores_to(dir, loc, "vm", 2, &v2);
        loc.ok(dir, &["backup", "vm.raw", "REPO"]);
        loc.ok(dir, &["verify", "REPO"]);
        if !loc.s3 {
            // Each run removed its own registration, and only its own.
            assert_eq!(
                std::fs::read_dir(dir.join("repo/locks")).unwrap().count(),
                0
            );
        }
    });
}

/// Attack 3: "The host lock file shuts writers out": nothing of vdisk lives in the temporary
/// folder, so a file there (of any mode, locked by anyone) blocks no backup; and a
/// repository on a shared host is written by its users alike.
#[test]
fn attack_3_no_host_lock_file_can_shut_writers_out() {
    let Some(server) = s3() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let loc = Loc::s3(server, server.port, "hostlock");
    let disk = pattern(31, MIB);
    std::fs::write(dir.join("vm.raw"), &disk).unwrap();
    let t = dir.join("tmp");
    std::fs::create_dir(&t).unwrap();
    // The old layout's lock names, held with flock by "another user".
    let mut held = Vec::new();
    for name in [".vdisk-s3-vdisk-test-00000000.lock", ".vdisk-lock"] {
        let p = t.join(name);
        std::fs::write(&p, b"").unwrap();
        held.push(hold_lock_file(&p));
    }
    let mut c = loc.command(dir, &["backup", "vm.raw", "REPO"]);
    c.env("TMPDIR", &t);
    run(c).expect_code(0, "backup with the temporary folder's lock files held");
    let names: Vec<_> = std::fs::read_dir(&t)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "vdisk wrote into TMPDIR: {names:?}");
    drop(held);
    loc.ok(dir, &["verify", "REPO"]);
}

/// flock a file, as another process would.
#[allow(unsafe_code)]
fn hold_lock_file(p: &Path) -> std::fs::File {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::File::open(p).unwrap();
    // SAFETY: flock on a descriptor we own, open for the call's whole length.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(r, 0);
    f
}

/// A repository whose old points' packs become mostly garbage once they are pruned: three
/// points of a 16 MiB disk, three quarters rewritten each time, as `v1.raw` … `v3.raw`.
fn churned(dir: &Path, loc: &Loc) -> Vec<Vec<u8>> {
    let mut disk = pattern(41, 16 * MIB);
    let mut versions = Vec::new();
    for i in 0..3u64 {
        if i > 0 {
            disk[..12 * MIB].copy_from_slice(&pattern(41 + 10 * i, 12 * MIB));
        }
        std::fs::write(dir.join("vm.raw"), &disk).unwrap();
        std::fs::write(dir.join(format!("v{}.raw", i + 1)), &disk).unwrap();
        loc.ok(dir, &["backup", "vm.raw", "REPO"]);
        versions.push(disk.clone());
    }
    versions
}

/// Attack 4: "Readers during prune on S3": a `serve` of a kept point, opened before a prune
/// that condemns, repacks and deletes (the grace period over at once), keeps returning the
/// point's bytes (a moved block is found again); a `verify` alongside prunes never says
/// damaged.
#[test]
fn attack_4_readers_during_prune_never_fail() {
    require_qemu();
    let Some(server) = s3() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut loc = Loc::s3(server, server.port, "readers");
    churned(dir, &loc);
    // Point 2 is kept; point 1 goes; point 2's packs lose their first half's old blocks.
    let srv = serve_env(
        dir,
        &[&loc.repo, "--point", "2", "--socket", "s.sock"],
        &loc.env,
    );
    let compare = || {
        let mut c = Command::new("qemu-img");
        c.args(["compare", "-f", "raw", "-F", "raw", &srv.uri, "v2.raw"])
            .current_dir(dir);
        let r = run(c);
        assert_eq!(r.code, Some(0), "{r:#?}");
    };
    compare();
    loc.env.push(("VDISK_GC_GRACE_SECS".into(), "0".into()));
    // Verify runs beside each prune.
    for keep in ["2", "2", "1"] {
        let mut v = loc.command(dir, &["verify", "--json", "REPO"]);
        v.stdout(Stdio::piped()).stderr(Stdio::piped());
        let v = v.spawn().unwrap();
        let r = loc.ok(
            dir,
            &[
                "prune",
                "REPO",
                "--name",
                "vm",
                "--keep-last",
                keep,
                "--json",
            ],
        );
        eprintln!("prune: {}", r.stdout.replace('\n', " "));
        let out = v.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "verify beside prune: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        if keep == "2" {
            compare();
        }
    }
    // After the last prune point 2 is gone too: the serve still reads what it can (the
    // grace period is 0 here), and it stayed up.
    drop(srv);
    loc.ok(dir, &["verify", "REPO"]);
}

/// Attack 5: "A killed sync starts over": a sync killed part way (over a slow link) resumes
/// where it was: what it copied counts, and a backup of another NAME into the destination
/// meanwhile deletes none of it.
#[test]
fn attack_5_a_killed_sync_resumes() {
    let Some(server) = s3() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = Loc::folder("src");
    let disk = pattern(51, 64 * MIB);
    std::fs::write(dir.join("vm.raw"), &disk).unwrap();
    src.ok(dir, &["backup", "vm.raw", "REPO"]);
    let dst = Loc::s3(server, server.port, "synced");
    let sync = |limit: Option<&str>| -> Command {
        let mut args: Vec<&str> = Vec::new();
        if let Some(l) = limit {
            args.extend(["--io-limit", l]);
        }
        args.extend(["sync", "src", "REPO", "--json"]);
        dst.command(dir, &args)
    };
    // 64 MiB at 16 MiB/s: killed after about half.
    let mut c = sync(Some("16M"));
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let _ = child.kill();
    child.wait().unwrap();
    // Another writer of the destination.
    std::fs::write(dir.join("other.raw"), pattern(52, MIB)).unwrap();
    dst.ok(dir, &["backup", "other.raw", "REPO"]);
    let r = run(sync(None));
    r.expect_code(0, "resumed sync");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let copied = v["bytes_copied"].as_u64().unwrap();
    eprintln!("the resumed sync copied {copied} bytes of 64 MiB");
    assert!(copied < 56 << 20, "the resumed sync started over: {copied}");
    restores_to(dir, &dst, "vm", 1, &disk);
    dst.ok(dir, &["verify", "REPO"]);
}

/// Attack 6: "Crafted metadata with a valid checksum" (the key of an unencrypted repository
/// is in its config, so anyone can make a valid seal): an empty disk list, a number past the
/// range, an object numbered 999999999999, sizes of 0 and 2^63, a disk list repeated 5,000
/// times, an older point replayed under a higher number. Each is refused; nothing is lost;
/// the next backup goes on; sync copies the valid points and ends at once.
#[test]
fn attack_6_crafted_points_are_refused_and_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let loc = Loc::folder("repo");
    let disk = pattern(61, 2 * MIB);
    std::fs::write(dir.join("vm.raw"), &disk).unwrap();
    loc.ok(dir, &["backup", "vm.raw", "REPO"]);
    let repo = dir.join("repo");
    let tag = vdisk::chain::fuzzing::name_tag(&repo, "vm").unwrap();
    let key = |n: u64| format!("points/{tag}-{n:010}");
    let good: Value = {
        let v: Value =
            serde_json::from_str(&loc.ok(dir, &["list", "--json", "REPO"]).stdout).unwrap();
        v["points"][0].clone()
    };
    let point = |seq: u64, disks: Value| {
        serde_json::json!({
            "format": "vdisk-point", "version": 3, "name": "vm", "seq": seq,
            "time": "2026-12-01T10:00:00Z", "unix": 1_796_119_200u64, "parent": null,
            "block_size": 65536, "host": "h", "disks": disks,
            "stats": {"bytes_read": 0, "added_bytes": 0, "added_blobs": 0}
        })
    };
    let d = &good["disks"][0];
    let disk_json = |size: u64| {
        serde_json::json!({"label": "vm.raw", "source": d["source"], "size": size,
            "root": "00".repeat(32), "data_bytes": 0})
    };
    let forge = |k: &str, v: &Value| {
        vdisk::chain::fuzzing::forge_point(&repo, k, v.to_string().as_bytes()).unwrap()
    };
    forge(&key(2), &point(2, serde_json::json!([])));
    forge(
        &key(3),
        &point(u64::MAX, serde_json::json!([disk_json(MIB as u64)])),
    );
    forge(&key(4), &point(4, serde_json::json!([disk_json(0)])));
    forge(&key(5), &point(5, serde_json::json!([disk_json(1 << 63)])));
    let many: Vec<Value> = (0..5000).map(|_| disk_json(MIB as u64)).collect();
    forge(&key(6), &point(6, Value::Array(many)));
    // An object named past the range, and point 1 replayed as point 7.
    std::fs::write(repo.join(format!("points/{tag}-999999999999")), b"x").unwrap();
    std::fs::copy(repo.join(key(1)), repo.join(key(7))).unwrap();

    let r = loc.run(dir, &["verify", "REPO"]);
    assert_eq!(r.code, Some(1), "{r:#?}");
    assert!(r.stdout.contains("vm point 1: ok"), "{}", r.stdout);
    for n in 2..=7 {
        assert!(r.stdout.contains(&key(n)), "{}: {}", key(n), r.stdout);
    }
    let l = loc.ok(dir, &["list", "REPO"]);
    assert!(l.stdout.contains("not a valid point"), "{}", l.stdout);
    // Prune deletes nothing while it cannot read a point.
    let p = loc.run(dir, &["prune", "REPO", "--keep-last", "1"]);
    one_line(&p);
    // The next backup goes on, numbered past every object of the NAME; nothing was lost.
    let t = Instant::now();
    let b = loc.ok(dir, &["backup", "vm.raw", "REPO", "--json"]);
    let v: Value = serde_json::from_str(&b.stdout).unwrap();
    assert_eq!(v["point"], 8, "{v}");
    restores_to(dir, &loc, "vm", 1, &disk);
    restores_to(dir, &loc, "vm", 8, &disk);
    // Sync copies the valid points and ends at once.
    let s = loc.ok(dir, &["sync", "REPO", "copy", "--json"]);
    let v: Value = serde_json::from_str(&s.stdout).unwrap();
    assert_eq!(v["points"], 2, "{v}");
    assert!(t.elapsed() < Duration::from_secs(60));
    vdisk_in(dir, &["verify", "copy"]).expect_code(0, "verify the copy");
}

/// Attack 7: "A foreign file where an object will go" (a folder, a symbolic link, garbage,
/// at the next points' names and in the data folders): never blocks a backup, with or
/// without --force, and is never followed.
#[test]
fn attack_7_a_foreign_file_where_an_object_will_go_never_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let loc = Loc::folder("repo");
    let mut disk = pattern(71, 2 * MIB);
    std::fs::write(dir.join("vm.raw"), &disk).unwrap();
    loc.ok(dir, &["backup", "vm.raw", "REPO"]);
    let repo = dir.join("repo");
    let tag = vdisk::chain::fuzzing::name_tag(&repo, "vm").unwrap();
    let outside = dir.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("target"), b"keep").unwrap();
    std::fs::create_dir(repo.join(format!("points/{tag}-0000000002"))).unwrap();
    std::os::unix::fs::symlink(
        outside.join("target"),
        repo.join(format!("points/{tag}-0000000003")),
    )
    .unwrap();
    std::fs::write(repo.join(format!("points/{tag}-0000000004")), b"garbage").unwrap();
    for x in 0..16u8 {
        let d = repo.join(format!("data/{x:02x}"));
        if !d.exists() {
            std::os::unix::fs::symlink(&outside, &d).unwrap();
        }
    }
    for force in [false, true] {
        disk[MIB + force as usize] ^= 1;
        std::fs::write(dir.join("vm.raw"), &disk).unwrap();
        let mut args = vec!["backup", "vm.raw", "REPO", "--json"];
        if force {
            args.push("--force");
        }
        let b = loc.ok(dir, &args);
        let v: Value = serde_json::from_str(&b.stdout).unwrap();
        assert_eq!(v["point"], if force { 6 } else { 5 }, "{v}");
        restores_to(dir, &loc, "vm", v["point"].as_u64().unwrap(), &disk);
    }
    assert_eq!(std::fs::read(outside.join("target")).unwrap(), b"keep");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        1,
        "written through a link"
    );
    let r = loc.run(dir, &["verify", "REPO"]);
    assert_eq!(r.code, Some(1), "the foreign objects are reported: {r:#?}");
    assert!(r.stdout.contains("vm point 6: ok"), "{}", r.stdout);
}
