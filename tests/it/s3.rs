//! Repositories on an object store, against a real S3 server (SeaweedFS on loopback, see
//! `s3server`): damage found, errors in one line, faults retried through a proxy, a kill at
//! each request losing nothing, and `vdisk sync` between folders and buckets. The scenarios
//! that also run on a local folder live in `backup.rs` (`on_both`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;
use crate::s3server::*;

const MIB: usize = 1 << 20;

/// A raw disk of `mib` MiB with data in a few runs.
fn source(dir: &Path, name: &str, mib: usize, seed: u64) -> Vec<u8> {
    let mut disk = vec![0u8; mib * MIB];
    for (i, at) in [0usize, mib / 3, mib * 2 / 3].into_iter().enumerate() {
        let n = (mib / 6).max(1) * MIB;
        let at = at * MIB;
        let end = (at + n).min(disk.len());
        disk[at..end].copy_from_slice(&pattern(seed + i as u64, end - at));
    }
    std::fs::write(dir.join(name), &disk).unwrap();
    disk
}

fn points(dir: &Path, loc: &Loc) -> Vec<Value> {
    let r = loc.ok(dir, &["list", "--json", "REPO"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    v["points"].as_array().unwrap().clone()
}

fn restores_to(dir: &Path, loc: &Loc, point: u64, want: &[u8]) {
    std::fs::write(dir.join("want.raw"), want).unwrap();
    loc.ok(
        dir,
        &[
            "restore",
            "REPO",
            "got.raw",
            "--point",
            &point.to_string(),
            "--force",
        ],
    );
    assert_same_bytes(&dir.join("want.raw"), &dir.join("got.raw"));
}

/// `curl` with the test credentials against the server: (status, body).
fn curl(server: &S3Server, args: &[&str], key: &str) -> (String, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
        .arg(format!("{KEY}:{SECRET}"))
        .args(args)
        .arg(format!("{}/{BUCKET}/{key}", server.endpoint()))
        .output()
        .unwrap();
    let mut body = out.stdout;
    let nl = body.iter().rposition(|&b| b == b'\n').unwrap();
    let code = String::from_utf8_lossy(&body[nl + 1..]).to_string();
    body.truncate(nl);
    (code, body)
}

/// The key prefix of a location (`s3://BUCKET/PREFIX`).
fn prefix(loc: &Loc) -> String {
    loc.repo
        .strip_prefix(&format!("s3://{BUCKET}/"))
        .unwrap()
        .to_string()
}

fn one_line(r: &Run, needle: &str) {
    assert_eq!(r.code, Some(2), "{r:#?}");
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.starts_with("vdisk: error: ") && r.stderr.contains(needle),
        "{needle}: {}",
        r.stderr
    );
    assert!(!r.stderr.contains(SECRET) && !r.stdout.contains(SECRET));
}

#[test]
fn s3_verify_finds_damaged_objects_and_restore_refuses_them() {
    let Some(server) = s3() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let loc = Loc::s3(server, server.port, "damage");
    let disk = source(dir, "disk.raw", 12, 1);
    loc.ok(dir, &["backup", "disk.raw", "REPO"]);
    let p = prefix(&loc);
    // A byte of a grain of the extent, of the manifest, of the descriptor, of the metadata.
    for (name, at) in [
        ("point-000001-s001.vmdk", 4096 + 65536 * 3 + 11),
        ("point-000001.hashes", 50),
        ("point-000001.vmdk", 30),
        ("vdisk-repo.000000000001.json", 40),
    ] {
        let key = format!("{p}/{name}");
        let (code, pristine) = curl(server, &[], &key);
        assert_eq!(code, "200", "{key}");
        let mut b = pristine.clone();
        b[at] ^= 0x21;
        std::fs::write(dir.join("obj"), &b).unwrap();
        assert_eq!(
            curl(server, &["-T", dir.join("obj").to_str().unwrap()], &key).0,
            "200"
        );
        let r = loc.run(dir, &["verify", "--json", "REPO"]);
        if name.starts_with("vdisk-repo") {
            one_line(&r, name);
        } else {
            assert_eq!(r.code, Some(1), "{name}: {r:#?}");
            let v: Value = serde_json::from_str(&r.stdout).unwrap();
            assert_eq!(v["points"][0]["status"], "damaged", "{name}: {v}");
            if !name.ends_with("1.vmdk") {
                // Damaged data or hashes: restore fails rather than return other bytes (a
                // damaged descriptor comment still reads the same disk).
                let r = loc.run(dir, &["restore", "REPO", "x.raw", "--force"]);
                assert_eq!(
                    r.code,
                    Some(2),
                    "{name}: restore returned other data: {r:#?}"
                );
            }
        }
        std::fs::write(dir.join("obj"), &pristine).unwrap();
        assert_eq!(
            curl(server, &["-T", dir.join("obj").to_str().unwrap()], &key).0,
            "200"
        );
    }
    loc.ok(dir, &["verify", "REPO"]);
    restores_to(dir, &loc, 1, &disk);
}

#[test]
fn s3_errors_are_one_line_and_never_show_the_secret() {
    let Some(server) = s3() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    source(dir, "disk.raw", 4, 2);
    let loc = Loc::s3(server, server.port, "errors");
    // A wrong key, a missing bucket: one line, within seconds.
    let mut wrong = loc.clone();
    wrong.env = s3_env(server.port, "not-the-secret-at-all");
    let r = wrong.run(dir, &["backup", "disk.raw", "REPO"]);
    one_line(&r, "access denied");
    assert!(r.elapsed < Duration::from_secs(10), "{:?}", r.elapsed);
    assert!(!r.stderr.contains("not-the-secret-at-all"));
    let mut nobucket = loc.clone();
    nobucket.repo = "s3://no-such-bucket-here/x".into();
    let r = nobucket.run(dir, &["backup", "disk.raw", "REPO"]);
    one_line(&r, "no such bucket");
    assert!(r.elapsed < Duration::from_secs(10), "{:?}", r.elapsed);
    let r = nobucket.run(dir, &["list", "REPO"]);
    one_line(&r, "no such bucket");
    one_line(&loc.run(dir, &["list", "REPO"]), "not a vdisk repository");
    one_line(
        &loc.run(dir, &["list", "s3://Bad_Bucket/x"]),
        "not a repository location",
    );
    // No credentials at all.
    let r = run({
        let mut c = Command::new(vdisk_bin());
        c.args(["list", &loc.repo])
            .current_dir(dir)
            .env_remove("AWS_ACCESS_KEY_ID");
        c
    });
    one_line(&r, "no credentials");
    // A prefix holding other objects is not backed up into.
    let foreign = Loc::s3(server, server.port, "foreign");
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    let key = format!("{}/notes.txt", prefix(&foreign));
    assert_eq!(
        curl(
            server,
            &["-T", dir.join("notes.txt").to_str().unwrap()],
            &key
        )
        .0,
        "200"
    );
    one_line(
        &foreign.run(dir, &["backup", "disk.raw", "REPO"]),
        "not a vdisk repository",
    );

    loc.ok(dir, &["backup", "disk.raw", "REPO"]);
    // A live lease of another host refuses a writer at once; reading needs no lock.
    let lease_key = format!("{}/vdisk-lease.json", prefix(&loc));
    let far = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    std::fs::write(
        dir.join("lease"),
        format!(r#"{{"format":"vdisk-lease","host":"elsewhere","boot":"b","pid":7,"token":"t","expires":{far}}}"#),
    )
    .unwrap();
    assert_eq!(
        curl(
            server,
            &["-T", dir.join("lease").to_str().unwrap()],
            &lease_key
        )
        .0,
        "200"
    );
    one_line(&loc.run(dir, &["backup", "disk.raw", "REPO"]), "in use");
    one_line(&loc.run(dir, &["prune", "REPO", "--keep", "1"]), "in use");
    loc.ok(dir, &["list", "REPO"]);
    loc.ok(dir, &["verify", "REPO"]);
    // Expired: taken over.
    std::fs::write(
        dir.join("lease"),
        r#"{"format":"vdisk-lease","host":"elsewhere","boot":"b","pid":7,"token":"t","expires":5}"#,
    )
    .unwrap();
    assert_eq!(
        curl(
            server,
            &["-T", dir.join("lease").to_str().unwrap()],
            &lease_key
        )
        .0,
        "200"
    );
    loc.ok(dir, &["backup", "disk.raw", "REPO"]);
    // A lease left by a run killed on this host never blocks the next run here.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    std::fs::write(
        dir.join("lease"),
        format!(r#"{{"format":"vdisk-lease","host":"{}","boot":"b","pid":7,"token":"t","expires":{far}}}"#, host.trim()),
    )
    .unwrap();
    assert_eq!(
        curl(
            server,
            &["-T", dir.join("lease").to_str().unwrap()],
            &lease_key
        )
        .0,
        "200"
    );
    loc.ok(dir, &["backup", "disk.raw", "REPO"]);
    // The writer removes its lease when done.
    assert_eq!(curl(server, &["-I"], &lease_key).0, "404");
    assert_eq!(points(dir, &loc).len(), 3);
}

#[test]
fn s3_transient_faults_are_retried() {
    let Some(server) = s3() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let proxy = Proxy::start(server.port);
    let loc = Loc::s3(server, proxy.port, "faults");
    // 40 MiB: extents large enough for multipart uploads.
    let mut disk = source(dir, "disk.raw", 40, 3);
    for (fail, drop) in [(Some(3), None), (None, Some(4)), (Some(7), Some(5))] {
        proxy.set(Faults {
            fail_every: fail,
            drop_every: drop,
            delay: Some(Duration::from_millis(2)),
            ..Default::default()
        });
        disk[fail.unwrap_or(1) as usize * MIB] ^= 1;
        std::fs::write(dir.join("disk.raw"), &disk).unwrap();
        loc.ok(dir, &["backup", "disk.raw", "REPO"]);
        let n = points(dir, &loc).last().unwrap()["point"].as_u64().unwrap();
        restores_to(dir, &loc, n, &disk);
        loc.ok(dir, &["verify", "REPO"]);
        assert!(proxy.requests.load(std::sync::atomic::Ordering::SeqCst) > 10);
    }
    proxy.set(Faults::default());
    loc.ok(dir, &["prune", "REPO", "--keep", "1"]);
    restores_to(dir, &loc, 3, &disk);
}

/// Run `args` through the proxy, killing vdisk after request `n`; whether it finished.
fn killed_at(dir: &Path, loc: &Loc, proxy: &Proxy, args: &[&str], n: u64) -> bool {
    let mut c = loc.command(dir, args);
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    proxy.set(Faults {
        kill_at: Some((child.id(), n)),
        ..Default::default()
    });
    let status = child.wait().unwrap();
    proxy.set(Faults::default());
    status.success()
}

/// The repository's objects: (name under the prefix, size).
fn objects(server: &S3Server, loc: &Loc) -> Vec<(String, u64)> {
    let p = prefix(loc);
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut query = format!("?list-type=2&prefix={}%2F", p.replace('/', "%2F"));
        if let Some(t) = &token {
            query.push_str("&continuation-token=");
            query.push_str(
                &t.replace('+', "%2B")
                    .replace('/', "%2F")
                    .replace('=', "%3D"),
            );
        }
        let (code, body) = curl(server, &[], &query);
        assert_eq!(code, "200", "{}", String::from_utf8_lossy(&body));
        let text = String::from_utf8_lossy(&body).to_string();
        for c in text.split("<Contents>").skip(1) {
            let field = |tag: &str| {
                c.split(&format!("<{tag}>"))
                    .nth(1)
                    .and_then(|s| s.split(&format!("</{tag}>")).next())
                    .unwrap()
                    .to_string()
            };
            let key = field("Key");
            out.push((
                key[p.len() + 1..].to_string(),
                field("Size").parse().unwrap(),
            ));
        }
        token = text
            .split("<NextContinuationToken>")
            .nth(1)
            .and_then(|s| s.split("</NextContinuationToken>").next())
            .map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    out.sort();
    out
}

/// The repository's objects that no point refers to, and pending upload markers.
fn leftovers(server: &S3Server, loc: &Loc) -> Vec<String> {
    objects(server, loc)
        .into_iter()
        .map(|(name, _)| name)
        .filter(|n| n.starts_with(".vdisk-upload") || n == "vdisk-lease.json")
        .collect()
}

#[test]
fn s3_kill_at_each_request_loses_nothing() {
    let Some(server) = s3() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let proxy = Proxy::start(server.port);
    let loc = Loc::s3(server, proxy.port, "kill");
    let direct = loc.via(server.port);
    // 10 MiB of data in one extent: a multipart upload (a part, then the 8 MiB head part
    // last), kept small since every request of every run is a kill point.
    let mut disk = vec![0u8; 12 * MIB];
    disk[MIB..11 * MIB].copy_from_slice(&pattern(4, 10 * MIB));
    std::fs::write(dir.join("disk.raw"), &disk).unwrap();
    let mut versions: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut rounds = 0;
    for round in 0..2u64 {
        if round > 0 {
            let at = (round as usize * 3) * MIB;
            disk[at..at + MIB].copy_from_slice(&pattern(40 + round, MIB));
            std::fs::write(dir.join("disk.raw"), &disk).unwrap();
        }
        let listed = |dir: &Path| -> Vec<Value> {
            let r = direct.run(dir, &["list", "--json", "REPO"]);
            if r.code == Some(2) && r.stderr.contains("not a vdisk repository") {
                return Vec::new();
            }
            assert_eq!(r.code, Some(0), "{r:#?}");
            let v: Value = serde_json::from_str(&r.stdout).unwrap();
            v["points"].as_array().unwrap().clone()
        };
        let before = listed(dir);
        let mut n = 1;
        loop {
            rounds += 1;
            if killed_at(dir, &loc, &proxy, &["backup", "disk.raw", "REPO"], n) {
                break;
            }
            // Killed at request n: the repository is as it was (or, killed after its
            // commit, holds the whole new point), and sound.
            let after = listed(dir);
            if !after.is_empty() {
                direct.ok(dir, &["verify", "REPO"]);
            }
            if after.len() == before.len() + 1 {
                assert_eq!(after[..before.len()], before[..], "request {n}");
                break;
            }
            assert_eq!(after, before, "request {n}");
            n += 1;
            assert!(n < 200, "the backup never finished");
        }
        let now = points(dir, &direct);
        assert_eq!(now.len(), before.len() + 1);
        // Killed runs used up no point number.
        assert_eq!(now.last().unwrap()["point"], round + 1);
        versions.push((round + 1, disk.clone()));
    }
    // A prune killed at each request.
    let before = points(dir, &direct);
    let mut n = 1;
    while !killed_at(dir, &loc, &proxy, &["prune", "REPO", "--keep", "1"], n) {
        let after = points(dir, &direct);
        assert!(after == before || after.len() == 1, "request {n}");
        direct.ok(dir, &["verify", "REPO"]);
        n += 1;
        assert!(n < 200);
    }
    direct.ok(dir, &["verify", "REPO"]);
    for (p, d) in &versions[1..] {
        restores_to(dir, &direct, *p, d);
    }
    // The next writer cleared whatever the killed runs left.
    direct.ok(dir, &["backup", "disk.raw", "REPO"]);
    assert_eq!(leftovers(server, &direct), Vec::<String>::new());
    // A sync killed at each request leaves its destination as it was.
    let dst = Loc::s3(server, proxy.port, "kill-copy");
    let dst_direct = dst.via(server.port);
    let mut n = 1;
    while !killed_at(dir, &dst, &proxy, &["sync", &direct.repo, "REPO"], n) {
        let r = dst_direct.run(dir, &["list", "REPO"]);
        if r.code == Some(0) {
            // Killed after its commit: a whole copy.
            break;
        }
        assert!(
            r.stderr.contains("not a vdisk repository"),
            "request {n}: {r:#?}"
        );
        n += 1;
        assert!(n < 300);
    }
    dst_direct.ok(dir, &["verify", "REPO"]);
    assert_eq!(points(dir, &dst_direct), points(dir, &direct));
    eprintln!("kill test: {rounds} backup runs, prune and sync killed at each request");
}

#[test]
fn s3_sync_between_folders_and_buckets_moves_only_what_is_missing() {
    require_qemu();
    let Some(server) = s3() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let local = Loc::folder("repo");
    let bucket = Loc::s3(server, server.port, "sync");
    let bucket2 = Loc::s3(server, server.port, "sync2");
    let mut disk = source(dir, "disk.raw", 24, 5);
    let mut versions = Vec::new();
    for round in 0..3u64 {
        if round > 0 {
            let at = round as usize * 5 * MIB;
            disk[at..at + MIB].copy_from_slice(&pattern(50 + round, MIB));
            std::fs::write(dir.join("disk.raw"), &disk).unwrap();
        }
        local.ok(dir, &["backup", "disk.raw", "REPO"]);
        versions.push((round + 1, disk.clone()));
        // Local to S3: only the new point moves.
        let r = bucket.ok(dir, &["sync", "--json", "repo", "REPO"]);
        let v: Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(v["points_copied"], 1, "{v}");
    }
    let r = bucket.ok(dir, &["sync", "--json", "repo", "REPO"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (v["files_copied"].as_u64(), v["bytes_copied"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(points(dir, &bucket), points(dir, &local));
    // S3 to S3, S3 to local: each point restores, and qemu-img reads the copy.
    bucket2.ok(dir, &["sync", &bucket.repo, "REPO"]);
    bucket2.ok(dir, &["sync", "REPO", "down"]);
    for (n, d) in &versions {
        restores_to(dir, &bucket2, *n, d);
        std::fs::write(dir.join("want.raw"), d).unwrap();
        let image = points(dir, &bucket2)[(*n - 1) as usize]["image"]
            .as_str()
            .unwrap()
            .to_string();
        qemu_img(dir, &["compare", &format!("down/{image}"), "want.raw"]);
    }
    // After a prune of the source, a sync makes the copy match: its synthetic full, the
    // folded points gone.
    local.ok(dir, &["prune", "REPO", "--keep", "2"]);
    let r = bucket.ok(dir, &["sync", "--json", "repo", "REPO"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["points_removed"], 1, "{v}");
    assert_eq!(points(dir, &bucket), points(dir, &local));
    assert_eq!(points(dir, &bucket)[0]["kind"], "full");
    bucket.ok(dir, &["verify", "REPO"]);
    for (n, d) in &versions[1..] {
        restores_to(dir, &bucket, *n, d);
    }
    // A copy of another disk is not overwritten.
    source(dir, "other.raw", 4, 9);
    Loc::folder("other").ok(dir, &["backup", "other.raw", "REPO"]);
    let r = bucket.run(dir, &["sync", "other", "REPO"]);
    one_line(&r, "not a copy");
    // A point serves from the bucket too (the repository is detected from the location).
    let r = bucket.run(
        dir,
        &["serve", "REPO", "--point", "9", "--socket", "s.sock"],
    );
    one_line(&r, "no point 9");
}

#[test]
fn s3_a_writer_renews_its_lease_and_a_second_writer_is_refused() {
    let Some(server) = s3() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let loc = Loc::s3(server, server.port, "lease");
    source(dir, "disk.raw", 4, 6);
    loc.ok(dir, &["backup", "disk.raw", "REPO"]);
    // 14 MiB of new data read at 1 MiB/s: a run of about 14 s, past one renewal (10 s).
    let mut disk = vec![0u8; 16 * MIB];
    disk[MIB..15 * MIB].copy_from_slice(&pattern(60, 14 * MIB));
    std::fs::write(dir.join("disk.raw"), &disk).unwrap();
    let mut c = loc.command(dir, &["--io-limit", "1M", "backup", "disk.raw", "REPO"]);
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut slow = c.spawn().unwrap();
    let lease_key = format!("{}/vdisk-lease.json", prefix(&loc));
    let expires = || -> u64 {
        let (code, body) = curl(server, &[], &lease_key);
        assert_eq!(code, "200", "no lease while a backup runs");
        let v: Value = serde_json::from_slice(&body).unwrap();
        v["expires"].as_u64().unwrap()
    };
    std::thread::sleep(Duration::from_secs(2));
    let first = expires();
    // A second writer is refused at once (and a reader is not).
    let r = loc.run(dir, &["backup", "disk.raw", "REPO"]);
    one_line(&r, "in use");
    loc.ok(dir, &["list", "REPO"]);
    std::thread::sleep(Duration::from_secs(10));
    assert!(expires() > first, "the lease was not renewed");
    assert!(slow.wait().unwrap().success());
    assert_eq!(points(dir, &loc).len(), 2);
    restores_to(dir, &loc, 2, &disk);
}

// ---------------------------------------------------------------------------------------
// The local repository's trust and scale tests (`trust.rs`, `scale.rs`, `serve.rs`), on the
// object store.

/// "`backup --changed` with a bitmap of another disk size silently drops the changes": on
/// the object store too, refused in one line with the repository's objects untouched.
#[test]
fn s3_a_changed_block_bitmap_of_another_size_is_refused_and_changes_nothing() {
    let Some(server) = s3() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let loc = Loc::s3(server, server.port, "bitmap");
    let mut disk = source(dir, "disk.raw", 2, 71);
    loc.ok(dir, &["backup", "disk.raw", "REPO"]);
    disk[65536] ^= 0x5a;
    std::fs::write(dir.join("disk.raw"), &disk).unwrap();
    std::fs::write(
        dir.join("cbt.json"),
        r#"{"changedArea":[{"start":65536,"length":65536}]}"#,
    )
    .unwrap();
    for (size, name) in [("4M", "big.bm"), ("1M", "small.bm"), ("2M", "right.bm")] {
        vdisk_in(
            dir,
            &["bitmap", "import", "cbt.json", "--size", size, "-o", name],
        )
        .expect_code(0, "bitmap import");
    }
    let before = objects(server, &loc);
    for bm in ["big.bm", "small.bm"] {
        let r = loc.run(dir, &["backup", "disk.raw", "REPO", "--changed", bm]);
        one_line(&r, "bitmap");
        assert_eq!(
            objects(server, &loc),
            before,
            "{bm}: the repository changed"
        );
    }
    loc.ok(
        dir,
        &["backup", "disk.raw", "REPO", "--changed", "right.bm"],
    );
    loc.ok(dir, &["verify", "REPO"]);
    restores_to(dir, &loc, 2, &disk);
}

/// A disk whose size is not a multiple of 512 keeps its exact size through an object store.
#[test]
fn s3_a_disk_of_a_million_bytes_backs_up_verifies_and_restores_exactly() {
    require_qemu();
    let Some(server) = s3() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let loc = Loc::s3(server, server.port, "million");
    let mut disk = pattern(141, 1_000_000);
    disk[300_000..600_000].fill(0);
    let first = disk.clone();
    std::fs::write(dir.join("disk.raw"), &disk).unwrap();
    loc.ok(dir, &["backup", "disk.raw", "REPO"]);
    disk[999_999] ^= 0xff;
    disk[10] ^= 0x01;
    std::fs::write(dir.join("disk.raw"), &disk).unwrap();
    loc.ok(dir, &["backup", "disk.raw", "REPO"]);
    loc.ok(dir, &["verify", "REPO"]);
    for p in points(dir, &loc) {
        assert_eq!(p["size"], 1_000_000, "{p}");
    }
    restores_to(dir, &loc, 1, &first);
    restores_to(dir, &loc, 2, &disk);
    // As a VMDK, qemu-img reads whole sectors: the tail is zero.
    loc.ok(
        dir,
        &["restore", "REPO", "out.vmdk", "-O", "vmdk", "--force"],
    );
    qemu_img(dir, &["check", "out.vmdk"]);
    qemu_img(dir, &["convert", "-O", "raw", "out.vmdk", "q.raw"]);
    let q = std::fs::read(dir.join("q.raw")).unwrap();
    assert_eq!(q.len(), 1_000_448);
    assert!(q[..1_000_000] == disk[..] && q[1_000_000..].iter().all(|&b| b == 0));
}

/// "A killed run leaves a zombie … repositories stay locked after a kill -9": a backup to the
/// object store SIGKILLed while it holds the lease, and never reaped, blocks nothing on this
/// host (the lease's host-local kernel lock died with it), and uses up no point number.
#[test]
fn s3_a_killed_unreaped_backup_leaves_the_repository_free() {
    let Some(server) = s3() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let loc = Loc::s3(server, server.port, "zombie");
    let disk = source(dir, "disk.raw", 16, 81);
    let mut c = loc.command(dir, &["--io-limit", "1M", "backup", "disk.raw", "REPO"]);
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut slow = c.spawn().unwrap();
    let pid = slow.id();
    let lease_key = format!("{}/vdisk-lease.json", prefix(&loc));
    let t0 = std::time::Instant::now();
    while curl(server, &[], &lease_key).0 != "200" {
        assert!(t0.elapsed() < Duration::from_secs(30), "no lease was taken");
        std::thread::sleep(Duration::from_millis(20));
    }
    slow.kill().unwrap(); // SIGKILL, and no wait: it stays a zombie
    while process_state(pid) != Some('Z') {
        assert!(t0.elapsed() < Duration::from_secs(40), "never a zombie");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The lease object is still there, unexpired, naming this host.
    assert_eq!(curl(server, &[], &lease_key).0, "200");
    let r = loc.ok(dir, &["backup", "disk.raw", "REPO"]);
    assert!(!r.stderr.contains("in use"), "{}", r.stderr);
    assert_eq!(process_state(pid), Some('Z'));
    let p = points(dir, &loc);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0]["point"], 1, "the killed run used up a number: {p:?}");
    loc.ok(dir, &["verify", "REPO"]);
    restores_to(dir, &loc, 1, &disk);
    assert!(leftovers(server, &loc).is_empty());
    slow.wait().unwrap();
}

/// A repository on a bucket that the reader may only read: list, verify, restore and serve
/// need no write access (they take no lease); writers are refused in one line, and nothing
/// changes.
#[test]
fn s3_a_read_only_key_lists_verifies_and_restores() {
    require_qemu();
    let Some(server) = s3() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let loc = Loc::s3(server, server.port, "readonly");
    let mut disk = source(dir, "disk.raw", 6, 91);
    let first = disk.clone();
    loc.ok(dir, &["backup", "disk.raw", "REPO"]);
    disk[3 * MIB..3 * MIB + 4096].fill(0x77);
    std::fs::write(dir.join("disk.raw"), &disk).unwrap();
    loc.ok(dir, &["backup", "disk.raw", "REPO"]);
    let before = objects(server, &loc);

    let ro = loc.as_reader(server);
    assert_eq!(points(dir, &ro).len(), 2);
    ro.ok(dir, &["verify", "REPO"]);
    restores_to(dir, &ro, 1, &first);
    restores_to(dir, &ro, 2, &disk);
    // Served over NBD with the reader's key: qemu-img reads the point.
    {
        let srv = serve_env(
            dir,
            &[
                &ro.repo, "--point", "1", "--socket", "s.sock", "--name", "p",
            ],
            &ro.env,
        );
        qemu_img(
            dir,
            &["convert", "-f", "raw", "-O", "raw", &srv.uri, "nbd.raw"],
        );
        std::fs::write(dir.join("want.raw"), &first).unwrap();
        assert_same_bytes(&dir.join("want.raw"), &dir.join("nbd.raw"));
    }
    for args in [
        vec!["backup", "disk.raw", "REPO"],
        vec!["prune", "REPO", "--keep", "1"],
    ] {
        let r = ro.run(dir, &args);
        assert_eq!(r.code, Some(2), "{args:?}: {r:#?}");
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        assert!(!r.stderr.contains(READER_SECRET) && !r.stderr.contains("panicked"));
        assert_eq!(
            objects(server, &loc),
            before,
            "{args:?} changed the repository"
        );
    }
}

/// Costs follow the data on the object store too: a 4 TiB thin disk holding 4 MiB is backed
/// up (full and incremental), verified, restored, served and pruned in little memory, and
/// its points take objects and bytes in proportion to what they store.
#[test]
fn s3_a_4_tib_thin_disk_costs_what_its_data_costs() {
    use std::os::unix::fs::FileExt;
    let Some(server) = s3() else { return };
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let tmp = tempfile::tempdir_in(base).unwrap();
    let dir = tmp.path();
    let size: u64 = 4 << 40;
    let make = |name: &str, changed: bool| {
        let f = std::fs::File::create(dir.join(name)).unwrap();
        f.set_len(size).unwrap();
        for i in 0..8u64 {
            let seed = if changed && i == 3 { 999 } else { 100 + i };
            f.write_all_at(&pattern(seed, 512 << 10), i * (size / 8))
                .unwrap();
        }
    };
    make("disk.raw", false);
    make("new.raw", true);
    let loc = Loc::s3(server, server.port, "thin");
    let commands: Vec<Vec<&str>> = vec![
        vec!["backup", "disk.raw", &loc.repo],
        vec!["backup", "new.raw", &loc.repo, "--force"],
        vec!["verify", &loc.repo],
        vec!["restore", &loc.repo, "restored.raw", "--point", "1"],
        vec!["prune", &loc.repo, "--keep", "1"],
        vec!["restore", &loc.repo, "pruned.raw"],
    ];
    let runs = vdisk_measured_env(dir, &commands, &loc.env);
    for (args, r) in commands.iter().zip(&runs) {
        assert_eq!(r.code, Some(0), "{args:?}: {r:#?}");
        eprintln!(
            "{}: {} MiB, {:.2} s CPU",
            args[0],
            r.max_rss >> 20,
            r.cpu.as_secs_f64()
        );
        assert!(
            r.max_rss < 256 << 20,
            "{args:?}: {} MiB resident on a 4 TiB disk",
            r.max_rss >> 20
        );
        assert!(
            r.cpu.as_secs_f64() < 20.0,
            "{args:?}: {:.1} s of CPU for 4 MiB of data",
            r.cpu.as_secs_f64()
        );
    }
    assert_same_bytes(&dir.join("disk.raw"), &dir.join("restored.raw"));
    assert_same_bytes(&dir.join("new.raw"), &dir.join("pruned.raw"));
    // One point of 4 MiB of data is left: its objects cost the data and a little metadata.
    let objs = objects(server, &loc);
    let bytes: u64 = objs.iter().map(|o| o.1).sum();
    eprintln!("{} objects, {bytes} bytes", objs.len());
    assert!(bytes < (4 << 20) + (512 << 10), "{bytes} bytes: {objs:?}");
    assert!(objs.len() <= 2 * 8 + 8, "{} objects: {objs:?}", objs.len());
}

/// A point whose descriptor names an object outside the repository's prefix (here a copy of
/// its own extent, so that following the name would read plausible data) is refused, as in
/// a folder, whatever `--allow-outside-paths` says.
#[test]
fn s3_a_point_naming_an_object_outside_the_repository_is_refused() {
    let Some(server) = s3() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let loc = Loc::s3(server, server.port, "outside");
    let mut disk = source(dir, "disk.raw", 2, 131);
    loc.ok(dir, &["backup", "disk.raw", "REPO"]);
    disk[MIB + 5] ^= 0x44;
    std::fs::write(dir.join("disk.raw"), &disk).unwrap();
    loc.ok(dir, &["backup", "disk.raw", "REPO"]);
    let p = prefix(&loc);
    let parent = p.rsplit_once('/').unwrap().0;
    let put = |key: &str, bytes: &[u8]| {
        std::fs::write(dir.join("obj"), bytes).unwrap();
        let r = curl(server, &["-T", dir.join("obj").to_str().unwrap()], key);
        assert_eq!(r.0, "200", "{key}");
    };
    let (code, extent) = curl(server, &[], &format!("{p}/point-000002-s001.vmdk"));
    assert_eq!(code, "200");
    put(&format!("{parent}/outside.vmdk"), &extent);
    let desc_key = format!("{p}/point-000002.vmdk");
    let (code, desc) = curl(server, &[], &desc_key);
    assert_eq!(code, "200");
    let desc = String::from_utf8(desc).unwrap();
    assert!(desc.contains("\"point-000002-s001.vmdk\""), "{desc}");
    put(
        &desc_key,
        desc.replace("\"point-000002-s001.vmdk\"", "\"../outside.vmdk\"")
            .as_bytes(),
    );
    for extra in [&[][..], &["--allow-outside-paths"][..]] {
        let mut args = extra.to_vec();
        args.extend(["restore", "REPO", "out.raw", "--point", "2"]);
        let r = loc.run(dir, &args);
        one_line(&r, "outside the repository");
        assert!(!r.stderr.contains("allow-outside-paths"), "{}", r.stderr);
        assert!(!dir.join("out.raw").exists());
        let mut args = extra.to_vec();
        args.extend(["verify", "REPO"]);
        let r = loc.run(dir, &args);
        assert!(matches!(r.code, Some(1 | 2)), "{args:?}: {r:#?}");
    }
    put(&desc_key, desc.as_bytes());
    loc.ok(dir, &["verify", "REPO"]);
    restores_to(dir, &loc, 2, &disk);
}
