//! The VDI fuzz corpora replayed: every seed (`fuzz/seeds/vdi_open_and_read/`), every
//! minimised corpus input and every input a fuzzer once failed on goes through the
//! cargo-fuzz target's entry point, so a regression shows up under `cargo test`.

use std::path::{Path, PathBuf};

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
fn corpus_vdi_open_and_read() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let name = "vdi_open_and_read";
    let mut seeds = 0;
    for kind in ["seeds", "corpus", "regressions"] {
        for f in files_in(&fuzz.join(kind).join(name)) {
            let data = std::fs::read(&f).unwrap();
            let r = std::panic::catch_unwind(|| vdisk_vdi::fuzzing::open_and_read(&data));
            assert!(r.is_ok(), "{name} panicked on {}", f.display());
            seeds += usize::from(kind == "seeds");
        }
    }
    assert!(
        seeds > 0,
        "no seeds in fuzz/seeds/{name}: run fuzz/make-seeds-5.sh"
    );
}
