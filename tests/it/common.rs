//! Helpers shared by the integration tests.
#![allow(unsafe_code)] // wait4(2) for a child's rusage, flock(2)
#![allow(dead_code)]

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `vdisk` binary built for these tests.
pub fn vdisk_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vdisk"))
}

/// What one run of a command did.
#[derive(Debug)]
pub struct Run {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Signal that ended it, if any.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// Peak resident memory of the process, in bytes (from wait4's rusage).
    pub max_rss: u64,
    /// CPU time (user + system) the process used: unlike wall time, it does not grow when
    /// the machine is busy with other work.
    pub cpu: Duration,
}

impl Run {
    /// Panic with everything known unless the exit code is `code`.
    pub fn expect_code(&self, code: i32, what: &str) -> &Self {
        assert_eq!(self.code, Some(code), "{what}: {self:#?}");
        self
    }
}

/// Run `cmd` to completion, measuring time and peak RSS. Panics if it cannot start.
pub fn run(cmd: Command) -> Run {
    run_with_stdin(cmd, Stdio::null())
}

/// [`run`], with `stdin` as the command's standard input.
pub fn run_with_stdin(mut cmd: Command, stdin: Stdio) -> Run {
    cmd.stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut s).ok();
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut s).ok();
        s
    });
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data, valid when zeroed.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 fills `status` and `usage`, which we own; we reap our own child exactly
    // once and never call Child::wait on it.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4 failed");
    let elapsed = start.elapsed();
    let status = std::process::ExitStatus::from_raw(status);
    std::mem::forget(child);
    Run {
        code: status.code(),
        signal: status.signal(),
        stdout: String::from_utf8_lossy(&t_out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&t_err.join().unwrap()).into_owned(),
        elapsed,
        max_rss: usage.ru_maxrss as u64 * 1024,
        cpu: Duration::from_secs(usage.ru_utime.tv_sec as u64 + usage.ru_stime.tv_sec as u64)
            + Duration::from_micros(usage.ru_utime.tv_usec as u64 + usage.ru_stime.tv_usec as u64),
    }
}

/// The wrapper that measures children's memory: Linux records the RSS of the process that
/// spawned a program as the program's own peak (at exec), so the test binary, which holds
/// large buffers, cannot measure its children directly. A small Python process runs the
/// commands instead and reports each one's exit, peak RSS, CPU and wall time (os.wait4).
const MEASURE: &str = r#"
import json, os, sys, tempfile, time
res = []
for args in json.loads(sys.argv[1]):
    with tempfile.TemporaryFile() as o, tempfile.TemporaryFile() as e:
        t = time.monotonic()
        pid = os.posix_spawn(args[0], args, os.environ, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, o.fileno(), 1), (os.POSIX_SPAWN_DUP2, e.fileno(), 2)])
        _, status, ru = os.wait4(pid, 0)
        wall = time.monotonic() - t
        o.seek(0); e.seek(0)
        res.append({"status": status, "rss": ru.ru_maxrss * 1024, "cpu": ru.ru_utime + ru.ru_stime,
                    "wall": wall, "out": o.read().decode("utf-8", "replace"),
                    "err": e.read().decode("utf-8", "replace")})
print(json.dumps(res))
"#;

/// Run several `vdisk ARGS` in `dir` through the measuring wrapper: each `Run`'s `max_rss`
/// and `cpu` are that vdisk process's own.
pub fn vdisk_measured(dir: &Path, commands: &[Vec<&str>]) -> Vec<Run> {
    vdisk_measured_env(dir, commands, &[])
}

