//! Helpers of the qemu interop tests: images made with qemu-img and qemu-io at test time.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use vdisk_core::{copy_into, Allocation, CopyOptions, DiskImage, Extent};
use vdisk_io::{CreateOptions, FileStore, FsStore, OpenContext};
use vdisk_qcow2::Qcow2Image;

/// Whether qemu-img and qemu-io are here; prints a note when they are not.
pub fn have_qemu() -> bool {
    let ok = ["qemu-img", "qemu-io"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ok {
        eprintln!("note: qemu-img or qemu-io is missing: qemu interop test skipped");
    }
    ok
}

/// Run a command in `dir`, panicking with its output when it fails; returns stdout.
pub fn run(dir: &Path, tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {}: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a command that may fail; returns (success, stdout + stderr).
pub fn try_run(dir: &Path, tool: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

pub fn qemu_img(dir: &Path, args: &[&str]) -> String {
    run(dir, "qemu-img", args)
}

/// qemu-io commands on an image (each `-c`).
pub fn qemu_io(dir: &Path, img: &str, cmds: &[&str]) {
    let mut args = Vec::new();
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(img);
    run(dir, "qemu-io", &args);
}

/// The disk of `img` as qemu reads it.
pub fn qemu_raw(dir: &Path, img: &str) -> Vec<u8> {
    let out = format!("{img}.qemu.raw");
    qemu_img(dir, &["convert", "-O", "raw", img, &out]);
    let bytes = std::fs::read(dir.join(&out)).unwrap();
    std::fs::remove_file(dir.join(&out)).unwrap();
    bytes
}

/// Open a qcow2 file of `dir`.
pub fn open(dir: &Path, name: &str) -> vdisk_core::Result<Qcow2Image> {
    let store = FsStore::default();
    let path = dir.join(name);
    let bytes = store.load(&path)?;
    Qcow2Image::from_bytes(
        bytes,
        &OpenContext {
            files: &store,
            path: &path,
            allow_outside_paths: false,
        },
    )
}

/// Every byte of `img`, read in odd-sized pieces in parallel and in one piece.
pub fn read_all(img: &dyn DiskImage) -> Vec<u8> {
    let size = img.size() as usize;
    let mut whole = vec![0u8; size];
    img.read_at(&mut whole, 0).unwrap();
    let mut pieces = vec![0u8; size];
    let step = 3 * 65536 + 4097;
    std::thread::scope(|s| {
        for (i, chunk) in pieces.chunks_mut(step).enumerate() {
            s.spawn(move || img.read_at(chunk, (i * step) as u64).unwrap());
        }
    });
    assert!(
        whole == pieces,
        "reads in pieces differ from the whole read"
    );
    whole
}

/// Assert two disks are the same, naming the first differing offset.
pub fn assert_same(what: &str, a: &[u8], b: &[u8]) {
    assert_eq!(a.len(), b.len(), "{what}: sizes differ");
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        panic!("{what}: first difference at byte {i}");
    }
}

/// A deterministic pseudo-random byte stream.
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Self {
        Noise(seed | 1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

/// A raw disk of `size` bytes with random data, text, zeros written as data, and holes,
/// written to `dir/name`. Returns its bytes.
pub fn make_raw(dir: &Path, name: &str, size: u64, seed: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut disk = vec![0u8; size as usize];
    let mut noise = Noise::new(seed);
    let text = b"The quick brown fox jumps over the lazy dog; qcow2 clusters compress well. ";
    let f = std::fs::File::create(dir.join(name)).unwrap();
    f.set_len(size).unwrap();
    let piece = 192 << 10;
    let mut off = 0u64;
    let mut k = seed;
    while off < size {
        let len = (piece + (k % 7) * 8192).min(size - off);
        let r = &mut disk[off as usize..(off + len) as usize];
        match k % 5 {
            0 => noise.fill(r),
            1 => {
                for (i, b) in r.iter_mut().enumerate() {
                    *b = text[i % text.len()];
                }
            }
            2 => {} // zeros, written
            _ => {
                off += len; // hole
                k += 1;
                continue;
            }
        }
        f.write_all_at(r, off).unwrap();
        off += len;
        k += 1;
    }
    disk
}

/// Copy the raw file `src` of `dir` into a new qcow2 `dst` with `opts`.
pub fn write_qcow2(dir: &Path, src: &str, dst: &str, opts: &CreateOptions) {
    let raw = vdisk_raw::RawImage::open(&dir.join(src)).unwrap();
    let sink =
        vdisk_io::Format::create(&vdisk_qcow2::QCOW2, &dir.join(dst), raw.size(), opts).unwrap();
    copy_into(&raw, sink, &CopyOptions::default()).unwrap();
}

/// qemu-img map's view as (start, length, kind) with kind data, zero or unallocated.
pub fn qemu_map(dir: &Path, img: &str) -> Vec<(u64, u64, Allocation)> {
    let out = qemu_img(dir, &["map", "--output=json", img]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut map: Vec<(u64, u64, Allocation)> = Vec::new();
    for e in v.as_array().unwrap() {
        if e["depth"].as_u64().unwrap() != 0 {
            // From a backing file: unallocated here.
            push(&mut map, e, Allocation::Unallocated);
            continue;
        }
        let kind = if e["data"].as_bool().unwrap() {
            Allocation::Data
        } else if e["present"].as_bool().unwrap() {
            Allocation::Zero
        } else {
            Allocation::Unallocated
        };
        push(&mut map, e, kind);
    }
    map
}

fn push(map: &mut Vec<(u64, u64, Allocation)>, e: &serde_json::Value, kind: Allocation) {
    let start = e["start"].as_u64().unwrap();
    let len = e["length"].as_u64().unwrap();
    match map.last_mut() {
        Some(last) if last.2 == kind && last.0 + last.1 == start => last.1 += len,
        _ => map.push((start, len, kind)),
    }
}

/// Our allocation map in the same form.
pub fn our_map(img: &dyn DiskImage) -> Vec<(u64, u64, Allocation)> {
    img.allocation(0, img.size())
        .unwrap()
        .into_iter()
        .map(
            |Extent {
                 start,
                 length,
                 allocation,
                 ..
             }| (start, length, allocation),
        )
        .collect()
}

/// qemu-img check's JSON report.
pub fn qemu_check(dir: &Path, img: &str) -> serde_json::Value {
    let out = Command::new("qemu-img")
        .args(["check", "--output=json", img])
        .current_dir(dir)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "qemu-img check {img}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
