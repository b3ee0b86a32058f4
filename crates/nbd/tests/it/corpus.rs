//! The `nbd_client_bytes` fuzz target's inputs replayed on stable: the committed seeds (and
//! corpus and regressions, once campaigns add them), then deterministic mutations of the
//! seeds, all through `vdisk_nbd::fuzzing::client_bytes`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vdisk_nbd::fuzzing::client_bytes;

fn inputs() -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut out = Vec::new();
    for kind in ["seeds", "corpus", "regressions"] {
        let Ok(dir) = std::fs::read_dir(fuzz.join(kind).join("nbd_client_bytes")) else {
            continue;
        };
        let mut files: Vec<PathBuf> = dir.map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            out.push((f, data));
        }
    }
    out
}

#[test]
fn fuzz_inputs_replay_without_panics() {
    let inputs = inputs();
    assert!(inputs.len() >= 5, "seeds missing: {}", inputs.len());
    for (path, data) in &inputs {
        let t = Instant::now();
        client_bytes(data);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{} took {:?}",
            path.display(),
            t.elapsed()
        );
    }
}

#[test]
fn mutated_seeds_do_not_panic() {
    let inputs = inputs();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..3000 {
        let (_, seed) = &inputs[round % inputs.len()];
        let mut data = seed.clone();
        for _ in 0..1 + next() % 8 {
            if data.is_empty() {
                break;
            }
            let at = (next() % data.len() as u64) as usize;
            match next() % 4 {
                0 => data[at] = next() as u8,
                1 => data[at] ^= 1 << (next() % 8),
                2 => {
                    data.truncate(at);
                }
                _ => {
                    // Overwrite 4 bytes with an interesting number.
                    let v: u32 =
                        [0, 1, 0x7fff_ffff, 0xffff_ffff, 0x1_0000, 4096][next() as usize % 6];
                    for (i, b) in v.to_be_bytes().iter().enumerate() {
                        if let Some(d) = data.get_mut(at + i) {
                            *d = *b;
                        }
                    }
                }
            }
        }
        client_bytes(&data);
    }
}
