//! The fuzz corpora of the qcow2 target replayed: every seed (`fuzz/seeds/<target>/`), every
//! minimised corpus input (`fuzz/corpus/<target>/`) and every input a fuzzer once crashed on
//! (`fuzz/regressions/<target>/`) goes through the same entry point as the cargo-fuzz target,
//! so a regression shows up under `cargo test` without a nightly toolchain.

use std::path::{Path, PathBuf};

const TARGET: &str = "qcow2_open_and_read";

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files directly in `dir`, sorted; none when it does not exist.
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

#[test]
fn seeds_corpus_and_regressions_replay() {
    let mut n = 0;
    for kind in ["seeds", "corpus", "regressions"] {
        for file in files_in(&fuzz_dir().join(kind).join(TARGET)) {
            let data = std::fs::read(&file).unwrap();
            let t = std::time::Instant::now();
            vdisk_qcow2::fuzzing::open_and_read(&data);
            assert!(
                t.elapsed() < std::time::Duration::from_secs(10),
                "{} took {:?}",
                file.display(),
                t.elapsed()
            );
            n += 1;
        }
    }
    assert!(n >= 10, "only {n} inputs: the seeds are missing");
}

/// The seeds are real images: each opens, and reads what qemu wrote.
#[test]
fn seeds_open() {
    for file in files_in(&fuzz_dir().join("seeds").join(TARGET)) {
        let data = std::fs::read(&file).unwrap();
        let mut store = vdisk_io::MemStore::new();
        store.insert("s.qcow2", data.clone());
        store.insert("data.raw", vec![0; 32 << 10]);
        let bytes = vdisk_io::FileStore::load(&store, Path::new("s.qcow2")).unwrap();
        let img = vdisk_qcow2::Qcow2Image::from_bytes(
            bytes,
            &vdisk_io::OpenContext {
                files: &store,
                path: Path::new("s.qcow2"),
                allow_outside_paths: false,
            },
        )
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut head = [0u8; 2048];
        vdisk_core::DiskImage::read_at(&img, &mut head, 0).unwrap();
        let name = file.file_name().unwrap().to_string_lossy();
        if name != "extdata" {
            assert!(head[..1024].iter().all(|&b| b == 0x41), "{name}");
        }
    }
}
