//! GUIDs as VHDX stores them: Microsoft's mixed-endian layout (Data1 as a little-endian u32,
//! Data2 and Data3 as little-endian u16, Data4 as 8 bytes in order).

use std::fmt;
use std::io::Read;

/// A 128-bit GUID, kept as its 16 on-disk bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// The all-zero GUID (an empty log, for instance).
    pub const ZERO: Guid = Guid([0; 16]);

    /// The GUID written `{d1-d2-d3-d4}` in the usual text form, from its numeric fields.
    pub const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Guid {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }

    /// The GUID in `bytes[..16]`.
    pub fn from_slice(bytes: &[u8]) -> Guid {
        let mut g = [0u8; 16];
        let n = bytes.len().min(16);
        g[..n].copy_from_slice(&bytes[..n]);
        Guid(g)
    }

    /// Whether every byte is zero.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }

    /// A new random (version 4) GUID, from the kernel's random source; a time- and
    /// address-derived value if that cannot be read.
    pub fn random() -> Guid {
        let mut g = [0u8; 16];
        let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut g));
        if read.is_err() {
            use std::hash::{BuildHasher, Hasher};
            let s = std::collections::hash_map::RandomState::new();
            for (i, part) in g.chunks_mut(8).enumerate() {
                let mut h = s.build_hasher();
                h.write_u128(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos()),
                );
                h.write_usize(i);
                part.copy_from_slice(&h.finish().to_le_bytes());
            }
        }
        // Version 4 (random) in Data3's top nibble, RFC 4122 variant in Data4[0].
        g[7] = (g[7] & 0x0f) | 0x40;
        g[8] = (g[8] & 0x3f) | 0x80;
        Guid(g)
    }

    /// Parse the text form, with or without braces, any case: `{83ed0ec3-24c8-49a6-a959-5e4bf1288bfb}`.
    pub fn parse(text: &str) -> Option<Guid> {
        let t = text.trim();
        let t = t
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or(t);
        let parts: Vec<&str> = t.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if parts.len() != 5 || parts.iter().zip(lens).any(|(p, l)| p.len() != l) {
            return None;
        }
        if !parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return None;
        }
        let d1 = u32::from_str_radix(parts[0], 16).ok()?;
        let d2 = u16::from_str_radix(parts[1], 16).ok()?;
        let d3 = u16::from_str_radix(parts[2], 16).ok()?;
        let mut d4 = [0u8; 8];
        let tail = format!("{}{}", parts[3], parts[4]);
        for (i, b) in d4.iter_mut().enumerate() {
            *b = u8::from_str_radix(&tail[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Guid::from_fields(d1, d2, d3, d4))
    }

    /// The text form VHDX parent locators use: lowercase, in braces.
    pub fn braced(&self) -> String {
        format!("{{{self}}}")
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
            u16::from_le_bytes([g[4], g[5]]),
            u16::from_le_bytes([g[6], g[7]]),
            g[8],
            g[9],
            g[10],
            g[11],
            g[12],
            g[13],
            g[14],
            g[15]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{self}}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_endian_layout_and_text_round_trip() {
        // The BAT region's GUID, 2DC27766-F623-4200-9D64-115E9BFD4A08, as the file holds it.
        let g = Guid::from_fields(
            0x2dc2_7766,
            0xf623,
            0x4200,
            [0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08],
        );
        assert_eq!(
            g.0,
            [
                0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd,
                0x4a, 0x08
            ]
        );
        assert_eq!(g.to_string(), "2dc27766-f623-4200-9d64-115e9bfd4a08");
        assert_eq!(g.braced(), "{2dc27766-f623-4200-9d64-115e9bfd4a08}");
        assert_eq!(
            Guid::parse("{2DC27766-F623-4200-9D64-115E9BFD4A08}"),
            Some(g)
        );
        assert_eq!(Guid::parse("2dc27766-f623-4200-9d64-115e9bfd4a08"), Some(g));
        assert_eq!(Guid::parse("{2dc27766-f623-4200-9d64-115e9bfd4a0}"), None);
        assert_eq!(Guid::parse("{2dc27766-f623-4200-9d64-115e9bfd4a0g}"), None);
        assert_eq!(Guid::parse(""), None);
    }

    #[test]
    fn random_guids_differ_and_are_version_4() {
        let a = Guid::random();
        let b = Guid::random();
        assert_ne!(a, b);
        assert_eq!(a.0[7] >> 4, 4);
        assert!(!a.is_zero());
    }
}
