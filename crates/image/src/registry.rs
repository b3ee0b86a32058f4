//! The formats vdisk knows: the drivers of those it reads (one Cargo feature each), and the
//! signatures of those it recognises but does not read, so that such a file is refused by
//! name and never read as a raw disk.

use vdisk_core::{Error, ErrorKind, Result};
use vdisk_io::{Format, ProbeBytes};

/// Every registered driver, in probing order. Adding a format is a crate and one line here.
static FORMATS: &[&dyn Format] = &[
    #[cfg(feature = "vmdk")]
    &vdisk_vmdk::VMDK,
    #[cfg(feature = "qcow2")]
    &vdisk_qcow2::QCOW2,
    #[cfg(feature = "vhdx")]
    &vdisk_vhdx::VHDX,
    #[cfg(feature = "vhd")]
    &vdisk_vhd::VHD,
    #[cfg(feature = "vdi")]
    &vdisk_vdi::VDI,
    // Raw is never probed (it is what nothing else claims): last.
    &vdisk_raw::RAW,
];

/// The registered drivers.
pub fn formats() -> &'static [&'static dyn Format] {
    FORMATS
}

/// The driver called `name` (or one of its aliases), ignoring case.
pub fn by_name(name: &str) -> Option<&'static dyn Format> {
    FORMATS.iter().copied().find(|f| {
        f.name().eq_ignore_ascii_case(name)
            || f.aliases().iter().any(|a| a.eq_ignore_ascii_case(name))
    })
}

/// The driver called `name`, or an error listing the names there are (and saying so when
/// vdisk knows the format but does not read it).
pub fn require(name: &str) -> Result<&'static dyn Format> {
    if let Some(f) = by_name(name) {
        return Ok(f);
    }
    if let Some(k) = KNOWN.iter().find(|k| k.name.eq_ignore_ascii_case(name)) {
        return Err(Error::unsupported(format!(
            "{} images are not supported yet",
            k.label
        )));
    }
    Err(Error::new(
        ErrorKind::InvalidArgument,
        format!("unknown format \"{name}\" ({})", names().join(", ")),
    ))
}

/// The names of the registered formats.
pub fn names() -> Vec<&'static str> {
    FORMATS.iter().map(|f| f.name()).collect()
}

/// The names of the formats vdisk writes.
pub fn writable_names() -> Vec<&'static str> {
    FORMATS
        .iter()
        .filter(|f| f.writable())
        .map(|f| f.name())
        .collect()
}

/// The driver that claims `bytes`: the first registered one whose probe says yes.
pub fn probe(bytes: &ProbeBytes<'_>) -> Option<&'static dyn Format> {
    FORMATS.iter().copied().find(|f| f.probe(bytes))
}

/// A format vdisk recognises by its signature but does not read (yet, or at all).
struct Known {
    /// The name `-f` would take.
    name: &'static str,
    /// How messages call it.
    label: &'static str,
    /// Whether the bytes are this format's.
    matches: fn(&ProbeBytes<'_>) -> bool,
}

/// Signatures of the formats of other hypervisors' tools; a registered driver of the same
/// name, probed first, takes precedence.
static KNOWN: &[Known] = &[
    Known {
        name: "qcow2",
        label: "a qcow2",
        matches: |b| b.head.starts_with(b"QFI\xfb"),
    },
    Known {
        name: "vhdx",
        label: "a VHDX",
        matches: |b| b.head.starts_with(b"vhdxfile"),
    },
    Known {
        name: "vhd",
        label: "a VHD",
        // Dynamic disks keep a copy of the footer at the start; a fixed one has it only at
        // the end.
        matches: |b| b.head.starts_with(b"conectix") || b.tail.starts_with(b"conectix"),
    },
    Known {
        name: "vdi",
        label: "a VDI",
        matches: |b| b.head.get(0x40..0x44) == Some(&0xbeda_107fu32.to_le_bytes()[..]),
    },
    Known {
        name: "qed",
        label: "a QED",
        matches: |b| b.head.starts_with(b"QED\0"),
    },
    Known {
        name: "parallels",
        label: "a Parallels",
        matches: |b| {
            b.head.starts_with(b"WithoutFreeSpace") || b.head.starts_with(b"WithouFreSpacExt")
        },
    },
];

/// The refusal of a file whose bytes are those of a format vdisk knows but does not read, if
/// they are.
pub fn refuse_known(bytes: &ProbeBytes<'_>) -> Option<Error> {
    KNOWN
        .iter()
        .find(|k| by_name(k.name).is_none() && (k.matches)(bytes))
        .map(|k| Error::unsupported(format!("{} image (not supported yet)", k.label)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<'a>(head: &'a [u8], tail: &'a [u8]) -> ProbeBytes<'a> {
        ProbeBytes {
            head,
            tail,
            len: 1 << 20,
        }
    }

    #[test]
    fn known_formats_are_refused_by_name_and_raw_is_not_probed() {
        let mut vdi = vec![0u8; 512];
        vdi[0x40..0x44].copy_from_slice(&0xbeda_107fu32.to_le_bytes());
        for (head, tail, name) in [
            (&b"QFI\xfb\0\0\0\x03"[..], &b""[..], "qcow2"),
            (b"vhdxfile", b"", "VHDX"),
            (b"conectix", b"", "VHD"),
            (b"\0\0\0\0", b"conectix\0\0\0\x02", "VHD"),
            (&vdi[..], b"", "VDI"),
            (b"QED\0", b"", "QED"),
            (b"WithoutFreeSpace", b"", "Parallels"),
        ] {
            if by_name(&name.to_lowercase()).is_some() {
                continue; // read by a registered driver
            }
            let e = refuse_known(&bytes(head, tail)).expect(name);
            assert_eq!(e.kind(), ErrorKind::Unsupported);
            assert!(e.message().contains(name), "{e}");
            assert!(e.message().contains("not supported yet"), "{e}");
        }
        assert!(refuse_known(&bytes(&[0u8; 512], &[0u8; 512])).is_none());
        assert!(probe(&bytes(&[0u8; 512], &[0u8; 512])).is_none());
        assert_eq!(require("raw").unwrap().name(), "raw");
        assert!(matches!(require("bogus"), Err(e) if e.kind() == ErrorKind::InvalidArgument));
    }
}
