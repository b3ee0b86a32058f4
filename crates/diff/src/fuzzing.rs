//! Entry point for the cargo-fuzz target of the manifest decoder, shared with the corpus
//! replay tests: any bytes, no panic.

use crate::Manifest;

/// Decode a manifest; when it decodes, every window it claims must be readable.
pub fn manifest(data: &[u8]) {
    if let Ok(m) = Manifest::decode(data) {
        assert_eq!(m.block_count(), m.size().div_ceil(m.granularity()));
        for w in m.data_windows().into_iter().take(1024) {
            let hashes = m.window(w).expect("a window the manifest lists reads");
            assert!(hashes.stored.iter().all(|e| e.0 < hashes.blocks));
        }
        assert!(m.hash(m.block_count()).expect("past the end").is_none());
    }
}
