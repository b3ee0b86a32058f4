//! Trust at the edges: each attack the issue listed, reproduced as described, against the
//! built binary. Locks that outlive their holder, runs killed at each publishing system call
//! (strace injects the SIGKILL at the Nth call, no sleeps), damaged or swapped point files,
//! cut streams, outputs that would destroy inputs, devices, read-only repositories, closed
//! pipes and absurd sizes, and the read-rate limit as the kernel counts reads.
#![allow(unsafe_code)] // pipe2(2)/fcntl(2) for a one-page pipe, posix_fadvise(2) to empty the page cache

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

const MIB: usize = 1 << 20;
const GRAIN: usize = 64 << 10;

// ---------------------------------------------------------------------------------------
// Helpers

fn ok(dir: &Path, args: &[&str]) -> Run {
    let r = vdisk_in(dir, args);
    r.expect_code(0, &args.join(" "));
    r
}

/// An error as the rules have it: exit 2, one line `vdisk: error: …` containing `needle`,
/// no panic.
fn one_line_error(r: &Run, needle: &str) {
    assert_eq!(r.code, Some(2), "{r:#?}");
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.starts_with("vdisk: error: ") && r.stderr.contains(needle),
        "wanted \"{needle}\" in: {}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

/// A disk of `len` bytes: data in its first and third quarters, zeros elsewhere, so that
/// points hold data grains and holes alike.
fn disk_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut d = vec![0u8; len];
    let q = len / 4;
    d[..q].copy_from_slice(&pattern(seed, q));
    d[2 * q..3 * q].copy_from_slice(&pattern(seed + 1, q));
    d
}

/// Rewrite the 64 KiB grains `grains` of `disk` with data from `seed`.
fn change_grains(disk: &mut [u8], grains: &[usize], seed: u64) {
    for (i, &g) in grains.iter().enumerate() {
        disk[g * GRAIN..(g + 1) * GRAIN].copy_from_slice(&pattern(seed + i as u64, GRAIN));
    }
}

/// Write `disk` to `path` as a sparse file (zero 64 KiB blocks stay holes).
fn write_disk(path: &Path, disk: &[u8]) {
    let _ = std::fs::remove_file(path);
    let f = std::fs::File::create(path).unwrap();
    f.set_len(disk.len() as u64).unwrap();
    for (i, c) in disk.chunks(1 << 16).enumerate() {
        if c.iter().any(|&b| b != 0) {
            f.write_all_at(c, (i << 16) as u64).unwrap();
        }
    }
}

/// Every file under `dir` (and its folders), by path relative to `dir`, with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if t.is_dir() {
                walk(root, &e.path(), out);
            } else if t.is_file() {
                out.insert(rel, std::fs::read(e.path()).unwrap());
            } else {
                out.insert(rel, Vec::new());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The names in `dir`.
fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// The point numbers `list --json REPO` shows.
fn point_numbers(dir: &Path, repo: &str) -> Vec<u64> {
    let r = ok(dir, &["list", "--json", repo]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["point"].as_u64().unwrap())
        .collect()
}

/// Point `n` of `repo` restores (raw, every grain checked) to exactly the bytes of `want`.
fn restores_to(dir: &Path, repo: &str, n: u64, want: &Path) {
    let got = dir.join("restored.raw");
    ok(
        dir,
        &[
            "restore",
            repo,
            got.to_str().unwrap(),
            "--point",
            &n.to_string(),
            "--force",
        ],
    );
    assert_same_bytes(want, &got);
    std::fs::remove_file(got).unwrap();
}

/// The repository holds nothing but its metadata, its lock file and the files of `points`:
/// whatever a killed run wrote and the metadata does not name was removed.
fn holds_only_points(repo: &Path, points: &[u64]) {
    for name in names(repo) {
        let listed = name
            .strip_prefix("point-")
            .and_then(|s| s.get(..6))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| points.contains(&n));
        assert!(
            listed || name == ".vdisk-lock" || name == "vdisk-repo.json",
            "{} holds {name}, which no point names (points {points:?})",
            repo.display()
        );
    }
}

