//! Replays every fuzz input kept in the repository (seeds, corpus, regressions) through the
//! VHDX entry points: none may panic. The seeds are valid images and must open.

use std::path::{Path, PathBuf};

use vdisk_io::{FileStore, MemStore};

fn inputs(target: &str) -> Vec<(PathBuf, bool)> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut out = Vec::new();
    for (kind, seed) in [("seeds", true), ("corpus", false), ("regressions", false)] {
        let Ok(dir) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
            continue;
        };
        for e in dir.flatten() {
            if e.path().is_file() {
                out.push((e.path(), seed));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn vhdx_open_inputs_never_panic_and_seeds_open() {
    let all = inputs("vhdx_open");
    assert!(all.iter().any(|(_, seed)| *seed), "no seeds found");
    for (path, seed) in all {
        let data = std::fs::read(&path).unwrap();
        vdisk_vhdx::fuzzing::open_compact(&data);
        if seed {
            let mut store = MemStore::new();
            store.insert("seed.vhdx", vdisk_vhdx::fuzzing::expand(&data));
            let img = vdisk_vhdx::VhdxImage::open(store.load(Path::new("seed.vhdx")).unwrap());
            assert!(img.is_ok(), "{}: {:?}", path.display(), img.err());
        }
    }
}

#[test]
fn vhdx_structures_inputs_never_panic() {
    for (path, _) in inputs("vhdx_structures") {
        vdisk_vhdx::fuzzing::structures(&std::fs::read(&path).unwrap());
    }
}

/// Found by fuzzing: a metadata entry of length zero whose offset lies far past the region
/// was sliced at its offset.
#[test]
fn regression_empty_metadata_item_far_offset() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/vhdx_open");
    let data = std::fs::read(fuzz.join("empty-metadata-item-far-offset")).unwrap();
    vdisk_vhdx::fuzzing::open_compact(&data);
}
