//! The members of a tar archive, found where they lie in its bytes.
//!
//! The `tar` crate reads each header (checksum, octal and base-256 numbers, ustar and GNU
//! names) and each pax record; this module walks the headers over the mapped bytes itself, so
//! that every member is a byte range of the archive (read in place, never copied), every size
//! is checked against the archive's length before use, and the extension records that are
//! read into memory (GNU long names, pax headers) have a bound.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use tar::{EntryType, Header, PaxExtensions};
use vdisk_core::{Error, Result};

/// Tar blocks are 512 bytes: headers, and member data rounded up.
const BLOCK: u64 = 512;
/// Most members listed. An OVA holds an .ovf, a manifest, a certificate and a few disks; an
/// archive with more headers than this is not an appliance.
pub const MAX_MEMBERS: usize = 1 << 16;
/// Longest member name kept (a GNU long-name record or a pax `path`): Linux's PATH_MAX is
/// 4 KiB, and a longer name is no disk's.
const MAX_NAME: u64 = 64 << 10;
/// Largest pax header read: its records hold a name, a size and times.
const MAX_PAX: u64 = 1 << 20;

/// One file in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its name in the archive, normalised: no leading `./` or `/`, no empty or `.` parts.
    pub name: PathBuf,
    /// Where its bytes start in the archive.
    pub offset: u64,
    /// Its length in bytes.
    pub size: u64,
}

/// Whether `head` (the first bytes of a file) is a tar archive: a header block with the
/// ustar magic (POSIX `ustar\0` or GNU `ustar  \0`) and a correct checksum.
pub fn is_tar(head: &[u8]) -> bool {
    let Some(block) = head.get(..BLOCK as usize) else {
        return false;
    };
    &block[257..262] == b"ustar" && checksum_ok(Header::from_byte_slice(block), block)
}

fn checksum_ok(header: &Header, block: &[u8]) -> bool {
    // The sum of the header's bytes with the checksum field counted as eight spaces.
    let sum: u32 = block[..148]
        .iter()
        .chain(&block[156..])
        .map(|&b| u32::from(b))
        .sum::<u32>()
        + 8 * u32::from(b' ');
    header.cksum().is_ok_and(|c| c == sum)
}

