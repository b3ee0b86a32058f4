//! Real NBD servers for the client tests: qemu-nbd, qemu-storage-daemon and nbdkit, started
//! by the tests on Unix sockets in a temporary folder and killed (by their own process id)
//! when dropped.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use vdisk_nbd::{ClientOptions, NbdExport, NbdUri};

/// Whether `prog` runs; prints why a test is skipped when not.
pub fn have(prog: &str) -> bool {
    let ok = Command::new(prog)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        eprintln!("skipped: {prog} is not installed");
    }
    ok
}

/// A server process listening on a Unix socket.
pub struct Proc {
    child: Child,
    pub socket: PathBuf,
    /// The QMP channel of a qemu-storage-daemon (its stdin and stdout).
    qmp: Option<(ChildStdin, BufReader<std::process::ChildStdout>)>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_socket(child: &mut Child, socket: &Path, what: &str) {
    let t = Instant::now();
    loop {
        if UnixStream::connect(socket).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status} before listening");
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{what} did not listen on {} in 20 s",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Proc {
    /// `qemu-nbd ARGS --socket=DIR/NAME.sock IMAGE`. The readiness probe is one connection,
    /// so a server that must not exit after its first client needs `-t` (persistent); for
    /// one that may, use [`Proc::qemu_nbd_once`].
    pub fn qemu_nbd(dir: &Path, name: &str, args: &[&str], image: &Path) -> Proc {
        let socket = dir.join(format!("{name}.sock"));
        let mut child = Command::new("qemu-nbd")
            .args(args)
            .arg(format!("--socket={}", socket.display()))
            .arg(image)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run qemu-nbd");
        wait_for_socket(&mut child, &socket, "qemu-nbd");
        Proc {
            child,
            socket,
            qmp: None,
        }
    }

    /// `qemu-nbd ARGS` without `-t`: it serves one client, then exits. Waits for the socket
    /// file to appear instead of connecting (which would use up the one client).
    pub fn qemu_nbd_once(dir: &Path, name: &str, args: &[&str], image: &Path) -> Proc {
        let socket = dir.join(format!("{name}.sock"));
        let pid = dir.join(format!("{name}.pid"));
        let mut child = Command::new("qemu-nbd")
            .args(args)
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", pid.display()))
            .arg(image)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run qemu-nbd");
        let t = Instant::now();
        // qemu-nbd writes its pid file once it listens.
        while !pid.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("qemu-nbd exited with {status} before listening");
            }
            assert!(t.elapsed() < Duration::from_secs(20));
            std::thread::sleep(Duration::from_millis(20));
        }
        Proc {
            child,
            socket,
            qmp: None,
        }
    }

    /// `nbdkit --unix DIR/NAME.sock --foreground ARGS`.
    pub fn nbdkit(dir: &Path, name: &str, args: &[&str]) -> Proc {
        let socket = dir.join(format!("{name}.sock"));
        let mut child = Command::new("nbdkit")
            .arg("--unix")
            .arg(&socket)
            .arg("--foreground")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run nbdkit");
        wait_for_socket(&mut child, &socket, "nbdkit");
        Proc {
            child,
            socket,
            qmp: None,
        }
    }

    /// `qemu-storage-daemon ARGS` with QMP on its stdin/stdout and an NBD server on
    /// DIR/NAME.sock (exports are added with [`Proc::qmp`]).
    pub fn storage_daemon(dir: &Path, name: &str, args: &[&str]) -> Proc {
        let socket = dir.join(format!("{name}.sock"));
        let mut child = Command::new("qemu-storage-daemon")
            .args(args)
            .arg("--nbd-server")
            .arg(format!("addr.type=unix,addr.path={}", socket.display()))
            .args(["--chardev", "stdio,id=qmp0", "--monitor", "chardev=qmp0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run qemu-storage-daemon");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut p = Proc {
            child,
            socket,
            qmp: Some((stdin, stdout)),
        };
        // The greeting, then capabilities negotiation.
        p.qmp_line();
        p.qmp(r#"{"execute":"qmp_capabilities"}"#);
        p
    }

    fn qmp_line(&mut self) -> serde_json::Value {
        let (_, out) = self.qmp.as_mut().expect("no QMP channel");
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP said {line:?}: {e}"))
    }

    /// Run a QMP command (JSON text); its "return" value. Events are skipped; an error
    /// fails the test.
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

    /// The URI of `export` on this server.
    pub fn uri(&self, export: &str) -> NbdUri {
        NbdUri::parse(&vdisk_nbd::unix_uri(export, &self.socket)).unwrap()
    }

    /// Open `export` with the client.
    pub fn open(&self, export: &str) -> NbdExport {
        NbdExport::open(&self.uri(export), &ClientOptions::default())
            .unwrap_or_else(|e| panic!("cannot open {export}: {e}"))
    }
}
