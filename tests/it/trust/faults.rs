//! Runs killed, or failed with ENOSPC, at each system call that publishes their work (strace's
//! fault injection): the repository, or the old output, is always whole (attacks 2, 9 and
//! 10).

use super::*;

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
pub(super) fn disk_versions(dir: &Path, count: usize) {
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
pub(super) fn back_up_versions(dir: &Path, repo: &str, versions: std::ops::RangeInclusive<usize>) {
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
    holds_only_points(dir, "repo");
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
/// at each rename, link and sync in turn (a point appears with the link of its object).
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
    eprintln!("{kills} backups killed, {switched} after the commit");
    assert!(kills >= 10, "only {kills} backups were killed");
    assert!(switched > 0, "no kill landed after the commit");

    // A prune of points 1 and 2 (its garbage condemned; deleted by a later prune).
    let kills = kill_at_each_call(&PUBLISHING, |at| {
        copy_folder(&dir.join("four"), &dir.join("repo"));
        let r = vdisk_strace(
            dir,
            at,
            "signal=KILL",
            false,
            &["prune", "repo", "--keep-last", "2"],
        );
        let after = point_numbers(dir, "repo");
        assert!(
            after == [1, 2, 3, 4] || after == [2, 3, 4] || after == [3, 4],
            "{at:?}: {after:?}"
        );
        let points = sound_after(dir, &["prune", "repo", "--keep-last", "2"], 4);
        assert_eq!(points, [3, 4], "{at:?}");
        r
    });
    eprintln!("{kills} prunes killed");
    assert!(kills >= 5, "only {kills} prunes were killed");
}

/// "Disk-full at the hashes file does the same": every file write from the Kth on fails
/// with ENOSPC (in the main thread, which writes the registration, the tables and the point;
/// then in every thread: the pack writer's too). vdisk writes files with pwrite64 only; its
/// messages go out with write, which is left alone so that the one line can be read.
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
            vec!["prune", "repo", "--keep-last", "2"],
            "four",
            vec![1, 2, 3, 4],
            vec!["prune", "repo", "--keep-last", "2"],
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