/// Copy the files of folder `from` into a new folder `to` (replacing it).
fn copy_folder(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Wait until process `pid` holds an flock (it has taken a repository's lock), as the kernel
/// lists it in /proc/locks. Panics after `limit`.
fn wait_until_locked(pid: u32, limit: Duration) {
    let start = Instant::now();
    loop {
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        let held = locks.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 4 && f[1] == "FLOCK" && f[4] == pid.to_string()
        });
        if held {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "process {pid} did not take the lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `qemu-img compare A B` in `dir`: whether qemu-img reads both as the same disk.
fn qemu_same(dir: &Path, a: &str, b: &str) -> bool {
    let mut c = Command::new("qemu-img");
    c.args(["compare", "-q", a, b]).current_dir(dir);
    let r = run(c);
    assert!(
        matches!(r.code, Some(0 | 1)),
        "qemu-img compare {a} {b}: {r:#?}"
    );
    r.code == Some(0)
}

// ---------------------------------------------------------------------------------------
// 1. Locking: a kernel lock that dies with its holder, whatever the lock file holds.

/// "A killed run leaves a zombie … repositories stay locked after a kill -9": a backup
/// SIGKILLed and never reaped (a zombie, as under a PID 1 that does not reap) holds nothing.
#[test]
fn a_killed_unreaped_backup_leaves_the_repository_free() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // 16 MiB of data at 1 MiB/s: the run is still reading when it is killed.
    let disk = pattern(11, 16 * MIB);
    write_disk(&dir.join("disk.raw"), &disk);
    let mut slow = Command::new(vdisk_bin())
        .args(["--io-limit", "1M", "backup", "disk.raw", "repo"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = slow.id();
    wait_until_locked(pid, Duration::from_secs(30));
    slow.kill().unwrap(); // SIGKILL, and no wait: it stays a zombie
    let start = Instant::now();
    while process_state(pid) != Some('Z') {
        assert!(start.elapsed() < Duration::from_secs(10), "never a zombie");
        std::thread::sleep(Duration::from_millis(10));
    }

    let r = ok(dir, &["backup", "disk.raw", "repo"]);
    assert!(
        !r.stderr.contains("in use"),
        "the next backup waited on the dead run: {}",
        r.stderr
    );
    // The dead run was a zombie the whole time.
    assert_eq!(process_state(pid), Some('Z'));
    ok(dir, &["verify", "repo"]);
    assert_eq!(point_numbers(dir, "repo"), [1]);
    restores_to(dir, "repo", 1, &dir.join("disk.raw"));
    slow.wait().unwrap();
}

/// "A reused PID blocks too, an empty lock file counts as stale": the lock file's contents
/// mean nothing (a PID of a live process, ours; init's; none; garbage).
#[test]
fn a_leftover_lock_file_of_any_content_means_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut disk = disk_bytes(21, MIB);
    write_disk(&dir.join("disk.raw"), &disk);
    ok(dir, &["backup", "disk.raw", "repo"]);
    let own = format!("{}\n", std::process::id());
    let contents: [&[u8]; 4] = [b"1\n", own.as_bytes(), b"", b"garbage\0\xff\xfe\n\n"];
    for (i, content) in contents.iter().enumerate() {
        std::fs::write(dir.join("repo/.vdisk-lock"), content).unwrap();
        change_grains(&mut disk, &[i], 30 + i as u64);
        write_disk(&dir.join("disk.raw"), &disk);
        ok(dir, &["backup", "disk.raw", "repo"]);
        ok(dir, &["prune", "repo", "--keep", "3"]);
    }
    assert_eq!(point_numbers(dir, "repo"), [3, 4, 5]);
    ok(dir, &["verify", "repo"]);
    restores_to(dir, "repo", 5, &dir.join("disk.raw"));
}

/// "Two writers can both proceed": while a backup runs, a second backup and a prune are
/// refused in one line, readers still read, and the running backup completes undisturbed.
#[test]
fn a_second_writer_is_refused_while_a_backup_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let disks: Vec<Vec<u8>> = {
        let a = disk_bytes(41, 12 * MIB);
        let mut b = a.clone();
        change_grains(&mut b, &[3, 4, 100], 43);
        let mut c = b.clone();
        change_grains(&mut c, &[5, 150], 44);
        vec![a, b, c]
    };
    for (i, d) in disks.iter().enumerate() {
        write_disk(&dir.join(format!("disk-{}.raw", i + 1)), d);
    }
    for n in 1..=2 {
        std::fs::copy(dir.join(format!("disk-{n}.raw")), dir.join("disk.raw")).unwrap();
        ok(dir, &["backup", "disk.raw", "repo"]);
    }
    std::fs::copy(dir.join("disk-3.raw"), dir.join("disk.raw")).unwrap();
    // 6 MiB of data to hash at 1 MiB/s: six seconds under the lock.
    let mut slow = Command::new(vdisk_bin())
        .args(["--io-limit", "1M", "backup", "disk.raw", "repo"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until_locked(slow.id(), Duration::from_secs(30));
    one_line_error(&vdisk_in(dir, &["backup", "disk.raw", "repo"]), "in use");
    one_line_error(
        &vdisk_in(dir, &["backup", "disk.raw", "repo", "--force"]),
        "in use",
    );
    one_line_error(&vdisk_in(dir, &["prune", "repo", "--keep", "1"]), "in use");
    // Readers take no lock.
    assert_eq!(point_numbers(dir, "repo"), [1, 2]);
    ok(dir, &["verify", "repo"]);
    assert!(
        slow.try_wait().unwrap().is_none(),
        "the slow backup ended before the refusals were checked"
    );
    let out = slow.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");

    assert_eq!(point_numbers(dir, "repo"), [1, 2, 3]);
    ok(dir, &["verify", "repo"]);
    for n in 1..=3u64 {
        restores_to(dir, "repo", n, &dir.join(format!("disk-{n}.raw")));
    }
}

// ---------------------------------------------------------------------------------------
// 3. Restore checks every grain against the hashes kept at backup time.

/// Find `needle` in `hay` at a multiple of 512 (grains are sector-aligned in sparse extents).
fn find_sector_aligned(hay: &[u8], needle: &[u8]) -> Option<usize> {
    (0..hay.len().saturating_sub(needle.len()) + 1)
        .step_by(512)
        .find(|&at| &hay[at..at + needle.len()] == needle)
}

/// "Restore of a swapped or flipped stored file returned other bytes with exit 0".
#[test]
fn restore_of_a_flipped_or_swapped_point_file_fails_naming_the_point_and_grain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let v1 = disk_bytes(51, 2 * MIB);
    // Points 2 and 3 change the same grains (4, 5, 6): their extent files have one layout.
    let mut v2 = v1.clone();
    change_grains(&mut v2, &[4, 5, 6], 52);
    let mut v3 = v1.clone();
    change_grains(&mut v3, &[4, 5, 6], 62);
    for v in [&v1, &v2, &v3] {
        write_disk(&dir.join("disk.raw"), v);
        ok(dir, &["backup", "disk.raw", "repo"]);
    }
    let p2 = dir.join("repo/point-000002-s001.vmdk");
    let p3 = dir.join("repo/point-000003-s001.vmdk");
    let b2 = std::fs::read(&p2).unwrap();
    let b3 = std::fs::read(&p3).unwrap();
    assert_eq!(
        b2.len(),
        b3.len(),
        "the two points' extents differ in layout"
    );

    // A flipped byte inside grain 5 of point 2's extent (data, not metadata).
    let at = find_sector_aligned(&b2, &v2[5 * GRAIN..6 * GRAIN]).expect("grain 5 stored as is");
    let mut flipped = b2.clone();
    flipped[at + 1000] ^= 0x01;
    std::fs::write(&p2, &flipped).unwrap();
    let r = vdisk_in(dir, &["restore", "repo", "out.raw", "--point", "2"]);
    one_line_error(&r, "point 2");
    assert!(
        r.stderr.contains(&format!("{}..{}", 5 * GRAIN, 6 * GRAIN)),
        "the grain's byte range is not named: {}",
        r.stderr
    );
    assert!(!dir.join("out.raw").exists());
    // --force replaces an existing destination only with checked data: it stays as it was.
    std::fs::write(dir.join("out.raw"), b"mine").unwrap();
    let r = vdisk_in(
        dir,
        &["restore", "repo", "out.raw", "--point", "2", "--force"],
    );
    one_line_error(&r, "point 2");
    assert_eq!(std::fs::read(dir.join("out.raw")).unwrap(), b"mine");
    std::fs::remove_file(dir.join("out.raw")).unwrap();
    std::fs::write(&p2, &b2).unwrap();
    write_disk(&dir.join("want.raw"), &v2);
    restores_to(dir, "repo", 2, &dir.join("want.raw"));

    // The two points' extents swapped: each holds the other's grains.
    std::fs::write(&p2, &b3).unwrap();
    std::fs::write(&p3, &b2).unwrap();
    for n in ["2", "3"] {
        let r = vdisk_in(dir, &["restore", "repo", "out.raw", "--point", n]);
        one_line_error(&r, &format!("point {n}"));
        assert!(!dir.join("out.raw").exists(), "point {n}");
    }
    std::fs::write(&p2, &b2).unwrap();
    std::fs::write(&p3, &b3).unwrap();
    ok(dir, &["verify", "repo"]);
}

// ---------------------------------------------------------------------------------------
// 4. A changed-block bitmap of another disk size.

#[test]
fn a_changed_block_bitmap_of_another_size_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut disk = disk_bytes(71, 2 * MIB);
    write_disk(&dir.join("disk.raw"), &disk);
    ok(dir, &["backup", "disk.raw", "repo"]);
    change_grains(&mut disk, &[1], 72);
    write_disk(&dir.join("disk.raw"), &disk);
    std::fs::write(
        dir.join("cbt.json"),
        format!(r#"{{"changedArea":[{{"start":{GRAIN},"length":{GRAIN}}}]}}"#),
    )
    .unwrap();
    for (size, name) in [("4M", "big.bm"), ("1M", "small.bm"), ("2097664", "odd.bm")] {
        ok(
            dir,
            &["bitmap", "import", "cbt.json", "--size", size, "-o", name],
        );
    }
    let before = snapshot(&dir.join("repo"));
    for bm in ["big.bm", "small.bm", "odd.bm"] {
        for force in [false, true] {
            let mut args = vec!["backup", "disk.raw", "repo", "--changed", bm];
            if force {
                args.push("--force");
            }
            one_line_error(&vdisk_in(dir, &args), "bitmap");
            assert!(
                snapshot(&dir.join("repo")) == before,
                "{bm}: the repository changed"
            );
        }
    }
    // The right size is taken.
    ok(
        dir,
        &[
            "bitmap", "import", "cbt.json", "--size", "2M", "-o", "right.bm",
        ],
    );
    ok(
        dir,
        &["backup", "disk.raw", "repo", "--changed", "right.bm"],
    );
    ok(dir, &["verify", "repo"]);
    restores_to(dir, "repo", 2, &dir.join("disk.raw"));
}

// ---------------------------------------------------------------------------------------
// 5. A streamOptimized stream on stdin cut short.

/// Where each grain record of a streamOptimized file ends (sector-aligned), up to its first
/// metadata marker or its end. (qemu-img puts its tables before the grains and writes no
/// markers; VMware's layout puts a table marker after the grains it lists.)
fn stream_grain_ends(bytes: &[u8]) -> Vec<usize> {
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!(&bytes[..4], b"KDMV");
    // overHead (sectors before the first record) is at byte 64 of the sparse header.
    let mut at = u64_at(64) as usize * 512;
    let mut ends = Vec::new();
    while at + 12 <= bytes.len() {
        let size = u32_at(at + 8) as usize;
        if size == 0 {
            break;
        }
        at += (12 + size).div_ceil(512) * 512;
        ends.push(at);
    }
    ends
}

#[test]
fn a_stream_on_stdin_cut_short_is_an_error_and_writes_nothing() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_disk(&dir.join("src.raw"), &disk_bytes(81, 3 * MIB));
    qemu_to_vmdk(dir, "streamOptimized", "src.raw", "qemu.vmdk");
    ok(
        dir,
        &[
            "convert",
            "src.raw",
            "vdisk.vmdk",
            "-O",
            "vmdk",
            "--subformat",
            "streamOptimized",
        ],
    );
    let q = std::fs::read(dir.join("qemu.vmdk")).unwrap();
    let v = std::fs::read(dir.join("vdisk.vmdk")).unwrap();
    let q_ends = stream_grain_ends(&q);
    let v_ends = stream_grain_ends(&v);
    assert!(q_ends.len() > 4 && v_ends.len() > 4);
    // qemu's file ends with its last grain (its tables come first).
    assert_eq!(*q_ends.last().unwrap(), q.len());
    // VMware's layout ends with an end-of-stream marker: a zero sector.
    assert!(v[v.len() - 512..].iter().all(|&b| b == 0));
    let cuts: Vec<(&str, &[u8])> = vec![
        ("qemu, after its first grain", &q[..q_ends[0]]),
        ("qemu, after a middle grain", &q[..q_ends[q_ends.len() / 2]]),
        (
            "qemu, after its last grain but one",
            &q[..q_ends[q_ends.len() - 2]],
        ),
        ("qemu, header alone", &q[..512]),
        (
            "vdisk, before its end-of-stream marker",
            &v[..v.len() - 512],
        ),
        ("vdisk, after its last grain", &v[..*v_ends.last().unwrap()]),
        ("vdisk, header alone", &v[..512]),
    ];
    let convert_stdin = |input: &Path| {
        let mut c = Command::new(vdisk_bin());
        c.args(["convert", "-", "out.raw"]).current_dir(dir);
        run_with_stdin(c, Stdio::from(std::fs::File::open(input).unwrap()))
    };
    let before = names(dir);
    for (what, bytes) in cuts {
        std::fs::write(dir.join("cut.vmdk"), bytes).unwrap();
        let r = convert_stdin(&dir.join("cut.vmdk"));
        assert_eq!(r.code, Some(2), "{what}: {r:#?}");
        one_line_error(&r, "<stdin>");
        std::fs::remove_file(dir.join("cut.vmdk")).unwrap();
        assert_eq!(names(dir), before, "{what}: something was written");
    }
    // Whole streams still convert, as qemu-img reads them.
    for whole in ["qemu.vmdk", "vdisk.vmdk"] {
        convert_stdin(&dir.join(whole)).expect_code(0, whole);
        assert!(qemu_same(dir, "src.raw", "out.raw"), "{whole}");
        assert_same_bytes(&dir.join("src.raw"), &dir.join("out.raw"));
        std::fs::remove_file(dir.join("out.raw")).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// 6. An output never destroys an input.

/// `args` is refused with and without --force, saying the output is an input (or lies in
/// one), and nothing under `dir` changes: no file replaced, none written.
fn refused_as_input(dir: &Path, args: &[&str]) {
    let before = snapshot(dir);
    for force in [false, true] {
        let mut a = args.to_vec();
        if force {
            a.push("--force");
        }
        let r = vdisk_in(dir, &a);
        one_line_error(&r, "");
        assert!(
            r.stderr.contains("input") || r.stderr.contains("reads"),
            "{a:?} was refused for another reason: {}",
            r.stderr
        );
        let after = snapshot(dir);
        assert_eq!(
            after.keys().collect::<Vec<_>>(),
            before.keys().collect::<Vec<_>>(),
            "{a:?}"
        );
        assert!(after == before, "{a:?} changed a file");
    }
}

#[test]
fn an_output_that_is_an_input_is_refused_with_or_without_force() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_disk(&dir.join("x.raw"), &disk_bytes(91, MIB));
    qemu_to_vmdk(dir, "monolithicSparse", "x.raw", "x.vmdk");
    std::fs::hard_link(dir.join("x.vmdk"), dir.join("hard.vmdk")).unwrap();
    // A chain: a split base and a link on it.
    qemu_to_vmdk(dir, "twoGbMaxExtentSparse", "x.raw", "base.vmdk");
    assert!(dir.join("base-s001.vmdk").exists());
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
            "top.vmdk",
        ],
    );
    qemu_io(dir, "vmdk", "top.vmdk", &["write -P 0x5a 64k 128k"]);
    qemu_img(dir, &["convert", "-O", "vmdk", "top.vmdk", "new.vmdk"]);
    ok(dir, &["backup", "x.raw", "repo"]);

    refused_as_input(dir, &["convert", "x.raw", "x.raw"]);
    refused_as_input(dir, &["convert", "x.vmdk", "x.vmdk", "-O", "vmdk"]);
    refused_as_input(dir, &["convert", "x.vmdk", "./x.vmdk", "-O", "vmdk"]);
    let abs = dir.join("x.vmdk");
    refused_as_input(dir, &["convert", "x.vmdk", abs.to_str().unwrap()]);
    refused_as_input(dir, &["convert", "x.vmdk", "hard.vmdk", "-O", "vmdk"]);
    // A member of the chain being read: the parent, and one of its extents.
    refused_as_input(dir, &["convert", "top.vmdk", "base.vmdk", "-O", "vmdk"]);
    refused_as_input(dir, &["convert", "top.vmdk", "base-s001.vmdk"]);
    refused_as_input(
        dir,
        &[
            "convert",
            "top.vmdk",
            "base-s001.vmdk",
            "-O",
            "vmdk",
            "--subformat",
            "twoGbMaxExtentSparse",
        ],
    );
    // The parent of the delta being written, and the new image as a bitmap.
    refused_as_input(dir, &["diff", "x.vmdk", "new.vmdk", "--delta", "x.vmdk"]);
    refused_as_input(dir, &["diff", "x.vmdk", "new.vmdk", "--bitmap", "new.vmdk"]);
    refused_as_input(dir, &["diff", "x.vmdk", "new.vmdk", "--bitmap", "x.vmdk"]);
    // Collapsing a chain onto its own parent.
    refused_as_input(dir, &["merge", "top.vmdk", "-o", "base.vmdk"]);
    refused_as_input(dir, &["merge", "top.vmdk", "-o", "top.vmdk"]);
    // A repository being read: its metadata, a point, or any new name inside it.
    refused_as_input(dir, &["restore", "repo", "repo/vdisk-repo.json"]);
    refused_as_input(dir, &["restore", "repo", "repo/point-000001.vmdk"]);
    refused_as_input(dir, &["restore", "repo", "repo/new.raw"]);
    refused_as_input(
        dir,
        &["restore", "repo", "./repo/../repo/new.vmdk", "-O", "vmdk"],
    );
    // A manifest written over the image it hashes.
    refused_as_input(dir, &["hash", "x.raw", "-o", "x.raw"]);
    refused_as_input(dir, &["hash", "top.vmdk", "-o", "base-s001.vmdk"]);

    // Everything still reads as it did.
    assert!(qemu_same(dir, "x.raw", "x.vmdk"));
    assert!(qemu_same(dir, "x.raw", "base.vmdk"));
    qemu_img(dir, &["check", "top.vmdk"]);
    ok(dir, &["verify", "repo"]);
    restores_to(dir, "repo", 1, &dir.join("x.raw"));
}

// ---------------------------------------------------------------------------------------
// 13. Repository commands do not offer an override they ignore.

#[test]
fn a_point_naming_a_file_outside_the_repository_is_refused_without_suggesting_an_override() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut disk = disk_bytes(131, MIB);
    write_disk(&dir.join("disk.raw"), &disk);
    ok(dir, &["backup", "disk.raw", "repo"]);
    change_grains(&mut disk, &[2], 132);
    write_disk(&dir.join("disk.raw"), &disk);
    ok(dir, &["backup", "disk.raw", "repo"]);
    // Point 2's descriptor now names a file beside the repository (a copy of its extent,
    // so that following the name would read plausible data).
    let desc_path = dir.join("repo/point-000002.vmdk");
    let desc = std::fs::read_to_string(&desc_path).unwrap();
    assert!(desc.contains("\"point-000002-s001.vmdk\""), "{desc}");
    std::fs::write(
        &desc_path,
        desc.replace("\"point-000002-s001.vmdk\"", "\"../outside.vmdk\""),
    )
    .unwrap();
    std::fs::copy(
        dir.join("repo/point-000002-s001.vmdk"),
        dir.join("outside.vmdk"),
    )
    .unwrap();
    for args in [
        vec!["restore", "repo", "out.raw", "--point", "2"],
        vec![
            "--allow-outside-paths",
            "restore",
            "repo",
            "out.raw",
            "--point",
            "2",
        ],
    ] {
        let r = vdisk_in(dir, &args);
        one_line_error(&r, "outside the repository");
        assert!(
            !r.stderr.contains("allow-outside-paths"),
            "{args:?} suggests an option it ignores: {}",
            r.stderr
        );
        assert!(!dir.join("out.raw").exists());
    }
    for args in [
        vec!["verify", "repo"],
        vec!["--allow-outside-paths", "verify", "repo"],
    ] {
        let r = vdisk_in(dir, &args);
        assert!(matches!(r.code, Some(1 | 2)), "{args:?}: {r:#?}");
        assert!(
            !r.stderr.contains("allow-outside-paths") && !r.stdout.contains("allow-outside-paths"),
            "{args:?}: {r:#?}"
        );
    }
    // Put back, the repository verifies again.
    std::fs::write(&desc_path, desc).unwrap();
    ok(dir, &["verify", "repo"]);
}

