//! Bench inputs, made with qemu-img and qemu-io in a temporary folder.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

const MIB: u64 = 1 << 20;
/// Virtual size of the images read and converted whole.
pub const IMAGE_SIZE: u64 = 64 * MIB;
/// Virtual size of the image used for grain lookups (262144 grains of 64 KiB).
pub const LOOKUP_SIZE: u64 = 16 << 30;

/// The images every bench uses; the folder goes away when this is dropped.
pub struct Fixtures {
    dir: TempDir,
    /// A 64 MiB raw disk, about half data (random, log-like text, repeating records) and half
    /// holes, the source of the two VMDKs.
    pub raw: PathBuf,
    /// `raw` as a monolithicSparse VMDK.
    pub sparse: PathBuf,
    /// `raw` as a streamOptimized VMDK (deflated grains).
    pub stream: PathBuf,
    /// A 16 GiB monolithicSparse VMDK with grains written at scattered offsets, for lookups.
    pub lookup: PathBuf,
}

impl Fixtures {
    /// Make the images, or say why they cannot be made.
    pub fn create() -> Result<Self, String> {
        for tool in ["qemu-img", "qemu-io"] {
            match Command::new(tool).arg("--version").output() {
                Ok(o) if o.status.success() => {}
                _ => return Err(format!("{tool} is not installed (or does not run)")),
            }
        }
        let dir =
            tempfile::tempdir().map_err(|e| format!("cannot make a temporary folder: {e}"))?;
        let raw = dir.path().join("mixed.raw");
        write_mixed_raw(&raw, IMAGE_SIZE).map_err(|e| format!("cannot write {raw:?}: {e}"))?;
        let sparse = dir.path().join("mixed-sparse.vmdk");
        let stream = dir.path().join("mixed-stream.vmdk");
        for (dst, sub) in [(&sparse, "monolithicSparse"), (&stream, "streamOptimized")] {
            run(Command::new("qemu-img")
                .args(["convert", "-q", "-f", "raw", "-O", "vmdk", "-o"])
                .arg(format!("subformat={sub}"))
                .arg(&raw)
                .arg(dst))?;
        }
        let lookup = dir.path().join("lookup.vmdk");
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "vmdk"])
            .arg(&lookup)
            .arg(LOOKUP_SIZE.to_string()))?;
        // One 64 KiB grain every 7 MiB + 192 KiB: scattered over every grain table.
        let mut io = Command::new("qemu-io");
        io.args(["-f", "vmdk"]);
        let step = 7 * MIB + 192 * 1024;
        let mut off = 0;
        let mut n = 0u32;
        while off + 65536 <= LOOKUP_SIZE {
            io.arg("-c")
                .arg(format!("write -q -P {} {off} 64k", 1 + n % 250));
            off += step;
            n += 1;
        }
        run(io.arg(&lookup))?;
        Ok(Fixtures {
            dir,
            raw,
            sparse,
            stream,
            lookup,
        })
    }

    /// The temporary folder (for outputs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// xorshift64*: reproducible filler, fast enough that making the inputs takes no time.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Incompressible bytes.
fn fill_random(rng: &mut Rng, buf: &mut [u8]) {
    for c in buf.chunks_mut(8) {
        let v = rng.next().to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
}

/// Log-like lines: compress about 3-4x, like text files and logs on a real disk.
fn fill_text(rng: &mut Rng, buf: &mut [u8]) {
    const PATHS: [&str; 6] = [
        "/api/v1/items",
        "/api/v1/users",
        "/static/app.js",
        "/healthz",
        "/api/v2/orders",
        "/login",
    ];
    const STATUS: [u32; 5] = [200, 200, 200, 404, 500];
    let mut text = String::with_capacity(buf.len() + 200);
    while text.len() < buf.len() {
        let t = rng.next();
        text.push_str(&format!(
            "2024-05-{:02}T{:02}:{:02}:{:02}.{:03}Z host{:02} nginx[{}]: GET {}/{} status={} bytes={} rt={}ms\n",
            1 + t % 28,
            (t >> 5) % 24,
            (t >> 10) % 60,
            (t >> 16) % 60,
            (t >> 22) % 1000,
            (t >> 32) % 16,
            1000 + (t >> 36) % 9000,
            PATHS[rng.below(PATHS.len() as u64) as usize],
            rng.below(100_000),
            STATUS[rng.below(STATUS.len() as u64) as usize],
            rng.below(1 << 20),
            rng.below(2000),
        ));
    }
    buf.copy_from_slice(&text.as_bytes()[..buf.len()]);
}

/// Fixed-size records with a counter: compress very well (tables, zero-padded structures).
fn fill_records(seed: u64, buf: &mut [u8]) {
    for (i, rec) in buf.chunks_mut(64).enumerate() {
        let mut r = [0u8; 64];
        r[..8].copy_from_slice(&(seed + i as u64).to_le_bytes());
        r[8..16].copy_from_slice(b"RECORD01");
        r[16..24].copy_from_slice(&((i as u64) * 4096).to_le_bytes());
        let n = rec.len();
        rec.copy_from_slice(&r[..n]);
    }
}

/// A raw disk of `size` bytes in 1 MiB blocks, cycling through: random, text, hole, random,
/// records, hole, 96 KiB of text then zeros (a partly filled grain), hole. About half the disk
/// holds data.
fn write_mixed_raw(path: &Path, size: u64) -> std::io::Result<()> {
    let f = File::create(path)?;
    f.set_len(size)?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![0u8; MIB as usize];
    for block in 0..size / MIB {
        let off = block * MIB;
        match block % 8 {
            0 | 3 => fill_random(&mut rng, &mut buf),
            1 => fill_text(&mut rng, &mut buf),
            4 => fill_records(block << 20, &mut buf),
            6 => {
                let part = 96 * 1024;
                fill_text(&mut rng, &mut buf[..part]);
                f.write_all_at(&buf[..part], off)?;
                continue;
            }
            _ => continue,
        }
        f.write_all_at(&buf, off)?;
    }
    f.sync_all()
}
