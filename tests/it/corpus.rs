//! The fuzz corpora replayed: every seed (`fuzz/seeds/<target>/`), every minimised corpus
//! input (`fuzz/corpus/<target>/`) and every input a fuzzer once crashed on
//! (`fuzz/regressions/<target>/`) goes through the same entry point as the cargo-fuzz target,
//! so a regression shows up under `cargo test` without a nightly toolchain.

use std::path::{Path, PathBuf};

use vdisk::vmdk::fuzzing;

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("sparse_header", fuzzing::sparse_header),
    ("descriptor", fuzzing::descriptor),
    ("stream_markers", fuzzing::stream_markers),
    ("stream_reader", fuzzing::stream_reader),
    ("nbd_client_bytes", vdisk::nbd::fuzzing::client_bytes),
    ("open_and_read", fuzzing::open_and_read),
    ("sesparse", fuzzing::sesparse),
    ("cowd", fuzzing::cowd),
    ("ova_members", vdisk::ova::fuzzing::members),
    ("bitmap_decode", vdisk::bitmap::fuzzing::decode),
    ("extents_json", vdisk::bitmap::fuzzing::extents_json),
    ("manifest_decode", vdisk::diff::fuzzing::manifest),
    ("repo_meta", vdisk::chain::fuzzing::repo_meta),
    ("repo_config", vdisk::chain::fuzzing::config),
    ("repo_key", vdisk::chain::fuzzing::key_file),
    ("repo_pack", vdisk::chain::fuzzing::pack),
    ("repo_index_table", vdisk::chain::fuzzing::index_table),
    ("repo_point", vdisk::chain::fuzzing::point),
    ("repo_index_chunk", vdisk::chain::fuzzing::index_chunk),
    ("write_roundtrip", write_roundtrip),
];

