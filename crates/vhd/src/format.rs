//! The VHD format's driver: detection, opening, and outputs (fixed, dynamic, differencing).

use std::path::Path;

use vdisk_core::{Error, ErrorKind, ImageSink, Result};
use vdisk_io::{Bytes, CreateOptions, DeltaParent, Format, Layer, OpenContext, ProbeBytes};

use crate::footer::{footer_at_end, FOOTER_COOKIE};
use crate::image::{VhdImage, LINK_KIND};
use crate::uuid::Uuid;
use crate::write::{vhd_time_of, DynamicSink, FixedSink, NewParent};

/// The VHD format (Virtual PC, Hyper-V, Azure; qemu's `vpc`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Vhd;

/// The VHD format's driver.
pub static VHD: Vhd = Vhd;

/// Whether `bytes` look like a VHD: a footer copy at offset 0 (dynamic and differencing
/// disks; qemu's test), or an intact footer at the end (fixed disks, which qemu only opens
/// when told the format: their data is the disk's own, from offset 0; and dynamic disks
/// whose copy at offset 0 is lost).
///
/// ```
/// use vdisk_io::ProbeBytes;
/// let mut head = vec![0u8; 4096];
/// head[..8].copy_from_slice(b"conectix");
/// assert!(vdisk_vhd::probe(&ProbeBytes { head: &head, tail: &[], len: 1 << 20 }));
/// let raw = vec![0u8; 4096];
/// assert!(!vdisk_vhd::probe(&ProbeBytes { head: &raw, tail: &raw[..512], len: 4096 }));
/// ```
pub fn probe(bytes: &ProbeBytes<'_>) -> bool {
    if bytes.head.starts_with(FOOTER_COOKIE) {
        return true;
    }
    matches!(footer_at_end(bytes.tail), Some((f, _)) if matches!(f.disk_type, 2..=4))
}

/// What [`CreateOptions`] ask of a new VHD: its type and block size.
fn subformat(dst: &Path, opts: &CreateOptions, delta: bool) -> Result<(bool, Option<u64>)> {
    let refuse = |m: String| Err(Error::new(ErrorKind::InvalidArgument, m).with_path(dst));
    if opts.compress {
        return refuse("a VHD cannot be compressed".into());
    }
    let fixed = match opts
        .subformat
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("dynamic") => false,
        Some("differencing") if delta => false,
        Some("fixed") if !delta => true,
        Some(other) => {
            let known = if delta {
                "a differencing disk is dynamic"
            } else {
                "fixed or dynamic"
            };
            return refuse(format!("no VHD subformat \"{other}\" ({known})"));
        }
    };
    if fixed && opts.cluster_size.is_some() {
        return refuse("a fixed VHD has no block size".into());
    }
    Ok((fixed, opts.cluster_size))
}

/// The unique id [`CreateOptions::link_id`] asks the new disk to keep.
fn kept_id(dst: &Path, opts: &CreateOptions) -> Result<Option<Uuid>> {
    match &opts.link_id {
        Some(l) if l.kind == LINK_KIND => Uuid::parse(&l.value).map(Some).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("\"{}\" is not a VHD unique id", l.value),
            )
            .with_path(dst)
        }),
        _ => Ok(None),
    }
}

/// What a new differencing disk records of `parent`: its unique id (when it is a VHD), its
/// modification time, and its names relative to `dst`'s folder and absolute.
pub fn new_parent(dst: &Path, parent: &DeltaParent<'_>) -> NewParent {
    let unique_id = parent
        .layer
        .link_id()
        .filter(|l| l.kind == LINK_KIND)
        .and_then(|l| Uuid::parse(&l.value))
        .unwrap_or(Uuid::NIL);
    let parent_path = parent.layer.path();
    let timestamp = std::fs::metadata(parent_path)
        .and_then(|m| m.modified())
        .map_or(0, vhd_time_of);
    let dir = dst.parent().unwrap_or(Path::new("."));
    let joined = if parent.name.is_absolute() {
        parent.name.to_path_buf()
    } else {
        dir.join(parent.name)
    };
    let absolute = std::fs::canonicalize(&joined)
        .or_else(|_| std::path::absolute(&joined))
        .unwrap_or(joined);
    NewParent {
        unique_id,
        timestamp,
        relative: parent.name.is_relative().then(|| parent.name.to_path_buf()),
        absolute,
    }
}