// ---------------------------------------------------------------------------------------
// 14. A source whose size is not a multiple of 512 bytes.

#[test]
fn a_disk_of_a_million_bytes_backs_up_verifies_and_restores_exactly() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut disk = pattern(141, 1_000_000);
    disk[300_000..600_000].fill(0);
    std::fs::write(dir.join("disk.raw"), &disk).unwrap();
    std::fs::write(dir.join("disk-1.raw"), &disk).unwrap();
    ok(dir, &["backup", "disk.raw", "repo"]);
    ok(dir, &["verify", "repo"]);
    restores_to(dir, "repo", 1, &dir.join("disk-1.raw"));
    // An incremental changing bytes in the last, partial grain (15: 983040..1000000) and
    // in the first.
    disk[999_999] ^= 0xff;
    disk[990_000] ^= 0x0f;
    disk[10] ^= 0x01;
    std::fs::write(dir.join("disk.raw"), &disk).unwrap();
    std::fs::write(dir.join("disk-2.raw"), &disk).unwrap();
    ok(dir, &["backup", "disk.raw", "repo"]);
    ok(dir, &["verify", "repo"]);
    let list: Value = serde_json::from_str(&ok(dir, &["list", "--json", "repo"]).stdout).unwrap();
    for p in list["points"].as_array().unwrap() {
        assert_eq!(p["size"], 1_000_000, "{p}");
    }
    for n in 1..=2u64 {
        let want = dir.join(format!("disk-{n}.raw"));
        restores_to(dir, "repo", n, &want);
        // A VMDK counts in sectors: qemu-img reads 1,000,448 bytes, the tail zero.
        ok(
            dir,
            &[
                "restore",
                "repo",
                "out.vmdk",
                "--point",
                &n.to_string(),
                "-O",
                "vmdk",
                "--force",
            ],
        );
        qemu_img(dir, &["check", "out.vmdk"]);
        let info: Value =
            serde_json::from_str(&qemu_img(dir, &["info", "--output=json", "out.vmdk"])).unwrap();
        assert_eq!(info["virtual-size"], 1_000_448);
        qemu_img(dir, &["convert", "-O", "raw", "out.vmdk", "q.raw"]);
        let q = std::fs::read(dir.join("q.raw")).unwrap();
        assert_eq!(q.len(), 1_000_448);
        assert!(
            q[..1_000_000] == std::fs::read(&want).unwrap()[..],
            "point {n}"
        );
        assert!(q[1_000_000..].iter().all(|&b| b == 0), "point {n}");
    }
}

