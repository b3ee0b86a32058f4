#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// This process's scratch folder, made on the first input. Statics are never dropped, so it
/// stays behind in the system temp folder after the run (two files of at most 2 MiB).
static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

fuzz_target!(|data: &[u8]| vdisk::fuzzing::write_roundtrip(data, scratch()));

fn scratch() -> &'static std::path::Path {
    DIR.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("vdisk-fuzz-")
            .tempdir()
            .expect("a scratch folder")
    })
    .path()
}
