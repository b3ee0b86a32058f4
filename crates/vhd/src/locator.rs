//! Names of a differencing disk's parent: decoded from the parent locators and the parent's
//! name in the dynamic header, and encoded for the locators a new differencing disk gets.

use std::path::{Path, PathBuf};

use byteorder::{ByteOrder, LittleEndian as LE};

use crate::header::{ParentLocator, Platform};

/// The longest locator data read: 32 Ki UTF-16 units, Windows' longest path.
pub const MAX_LOCATOR_BYTES: u32 = 64 << 10;

/// A parent name as one locator records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatorName {
    /// The locator's platform.
    pub platform: Platform,
    /// The name as written, decoded (backslashes kept).
    pub written: String,
    /// The name as a path here: backslashes made slashes; `None` when it cannot name a
    /// file on this system (a Windows drive or network path, a Mac alias).
    pub path: Option<PathBuf>,
}

/// Decode the data of `locator` (the bytes it points at): UTF-16 little-endian for W2ru and
/// W2ku, a file URL for MacX, bytes for the deprecated Wi2r and Wi2k. `None` for empty
/// entries, Mac aliases and unknown platforms.
pub fn decode(locator: &ParentLocator, data: &[u8]) -> Option<LocatorName> {
    let platform = locator.platform();
    let written = match platform {
        Platform::W2ru | Platform::W2ku => {
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(LE::read_u16)
                .take_while(|&u| u != 0)
                .collect();
            String::from_utf16_lossy(&units)
        }
        Platform::Wi2r | Platform::Wi2k => {
            let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
            String::from_utf8_lossy(&data[..end]).into_owned()
        }
        Platform::MacX => {
            let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
            let url = String::from_utf8_lossy(&data[..end]).into_owned();
            let path = url
                .strip_prefix("file://localhost")
                .or_else(|| url.strip_prefix("file://"))
                .unwrap_or(&url);
            percent_decode(path)
        }
        Platform::None | Platform::Mac | Platform::Unknown(_) => return None,
    };
    if written.is_empty() {
        return None;
    }
    let path = local_path(&written);
    Some(LocatorName {
        platform,
        written,
        path,
    })
}

/// A name written by Windows (or by a tool on this system) as a path here: backslashes
/// become slashes. Drive-letter paths (`C:\...`) and network paths (`\\server\...`) name
/// nothing here and give `None`.
pub fn local_path(written: &str) -> Option<PathBuf> {
    let p = written.replace('\\', "/");
    let b = p.as_bytes();
    let drive = b.len() >= 2 && b[1] == b':' && b[0].is_ascii_alphabetic();
    if drive || p.starts_with("//") || p.contains('\0') {
        return None;
    }
    // ".\\base.vhd", as Hyper-V writes it, is "base.vhd".
    let mut rest = p.as_str();
    while let Some(r) = rest.strip_prefix("./") {
        rest = r.trim_start_matches('/');
    }
    (!rest.is_empty()).then(|| PathBuf::from(rest))
}

/// Undo `%XX` escapes (a MacX file URL); malformed escapes stay as written.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `text` as UTF-16 little-endian bytes (W2ru and W2ku data).
pub fn utf16le(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// The parent's name as the header's parent name field holds it: the file name only,
/// UTF-16 big-endian, NUL-padded to 512 bytes (cut at 255 units, keeping a NUL).
pub fn parent_name_field(name: &Path) -> [u8; 512] {
    let mut field = [0u8; 512];
    let file = name
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    for (i, u) in file.encode_utf16().take(255).enumerate() {
        field[2 * i..2 * i + 2].copy_from_slice(&u.to_be_bytes());
    }
    field
}

/// The W2ru text for a parent named `relative` from the child's folder: Windows' form,
/// `.\dir\name.vhd`, as Hyper-V writes it.
pub fn windows_relative(relative: &Path) -> String {
    let text = relative.to_string_lossy().replace('/', "\\");
    if text.starts_with(".\\") || text.starts_with("..\\") {
        text
    } else {
        format!(".\\{text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(p: Platform) -> ParentLocator {
        ParentLocator {
            platform_code: p.code(),
            ..Default::default()
        }
    }

    #[test]
    fn windows_names_decode_to_local_paths() {
        let n = decode(&loc(Platform::W2ru), &utf16le(".\\dir\\base.vhd\0\0junk")).unwrap();
        assert_eq!(n.written, ".\\dir\\base.vhd");
        assert_eq!(n.path, Some(PathBuf::from("dir/base.vhd")));
        assert_eq!(local_path(".\\.\\a.vhd"), Some(PathBuf::from("a.vhd")));
        assert_eq!(local_path(".\\"), None);
        let n = decode(&loc(Platform::W2ku), &utf16le("C:\\VMs\\base.vhd")).unwrap();
        assert_eq!(n.path, None);
        let n = decode(&loc(Platform::W2ku), &utf16le("/srv/vm/base.vhd")).unwrap();
        assert_eq!(n.path, Some(PathBuf::from("/srv/vm/base.vhd")));
        let n = decode(&loc(Platform::W2ku), &utf16le("\\\\server\\share\\b.vhd")).unwrap();
        assert_eq!(n.path, None);
        let n = decode(&loc(Platform::Wi2r), b"..\\base.vhd\0").unwrap();
        assert_eq!(n.path, Some(PathBuf::from("../base.vhd")));
        // Odd byte counts and lone surrogates decode without panicking.
        let n = decode(&loc(Platform::W2ru), &[0x00, 0xd8, b'a', 0, 7]).unwrap();
        assert_eq!(n.written, "\u{fffd}a");
    }

    #[test]
    fn mac_urls_and_empty_or_unknown_locators() {
        let n = decode(
            &loc(Platform::MacX),
            b"file://localhost/Users/me/My%20Disk.vhd",
        )
        .unwrap();
        assert_eq!(n.path, Some(PathBuf::from("/Users/me/My Disk.vhd")));
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        assert!(decode(&loc(Platform::Mac), b"alias").is_none());
        assert!(decode(&loc(Platform::None), b"x").is_none());
        assert!(decode(&loc(Platform::Unknown(9)), b"x").is_none());
        assert!(decode(&loc(Platform::W2ru), &[0, 0, 1, 1]).is_none());
    }

    #[test]
    fn encodings_for_new_disks() {
        assert_eq!(windows_relative(Path::new("base.vhd")), ".\\base.vhd");
        assert_eq!(
            windows_relative(Path::new("../a/base.vhd")),
            "..\\a\\base.vhd"
        );
        assert_eq!(utf16le("ab"), [b'a', 0, b'b', 0]);
        let f = parent_name_field(Path::new("dir/base.vhd"));
        assert_eq!(&f[..4], &[0, b'b', 0, b'a']);
        assert_eq!(f[16..], [0u8; 496]);
        let long = "x".repeat(400);
        let f = parent_name_field(Path::new(&long));
        assert_eq!(f[510..], [0, 0]);
    }
}