/// The regular files of the tar archive `archive`, in archive order. Directories, links
/// and devices are left out (no disk is one); a GNU sparse member is refused (its bytes do not
/// lie in one piece, so it cannot be read in place). Errors name what is wrong and where.
pub fn list_members(archive: &[u8]) -> Result<Vec<Member>> {
    let len = archive.len() as u64;
    let mut members: Vec<Member> = Vec::new();
    let mut pos = 0u64;
    let mut headers = 0usize;
    // Extension records apply to the next member.
    let mut long_name: Option<Vec<u8>> = None;
    let mut pax_path: Option<Vec<u8>> = None;
    let mut pax_size: Option<u64> = None;
    loop {
        if pos == len {
            // No end-of-archive blocks: tar itself accepts this (with a warning).
            break;
        }
        let block = block_at(archive, pos).ok_or_else(|| {
            Error::corrupt(format!(
                "the archive is cut short: {} bytes of a header at offset {pos}",
                len - pos
            ))
        })?;
        if block.iter().all(|&b| b == 0) {
            break; // end of archive
        }
        headers += 1;
        if headers > MAX_MEMBERS {
            return Err(Error::unsupported(format!(
                "the archive has more than {MAX_MEMBERS} members; an OVA holds a few"
            )));
        }
        let header = Header::from_byte_slice(block);
        if !checksum_ok(header, block) {
            return Err(Error::corrupt(format!(
                "the tar header at offset {pos} is damaged (its checksum does not match)"
            )));
        }
        let kind = header.entry_type();
        let field = header.entry_size().map_err(|_| {
            Error::corrupt(format!(
                "the tar header at offset {pos} has a size that is not a number"
            ))
        })?;
        let is_file = matches!(kind, EntryType::Regular | EntryType::Continuous);
        let size = match (is_file, pax_size) {
            (true, Some(s)) => s,
            _ => field,
        };
        let data = pos + BLOCK;
        let end = data
            .checked_add(size)
            .filter(|&e| e <= len)
            .ok_or_else(|| {
                Error::corrupt(format!(
                    "member \"{}\" of {size} bytes at offset {data} runs past the end of the archive ({len} bytes): the archive is cut short or damaged",
                    shown(&name_bytes(header, &long_name, &pax_path))
                ))
            })?;
        // end <= len <= usize::MAX: the casts below are exact.
        let bytes = &archive[data as usize..end as usize];
        match kind {
            EntryType::GNULongName => {
                if size > MAX_NAME {
                    return Err(too_long(pos, size));
                }
                long_name = Some(until_nul(bytes).to_vec());
            }
            EntryType::XHeader => {
                if size > MAX_PAX {
                    return Err(Error::unsupported(format!(
                        "the pax header at offset {pos} is {size} bytes (at most {MAX_PAX})"
                    )));
                }
                for ext in PaxExtensions::new(bytes) {
                    let ext = ext.map_err(|_| {
                        Error::corrupt(format!("the pax header at offset {pos} is damaged"))
                    })?;
                    match ext.key_bytes() {
                        b"path" => {
                            if ext.value_bytes().len() as u64 > MAX_NAME {
                                return Err(too_long(pos, ext.value_bytes().len() as u64));
                            }
                            pax_path = Some(ext.value_bytes().to_vec());
                        }
                        b"size" => {
                            let s = std::str::from_utf8(ext.value_bytes())
                                .ok()
                                .and_then(|v| v.parse::<u64>().ok())
                                .ok_or_else(|| {
                                    Error::corrupt(format!(
                                        "the pax header at offset {pos} has a size that is not a number"
                                    ))
                                })?;
                            pax_size = Some(s);
                        }
                        _ => {}
                    }
                }
            }
            // Global pax records and long link names say nothing vdisk uses.
            EntryType::XGlobalHeader | EntryType::GNULongLink => {}
            EntryType::GNUSparse => {
                return Err(Error::unsupported(format!(
                    "member \"{}\" is stored as a GNU sparse file, whose bytes cannot be read in place; extract the archive",
                    shown(&name_bytes(header, &long_name, &pax_path))
                )));
            }
            _ => {
                if is_file {
                    let raw = name_bytes(header, &long_name, &pax_path);
                    let name = normalise(&raw)?;
                    if members.iter().any(|m| m.name == name) {
                        return Err(Error::invalid(format!(
                            "member \"{}\" appears twice in the archive",
                            shown(&raw)
                        )));
                    }
                    members.push(Member {
                        name,
                        offset: data,
                        size,
                    });
                }
                long_name = None;
                pax_path = None;
                pax_size = None;
            }
        }
        // Data is padded to whole blocks; the padding of the last member may be missing.
        pos = end.div_ceil(BLOCK).saturating_mul(BLOCK).min(len);
    }
    Ok(members)
}

fn block_at(archive: &[u8], pos: u64) -> Option<&[u8]> {
    let start = usize::try_from(pos).ok()?;
    archive.get(start..start.checked_add(BLOCK as usize)?)
}

fn too_long(pos: u64, size: u64) -> Error {
    Error::unsupported(format!(
        "the member name at offset {pos} is {size} bytes long (at most {MAX_NAME})"
    ))
}

fn until_nul(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |n| &b[..n])
}

/// The member's name: a GNU long name, else a pax path, else the header's own.
fn name_bytes(header: &Header, long: &Option<Vec<u8>>, pax: &Option<Vec<u8>>) -> Vec<u8> {
    long.clone()
        .or_else(|| pax.clone())
        .unwrap_or_else(|| header.path_bytes().into_owned())
}