/// [`vdisk_measured`] with `env` set for every run.
pub fn vdisk_measured_env(
    dir: &Path,
    commands: &[Vec<&str>],
    env: &[(String, String)],
) -> Vec<Run> {
    let bin = vdisk_bin();
    let bin = bin.to_str().unwrap();
    let list: Vec<Vec<&str>> = commands
        .iter()
        .map(|a| std::iter::once(bin).chain(a.iter().copied()).collect())
        .collect();
    let mut c = Command::new("python3");
    c.arg("-c")
        .arg(MEASURE)
        .arg(serde_json::to_string(&list).unwrap())
        .current_dir(dir);
    for (k, v) in env {
        c.env(k, v);
    }
    let r = run(c);
    assert_eq!(r.code, Some(0), "measuring wrapper failed: {}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let status = std::process::ExitStatus::from_raw(m["status"].as_i64().unwrap() as i32);
            Run {
                code: status.code(),
                signal: status.signal(),
                stdout: m["out"].as_str().unwrap().to_string(),
                stderr: m["err"].as_str().unwrap().to_string(),
                elapsed: Duration::from_secs_f64(m["wall"].as_f64().unwrap()),
                max_rss: m["rss"].as_u64().unwrap(),
                cpu: Duration::from_secs_f64(m["cpu"].as_f64().unwrap()),
            }
        })
        .collect()
}

/// Run `vdisk ARGS` in `dir`.
pub fn vdisk_in(dir: &Path, args: &[&str]) -> Run {
    let mut c = Command::new(vdisk_bin());
    c.args(args).current_dir(dir);
    run(c)
}

/// Run a tool that must succeed (qemu-img, qemu-io), returning its stdout.
pub fn tool(dir: &Path, prog: &str, args: &[&str]) -> String {
    let mut c = Command::new(prog);
    c.args(args).current_dir(dir);
    let r = run(c);
    assert_eq!(
        r.code,
        Some(0),
        "{prog} {args:?} failed: {}{}",
        r.stdout,
        r.stderr
    );
    r.stdout
}

/// `qemu-img ARGS` in `dir`, which must succeed.
pub fn qemu_img(dir: &Path, args: &[&str]) -> String {
    tool(dir, "qemu-img", args)
}

/// `qemu-img convert -f raw -O vmdk -o subformat=SUBFORMAT SRC DST` in `dir`, which must
/// succeed: a qemu-made VMDK of a raw disk.
pub fn qemu_to_vmdk(dir: &Path, subformat: &str, src: &str, dst: &str) {
    qemu_img(
        dir,
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            &format!("subformat={subformat}"),
            src,
            dst,
        ],
    );
}

/// `qemu-img create -q -f vmdk [-o OPTIONS] NAME SIZE` in `dir`, which must succeed (the
/// options joined with commas, none when empty).
pub fn qemu_create_vmdk(dir: &Path, name: &str, size: &str, options: &[&str]) {
    let joined = options.join(",");
    let mut args = vec!["create", "-q", "-f", "vmdk"];
    if !options.is_empty() {
        args.extend(["-o", &joined]);
    }
    args.extend([name, size]);
    qemu_img(dir, &args);
}

/// `qemu-io -f FMT FILE -c CMD …` in `dir`, which must succeed.
pub fn qemu_io(dir: &Path, fmt: &str, file: &str, cmds: &[&str]) -> String {
    let mut args = vec!["-f", fmt, file];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    let out = tool(dir, "qemu-io", &args);
    assert!(!out.contains("failed"), "qemu-io {args:?}: {out}");
    out
}

/// Compare two files byte for byte, skipping ranges that are holes in both. Panics with the
/// first differing offset.
pub fn assert_same_bytes(a: &Path, b: &Path) {
    use std::os::unix::fs::FileExt;
    let fa = std::fs::File::open(a).unwrap();
    let fb = std::fs::File::open(b).unwrap();
    let la = fa.metadata().unwrap().len();
    let lb = fb.metadata().unwrap().len();
    assert_eq!(
        la,
        lb,
        "{} and {} differ in length",
        a.display(),
        b.display()
    );
    let data_a = vdisk::io::data_ranges(&fa, 0, la);
    let data_b = vdisk::io::data_ranges(&fb, 0, lb);
    // Compare every range that holds data in either file; elsewhere both read as zero.
    let mut ranges: Vec<(u64, u64)> = data_a.into_iter().chain(data_b).collect();
    ranges.sort();
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    for (start, len) in ranges {
        let mut off = start;
        while off < start + len {
            let n = (start + len - off).min(1 << 20) as usize;
            fa.read_exact_at(&mut ba[..n], off).unwrap();
            fb.read_exact_at(&mut bb[..n], off).unwrap();
            if ba[..n] != bb[..n] {
                let i = ba[..n]
                    .iter()
                    .zip(&bb[..n])
                    .position(|(x, y)| x != y)
                    .unwrap();
                panic!(
                    "{} and {} differ at byte {}",
                    a.display(),
                    b.display(),
                    off + i as u64
                );
            }
            off += n as u64;
        }
    }
}

