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
    let objs = objects(server, &loc);
    let pick = |start: &str| {
        objs.iter()
            .find(|o| o.0.starts_with(start))
            .unwrap()
            .clone()
    };
    // A byte of a pack (a block), of an index table, of the point, of the config.
    for (name, len) in [
        pick("data/"),
        pick("index/"),
        pick("points/"),
        pick("config"),
    ] {
        let key = format!("{p}/{name}");
        let (code, pristine) = curl(server, &[], &key);
        assert_eq!(code, "200", "{key}");
        let mut b = pristine.clone();
        b[(len / 3) as usize] ^= 0x21;
        std::fs::write(dir.join("obj"), &b).unwrap();
        assert_eq!(
            curl(server, &["-T", dir.join("obj").to_str().unwrap()], &key).0,
            "200"
        );
        let r = loc.run(dir, &["verify", "--json", "REPO"]);
        if name == "config" {
            one_line(&r, "config");
        } else {
            assert_eq!(r.code, Some(1), "{name}: {r:#?}");
            let v: Value = serde_json::from_str(&r.stdout).unwrap();
            assert!(
                v["points"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["status"] == "damaged"),
                "{name}: {v}"
            );
            // Restore fails rather than return other bytes.
            let r = loc.run(dir, &["restore", "REPO", "x.raw", "--force"]);
            assert_eq!(
                r.code,
                Some(2),
                "{name}: restore returned other data: {r:#?}"
            );
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
    // A registration of any content (not a valid one, from nobody) blocks no writer; and
    // the writer removes its own when done.
    let junk = format!("{}/locks/00000000000000000000000000000001", prefix(&loc));
    std::fs::write(dir.join("junk"), b"1\n").unwrap();
    assert_eq!(
        curl(server, &["-T", dir.join("junk").to_str().unwrap()], &junk).0,
        "200"
    );
    loc.ok(dir, &["backup", "disk.raw", "REPO"]);
    loc.ok(dir, &["list", "REPO"]);
    loc.ok(dir, &["verify", "REPO"]);
    let locks: Vec<_> = objects(server, &loc)
        .into_iter()
        .filter(|o| o.0.starts_with("locks/"))
        .collect();
    assert_eq!(locks.len(), 1, "{locks:?}");
    assert_eq!(points(dir, &loc).len(), 2);
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
    loc.ok(dir, &["prune", "REPO", "--keep-last", "1"]);
    restores_to(dir, &loc, 3, &disk);
}

/// Run `args` through the proxy, killing vdisk after request `n`; whether it finished.
fn killed_at(dir: &Path, loc: &Loc, proxy: &Proxy, args: &[&str], n: u64) -> bool {
    use std::sync::atomic::Ordering;
    let mut c = loc.command(dir, args);
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // Counted from before the start (request n waits for the pid): no request of the run
    // goes uncounted.
    proxy.set(Faults {
        kill_at: Some((0, n)),
        ..Default::default()
    });
    let kills = proxy.killed.load(Ordering::SeqCst);
    let child = c.spawn().unwrap();
    proxy.kill_pid(child.id());
    let out = child.wait_with_output().unwrap();
    let requests = proxy.requests.load(Ordering::SeqCst);
    proxy.set(Faults::default());
    // Killed, or finished: never an error of its own.
    use std::os::unix::process::ExitStatusExt;
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGKILL),
        "{args:?} at request {n}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        // It finished because it needed fewer requests, not because the kill was missed.
        assert!(
            requests < n,
            "{args:?} made {requests} requests, not killed at {n}"
        );
    } else {
        assert_eq!(
            proxy.killed.load(Ordering::SeqCst),
            kills + 1,
            "{args:?} at {n}"
        );
    }
    out.status.success()
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

