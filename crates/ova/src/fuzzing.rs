//! Entry points shared by the cargo-fuzz target in `fuzz/` and the corpus replay tests.

use std::path::PathBuf;

use crate::{find_disks, list_members, DiskProbe};

/// A probe that takes a member starting with a VMDK sparse magic, or descriptor-like text,
/// for a disk (the registry's real probe is above this crate).
struct MagicProbe;

impl DiskProbe for MagicProbe {
    fn is_disk(&self, head: &[u8], _tail: &[u8], _len: u64) -> bool {
        head.starts_with(b"KDMV") || head.starts_with(b"# Disk DescriptorFile")
    }
    fn parts(&self, main: &[u8]) -> Vec<PathBuf> {
        // Quoted names on extent-like lines.
        String::from_utf8_lossy(main)
            .lines()
            .filter_map(|l| l.split('"').nth(1))
            .map(PathBuf::from)
            .collect()
    }
}

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
        let _ = find_disks(data, &members, &MagicProbe);
    }
}
