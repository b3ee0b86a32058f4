//! Entry point for the cargo-fuzz target of the manifest decoder, shared with the corpus
//! replay tests: any bytes, no panic.

use crate::Manifest;

/// Decode a manifest; when it decodes, every hash it claims must be readable.
pub fn manifest(data: &[u8]) {
    if let Ok(m) = Manifest::decode(data) {
        assert_eq!(m.block_count(), m.size().div_ceil(m.granularity()));
        for b in 0..m.block_count() {
            assert!(m.hash(b).is_some());
        }
        assert!(m.hash(m.block_count()).is_none());
    }
}