// ---------------------------------------------------------------------------------------
// 2, 9, 10. System-call injection (strace): runs killed, or failed with ENOSPC, at the Nth
// call.

/// Tests that inject with strace or measure read rates run one at a time: each counts on
/// its own child's timing and I/O.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fail clearly when strace is missing (CI installs it; see .ci/run).
fn require_strace() {
    let ok = Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        matches!(ok, Ok(s) if s.success()),
        "strace is not installed: install strace (bash .ci/run does)"
    );
}

/// Where strace acts: at call `n` of `syscall`, counted in the main thread only, or in every
/// thread (`-f`, where each thread counts its own calls, so the first to reach `n` is hit).
/// Between the two, every call of a run is hit once: the main thread's by the first, and a
/// worker's by the second when it comes before the main thread's call of the same number.
#[derive(Debug, Clone, Copy)]
struct CallPoint {
    syscall: &'static str,
    n: u32,
    all_threads: bool,
}

/// `vdisk ARGS` in `dir` under strace, which does `action` (`signal=KILL`, `error=ENOSPC`)
/// at `at`, or at every call from there on when `onwards`.
fn vdisk_strace(dir: &Path, at: CallPoint, action: &str, onwards: bool, args: &[&str]) -> Run {
    let mut c = Command::new("strace");
    if at.all_threads {
        c.args(["-f", "--seccomp-bpf"]);
    }
    let when = format!("{}{}", at.n, if onwards { "+" } else { "" });
    c.args([
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        &format!("trace={}", at.syscall),
        "-e",
        &format!("inject={}:{action}:when={when}", at.syscall),
        "--",
    ])
    .arg(vdisk_bin())
    .args(args)
    .current_dir(dir);
    run(c)
}

/// The calls that make files visible or durable: linking an unnamed file, renaming over the
/// old one, syncing a file or a folder.
const PUBLISHING: [&str; 6] = [
    "rename",
    "renameat",
    "renameat2",
    "linkat",
    "fsync",
    "fdatasync",
];
/// No run here makes this many calls of one kind in one thread.
const MAX_CALLS: u32 = 60;

