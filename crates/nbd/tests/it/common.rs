//! Shared helpers: a server running in this process, qemu tools, test images.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vdisk_core::{DiskImage, Error, Extent, Result};
use vdisk_nbd::{ExportConfig, Limits, Server, ShutdownHandle};

/// A server serving on a Unix socket in a thread of the test process.
pub struct Running {
    pub server: Arc<Server>,
    pub stop: ShutdownHandle,
    pub socket: PathBuf,
    pub uri: String,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Running {
    pub fn unix(dir: &Path, image: Arc<dyn DiskImage>, config: ExportConfig) -> Running {
        Self::unix_with(dir, image, config, Limits::default())
    }

    pub fn unix_with(
        dir: &Path,
        image: Arc<dyn DiskImage>,
        config: ExportConfig,
        limits: Limits,
    ) -> Running {
        let socket = dir.join("nbd.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let uri = vdisk_nbd::unix_uri(&config.name, &socket);
        let server = Arc::new(Server::with_limits(image, config, limits).unwrap());
        let stop = server.shutdown_handle();
        let s = Arc::clone(&server);
        let thread = std::thread::spawn(move || s.serve_unix(listener));
        Running {
            server,
            stop,
            socket,
            uri,
            thread: Some(thread),
        }
    }

    /// Shut down and return how long `serve_unix` took to return.
    pub fn shutdown(mut self) -> Duration {
        let t = Instant::now();
        self.stop.shutdown();
        let r = self.thread.take().unwrap().join().unwrap();
        let took = t.elapsed();
        r.unwrap();
        took
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Run `prog ARGS` in `dir`.
pub fn run(dir: &Path, prog: &str, args: &[&str]) -> Out {
    let o = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"));
    Out {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Run `prog ARGS` in `dir`, which must succeed; its stdout.
pub fn ok(dir: &Path, prog: &str, args: &[&str]) -> String {
    let o = run(dir, prog, args);
    assert_eq!(
        o.code,
        Some(0),
        "{prog} {args:?} failed: {}{}",
        o.stdout,
        o.stderr
    );
    o.stdout
}

pub fn qemu_img(dir: &Path, args: &[&str]) -> String {
    ok(dir, "qemu-img", args)
}

/// `qemu-io ARGS -c CMD…`, which must succeed with no failed command.
pub fn qemu_io(dir: &Path, args: &[&str], cmds: &[&str]) -> String {
    let mut a: Vec<&str> = args.to_vec();
    for c in cmds {
        a.push("-c");
        a.push(c);
    }
    let out = ok(dir, "qemu-io", &a);
    assert!(!out.contains("failed"), "qemu-io {a:?}: {out}");
    out
}

/// Whether nbdinfo (libnbd-bin) is installed; prints why a test is skipped when not.
pub fn have_nbdinfo() -> bool {
    let ok = Command::new("nbdinfo").arg("--version").output().is_ok();
    if !ok {
        eprintln!("skipped: nbdinfo is not installed (Debian package libnbd-bin)");
    }
    ok
}

/// An 8 MiB sparse raw image made by qemu: data [0,1M) 0xab, [3M,3.5M) 0xcd, 1000 bytes of
/// 0x22 at 7000001, holes elsewhere (with [6M,7M) explicitly zeroed).
pub fn raw_image(dir: &Path) -> PathBuf {
    qemu_img(dir, &["create", "-q", "-f", "raw", "src.raw", "8M"]);
    qemu_io(
        dir,
        &["-f", "raw", "src.raw"],
        &[
            "write -P 0xab 0 1M",
            "write -P 0xcd 3M 512k",
            "write -z 6M 1M",
            "write -P 0x22 7000001 1000",
        ],
    );
    dir.join("src.raw")
}

pub fn open_raw(path: &Path) -> Arc<dyn DiskImage> {
    Arc::new(vdisk_raw::RawImage::open(path).unwrap())
}

/// A qemu-made VMDK chain: base (8 MiB, 0x5a in [0,2M), zeroed grains [256k,384k)) and a
/// link with a zeroed grain [512k,576k) masking the parent and 0x77 at [3M,3M+64k).
/// Returns the link.
pub fn vmdk_chain(dir: &Path) -> PathBuf {
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "zeroed_grain=on",
            "base.vmdk",
            "8M",
        ],
    );
    qemu_io(
        dir,
        &["-f", "vmdk", "base.vmdk"],
        &["write -P 0x5a 0 2M", "write -z 256k 128k"],
    );
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "zeroed_grain=on",
            "-b",
            "base.vmdk",
            "-F",
            "vmdk",
            "link.vmdk",
        ],
    );
    qemu_io(
        dir,
        &["-f", "vmdk", "link.vmdk"],
        &["write -z 512k 64k", "write -P 0x77 3M 64k"],
    );
    dir.join("link.vmdk")
}

/// `qemu-img map --output=json` of a file or URI: (start, length, data, zero).
pub fn qemu_map(dir: &Path, args: &[&str]) -> Vec<(u64, u64, bool, bool)> {
    let mut a = vec!["map", "--output=json"];
    a.extend_from_slice(args);
    let out = qemu_img(dir, &a);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut map: Vec<(u64, u64, bool, bool)> = Vec::new();
    for e in v.as_array().unwrap() {
        let (s, l) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        let (d, z) = (e["data"].as_bool().unwrap(), e["zero"].as_bool().unwrap());
        // Join touching entries of the same kind (qemu splits at request boundaries).
        match map.last_mut() {
            Some(last) if last.0 + last.1 == s && last.2 == d && last.3 == z => last.1 += l,
            _ => map.push((s, l, d, z)),
        }
    }
    map
}

/// An image that wraps another and fails every read touching `[bad_start, bad_end)`, as a
/// repository grain with a wrong hash does.
pub struct FailingImage {
    pub inner: Arc<dyn DiskImage>,
    pub bad_start: u64,
    pub bad_end: u64,
}

impl DiskImage for FailingImage {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if offset < self.bad_end && offset + buf.len() as u64 > self.bad_start {
            return Err(Error::corrupt("grain hash mismatch").at(self.bad_start));
        }
        self.inner.read_at(buf, offset)
    }
    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        self.inner.allocation(offset, length)
    }
    fn format_name(&self) -> &'static str {
        "failing"
    }
}

/// The source file's bytes.
pub fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// A raw image written by the test itself, of an odd size (3 MiB + 1000 bytes): a pattern
/// in [0, 64K), a hole in [64K, 512K), another pattern in [512K, end). Returns the path
/// and the expected bytes.
pub fn pattern_image(dir: &Path) -> (PathBuf, Vec<u8>) {
    use std::os::unix::fs::FileExt;
    let size = (3 << 20) + 1000;
    let mut want = vec![0u8; size];
    for (i, b) in want.iter_mut().enumerate() {
        if i < 64 << 10 {
            *b = (i % 251) as u8;
        } else if i >= 512 << 10 {
            *b = ((i / 7) % 253) as u8 | 1;
        }
    }
    let path = dir.join("pattern.raw");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(size as u64).unwrap();
    f.write_all_at(&want[..64 << 10], 0).unwrap();
    f.write_all_at(&want[512 << 10..], 512 << 10).unwrap();
    (path, want)
}
