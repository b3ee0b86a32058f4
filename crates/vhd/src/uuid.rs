//! The 16-byte identifiers a VHD keeps: its own unique id (in the footer) and its parent's
//! (in a differencing disk's dynamic header).

use std::fmt;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};

/// A UUID as a VHD stores it: 16 bytes, printed in the order they are stored.
///
/// ```
/// use vdisk_vhd::Uuid;
/// let id = Uuid::parse("d063612d-ba50-4388-af58-6e884f394571").unwrap();
/// assert_eq!(id.0[0], 0xd0);
/// assert_eq!(id.to_string(), "d063612d-ba50-4388-af58-6e884f394571");
/// assert!(Uuid::parse("d063612d").is_none());
/// assert!(Uuid::default().is_nil());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// The all-zero UUID: "none" (a differencing disk that names no parent identity).
    pub const NIL: Uuid = Uuid([0; 16]);

    /// Whether every byte is zero.
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }

    /// A new random (version 4) UUID, from the kernel's random source; should that be
    /// unreadable, from the clock, the process id and a counter (unique, not secret).
    pub fn random() -> Uuid {
        let mut b = [0u8; 16];
        let got = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .is_ok();
        if !got {
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let seed = nanos
                ^ (u64::from(std::process::id()) << 32)
                ^ COUNTER.fetch_add(1, Ordering::Relaxed);
            b[..8].copy_from_slice(&splitmix(seed).to_le_bytes());
            b[8..].copy_from_slice(&splitmix(seed ^ 0x9e37_79b9_7f4a_7c15).to_le_bytes());
        }
        b[6] = (b[6] & 0x0f) | 0x40; // version 4
        b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
        Uuid(b)
    }

    /// Parse the hyphenated form (`8-4-4-4-12` hex digits); `None` for anything else.
    pub fn parse(text: &str) -> Option<Uuid> {
        let t = text.trim();
        let groups: Vec<&str> = t.split('-').collect();
        let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if lens != [8, 4, 4, 4, 12] {
            return None;
        }
        let hex: String = groups.concat();
        // from_str_radix alone would take a sign ("+0").
        if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let mut b = [0u8; 16];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Uuid(b))
    }
}

/// One step of SplitMix64: spreads a seed's bits over the whole word.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_differ_and_carry_version_4() {
        let a = Uuid::random();
        let b = Uuid::random();
        assert_ne!(a, b);
        assert_eq!(a.0[6] >> 4, 4);
        assert_eq!(a.0[8] >> 6, 2);
        assert_eq!(Uuid::parse(&a.to_string()), Some(a));
    }

    #[test]
    fn parse_refuses_malformed_text() {
        for bad in [
            "",
            "d063612d-ba50-4388-af58-6e884f39457",
            "d063612dba504388af586e884f394571",
            "g063612d-ba50-4388-af58-6e884f394571",
            "d063612d-ba50-4388-af58-6e884f3945711",
            "+063612d-ba50-4388-af58-6e884f394571",
        ] {
            assert!(Uuid::parse(bad).is_none(), "{bad}");
        }
    }
}
