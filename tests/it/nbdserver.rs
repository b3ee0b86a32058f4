//! NBD servers for the CLI tests: qemu-nbd, qemu-storage-daemon (driven over QMP on its
//! stdin and stdout) and nbdkit, started on Unix sockets in the test's folder and killed (by
//! their own process id) when dropped.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::have_tool;

/// Whether `prog` is installed; prints why a test is skipped when not (CI installs them).
pub fn have(prog: &str) -> bool {
    let ok = have_tool(prog);
    if !ok {
        eprintln!("skipped: {prog} is not installed");
    }
    ok
}

/// A server process listening on a Unix socket.
pub struct NbdServer {
    child: Child,
    pub socket: PathBuf,
    qmp: Option<(ChildStdin, BufReader<ChildStdout>)>,
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(child: &mut Child, ready: impl Fn() -> bool, what: &str) {
    let t = Instant::now();
    while !ready() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status} before listening");
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{what} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl NbdServer {
    /// `qemu-nbd -t ARGS --socket=DIR/NAME.sock IMAGE` (persistent, so the readiness probe
    /// does not end it).
    pub fn qemu_nbd(dir: &Path, name: &str, args: &[&str], image: &str) -> NbdServer {
        let socket = dir.join(format!("{name}.sock"));
        let mut child = Command::new("qemu-nbd")
            .arg("-t")
            .args(args)
            .arg(format!("--socket={}", socket.display()))
            .arg(image)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run qemu-nbd");
        let s = socket.clone();
        wait_for(&mut child, || UnixStream::connect(&s).is_ok(), "qemu-nbd");
        NbdServer {
            child,
            socket,
            qmp: None,
        }
    }

    /// `nbdkit --unix DIR/NAME.sock --foreground ARGS`.
    pub fn nbdkit(dir: &Path, name: &str, args: &[&str]) -> NbdServer {
        let socket = dir.join(format!("{name}.sock"));
        let mut child = Command::new("nbdkit")
            .arg("--unix")
            .arg(&socket)
            .arg("--foreground")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run nbdkit");
        let s = socket.clone();
        wait_for(&mut child, || UnixStream::connect(&s).is_ok(), "nbdkit");
        NbdServer {
            child,
            socket,
            qmp: None,
        }
    }

    /// `qemu-storage-daemon ARGS`, QMP on its stdin and stdout, an NBD server on
    /// DIR/NAME.sock.
    pub fn storage_daemon(dir: &Path, name: &str, args: &[&str]) -> NbdServer {
        let socket = dir.join(format!("{name}.sock"));
        let mut child = Command::new("qemu-storage-daemon")
            .args(args)
            .arg("--nbd-server")
            .arg(format!("addr.type=unix,addr.path={}", socket.display()))
            .args(["--chardev", "stdio,id=qmp0", "--monitor", "chardev=qmp0"])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run qemu-storage-daemon");
        let qmp = (
            child.stdin.take().unwrap(),
            BufReader::new(child.stdout.take().unwrap()),
        );
        let mut s = NbdServer {
            child,
            socket,
            qmp: Some(qmp),
        };
        s.qmp_line();
        s.qmp(r#"{"execute":"qmp_capabilities"}"#);
        s
    }

    fn qmp_line(&mut self) -> serde_json::Value {
        let (_, out) = self.qmp.as_mut().expect("no QMP channel");
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP said {line:?}: {e}"))
    }

    /// A QMP command's "return" (events skipped; an error fails the test).
    pub fn qmp(&mut self, cmd: &str) -> serde_json::Value {
        let (inp, _) = self.qmp.as_mut().expect("no QMP channel");
        writeln!(inp, "{cmd}").unwrap();
        inp.flush().unwrap();
        loop {
            let v = self.qmp_line();
            if v.get("event").is_some() {
                continue;
            }
            if let Some(r) = v.get("return") {
                return r.clone();
            }
            panic!("QMP {cmd} failed: {v}");
        }
    }

    /// The URI of `export`.
    pub fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    /// Kill the server now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
