//! Entry points shared by the cargo-fuzz target in `fuzz/` and the corpus replay tests.

use crate::{find_disks, list_members};

/// List the members of `data` as a tar archive and find its disks; every member listed must
/// lie inside the archive and be found again by its name.
pub fn members(data: &[u8]) {
    let _ = crate::is_tar(data);
    if let Ok(members) = list_members(data) {
        for m in &members {
            let end = m.offset.checked_add(m.size).expect("member end overflows");
            assert!(
                end <= data.len() as u64,
                "member past the end of the archive"
            );
        }
        let _ = find_disks(data, &members);
    }
}