/// Call `attempt` with a SIGKILL at call 1, 2, … of each of `syscalls` (main thread, then any
/// thread) until a run completes, checking each run was killed or succeeded. Returns the
/// number of killed runs.
fn kill_at_each_call(syscalls: &[&'static str], mut attempt: impl FnMut(CallPoint) -> Run) -> u32 {
    let mut kills = 0;
    for &syscall in syscalls {
        for all_threads in [false, true] {
            for n in 1..=MAX_CALLS {
                let at = CallPoint {
                    syscall,
                    n,
                    all_threads,
                };
                let r = attempt(at);
                if r.signal == Some(libc::SIGKILL) {
                    kills += 1;
                    assert!(n < MAX_CALLS, "{at:?}: still killed at call {MAX_CALLS}");
                    continue;
                }
                r.expect_code(0, &format!("the run not killed, {at:?}"));
                break;
            }
        }
    }
    kills
}

/// Three versions of a 2 MiB disk (and a fourth), as `disk-N.raw`.
fn disk_versions(dir: &Path, count: usize) {
    let mut d = disk_bytes(201, 2 * MIB);
    for n in 1..=count {
        if n > 1 {
            change_grains(&mut d, &[n, 2 * n + 1, 20 + n], 210 + n as u64);
            // And a grain of data that becomes zero.
            d[(16 + n) * GRAIN..(17 + n) * GRAIN].fill(0);
        }
        write_disk(&dir.join(format!("disk-{n}.raw")), &d);
    }
}

/// Back up `disk-1.raw` … `disk-N.raw` (through `disk.raw`, so the source is one disk).
fn back_up_versions(dir: &Path, repo: &str, versions: std::ops::RangeInclusive<usize>) {
    for n in versions {
        std::fs::copy(dir.join(format!("disk-{n}.raw")), dir.join("disk.raw")).unwrap();
        ok(dir, &["backup", "disk.raw", repo]);
    }
}

/// After a run that may have been killed: the next writer succeeds, verify is sound, nothing
/// the metadata does not name is left, and every point restores to the disk it was made
/// from (`disk-N.raw` for point N, the newest disk for points past it).
fn sound_after(dir: &Path, next: &[&str], newest: u64) -> Vec<u64> {
    ok(dir, next);
    ok(dir, &["verify", "repo"]);
    let points = point_numbers(dir, "repo");
    holds_only_points(&dir.join("repo"), &points);
    for &p in &points {
        restores_to(
            dir,
            "repo",
            p,
            &dir.join(format!("disk-{}.raw", p.min(newest))),
        );
    }
    points
}

/// "Killed between rename and metadata switch": an incremental backup and a prune, killed
/// at each rename, link and sync in turn.
#[test]
fn a_backup_or_prune_killed_at_each_publishing_call_leaves_a_sound_repository() {
    let _serial = serial();
    require_strace();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    disk_versions(dir, 4);
    back_up_versions(dir, "repo", 1..=2);
    copy_folder(&dir.join("repo"), &dir.join("two"));
    back_up_versions(dir, "repo", 3..=4);
    copy_folder(&dir.join("repo"), &dir.join("four"));

    // An incremental backup of disk 3 onto points 1 and 2.
    std::fs::copy(dir.join("disk-3.raw"), dir.join("disk.raw")).unwrap();
    let mut switched = 0;
    let kills = kill_at_each_call(&PUBLISHING, |at| {
        copy_folder(&dir.join("two"), &dir.join("repo"));
        let r = vdisk_strace(
            dir,
            at,
            "signal=KILL",
            false,
            &["backup", "disk.raw", "repo"],
        );
        let after = point_numbers(dir, "repo");
        assert!(after == [1, 2] || after == [1, 2, 3], "{at:?}: {after:?}");
        if r.signal.is_some() && after.len() == 3 {
            switched += 1;
        }
        let points = sound_after(dir, &["backup", "disk.raw", "repo"], 3);
        assert_eq!(points.len(), after.len() + 1, "{at:?}");
        r
    });
    eprintln!("{kills} backups killed, {switched} after the metadata switch");
    assert!(kills >= 10, "only {kills} backups were killed");
    assert!(switched > 0, "no kill landed after the metadata switch");

    // A prune of points 1 and 2 into a synthetic full at point 3.
    let kills = kill_at_each_call(&PUBLISHING, |at| {
        copy_folder(&dir.join("four"), &dir.join("repo"));
        let r = vdisk_strace(
            dir,
            at,
            "signal=KILL",
            false,
            &["prune", "repo", "--keep", "2"],
        );
        let after = point_numbers(dir, "repo");
        assert!(
            after == [1, 2, 3, 4] || after == [3, 4],
            "{at:?}: {after:?}"
        );
        let points = sound_after(dir, &["prune", "repo", "--keep", "2"], 4);
        assert_eq!(points, [3, 4], "{at:?}");
        r
    });
    eprintln!("{kills} prunes killed");
    assert!(kills >= 5, "only {kills} prunes were killed");
}

/// "Disk-full at the hashes file does the same": every file write from the Kth on fails
/// with ENOSPC (in the main thread, which writes the hashes, the bitmap and the metadata;
/// then in every thread). vdisk writes files with pwrite64 only; its messages go out with
/// write, which is left alone so that the one line can be read.
#[test]
fn a_full_disk_during_a_backup_or_prune_is_one_line_and_the_next_run_succeeds() {
    let _serial = serial();
    require_strace();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    disk_versions(dir, 4);
    back_up_versions(dir, "repo", 1..=2);
    copy_folder(&dir.join("repo"), &dir.join("two"));
    back_up_versions(dir, "repo", 3..=4);
    copy_folder(&dir.join("repo"), &dir.join("four"));
    std::fs::copy(dir.join("disk-3.raw"), dir.join("disk.raw")).unwrap();

    for (args, pristine, before, next, newest) in [
        (
            vec!["backup", "disk.raw", "repo"],
            "two",
            vec![1u64, 2],
            vec!["backup", "disk.raw", "repo"],
            3u64,
        ),
        (
            vec!["prune", "repo", "--keep", "2"],
            "four",
            vec![1, 2, 3, 4],
            vec!["prune", "repo", "--keep", "2"],
            4,
        ),
    ] {
        for all_threads in [false, true] {
            let mut failures = 0;
            let mut completed = false;
            for k in [1u32, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256] {
                copy_folder(&dir.join(pristine), &dir.join("repo"));
                let at = CallPoint {
                    syscall: "pwrite64",
                    n: k,
                    all_threads,
                };
                let r = vdisk_strace(dir, at, "error=ENOSPC", true, &args);
                if r.code == Some(0) {
                    completed = true;
                    break;
                }
                one_line_error(&r, "");
                assert!(
                    r.stderr.contains("No space left on device"),
                    "{at:?}: {}",
                    r.stderr
                );
                failures += 1;
                assert_eq!(point_numbers(dir, "repo"), before, "{at:?}");
                sound_after(dir, &next, newest);
            }
            assert!(completed, "{args:?} never completed");
            assert!(failures >= 2, "{args:?}: only {failures} runs hit ENOSPC");
        }
    }
}

/// "An interrupted `convert --force` to a split subformat could leave the old descriptor
/// with the new extents": killed at each link, rename and sync, the image reads as the old
/// disk or as the new one, and is consistent either way.
#[test]
fn replacing_a_split_image_killed_at_each_publishing_call_leaves_the_old_or_the_new() {
    let _serial = serial();
    require_strace();
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_disk(&dir.join("a.raw"), &disk_bytes(301, 3 * MIB));
    let mut b = disk_bytes(302, 3 * MIB);
    b[2 * MIB..].fill(0);
    write_disk(&dir.join("b.raw"), &b);
    let split = ["-O", "vmdk", "--subformat", "twoGbMaxExtentSparse"];
    let (mut old, mut new) = (0, 0);
    kill_at_each_call(&PUBLISHING, |at| {
        for name in names(dir).iter().filter(|n| n.starts_with("out")) {
            std::fs::remove_file(dir.join(name)).unwrap();
        }
        let mut args = vec!["convert", "a.raw", "out.vmdk"];
        args.extend(split);
        ok(dir, &args);
        args[1] = "b.raw";
        args.push("--force");
        let r = vdisk_strace(dir, at, "signal=KILL", false, &args);
        let is_a = qemu_same(dir, "a.raw", "out.vmdk");
        let is_b = qemu_same(dir, "b.raw", "out.vmdk");
        assert!(is_a != is_b, "{at:?}: out.vmdk is neither disk");
        qemu_img(dir, &["check", "out.vmdk"]);
        ok(dir, &["check", "out.vmdk"]);
        if r.signal.is_some() {
            if is_a {
                old += 1;
            } else {
                new += 1;
            }
        } else {
            assert!(is_b, "{at:?}: a completed run left the old image");
        }
        r
    });
    assert!(
        old > 0 && new > 0,
        "kills left the old image {old} times, the new one {new} times"
    );
}

/// "Killed runs leave hidden `.NAME.vdisk-partial` files": a conversion to a new name,
/// killed at a handful of writes, syncs, links and renames, leaves no partial file, and
/// nothing at all unless it is the whole output — except for a multi-file image killed
/// between publishing its extents and its descriptor (the descriptor is published last so
/// that it never names a missing file): then the new extents, complete, are all there is.
#[test]
fn a_conversion_killed_at_each_write_leaves_no_partial_file() {
    let _serial = serial();
    require_strace();
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_disk(&dir.join("src.raw"), &disk_bytes(311, 3 * MIB));
    let outputs: [(&str, &[&str]); 4] = [
        ("raw", &["convert", "src.raw", "out.raw"]),
        (
            "monolithicSparse",
            &["convert", "src.raw", "out.vmdk", "-O", "vmdk"],
        ),
        (
            "twoGbMaxExtentFlat",
            &[
                "convert",
                "src.raw",
                "out.vmdk",
                "-O",
                "vmdk",
                "--subformat",
                "twoGbMaxExtentFlat",
            ],
        ),
        (
            "streamOptimized",
            &[
                "convert",
                "src.raw",
                "out.vmdk",
                "-O",
                "vmdk",
                "--subformat",
                "streamOptimized",
            ],
        ),
    ];
    let calls = [
        "write",
        "pwrite64",
        "fsync",
        "fdatasync",
        "linkat",
        "rename",
        "renameat",
        "renameat2",
    ];
    let mut kills = 0;
    let mut orphans = 0;
    for (what, args) in outputs {
        let out = args[2];
        for syscall in calls {
            for all_threads in [false, true] {
                for n in [1u32, 2, 3, 5, 8, 13, 21, 34] {
                    let at = CallPoint {
                        syscall,
                        n,
                        all_threads,
                    };
                    let r = vdisk_strace(dir, at, "signal=KILL", false, args);
                    let left: BTreeSet<String> =
                        names(dir).into_iter().filter(|n| n != "src.raw").collect();
                    assert!(
                        !left.iter().any(|n| n.contains("vdisk-partial")),
                        "{what} {at:?}: {left:?}"
                    );
                    if left.contains(out) {
                        // Published: the whole output, and nothing else.
                        assert!(qemu_same(dir, "src.raw", out), "{what} {at:?}");
                        if what == "twoGbMaxExtentFlat" {
                            assert_eq!(left.len(), 2, "{what} {at:?}: {left:?}");
                        } else {
                            assert_eq!(left.len(), 1, "{what} {at:?}: {left:?}");
                        }
                    } else if !left.is_empty() {
                        // Only the window between a split image's extents and descriptor: the
                        // extents, and the journal that names them as the run's own.
                        assert_eq!(what, "twoGbMaxExtentFlat", "{at:?}: {left:?}");
                        assert!(left.contains(".out.vmdk.vdisk-extents"), "{at:?}: {left:?}");
                        assert!(
                            left.iter()
                                .all(|n| n == ".out.vmdk.vdisk-extents" || n == "out-f001.vmdk"),
                            "{at:?}: {left:?}"
                        );
                        if left.contains("out-f001.vmdk") {
                            assert_same_bytes(&dir.join("src.raw"), &dir.join("out-f001.vmdk"));
                        }
                        orphans += 1;
                        // The next run that writes the name removes them, and nothing else.
                        ok(dir, args);
                        let after: BTreeSet<String> =
                            names(dir).into_iter().filter(|n| n != "src.raw").collect();
                        assert_eq!(
                            after,
                            BTreeSet::from(["out-f001.vmdk".to_string(), out.to_string()]),
                            "{at:?}"
                        );
                        assert!(qemu_same(dir, "src.raw", out), "{what} {at:?}");
                        std::fs::remove_file(dir.join(out)).unwrap();
                        std::fs::remove_file(dir.join("out-f001.vmdk")).unwrap();
                        continue;
                    }
                    for name in &left {
                        std::fs::remove_file(dir.join(name)).unwrap();
                    }
                    if r.signal == Some(libc::SIGKILL) {
                        kills += 1;
                    } else {
                        r.expect_code(0, &format!("{what}, not killed, {at:?}"));
                        assert!(left.contains(out), "{what} {at:?}");
                        break;
                    }
                }
            }
        }
    }
    assert!(kills >= 20, "only {kills} conversions were killed");
    eprintln!("{kills} conversions killed; {orphans} left a split image's extents only");

    // Replacing an existing file links the new one under the fixed temporary name, then
    // renames it over the old one. Killed between the two, the temporary name is there;
    // the next run that writes the name removes it.
    let replace = ["convert", "src.raw", "out.raw", "--force"];
    let mut left_partial = 0;
    for syscall in ["linkat", "rename", "renameat", "renameat2", "fsync"] {
        for n in 1..=4u32 {
            std::fs::write(dir.join("out.raw"), b"old").unwrap();
            let at = CallPoint {
                syscall,
                n,
                all_threads: false,
            };
            let r = vdisk_strace(dir, at, "signal=KILL", false, &replace);
            let bytes = std::fs::read(dir.join("out.raw")).unwrap();
            assert!(
                bytes == b"old" || qemu_same(dir, "src.raw", "out.raw"),
                "{at:?}: out.raw is neither the old file nor the new one"
            );
            if dir.join(".out.raw.vdisk-partial").exists() {
                left_partial += 1;
                assert_same_bytes(&dir.join("src.raw"), &dir.join(".out.raw.vdisk-partial"));
            }
            ok(dir, &replace);
            assert_eq!(
                names(dir),
                BTreeSet::from(["out.raw".to_string(), "src.raw".to_string()]),
                "{at:?}"
            );
            if r.signal.is_none() {
                break;
            }
        }
    }
    eprintln!("{left_partial} replacements were killed between link and rename");
}

// ---------------------------------------------------------------------------------------
// 7. Devices are written in place.

/// Whether this process runs as root (the owner of /proc/self is the effective user).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// "`convert x.vmdk NODE --force` turned a device node into a 64 MiB regular file": a
/// character device (a /dev/null node made here) is written in place with --force, refused
/// without it, and stays the device.
#[test]
fn a_character_device_is_written_in_place_never_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let made = Command::new("mknod")
        .args(["node", "c", "1", "3"])
        .current_dir(dir)
        .stderr(Stdio::null())
        .status();
    if !matches!(made, Ok(s) if s.success()) {
        eprintln!("skipped: cannot make a device node here (mknod needs root)");
        return;
    }
    let null_dev = std::fs::metadata("/dev/null").unwrap().rdev();
    let still_null = || {
        let m = std::fs::symlink_metadata(dir.join("node")).unwrap();
        m.file_type().is_char_device() && m.rdev() == null_dev
    };
    write_disk(&dir.join("x.raw"), &disk_bytes(401, 4 * MIB));
    ok(dir, &["backup", "x.raw", "repo"]);
    let before = names(dir);
    for args in [
        vec!["convert", "x.raw", "node"],
        vec!["restore", "repo", "node"],
    ] {
        one_line_error(&vdisk_in(dir, &args), "device");
        assert!(still_null(), "{args:?}");
        let mut forced = args.clone();
        forced.push("--force");
        ok(dir, &forced);
        assert!(still_null(), "{forced:?} replaced the device");
        assert_eq!(names(dir), before, "{forced:?}");
    }
    // A device takes a raw disk only.
    one_line_error(
        &vdisk_in(dir, &["convert", "x.raw", "node", "-O", "vmdk", "--force"]),
        "device",
    );
    assert!(still_null());
    assert_eq!(names(dir), before);
}

