//! Entry point for the cargo-fuzz target of the repository metadata decoder, shared with the
//! corpus replay tests: any bytes, no panic.

use crate::RepoMeta;

/// Decode repository metadata; when it decodes, it must round-trip.
pub fn repo_meta(data: &[u8]) {
    if let Ok(m) = RepoMeta::decode(data) {
        assert_eq!(RepoMeta::decode(&m.encode()).ok(), Some(m));
    }
}