impl Format for Vhd {
    fn name(&self) -> &'static str {
        "vhd"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["vpc"]
    }

    fn extensions(&self) -> &'static [&'static str] {
        &["vhd"]
    }

    fn probe(&self, bytes: &ProbeBytes<'_>) -> bool {
        probe(bytes)
    }

    fn open(&self, bytes: Bytes, cx: &OpenContext<'_>) -> Result<Box<dyn Layer>> {
        Ok(Box::new(VhdImage::from_bytes_with(
            bytes,
            cx.allow_outside_paths,
        )?))
    }

    fn subformats(&self) -> &'static [&'static str] {
        &["dynamic", "fixed"]
    }

    fn writable(&self) -> bool {
        true
    }

    fn create(&self, dst: &Path, size: u64, opts: &CreateOptions) -> Result<Box<dyn ImageSink>> {
        let (fixed, block) = subformat(dst, opts, false)?;
        let id = kept_id(dst, opts)?;
        if fixed {
            Ok(Box::new(FixedSink::create(dst, size, &opts.policy, id)?))
        } else {
            Ok(Box::new(DynamicSink::create(
                dst,
                size,
                block,
                &opts.policy,
                id,
                None,
            )?))
        }
    }

    fn create_delta(
        &self,
        dst: &Path,
        parent: &DeltaParent<'_>,
        size: u64,
        opts: &CreateOptions,
    ) -> Result<Box<dyn ImageSink>> {
        let (_, block) = subformat(dst, opts, true)?;
        let id = kept_id(dst, opts)?;
        let p = new_parent(dst, parent);
        Ok(Box::new(DynamicSink::create(
            dst,
            size,
            block,
            &opts.policy,
            id,
            Some(&p),
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::footer::{Geometry, RawFooter};

    fn footer(disk_type: u32) -> [u8; 512] {
        RawFooter {
            features: 2,
            format_version: 0x0001_0000,
            data_offset: u64::MAX,
            timestamp: 0,
            creator_app: *b"qem2",
            creator_version: 0x0005_0003,
            creator_os: *b"Wi2k",
            original_size: 1 << 20,
            current_size: 1 << 20,
            geometry: Geometry::MAX,
            disk_type,
            checksum: 0,
            unique_id: Uuid([1; 16]),
            saved_state: 0,
        }
        .sealed()
        .to_bytes()
    }

    fn probe_of(head: &[u8], tail: &[u8]) -> bool {
        probe(&ProbeBytes {
            head,
            tail,
            len: 1 << 20,
        })
    }

    #[test]
    fn probes_footers_at_either_end() {
        let zeros = [0u8; 512];
        // A copy at offset 0: claimed on the cookie alone, as qemu does.
        assert!(probe_of(b"conectix", &zeros));
        for t in [2, 3, 4] {
            assert!(probe_of(&zeros, &footer(t)), "type {t}");
        }
        assert!(!probe_of(&zeros, &footer(5)));
        let mut bad = footer(2);
        bad[100] = 1; // checksum no longer matches
        assert!(!probe_of(&zeros, &bad));
        // The 511-byte footer of old Virtual PC versions, after a byte of data.
        let mut old = [0xeeu8; 512];
        old[1..].copy_from_slice(&footer(2)[..511]);
        assert!(probe_of(&zeros, &old));
        assert!(!probe_of(&zeros, &zeros));
        assert!(!probe_of(&[], &[]));
    }

    #[test]
    fn create_options_are_checked() {
        let dst = Path::new("/nonexistent/x.vhd");
        let o = |sub: Option<&str>, compress, cluster: Option<u64>| CreateOptions {
            subformat: sub.map(str::to_string),
            compress,
            cluster_size: cluster,
            ..Default::default()
        };
        assert_eq!(
            subformat(dst, &o(None, false, None), false).unwrap(),
            (false, None)
        );
        assert_eq!(
            subformat(dst, &o(Some("FIXED"), false, None), false).unwrap(),
            (true, None)
        );
        assert!(subformat(dst, &o(Some("fixed"), false, Some(1 << 20)), false).is_err());
        assert!(subformat(dst, &o(Some("fixed"), false, None), true).is_err());
        assert!(subformat(dst, &o(Some("differencing"), false, None), true).is_ok());
        assert!(subformat(dst, &o(Some("differencing"), false, None), false).is_err());
        assert!(subformat(dst, &o(Some("streamOptimized"), false, None), false).is_err());
        let e = subformat(dst, &o(None, true, None), false).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/x.vhd: "), "{e}");
        let keep = CreateOptions {
            link_id: Some(vdisk_io::LinkId {
                kind: LINK_KIND,
                value: "01010101-0101-0101-0101-010101010101".into(),
            }),
            ..Default::default()
        };
        assert_eq!(kept_id(dst, &keep).unwrap(), Some(Uuid([1; 16])));
        let other = CreateOptions {
            link_id: Some(vdisk_io::LinkId {
                kind: "vmdk-cid",
                value: "0badcafe".into(),
            }),
            ..Default::default()
        };
        assert_eq!(kept_id(dst, &other).unwrap(), None);
    }
}
