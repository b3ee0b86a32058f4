//! The VHD fuzz corpora replayed: every seed (`fuzz/seeds/<target>/`), every minimised
//! corpus input (`fuzz/corpus/<target>/`) and every input a fuzzer once failed on
//! (`fuzz/regressions/<target>/`) goes through the cargo-fuzz target's entry point, so a
//! regression shows up under `cargo test` without a nightly toolchain.

use std::path::{Path, PathBuf};

use vdisk_core::ImageSink;
use vdisk_io::{CreateOptions, DeltaParent, Format};
use vdisk_vhd::{fuzzing, VhdImage, VHD};

type Target = fn(&[u8]);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("read corpus dir").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Run `target` on every file of the target's seeds, corpus and regressions; returns the
/// number of seeds.
fn replay(name: &str, target: Target) -> usize {
    let fuzz = fuzz_dir();
    let mut seeds = 0;
    for (kind, dir) in ["seeds", "corpus", "regressions"]
        .iter()
        .map(|k| (k, fuzz.join(k).join(name)))
    {
        for f in files_in(&dir) {
            let data = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let r = std::panic::catch_unwind(|| target(&data));
            assert!(r.is_ok(), "{name} panicked on {}", f.display());
            if *kind == "seeds" {
                seeds += 1;
            }
        }
    }
    seeds
}

#[test]
fn corpus_vhd_open_and_read() {
    let seeds = replay("vhd_open_and_read", fuzzing::open_and_read);
    assert!(
        seeds > 0,
        "no seeds in fuzz/seeds/vhd_open_and_read: run fuzz/make-seeds-5.sh"
    );
}

#[test]
fn corpus_vhd_structures() {
    let seeds = replay("vhd_structures", fuzzing::structures);
    assert!(
        seeds > 0,
        "no seeds in fuzz/seeds/vhd_structures: run fuzz/make-seeds-5.sh"
    );
}

/// The seeds vdisk writes itself: a dynamic disk and a differencing disk on it, in 64 KiB
/// blocks (small files that still hold allocated blocks, bitmaps and parent locators).
/// Run by hand to remake them:
/// `cargo test -p vdisk-vhd --test corpus -- --ignored write_vdisk_seeds`.
#[test]
#[ignore]
fn write_vdisk_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let opts = CreateOptions {
        cluster_size: Some(64 << 10),
        ..Default::default()
    };
    let mut sink = VHD.create(&d.join("dyn.vhd"), 192 << 10, &opts).unwrap();
    sink.put(&[(4096, &[0x51u8; 4096][..]), (128 << 10, &[0x52u8; 512][..])])
        .unwrap();
    sink.finish().unwrap();
    let base = VhdImage::open(&d.join("dyn.vhd")).unwrap();
    let parent = DeltaParent {
        name: Path::new("dyn.vhd"),
        format: "vhd",
        layer: &base,
    };
    let mut sink: Box<dyn ImageSink> = VHD
        .create_delta(&d.join("diff.vhd"), &parent, 192 << 10, &opts)
        .unwrap();
    sink.put(&[(8192, &[0x53u8; 4096][..]), (64 << 10, &[0u8; 4096][..])])
        .unwrap();
    sink.finish().unwrap();
    let seeds = fuzz_dir().join("seeds");
    for (file, seed) in [
        ("dyn.vhd", "vhd_open_and_read/vdisk-dynamic-64k"),
        ("diff.vhd", "vhd_open_and_read/vdisk-differencing-64k"),
    ] {
        std::fs::copy(d.join(file), seeds.join(seed)).unwrap();
    }
    let diff = std::fs::read(d.join("diff.vhd")).unwrap();
    std::fs::write(
        seeds.join("vhd_structures/vdisk-differencing-header"),
        &diff[512..1536],
    )
    .unwrap();
}
