//! Helpers shared by the VHDX integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use vdisk_core::{copy_into, CopyOptions, DiskImage, Extent, Result};
use vdisk_io::{Bytes, FileStore, FsStore, Layer, MappedFile};
use vdisk_vhdx::{VhdxImage, VhdxSink, WriteOptions};

/// Whether qemu-img and qemu-io are installed; prints a note when they are not.
pub fn have_qemu() -> bool {
    let ok = ["qemu-img", "qemu-io"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ok {
        eprintln!("note: qemu-img/qemu-io not installed, skipping qemu interop checks");
    }
    ok
}

/// Run a command, returning (success, stdout, stderr).
pub fn run(cmd: &str, args: &[&str]) -> (bool, String, String) {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Run a command that must succeed; its stdout.
pub fn must(cmd: &str, args: &[&str]) -> String {
    let (ok, out, err) = run(cmd, args);
    assert!(ok, "{cmd} {args:?} failed:\n{out}\n{err}");
    out
}

/// Path as &str.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Open a VHDX file from disk.
pub fn open(path: &Path) -> VhdxImage {
    VhdxImage::open(FsStore::default().load(path).unwrap()).unwrap()
}

/// Open a VHDX file from disk, or the error.
pub fn try_open(path: &Path) -> Result<VhdxImage> {
    VhdxImage::open(Bytes::File(MappedFile::open(path)?))
}

/// Every byte of `img`.
pub fn read_all(img: &dyn DiskImage) -> Vec<u8> {
    let mut v = vec![0u8; img.size() as usize];
    for (i, c) in v.chunks_mut(3 << 20).enumerate() {
        img.read_at(c, i as u64 * (3 << 20)).unwrap();
    }
    v
}

/// `qemu-img convert -O raw` of `path`, read back.
pub fn qemu_raw(path: &Path, fmt: &str) -> Vec<u8> {
    let out = path.with_extension("qemu.raw");
    must(
        "qemu-img",
        &["convert", "-f", fmt, "-O", "raw", s(path), s(&out)],
    );
    let v = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    v
}

/// A deterministic pseudo-random byte pattern.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A raw disk of `size` bytes at `path` with `pieces` (offset, length, seed) of data.
pub fn make_raw(path: &Path, size: u64, pieces: &[(u64, usize, u64)]) -> Vec<u8> {
    let mut v = vec![0u8; size as usize];
    for &(off, len, seed) in pieces {
        v[off as usize..off as usize + len].copy_from_slice(&pattern(len, seed));
    }
    std::fs::write(path, &v).unwrap();
    v
}

/// Write `raw_path` as a VHDX at `dst` with our writer.
pub fn write_vhdx(raw_path: &Path, dst: &Path, opts: &WriteOptions) {
    let raw = vdisk_raw::RawImage::open(raw_path).unwrap();
    let sink = VhdxSink::create(dst, raw.size(), opts, &Default::default()).unwrap();
    copy_into(&raw, Box::new(sink), &CopyOptions::default()).unwrap();
}

/// The whole-disk map of a layer.
pub fn map(img: &dyn DiskImage) -> Vec<Extent> {
    let mut v = Vec::new();
    vdisk_core::for_each_extent(img, |e| {
        v.push(e);
        Ok(())
    })
    .unwrap();
    v
}

/// Read `len` bytes at `off` of a chain of layers (top first), the way the registry does:
/// ranges a layer leaves unallocated come from the next one.
pub fn read_chain(layers: &[&dyn Layer], off: u64, len: u64) -> Vec<u8> {
    let mut out = vec![0u8; len as usize];
    fill_chain(layers, &mut out, off);
    out
}

fn fill_chain(layers: &[&dyn Layer], buf: &mut [u8], off: u64) {
    let Some((top, rest)) = layers.split_first() else {
        buf.fill(0);
        return;
    };
    let size = top.size();
    for e in top.allocation(off, buf.len() as u64).unwrap() {
        let piece = &mut buf[(e.start - off) as usize..(e.end() - off) as usize];
        match e.allocation {
            vdisk_core::Allocation::Unallocated => {
                if e.start < size {
                    fill_chain(rest, piece, e.start)
                }
            }
            _ => top.read_at(piece, e.start).unwrap(),
        }
    }
}

/// A temporary folder (in /dev/shm when it exists: these tests write many megabytes).
pub fn tmp() -> tempfile::TempDir {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}