/// What killed runs left that a prune past the grace period does not remove: registrations,
/// condemned lists, objects of no known kind.
fn leftovers(server: &S3Server, loc: &Loc) -> Vec<String> {
    let mut now = loc.clone();
    now.env.push(("VDISK_GC_GRACE_SECS".into(), "0".into()));
    for _ in 0..2 {
        now.ok(
            std::path::Path::new("/tmp"),
            &["prune", "REPO", "--keep-last", "1000"],
        );
    }
    objects(server, loc)
        .into_iter()
        .map(|(name, _)| name)
        .filter(|n| {
            !(n == "config"
                || n.starts_with("keys/")
                || n.starts_with("points/")
                || n.starts_with("index/")
                || n.starts_with("data/"))
        })
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
    // 10 MiB of data: one pack (a conditional PUT), its index table and the point, kept
    // small since every request of every run is a kill point.
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
    while !killed_at(dir, &loc, &proxy, &["prune", "REPO", "--keep-last", "1"], n) {
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
    let want = points(dir, &direct);
    while !killed_at(dir, &dst, &proxy, &["sync", &direct.repo, "REPO"], n) {
        let r = dst_direct.run(dir, &["list", "--json", "REPO"]);
        if r.code == Some(0) {
            // Whatever points it holds are whole points of the source.
            let v: Value = serde_json::from_str(&r.stdout).unwrap();
            for p in v["points"].as_array().unwrap() {
                assert!(
                    want.contains(p) || want.iter().any(|w| w["point"] == p["point"]),
                    "{p}"
                );
            }
            dst_direct.ok(dir, &["verify", "REPO"]);
        } else {
            assert!(
                r.stderr.contains("not a vdisk repository"),
                "request {n}: {r:#?}"
            );
        }
        n += 1;
        assert!(n < 300);
    }
    dst_direct.ok(dir, &["verify", "REPO"]);
    assert_eq!(points(dir, &dst_direct), points(dir, &direct));
    eprintln!("kill test: {rounds} backup runs, prune and sync killed at each request");
}

#[test]
fn s3_sync_between_folders_and_buckets_moves_only_what_is_missing() {
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
        // Local to S3: only the new point moves, and only its new blocks.
        let r = bucket.ok(dir, &["sync", "--json", "repo", "REPO"]);
        let v: Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(v["points_copied"], 1, "{v}");
        if round > 0 {
            assert!(v["bytes_copied"].as_u64().unwrap() < 3 * MIB as u64, "{v}");
        }
    }
    let r = bucket.ok(dir, &["sync", "--json", "repo", "REPO"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (v["points_copied"].as_u64(), v["bytes_copied"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(points(dir, &bucket), points(dir, &local));
    // S3 to S3, S3 to local: each point restores from each copy.
    bucket2.ok(dir, &["sync", &bucket.repo, "REPO"]);
    bucket2.ok(dir, &["sync", "REPO", "down"]);
    let down = Loc::folder("down");
    for (n, d) in &versions {
        restores_to(dir, &bucket2, *n, d);
        restores_to(dir, &down, *n, d);
    }
    // Sync adds what the destination lacks; it removes nothing (the destination keeps its
    // own retention): after a prune of the source, the copy keeps its three points.
    local.ok(dir, &["prune", "REPO", "--keep-last", "2"]);
    let r = bucket.ok(dir, &["sync", "--json", "repo", "REPO"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["points_copied"], 0, "{v}");
    assert_eq!(points(dir, &bucket).len(), 3);
    bucket.ok(dir, &["verify", "REPO"]);
    // Another repository (another key): its NAME comes in beside, resealed; nothing of the
    // bucket's own points changes.
    source(dir, "other.raw", 4, 9);
    Loc::folder("other").ok(dir, &["backup", "other.raw", "REPO"]);
    bucket.ok(dir, &["sync", "other", "REPO"]);
    assert_eq!(points(dir, &bucket).len(), 4);
    for (n, d) in &versions {
        std::fs::write(dir.join("want.raw"), d).unwrap();
        let p = n.to_string();
        bucket.ok(
            dir,
            &[
                "restore", "REPO", "got.raw", "--name", "disk", "--point", &p, "--force",
            ],
        );
        assert_same_bytes(&dir.join("want.raw"), &dir.join("got.raw"));
    }
    bucket.ok(dir, &["verify", "REPO"]);
    // A point serves from the bucket too (the repository is detected from the location).
    let r = bucket.run(
        dir,
        &[
            "serve", "REPO", "--name", "disk", "--point", "9", "--socket", "s.sock",
        ],
    );
    one_line(&r, "no point 9");
}

#[test]
fn s3_a_writer_renews_its_lease_and_a_second_writer_is_refused() {
    let Some(server) = s3() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut loc = Loc::s3(server, server.port, "lease");
    loc.env.push(("VDISK_LOCK_REFRESH_SECS".into(), "2".into()));
    source(dir, "disk.raw", 4, 6);
    loc.ok(dir, &["backup", "disk.raw", "REPO"]);
    // 14 MiB of new data read at 1 MiB/s: a run of about 14 s, past several refreshes.
    let mut disk = vec![0u8; 16 * MIB];
    disk[MIB..15 * MIB].copy_from_slice(&pattern(60, 14 * MIB));
    std::fs::write(dir.join("disk.raw"), &disk).unwrap();
    let mut c = loc.command(dir, &["--io-limit", "1M", "backup", "disk.raw", "REPO"]);
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut slow = c.spawn().unwrap();
    let registration = || -> Vec<u8> {
        let locks: Vec<_> = objects(server, &loc)
            .into_iter()
            .filter(|o| o.0.starts_with("locks/"))
            .collect();
        assert_eq!(locks.len(), 1, "no registration while a backup runs");
        curl(server, &[], &format!("{}/{}", prefix(&loc), locks[0].0)).1
    };
    std::thread::sleep(Duration::from_secs(3));
    let first = registration();
    // A second backup of the NAME is refused at once (and a reader is not).
    let r = loc.run(dir, &["backup", "disk.raw", "REPO"]);
    one_line(&r, "running");
    loc.ok(dir, &["list", "REPO"]);
    std::thread::sleep(Duration::from_secs(5));
    assert_ne!(registration(), first, "the registration was not refreshed");
    assert!(slow.wait().unwrap().success());
    assert_eq!(points(dir, &loc).len(), 2);
    restores_to(dir, &loc, 2, &disk);
    assert!(!objects(server, &loc)
        .iter()
        .any(|o| o.0.starts_with("locks/")));
}

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
/// object store SIGKILLed while registered, and never reaped, blocks nothing (its
/// registration names this host and a process that is a zombie), and uses up no number.
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
    let t0 = std::time::Instant::now();
    while !objects(server, &loc)
        .iter()
        .any(|o| o.0.starts_with("locks/"))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no registration was made"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    slow.kill().unwrap(); // SIGKILL, and no wait: it stays a zombie
    while process_state(pid) != Some('Z') {
        assert!(t0.elapsed() < Duration::from_secs(40), "never a zombie");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Its registration is still there, fresh, naming this host: proven dead by its pid.
    assert!(objects(server, &loc)
        .iter()
        .any(|o| o.0.starts_with("locks/")));
    let r = loc.ok(dir, &["backup", "disk.raw", "REPO"]);
    assert!(!r.stderr.contains("running"), "{}", r.stderr);
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
/// need no write access (they register nothing); writers are refused in one line, and
/// nothing changes.
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
                &ro.repo, "--point", "1", "--socket", "s.sock", "--export", "p",
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
        vec!["prune", "REPO", "--keep-last", "1"],
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
    let mut loc = Loc::s3(server, server.port, "thin");
    loc.env.push(("VDISK_GC_GRACE_SECS".into(), "0".into()));
    let commands: Vec<Vec<&str>> = vec![
        vec!["backup", "disk.raw", &loc.repo],
        vec!["backup", "new.raw", &loc.repo, "--name", "disk", "--force"],
        vec!["verify", &loc.repo],
        vec!["restore", &loc.repo, "restored.raw", "--point", "1"],
        vec!["prune", &loc.repo, "--keep-last", "1"],
        vec!["prune", &loc.repo, "--keep-last", "1"],
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
    // (The old version of the changed piece may stay in a pack that is mostly live.)
    assert!(bytes < (5 << 20), "{bytes} bytes: {objs:?}");
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
    // A layout-2 repository (made through the library in a folder, then put under the
    // prefix): its points name files; layout 3's name none.
    let mut disk = source(dir, "disk.raw", 2, 131);
    let layout2 = |dir: &Path| {
        use vdisk::chain::layout2::{BackupOptions, Repository};
        let mut r = Repository::open_or_create(dir.join("old")).unwrap();
        r.backup(dir.join("disk.raw"), &BackupOptions::default())
            .unwrap();
    };
    layout2(dir);
    disk[MIB + 5] ^= 0x44;
    std::fs::write(dir.join("disk.raw"), &disk).unwrap();
    layout2(dir);
    let p = prefix(&loc);
    let parent = p.rsplit_once('/').unwrap().0;
    let put = |key: &str, bytes: &[u8]| {
        std::fs::write(dir.join("obj"), bytes).unwrap();
        let r = curl(server, &["-T", dir.join("obj").to_str().unwrap()], key);
        assert_eq!(r.0, "200", "{key}");
    };
    for e in std::fs::read_dir(dir.join("old")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name != ".vdisk-lock" {
            put(&format!("{p}/{name}"), &std::fs::read(e.path()).unwrap());
        }
    }
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