/// The `write_roundtrip` target with a scratch folder of its own per input (the fuzz target
/// keeps one per process).
fn write_roundtrip(data: &[u8]) {
    let dir = tempfile::tempdir().expect("a scratch folder");
    vdisk::fuzzing::write_roundtrip(data, dir.path());
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
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

/// Run `target` on every file of `dir`; returns how many there were.
fn replay_dir(name: &str, target: Target, dir: &Path) -> usize {
    let files = files_in(dir);
    for f in &files {
        replay_file(name, target, f);
    }
    files.len()
}

fn replay_file(name: &str, target: Target, file: &Path) {
    let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    // A panic here names the input, so it can be fed to `cargo fuzz run <target> <file>`.
    let r = std::panic::catch_unwind(|| target(&data));
    assert!(r.is_ok(), "{name} panicked on {}", file.display());
}

fn replay_target(name: &str) {
    let (_, target) = TARGETS
        .iter()
        .copied()
        .find(|(n, _)| *n == name)
        .expect("known target");
    let fuzz = fuzz_dir();
    let seeds = replay_dir(name, target, &fuzz.join("seeds").join(name));
    assert!(
        seeds > 0,
        "no seeds in fuzz/seeds/{name}: run fuzz/make-seeds.sh"
    );
    replay_dir(name, target, &fuzz.join("corpus").join(name));
    replay_dir(name, target, &fuzz.join("regressions").join(name));
}

#[test]
fn corpus_sparse_header() {
    replay_target("sparse_header");
}

#[test]
fn corpus_descriptor() {
    replay_target("descriptor");
}

#[test]
fn corpus_stream_markers() {
    replay_target("stream_markers");
}

#[test]
fn corpus_stream_reader() {
    replay_target("stream_reader");
}

#[test]
fn corpus_nbd_client_bytes() {
    replay_target("nbd_client_bytes");
}

#[test]
fn corpus_open_and_read() {
    replay_target("open_and_read");
}

#[test]
fn corpus_sesparse() {
    replay_target("sesparse");
}

#[test]
fn corpus_cowd() {
    replay_target("cowd");
}

#[test]
fn corpus_ova_members() {
    replay_target("ova_members");
}

#[test]
fn corpus_bitmap_decode() {
    replay_target("bitmap_decode");
}

#[test]
fn corpus_extents_json() {
    replay_target("extents_json");
}

#[test]
fn corpus_manifest_decode() {
    replay_target("manifest_decode");
}

#[test]
fn corpus_repo_meta() {
    replay_target("repo_meta");
}

#[test]
fn corpus_write_roundtrip() {
    replay_target("write_roundtrip");
}

#[test]
fn corpus_repo_config() {
    replay_target("repo_config");
}

#[test]
fn corpus_repo_key() {
    replay_target("repo_key");
}

#[test]
fn corpus_repo_pack() {
    replay_target("repo_pack");
}

#[test]
fn corpus_repo_index_table() {
    replay_target("repo_index_table");
}

#[test]
fn corpus_repo_point() {
    replay_target("repo_point");
}

#[test]
fn corpus_repo_index_chunk() {
    replay_target("repo_index_chunk");
}

/// Replay one saved fuzzer finding by name.
fn regression(name: &str, file: &str) {
    let (_, target) = TARGETS
        .iter()
        .copied()
        .find(|(n, _)| *n == name)
        .expect("known target");
    let path = fuzz_dir().join("regressions").join(name).join(file);
    assert!(path.is_file(), "missing {}", path.display());
    replay_file(name, target, &path);
}

/// Replay one saved finding and fail if it takes more than `secs` (the fuzzer's bound is 2 s
/// under ASan; this one is loose, for loaded machines and unoptimised builds).
fn regression_within(name: &str, file: &str, secs: u64) {
    let start = std::time::Instant::now();
    regression(name, file);
    let took = start.elapsed();
    assert!(
        took < std::time::Duration::from_secs(secs),
        "{name} took {took:?} on regressions/{name}/{file}"
    );
}

// Found by review of check.rs and confirmed as a libFuzzer timeout with the open_and_read
// target: every grain pointer was compared with every metadata region (8,000 directory slots
// naming one table: 4 million grain visits, each scanning 8,000 regions). Fixed by a binary
// search over the sorted regions (check.rs, `region_at`) and by walking a table shared by
// several slots once (check.rs, `walked`).
#[test]
fn crafted_open_and_read_check_region_scan() {
    regression_within("open_and_read", "check-region-scan", 20);
}

// Found by review of check.rs and confirmed as a libFuzzer out-of-memory with the
// open_and_read target: a 200 KB file whose 50,000 directory entries share one table of
// pointers past the end made check format and keep 25 million messages (> 1 GiB) to show 10.
// Fixed by keeping only the shown examples and a count (check.rs, `Examples`); walking the
// shared table once (check.rs, `walked`) also took the time from ~3 s to milliseconds.
#[test]
fn crafted_open_and_read_check_bad_pointer_list() {
    regression_within("open_and_read", "check-bad-pointer-list", 20);
}

// Found by review of sparse.rs and confirmed as a libFuzzer timeout with the open_and_read
// target: a 128 MiB compressed grain read in 1 MiB pieces was inflated again for every piece.
// Fixed by keeping the last inflated grain per thread (sparse.rs, `read_compressed`).
#[test]
fn crafted_open_and_read_compressed_grain_reinflate() {
    regression_within("open_and_read", "compressed-grain-reinflate", 20);
}

// Found by review of src/fuzzing.rs and confirmed with the write_roundtrip target: the harness
// opened its raw source (and a raw output) by detecting the format, so a disk whose first
// bytes spell "KDMV" or "# Disk DescriptorFile" (one 16-byte run per byte) was taken for a
// VMDK and failed to open. A harness bug, not a writer one; fixed by giving the formats
// (src/fuzzing.rs, `open_as`).
#[test]
fn crafted_write_roundtrip_raw_disk_with_vmdk_magic() {
    regression("write_roundtrip", "raw-disk-with-vmdk-magic");
}

#[test]
fn crafted_write_roundtrip_raw_disk_with_descriptor_text() {
    regression("write_roundtrip", "raw-disk-with-descriptor-text");
}
