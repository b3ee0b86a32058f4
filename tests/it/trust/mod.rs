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

/// After a prune whose grace period is over (run twice: condemn, then delete), the
/// repository holds nothing a point does not need: every pack's blobs are live (verify reads
/// them all), no temporary file, no registration, no condemned list is left.
fn holds_only_points(dir: &Path, repo: &str) {
    for _ in 0..2 {
        let mut c = Command::new(vdisk_bin());
        c.args(["prune", repo, "--keep-last", "1000", "--json"])
            .env("VDISK_GC_GRACE_SECS", "0")
            .current_dir(dir);
        let r = run(c);
        r.expect_code(0, "prune");
    }
    let root = dir.join(repo);
    for (name, _) in snapshot(&root) {
        assert!(
            name == "config"
                || name.starts_with("keys/")
                || name.starts_with("points/")
                || name.starts_with("index/")
                || name.starts_with("data/"),
            "{} holds {name}, a leftover",
            root.display()
        );
        assert!(!name.contains("/.") && !name.starts_with('.'), "{name}");
    }
    // Every pack holds live blobs only: a prune now finds nothing to condemn.
    let mut c = Command::new(vdisk_bin());
    c.args(["prune", repo, "--keep-last", "1000", "--json", "--dry-run"])
        .current_dir(dir);
    let r = run(c);
    r.expect_code(0, "prune --dry-run");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["condemned_packs"], 0, "{v}");
}

/// Make a layout-2 repository at `dir/repo` with points of the disk at `disk` (one backup
/// per call), through the library (the command line writes layout 3 only).
fn layout2_backup(dir: &Path, disk: &str, repo: &str) {
    use vdisk::chain::layout2::{BackupOptions, Repository};
    let mut r = Repository::open_or_create(dir.join(repo)).unwrap();
    r.backup(dir.join(disk), &BackupOptions::default()).unwrap();
}