/// Fail clearly when the reference tools are missing (CI installs them; see .ci/run).
pub fn require_qemu() {
    for t in ["qemu-img", "qemu-io"] {
        let ok = Command::new(t)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(
            matches!(ok, Ok(s) if s.success()),
            "{t} is not installed: install qemu-utils (bash .ci/run does)"
        );
    }
}

/// A deterministic pseudo-random byte pattern (xorshift), for image contents.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Hold a repository's writer lock from the test process (as another vdisk run would) until
/// the returned file is dropped.
pub fn hold_lock(repo: &Path) -> std::fs::File {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(repo.join(".vdisk-lock"))
        .unwrap();
    // SAFETY: flock on a descriptor we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(r, 0, "the test could not take the lock");
    f
}

/// Whether `prog` runs (`prog --version` succeeds): for tools that are optional where they do
/// not install, such as `nbdinfo` (Debian's `libnbd-bin`).
pub fn have_tool(prog: &str) -> bool {
    matches!(
        Command::new(prog)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status(),
        Ok(s) if s.success()
    )
}

/// A `vdisk serve` running as a child of the test, with the URI it printed; killed (SIGKILL)
/// when dropped if it is still running.
pub struct Served {
    child: std::process::Child,
    /// The first line the server printed on stdout.
    pub uri: String,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

/// Start `vdisk serve ARGS` in `dir` and wait (up to 30 s) for the URI line on its stdout.
/// Panics, with the server's stderr, when it exits or prints nothing in that time.
pub fn serve(dir: &Path, args: &[&str]) -> Served {
    serve_env(dir, args, &[])
}

/// [`serve`] with `env` set for the server (an object store's credentials).
pub fn serve_env(dir: &Path, args: &[&str], env: &[(String, String)]) -> Served {
    use std::io::{BufRead, Read};
    let mut child = Command::new(vdisk_bin())
        .arg("serve")
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start vdisk serve");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let err2 = std::sync::Arc::clone(&err);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            err2.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        // Keep draining: nothing more is expected, but the pipe must not fill.
        for _ in lines {}
    });
    let mut served = Served {
        child,
        uri: String::new(),
        stderr: err,
    };
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Some(Ok(line))) => served.uri = line,
        other => {
            let _ = served.child.kill();
            let _ = served.child.wait();
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "vdisk serve {args:?} printed no URI ({other:?}); stderr: {}",
                served.stderr()
            );
        }
    }
    served
}

impl Served {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Send `sig` to the server.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child, which has not been reaped.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(r, 0, "kill failed");
    }

    /// Wait up to `limit` for the server to exit.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if start.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the server is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The state letter of process `pid` (`R`, `S`, `Z` …), from /proc/PID/stat.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMM) S …": the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Send `sig` to process `pid` (a child of the test's, not yet reaped).
pub fn send_signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid the caller owns.
    let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig}) failed");
}

/// Every file under `dir`, by its path relative to `dir`, with its bytes.
pub fn file_tree(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().unwrap().is_dir() {
            for (k, v) in file_tree(&e.path()) {
                out.insert(format!("{name}/{k}"), v);
            }
        } else {
            out.insert(name, std::fs::read(e.path()).unwrap());
        }
    }
    out
}