/// A loop device, detached when dropped.
struct LoopDevice(PathBuf);

impl LoopDevice {
    /// Attach `backing` to a free loop device.
    fn attach(backing: &Path) -> Result<LoopDevice, String> {
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(backing)
            .output()
            .map_err(|e| format!("losetup: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(LoopDevice(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim(),
        )))
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }

    fn is_block_device(&self) -> bool {
        std::fs::metadata(&self.0).is_ok_and(|m| m.file_type().is_block_device())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// "`restore REPO /dev/sdX --force` would write into RAM under /dev": a block device gets
/// the disk's bytes in place, zeros written as zeros over old data, nothing past the disk;
/// a disk larger than the device is refused before anything is written; a VMDK is refused.
#[test]
fn a_block_device_is_written_in_place_with_zeros_and_never_past_its_size() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let backing = dir.join("backing.img");
    std::fs::write(&backing, vec![0xffu8; 8 * MIB]).unwrap();
    let dev = match LoopDevice::attach(&backing) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipped: no loop device available ({e})");
            return;
        }
    };
    let dev_path = dev.0.to_str().unwrap().to_string();
    let disk = disk_bytes(411, 6 * MIB);
    write_disk(&dir.join("disk.raw"), &disk);
    ok(dir, &["backup", "disk.raw", "repo"]);
    write_disk(&dir.join("big.raw"), &disk_bytes(412, 12 * MIB));
    ok(dir, &["backup", "big.raw", "big-repo"]);
    assert!(dev.bytes().iter().all(|&b| b == 0xff));

    // Without --force a device is not overwritten.
    one_line_error(&vdisk_in(dir, &["restore", "repo", &dev_path]), "device");
    assert!(dev.bytes().iter().all(|&b| b == 0xff));

    ok(dir, &["restore", "repo", &dev_path, "--force"]);
    let got = dev.bytes();
    assert!(dev.is_block_device());
    assert_eq!(got.len(), 8 * MIB);
    assert!(
        got[..6 * MIB] == disk[..],
        "the device does not hold the disk (first difference at {:?})",
        got.iter().zip(&disk).position(|(a, b)| a != b)
    );
    assert!(
        got[6 * MIB..].iter().all(|&b| b == 0xff),
        "written past the disk"
    );

    // A disk larger than the device: refused, the device as it was.
    let before = dev.bytes();
    one_line_error(
        &vdisk_in(dir, &["restore", "big-repo", &dev_path, "--force"]),
        "larger",
    );
    one_line_error(
        &vdisk_in(dir, &["convert", "big.raw", &dev_path, "--force"]),
        "larger",
    );
    assert!(dev.bytes() == before, "written before refusing");

    // A VMDK cannot be written onto a device.
    qemu_to_vmdk(dir, "monolithicSparse", "big.raw", "big.vmdk");
    one_line_error(
        &vdisk_in(
            dir,
            &["convert", "disk.raw", &dev_path, "-O", "vmdk", "--force"],
        ),
        "device",
    );
    assert!(dev.bytes() == before);
    assert!(dev.is_block_device());

    // convert takes a device the same way (a qemu-made VMDK, zeros over the old data).
    std::fs::write(&dev.0, vec![0xeeu8; 8 * MIB]).unwrap();
    qemu_to_vmdk(dir, "monolithicSparse", "disk.raw", "disk.vmdk");
    ok(dir, &["convert", "disk.vmdk", &dev_path, "--force"]);
    let got = dev.bytes();
    assert!(got[..6 * MIB] == disk[..]);
    assert!(got[6 * MIB..].iter().all(|&b| b == 0xee));
    assert!(dev.is_block_device());
    // Nothing was left beside the device's name either.
    assert!(std::fs::read_dir(dev.0.parent().unwrap())
        .unwrap()
        .all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("vdisk-partial")),);
}

