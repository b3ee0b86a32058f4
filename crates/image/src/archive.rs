//! Disks inside archives (OVA appliances), read where they lie, of any registered format.

use std::path::{Path, PathBuf};

use vdisk_core::Result;
use vdisk_io::{FileStore, ProbeBytes};
use vdisk_ova::{DiskProbe, Ova};

use crate::chain::{open_chain_from, OpenOptions};
use crate::image::Archive;
use crate::location::ImageLocation;
use crate::registry;

/// The registry as an archive's judge of which members are disks: those a registered
/// format claims (or a format vdisk knows but does not read, so it is named when opened).
pub struct RegistryProbe;

impl DiskProbe for RegistryProbe {
    fn is_disk(&self, head: &[u8], tail: &[u8], len: u64) -> bool {
        let b = ProbeBytes { head, tail, len };
        registry::probe(&b).is_some() || registry::refuse_known(&b).is_some()
    }

    fn parts(&self, main: &[u8]) -> Vec<PathBuf> {
        let head = &main[..main.len().min(vdisk_io::PROBE_HEAD)];
        let tail = &main[main.len().saturating_sub(vdisk_io::PROBE_TAIL)..];
        let b = ProbeBytes {
            head,
            tail,
            len: main.len() as u64,
        };
        registry::probe(&b)
            .map(|f| f.parts(main))
            .unwrap_or_default()
    }
}

/// List the archive at `path`.
pub fn open_archive(path: &Path, opts: &OpenOptions) -> Result<Ova> {
    Ova::open(path, opts.read_ahead, &RegistryProbe)
}

/// Open the disk `disk` (the only one when `None`) of the archive at `path`.
pub(crate) fn open_member(
    path: &Path,
    disk: Option<&str>,
    opts: &OpenOptions,
) -> Result<crate::Image> {
    let ova = open_archive(path, opts)?;
    let member = ova.pick(disk)?.clone();
    let member_path = ova.member_path(&member);
    let bytes = ova.load(&member_path)?;
    let inner = OpenOptions {
        format: None,
        ..opts.clone()
    };
    let location = ImageLocation::member(path, member.name.to_string_lossy());
    let mut img = open_chain_from(&ova, &member_path, bytes, &inner, location)?;
    img.archive = Some(Archive { ova, member });
    Ok(img)
}
