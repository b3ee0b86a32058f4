//! Helpers of the VHD integration tests: qemu-img and qemu-io runs, patterns, comparisons.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use vdisk_core::{copy_into, CopyOptions, DiskImage, ImageSink};
use vdisk_io::{CreateOptions, Format};
use vdisk_raw::RawImage;
use vdisk_vhd::{VhdImage, VHD};

/// Whether qemu-img and qemu-io can be run; prints a note when they cannot.
pub fn have_qemu() -> bool {
    let ok = ["qemu-img", "qemu-io"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ok {
        eprintln!("note: qemu-img or qemu-io is missing; skipping the qemu interop test");
    }
    ok
}

/// Run a command in `dir`, panicking with its output when it fails; returns stdout.
pub fn run(dir: &Path, prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a command in `dir`; (exit code, stdout + stderr).
pub fn run_status(dir: &Path, prog: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Run qemu-io commands on a vpc image.
pub fn qemu_io(dir: &Path, img: &str, cmds: &[&str]) {
    let mut args = vec!["-f", "vpc"];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(img);
    run(dir, "qemu-io", &args);
}

/// What qemu-img reads from `img` (format `fmt`), as raw bytes.
pub fn qemu_raw(dir: &Path, fmt: &str, img: &str) -> Vec<u8> {
    let out = format!("{img}.qemu.raw");
    run(
        dir,
        "qemu-img",
        &["convert", "-f", fmt, "-O", "raw", img, &out],
    );
    let bytes = std::fs::read(dir.join(&out)).unwrap();
    std::fs::remove_file(dir.join(&out)).unwrap();
    bytes
}

/// The virtual size qemu-img reports for `img` read as `fmt`.
pub fn qemu_size(dir: &Path, fmt: &str, img: &str) -> u64 {
    let json = run(dir, "qemu-img", &["info", "-f", fmt, "--output=json", img]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["format"], fmt, "{json}");
    v["virtual-size"].as_u64().unwrap()
}

/// Every byte of `img`, read in pieces of `piece` bytes.
pub fn read_all(img: &dyn DiskImage, piece: usize) -> Vec<u8> {
    let mut out = vec![0u8; img.size() as usize];
    for (i, chunk) in out.chunks_mut(piece).enumerate() {
        img.read_at(chunk, (i * piece) as u64).unwrap();
    }
    out
}

/// Bytes of `len` where every 4 KiB block is a pattern of `seed` and its index, or zero
/// for every fourth block: data that tells blocks apart and has holes.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    for (i, chunk) in v.chunks_mut(4096).enumerate() {
        if i % 4 == 3 {
            continue;
        }
        for (j, b) in chunk.iter_mut().enumerate() {
            *b = seed ^ (i as u8).wrapping_mul(31) ^ (j as u8);
        }
        chunk[0] = 1; // never all zero
    }
    v
}

/// Write `bytes` as a raw file `name` in `dir` (holes for zero 4 KiB blocks).
pub fn write_raw(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    use std::os::unix::fs::FileExt;
    let path = dir.join(name);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(bytes.len() as u64).unwrap();
    for (i, chunk) in bytes.chunks(4096).enumerate() {
        if chunk.iter().any(|&b| b != 0) {
            f.write_all_at(chunk, (i * 4096) as u64).unwrap();
        }
    }
    path
}

/// Open a VHD, panicking on error.
pub fn open(path: &Path) -> VhdImage {
    VhdImage::open(path).unwrap_or_else(|e| panic!("{e}"))
}

/// Copy the raw file `src` into a new VHD at `dst` with `opts`.
pub fn convert(src: &Path, dst: &Path, opts: &CreateOptions) {
    let img = RawImage::open(src).unwrap();
    let sink: Box<dyn ImageSink> = VHD.create(dst, img.size(), opts).unwrap();
    copy_into(&img, sink, &CopyOptions::default()).unwrap();
}

/// Create options with a subformat.
pub fn sub(s: Option<&str>) -> CreateOptions {
    CreateOptions {
        subformat: s.map(str::to_string),
        ..Default::default()
    }
}