// ---------------------------------------------------------------------------------------
// 8. Reading needs no write access.

/// "A read-only repository cannot be read": as an unprivileged user (nobody) on a
/// repository it cannot write, list, verify and restore work, and no lock file appears.
#[test]
fn a_read_only_repository_lists_verifies_and_restores() {
    let have_setpriv = Command::new("setpriv")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_setpriv || !is_root() {
        eprintln!("skipped: running as another user needs setpriv and root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    mode(dir, 0o755).unwrap();
    disk_versions(dir, 2);
    back_up_versions(dir, "repo", 1..=2);
    let repo = dir.join("repo");
    mode(&repo, 0o755).unwrap();
    for name in names(&repo) {
        mode(&repo.join(name), 0o644).unwrap();
    }
    std::fs::remove_file(repo.join(".vdisk-lock")).unwrap();
    let out = dir.join("out");
    std::fs::create_dir(&out).unwrap();
    mode(&out, 0o777).unwrap();
    let pristine = snapshot(&repo);
    let as_nobody = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(vdisk_bin())
            .args(args)
            .current_dir(dir);
        run(c)
    };
    // The repository is indeed read-only to this user.
    one_line_error(
        &as_nobody(&["backup", "disk.raw", "repo", "--force"]),
        "repo",
    );
    let r = as_nobody(&["list", "repo"]);
    r.expect_code(0, "list as nobody");
    assert!(r.stdout.contains("point-000002"), "{}", r.stdout);
    as_nobody(&["verify", "repo"]).expect_code(0, "verify as nobody");
    for n in 1..=2 {
        let dst = format!("out/p{n}.raw");
        as_nobody(&["restore", "repo", &dst, "--point", &n.to_string()])
            .expect_code(0, "restore as nobody");
        assert_same_bytes(&dir.join(format!("disk-{n}.raw")), &dir.join(&dst));
    }
    as_nobody(&["restore", "repo", "out/p.vmdk", "-O", "vmdk"])
        .expect_code(0, "restore -O vmdk as nobody");
    assert!(!repo.join(".vdisk-lock").exists());
    // Readers run by the owner take no lock either.
    ok(dir, &["list", "repo"]);
    ok(dir, &["verify", "repo"]);
    ok(dir, &["restore", "repo", "out/root.raw"]);
    assert!(
        !repo.join(".vdisk-lock").exists(),
        "a reader made a lock file"
    );
    assert!(
        snapshot(&repo) == pristine,
        "reading changed the repository"
    );
}

// ---------------------------------------------------------------------------------------
// 11. Panics and aborts: clean exits, bounded memory.

/// Run `vdisk ARGS` with its standard output into a one-page pipe whose reader takes the
/// first line and closes it (`vdisk … | head -1`). Returns the line and the run's exit.
fn first_line_then_close(dir: &Path, args: &[&str]) -> (String, std::process::Output) {
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array, which we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the descriptors are open and owned by nothing else.
    let (mut reader, writer) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    // One page: the output overflows it quickly, so the writer is still writing when the
    // reader goes away.
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(writer.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    let child = Command::new(vdisk_bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while reader.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    drop(reader);
    let out = child.wait_with_output().unwrap();
    (String::from_utf8_lossy(&line).into_owned(), out)
}

/// Exit 0, or death by SIGPIPE, and nothing on stderr.
fn quiet_on_a_closed_pipe(what: &str, out: &std::process::Output) {
    use std::os::unix::process::ExitStatusExt;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(0) || out.status.signal() == Some(libc::SIGPIPE),
        "{what}: {:?} {stderr}",
        out.status
    );
    assert!(
        stderr.is_empty() && !stderr.contains("panicked"),
        "{what}: {stderr}"
    );
}

#[test]
fn a_reader_closing_the_pipe_early_is_no_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // `list REPO | head -1`: 64 points list in well over a page.
    let mut disk = vec![0u8; 64 << 10];
    for i in 0..64u8 {
        disk[i as usize * 1000] = i + 1;
        std::fs::write(dir.join("disk.raw"), &disk).unwrap();
        ok(dir, &["backup", "disk.raw", "repo"]);
    }
    let full = ok(dir, &["list", "repo"]).stdout;
    // More than the pipe holds past the first line: the writer meets the closed pipe.
    assert!(full.len() > 4096 + 1024, "{} bytes", full.len());
    let (line, out) = first_line_then_close(dir, &["list", "repo"]);
    assert_eq!(line, full.lines().next().unwrap());
    quiet_on_a_closed_pipe("list", &out);
    let (_, out) = first_line_then_close(dir, &["list", "--json", "repo"]);
    quiet_on_a_closed_pipe("list --json", &out);

    // `bitmap show B | head -1`: 150,000 extents.
    let extents: Vec<String> = (0..150_000u64)
        .map(|i| format!(r#"{{"start":{},"length":4096}}"#, i * 8192))
        .collect();
    std::fs::write(
        dir.join("many.json"),
        format!(r#"{{"changedArea":[{}]}}"#, extents.join(",")),
    )
    .unwrap();
    ok(
        dir,
        &[
            "bitmap",
            "import",
            "many.json",
            "--size",
            "1200M",
            "--granularity",
            "4K",
            "-o",
            "many.bm",
        ],
    );
    for args in [
        vec!["bitmap", "show", "many.bm"],
        vec!["bitmap", "show", "--json", "many.bm"],
    ] {
        let (line, out) = first_line_then_close(dir, &args);
        assert!(!line.is_empty());
        quiet_on_a_closed_pipe(&args.join(" "), &out);
    }
}

/// Peak memory a refusal may take: the process itself, nothing sized by the input.
const SMALL_RSS: u64 = 100 << 20;

#[test]
fn absurd_threads_granularities_and_sizes_are_refused_quickly_in_little_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_disk(&dir.join("x.raw"), &disk_bytes(1101, MIB));
    one_line_error(
        &vdisk_in(dir, &["--threads", "100000", "info", "x.raw"]),
        "--threads",
    );
    // As many threads as accepted: they start, or the run says it cannot start them.
    let r = vdisk_in(
        dir,
        &["--threads", "1024", "hash", "x.raw", "-o", "x.hashes"],
    );
    if r.code != Some(0) {
        one_line_error(&r, "threads");
    }
    // A flat extent of 2^54 sectors (2^63 bytes) over a 1 MiB file.
    std::fs::write(dir.join("x.flat"), pattern(1102, MIB)).unwrap();
    std::fs::write(
        dir.join("huge.vmdk"),
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
         createType=\"monolithicFlat\"\n\n# Extent description\n\
         RW 18014398509481984 FLAT \"x.flat\" 0\n\n\
         # The Disk Data Base\nddb.virtualHWVersion = \"4\"\nddb.adapterType = \"ide\"\n",
    )
    .unwrap();
    let commands: Vec<Vec<&str>> = vec![
        vec!["hash", "x.raw", "-o", "m1", "--granularity", "1T"],
        vec!["diff", "x.raw", "x.raw", "--granularity", "1T"],
        vec!["info", "huge.vmdk"],
        vec!["map", "huge.vmdk"],
        vec!["hash", "huge.vmdk", "-o", "m2"],
        vec!["backup", "huge.vmdk", "repo"],
        vec!["convert", "huge.vmdk", "out.raw"],
        vec!["convert", "huge.vmdk", "out.vmdk", "-O", "vmdk"],
        vec!["diff", "x.raw", "huge.vmdk"],
    ];
    for (args, r) in commands.iter().zip(vdisk_measured(dir, &commands)) {
        one_line_error(&r, "");
        assert!(
            r.cpu < Duration::from_secs(2) && r.elapsed < Duration::from_secs(10),
            "{args:?} took {:?} ({:?} of CPU)",
            r.elapsed,
            r.cpu
        );
        assert!(
            r.max_rss < SMALL_RSS,
            "{args:?} took {} MiB",
            r.max_rss >> 20
        );
    }
    for name in ["m1", "m2", "out.raw", "out.vmdk"] {
        assert!(!dir.join(name).exists(), "{name} was written");
    }
    assert!(
        !dir.join("repo").join("vdisk-repo.json").exists(),
        "a repository was started"
    );
}

// ---------------------------------------------------------------------------------------
// 12. --io-limit: real reads, as the kernel counts them, within 10 % of the limit in every
// second.

/// Sync every file under `dir` and drop its pages from the page cache, so that the next
/// read of it goes to the disk (and shows in /proc/PID/io).
fn evict_page_cache(dir: &Path) {
    use std::os::fd::AsRawFd;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            evict_page_cache(&e.path());
        } else if t.is_file() {
            let f = std::fs::File::open(e.path()).unwrap();
            f.sync_all().unwrap();
            // SAFETY: posix_fadvise only drops the cached pages of our descriptor's file.
            let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            assert_eq!(r, 0);
        }
    }
}

/// Run `vdisk ARGS` in `dir`, sampling the bytes it has read from the disk (`read_bytes` of
/// /proc/PID/io) every ~50 ms. Returns its exit code, stderr, and (seconds, bytes) samples.
fn sample_reads(dir: &Path, args: &[&str]) -> (Option<i32>, String, Vec<(f64, u64)>) {
    use std::io::Read;
    let mut child = Command::new(vdisk_bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let io = format!("/proc/{}/io", child.id());
    let start = Instant::now();
    // Nothing was read before the process started.
    let mut samples = vec![(0.0, 0)];
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&io) {
            let t = start.elapsed().as_secs_f64();
            if let Some(n) = text
                .lines()
                .find_map(|l| l.strip_prefix("read_bytes: "))
                .and_then(|n| n.trim().parse::<u64>().ok())
            {
                samples.push((t, n));
            }
        }
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), err, samples)
}