/// A name for messages: one line, whatever its bytes.
fn shown(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A member name as a relative path with no `.`, empty or leading `/` parts. A name that
/// climbs out with `..` is refused: no real appliance has one, and it would be a way to make a
/// descriptor in the archive look like it names something else.
fn normalise(raw: &[u8]) -> Result<PathBuf> {
    let path = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                return Err(Error::invalid(format!(
                    "member \"{}\" has a name that climbs out of the archive (\"..\")",
                    shown(raw)
                )))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(Error::invalid(format!(
            "a member has an empty name (\"{}\")",
            shown(raw)
        )));
    }
    Ok(out)
}

/// Normalise a path inside the archive lexically (`a/./b`, `a/../b`): `None` when it climbs
/// out of it.
pub(crate) fn normalise_lookup(path: &Path) -> Option<PathBuf> {
    let mut parts: Vec<&OsStr> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::ParentDir => {
                parts.pop()?;
            }
            _ => {}
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(parts.iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(EntryType::Regular);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn members_are_byte_ranges_of_the_archive() {
        let t = tar_of(&[("a.ovf", b"<xml/>"), ("./disk1.vmdk", &[7u8; 1000])]);
        assert!(is_tar(&t));
        let m = list_members(&t).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].name, PathBuf::from("a.ovf"));
        assert_eq!(m[1].name, PathBuf::from("disk1.vmdk"));
        assert_eq!(m[1].size, 1000);
        let o = m[1].offset as usize;
        assert_eq!(&t[o..o + 1000], &[7u8; 1000][..]);
    }

    #[test]
    fn long_names_and_gnu_headers_are_read() {
        let long = format!("{}/disk.vmdk", "d".repeat(150));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = Header::new_gnu();
        h.set_size(3);
        h.set_entry_type(EntryType::Regular);
        b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        let t = b.into_inner().unwrap();
        let m = list_members(&t).unwrap();
        assert_eq!(m[0].name, PathBuf::from(&long));
        assert_eq!(&t[m[0].offset as usize..][..3], b"abc");
    }

    #[test]
    fn hostile_archives_are_one_line_errors() {
        let t = tar_of(&[("disk.vmdk", &[1u8; 4096])]);
        // Cut inside the member, inside a header, and with a bad checksum.
        for bad in [&t[..2048], &t[..100]] {
            let e = list_members(bad).unwrap_err();
            assert!(!e.to_string().contains('\n'), "{e}");
        }
        assert!(list_members(&t[..2048])
            .unwrap_err()
            .to_string()
            .contains("runs past the end"));
        let mut c = t.clone();
        c[10] ^= 1;
        assert!(list_members(&c)
            .unwrap_err()
            .to_string()
            .contains("checksum"));
        // A size of 2^63 in base-256: checked, not trusted.
        let mut h = Header::new_gnu();
        h.set_path("huge.vmdk").unwrap();
        h.set_size(1 << 63);
        h.set_cksum();
        let mut huge = h.as_bytes().to_vec();
        huge.extend_from_slice(&[0u8; 1024]);
        assert!(list_members(&huge)
            .unwrap_err()
            .to_string()
            .contains("runs past the end"));
        // Path traversal.
        let mut h = Header::new_ustar();
        h.as_ustar_mut().unwrap().name[..12].copy_from_slice(b"../evil.vmdk");
        h.set_size(0);
        h.set_cksum();
        let mut evil = h.as_bytes().to_vec();
        evil.extend_from_slice(&[0u8; 1024]);
        assert!(list_members(&evil)
            .unwrap_err()
            .to_string()
            .contains("climbs out"));
    }

    #[test]
    fn lookups_normalise_lexically() {
        assert_eq!(
            normalise_lookup(Path::new("a/./b/../c.vmdk")),
            Some(PathBuf::from("a/c.vmdk"))
        );
        assert_eq!(normalise_lookup(Path::new("../c.vmdk")), None);
        assert_eq!(normalise_lookup(Path::new("")), None);
    }
}