/// Wait until a run has registered as a writer of the repository at `repo`. Panics after
/// `limit`.
fn wait_until_registered(repo: &Path, limit: Duration) {
    let start = Instant::now();
    while !std::fs::read_dir(repo.join("locks")).is_ok_and(|mut d| d.next().is_some()) {
        assert!(
            start.elapsed() < limit,
            "no run registered in {}",
            repo.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Copy the files of folder `from` (and its folders) into a new folder `to` (replacing it).
fn copy_folder(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_folder(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
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
// 1. Writers' registrations: a dead holder (even a zombie) holds nothing, leftovers of any
// content mean nothing, and a second backup of a NAME is refused while one runs.

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
    wait_until_registered(&dir.join("repo"), Duration::from_secs(30));
    slow.kill().unwrap(); // SIGKILL, and no wait: it stays a zombie
    let start = Instant::now();
    while process_state(pid) != Some('Z') {
        assert!(start.elapsed() < Duration::from_secs(10), "never a zombie");
        std::thread::sleep(Duration::from_millis(10));
    }

    let r = ok(dir, &["backup", "disk.raw", "repo"]);
    assert!(
        !r.stderr.contains("running"),
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

/// "A reused PID blocks too, an empty lock file counts as stale": registrations that are
/// not ours, of any content (a PID of a live process, ours; init's; none; garbage), and an
/// old lock file, never stop a backup or a prune.
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
        std::fs::create_dir_all(dir.join("repo/locks")).unwrap();
        std::fs::write(dir.join(format!("repo/locks/{:032x}", i + 1)), content).unwrap();
        change_grains(&mut disk, &[i], 30 + i as u64);
        write_disk(&dir.join("disk.raw"), &disk);
        ok(dir, &["backup", "disk.raw", "repo"]);
        ok(dir, &["prune", "repo", "--keep-last", "3"]);
    }
    assert_eq!(point_numbers(dir, "repo"), [3, 4, 5]);
    ok(dir, &["verify", "repo"]);
    restores_to(dir, "repo", 5, &dir.join("disk.raw"));
}

/// "Two writers can both proceed": while a backup runs, a second backup of its NAME is
/// refused in one line (with --force too); a backup of another NAME, a prune (which deletes
/// nothing while a writer runs) and readers go on; the running backup completes undisturbed.
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
    wait_until_registered(&dir.join("repo"), Duration::from_secs(30));
    one_line_error(&vdisk_in(dir, &["backup", "disk.raw", "repo"]), "running");
    one_line_error(
        &vdisk_in(dir, &["backup", "disk.raw", "repo", "--force"]),
        "running",
    );
    ok(dir, &["backup", "disk-1.raw", "repo", "--name", "other"]);
    let p = ok(dir, &["prune", "repo", "--keep-last", "2", "--json"]);
    let v: Value = serde_json::from_str(&p.stdout).unwrap();
    assert_eq!(v["writers_running"], true, "{v}");
    assert_eq!(v["deleted_packs"], 0, "{v}");
    // Readers take no lock.
    assert_eq!(point_numbers(dir, "repo"), [1, 2, 1]);
    ok(dir, &["verify", "repo", "--name", "disk"]);
    assert!(
        slow.try_wait().unwrap().is_none(),
        "the slow backup ended before the refusals were checked"
    );
    let out = slow.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");

    assert_eq!(point_numbers(dir, "repo"), [1, 2, 3, 1]);
    ok(dir, &["verify", "repo"]);
    for n in 1..=3u64 {
        let got = dir.join("restored.raw");
        let p = n.to_string();
        ok(
            dir,
            &[
                "restore",
                "repo",
                "restored.raw",
                "--name",
                "disk",
                "--point",
                &p,
                "--force",
            ],
        );
        assert_same_bytes(&dir.join(format!("disk-{n}.raw")), &got);
    }
}

// ---------------------------------------------------------------------------------------
// 3. Restore checks every grain against the hashes kept at backup time.

/// Where `needle` is in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The packs under `repo/data`.
fn packs(repo: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let Ok(dirs) = std::fs::read_dir(repo.join("data")) else {
        return out;
    };
    for d in dirs {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            out.insert(f.unwrap().path());
        }
    }
    out
}

/// "Restore of a swapped or flipped stored file returned other bytes with exit 0": a flipped
/// byte in a block, and two points' packs swapped, make restore fail in one line naming the
/// point (and the block's byte range), never return other bytes.
#[test]
fn restore_of_a_flipped_or_swapped_point_file_fails_naming_the_point_and_grain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let v1 = disk_bytes(51, 2 * MIB);
    let mut v2 = v1.clone();
    change_grains(&mut v2, &[4, 5, 6], 52);
    let mut v3 = v1.clone();
    change_grains(&mut v3, &[4, 5, 6], 62);
    let mut after = Vec::new();
    for v in [&v1, &v2, &v3] {
        write_disk(&dir.join("disk.raw"), v);
        ok(dir, &["backup", "disk.raw", "repo"]);
        after.push(packs(&dir.join("repo")));
    }
    let p2 = after[1].difference(&after[0]).next().unwrap().clone();
    let p3 = after[2].difference(&after[1]).next().unwrap().clone();
    let b2 = std::fs::read(&p2).unwrap();
    let b3 = std::fs::read(&p3).unwrap();

    // A flipped byte inside block 5 of point 2 (stored as it is: random data does not
    // compress).
    let at = find(&b2, &v2[5 * GRAIN..5 * GRAIN + 4096]).expect("block 5 stored as is");
    let mut flipped = b2.clone();
    flipped[at + 1000] ^= 0x01;
    std::fs::write(&p2, &flipped).unwrap();
    let r = vdisk_in(dir, &["restore", "repo", "out.raw", "--point", "2"]);
    one_line_error(&r, "point 2");
    assert!(
        r.stderr.contains(&format!("{}..{}", 5 * GRAIN, 6 * GRAIN)),
        "the block's byte range is not named: {}",
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
    let v = vdisk_in(dir, &["verify", "repo"]);
    assert_eq!(v.code, Some(1), "{v:#?}");
    assert!(v.stdout.contains("disk point 2: DAMAGED"), "{}", v.stdout);
    std::fs::write(&p2, &b2).unwrap();
    write_disk(&dir.join("want.raw"), &v2);
    restores_to(dir, "repo", 2, &dir.join("want.raw"));

    // The two points' packs swapped: each holds the other's blocks.
    std::fs::write(&p2, &b3).unwrap();
    std::fs::write(&p3, &b2).unwrap();
    for n in ["2", "3"] {
        let r = vdisk_in(dir, &["restore", "repo", "out.raw", "--point", n]);
        one_line_error(&r, &format!("point {n}"));
        assert!(!dir.join("out.raw").exists(), "point {n}");
    }
    // Cut short: refused too.
    std::fs::write(&p2, &b2[..b2.len() / 2]).unwrap();
    std::fs::write(&p3, &b3).unwrap();
    one_line_error(
        &vdisk_in(dir, &["restore", "repo", "out.raw", "--point", "2"]),
        "point 2",
    );
    std::fs::write(&p2, &b2).unwrap();
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
// 13. Repository commands do not offer an override they ignore (a layout-2 repository's
// points name files; layout 3's name none).

#[test]
fn a_point_naming_a_file_outside_the_repository_is_refused_without_suggesting_an_override() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut disk = disk_bytes(131, MIB);
    write_disk(&dir.join("disk.raw"), &disk);
    // Layout 2 (a VMDK chain) is where points name files: made through the library.
    layout2_backup(dir, "disk.raw", "repo");
    change_grains(&mut disk, &[2], 132);
    write_disk(&dir.join("disk.raw"), &disk);
    layout2_backup(dir, "disk.raw", "repo");
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

/// Tests that inject with strace or measure read rates run one at a time: each counts on
/// its own child's timing and I/O.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

mod devices;
mod faults;
mod pace;
