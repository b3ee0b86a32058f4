//! Devices as outputs, read-only repositories, closed pipes and absurd arguments.

use super::faults::{back_up_versions, disk_versions};
use super::*;

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
/// repository it cannot write, list, verify and restore work, and nothing is written.
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
    fn read_only(p: &Path) {
        let m = std::fs::symlink_metadata(p).unwrap();
        let mode = if m.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        if m.is_dir() {
            for e in std::fs::read_dir(p).unwrap() {
                read_only(&e.unwrap().path());
            }
        }
    }
    read_only(&repo);
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
    assert!(r.stdout.contains("incremental"), "{}", r.stdout);
    as_nobody(&["verify", "repo"]).expect_code(0, "verify as nobody");
    for n in 1..=2 {
        let dst = format!("out/p{n}.raw");
        as_nobody(&["restore", "repo", &dst, "--point", &n.to_string()])
            .expect_code(0, "restore as nobody");
        assert_same_bytes(&dir.join(format!("disk-{n}.raw")), &dir.join(&dst));
    }
    as_nobody(&["restore", "repo", "out/p.vmdk", "-O", "vmdk"])
        .expect_code(0, "restore -O vmdk as nobody");
    // Readers run by the owner register nothing either.
    ok(dir, &["list", "repo"]);
    ok(dir, &["verify", "repo"]);
    ok(dir, &["restore", "repo", "out/root.raw"]);
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