/// Bytes read by time `t`, interpolated between samples.
fn read_at_time(samples: &[(f64, u64)], t: f64) -> f64 {
    let i = samples.partition_point(|s| s.0 <= t);
    if i == 0 {
        return samples[0].1 as f64;
    }
    if i == samples.len() {
        return samples[i - 1].1 as f64;
    }
    let (t0, b0) = samples[i - 1];
    let (t1, b1) = samples[i];
    b0 as f64 + (b1 as f64 - b0 as f64) * (t - t0) / (t1 - t0)
}

/// The share of `rate` read in each one-second window that ends by the last read, by
/// the window's start: all of them (`from_start`: a burst as the command opens its files
/// counts too), or those from the first byte read on (before it, the process was starting).
fn second_windows(
    what: &str,
    samples: &[(f64, u64)],
    rate: u64,
    from_start: bool,
) -> Vec<(f64, f64)> {
    let first = samples
        .iter()
        .position(|s| s.1 > 0)
        .unwrap_or_else(|| panic!("{what}: nothing read from the disk"));
    // The end of the paced reading: a few small reads may follow much later (folder blocks
    // when the output is linked into place after a long sync), and are not part of it.
    let total = samples.last().unwrap().1;
    let end = samples
        .iter()
        .find(|s| s.1 + (256 << 10) >= total)
        .unwrap()
        .0;
    let from = if from_start { 0 } else { first };
    let windows: Vec<(f64, f64)> = samples[from..]
        .iter()
        .filter(|s| s.0 + 1.0 <= end)
        .map(|&(t, b)| (t, (read_at_time(samples, t + 1.0) - b as f64) / rate as f64))
        .collect();
    assert!(
        windows.len() >= 10,
        "{what}: read for {:.2} s only ({total} bytes)",
        end - samples[first].0
    );
    windows
}

/// "Real reads (as /proc/PID/io counts them) stay within ±10% of the limit in every second
/// for every command". The commands run one after another (their reads would add up), each
/// on files evicted from the page cache, on a real disk (the build's temporary folder).
///
/// No second may read more than 1.1 times the limit, in any run (from the process's start:
/// a burst while opening files counts). Less than 0.9 times is also what a stalled disk or a
/// starved process on a busy machine shows (the throttle never makes up lost time beyond a
/// 20 ms credit, so that no second bursts), so a command whose slowest second falls short
/// runs again from the same state, three times in all; one of them must hold every second.
/// What falls short by design (bytes counted twice, reads too slow for the pace) falls short
/// every time.
#[test]
fn io_limit_holds_every_second_for_every_command() {
    let _serial = serial();
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path();
    let rate = 8u64 << 20;
    let img = pattern(1201, 24 * MIB);
    std::fs::write(dir.join("img.raw"), &img).unwrap();
    let mut new = img.clone();
    new[10 * MIB..11 * MIB].copy_from_slice(&pattern(1202, MIB));
    std::fs::write(dir.join("new.raw"), &new).unwrap();
    ok(dir, &["hash", "img.raw", "-o", "img.hashes"]);

    let commands: Vec<(Vec<&str>, i32)> = vec![
        (vec!["hash", "img.raw", "-o", "out.hashes"], 0),
        (vec!["diff", "img.raw", "new.raw"], 1),
        (vec!["diff", "img.hashes", "new.raw"], 1),
        (vec!["convert", "img.raw", "out.raw"], 0),
        (vec!["backup", "disk.raw", "repo"], 0),
        (vec!["backup", "disk.raw", "repo"], 0),
        (vec!["verify", "repo"], 0),
        (vec!["restore", "repo", "restored.raw"], 0),
    ];
    // Each attempt starts from the same state: no outputs yet, the repository as the
    // command finds it (none for the full backup, one point for the incremental).
    let prepare = |i: usize| {
        for f in ["out.hashes", "out.raw", "restored.raw"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        match i {
            4 => {
                let _ = std::fs::remove_dir_all(dir.join("repo"));
                std::fs::copy(dir.join("img.raw"), dir.join("disk.raw")).unwrap();
            }
            5 => {
                copy_folder(&dir.join("repo-1"), &dir.join("repo"));
                std::fs::copy(dir.join("new.raw"), dir.join("disk.raw")).unwrap();
            }
            _ => {}
        }
    };
    let mut report = Vec::new();
    for (i, (args, code)) in commands.iter().enumerate() {
        let what = args.join(" ");
        for attempt in 1..=3 {
            prepare(i);
            evict_page_cache(dir);
            let mut full = vec!["--io-limit", "8M"];
            full.extend(args);
            let (got, err, samples) = sample_reads(dir, &full);
            assert_eq!(got, Some(*code), "{what}: {err}");
            let all = second_windows(&what, &samples, rate, true);
            if let Some((t, share)) = all.iter().find(|w| w.1 > 1.1) {
                panic!("{what}: the second from {t:.2} s read {share:.3} x the limit");
            }
            let windows = second_windows(&what, &samples, rate, false);
            let low = windows.iter().map(|w| w.1).fold(f64::MAX, f64::min);
            let high = all.iter().map(|w| w.1).fold(f64::MIN, f64::max);
            if low >= 0.9 {
                report.push(format!("{what}: {low:.3}..{high:.3}"));
                break;
            }
            let (t, _) = windows.iter().find(|w| w.1 == low).unwrap();
            assert!(
                attempt < 3,
                "{what}: three runs in a row had a second under 0.9 x the limit (the last: {low:.3} from {t:.2} s)"
            );
            eprintln!("{what} (run {attempt}): the second from {t:.2} s read {low:.3} x the limit");
        }
        if i == 4 {
            copy_folder(&dir.join("repo"), &dir.join("repo-1"));
        }
    }
    assert_same_bytes(&dir.join("new.raw"), &dir.join("restored.raw"));
    eprintln!("one-second windows / limit: {}", report.join("; "));

    for limit in ["0", "1", "1000", "1K"] {
        one_line_error(
            &vdisk_in(dir, &["--io-limit", limit, "hash", "img.raw", "-o", "x"]),
            "--io-limit",
        );
    }
}
