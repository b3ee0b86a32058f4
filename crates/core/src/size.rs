//! Byte sizes as users type them: `512`, `4K`, `64K`, `1M`, `2G`, `1T`.

/// Parse a size: a decimal number with an optional binary suffix K, M, G, T (KiB…TiB), and an
/// optional trailing `B` or `iB`. Returns `None` for anything else or on overflow.
///
/// ```
/// use vdisk_core::size;
/// assert_eq!(size::parse("512"), Some(512));
/// assert_eq!(size::parse("64K"), Some(64 * 1024));
/// assert_eq!(size::parse("200MB"), Some(200 * 1024 * 1024));
/// assert_eq!(size::parse("1TiB"), Some(1024 * 1024 * 1024 * 1024));
/// assert_eq!(size::parse("1.5G"), None); // whole numbers only
/// assert_eq!(size::parse("99999999999T"), None); // overflows a u64
/// ```
pub fn parse(text: &str) -> Option<u64> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], 10),
        'm' | 'M' => (&t[..t.len() - 1], 20),
        'g' | 'G' => (&t[..t.len() - 1], 30),
        't' | 'T' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift)
}

/// Print a size with the largest binary unit that divides it (`64 KiB`, `2 GiB`, `1000 B`),
/// or else to one decimal (`1.5 KiB`).
///
/// ```
/// assert_eq!(vdisk_core::size::human(65536), "64 KiB");
/// assert_eq!(vdisk_core::size::human(1536), "1.5 KiB");
/// assert_eq!(vdisk_core::size::human(1000), "1000 B");
/// ```
pub fn human(bytes: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (name, shift) in UNITS {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {name}", bytes >> shift);
        }
    }
    for (name, shift) in UNITS {
        if bytes >= 1 << shift {
            return format!("{:.1} {name}", bytes as f64 / (1u64 << shift) as f64);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!(parse("512"), Some(512));
        assert_eq!(parse("4K"), Some(4096));
        assert_eq!(parse("64k"), Some(65536));
        assert_eq!(parse("1M"), Some(1 << 20));
        assert_eq!(parse("2G"), Some(2 << 30));
        assert_eq!(parse("1TiB"), Some(1 << 40));
        assert_eq!(parse("200MB"), Some(200 << 20));
        assert_eq!(parse(""), None);
        assert_eq!(parse("K"), None);
        assert_eq!(parse("-1"), None);
        assert_eq!(parse("99999999999999999999"), None);
        assert_eq!(parse("16777216T"), None);
    }

    #[test]
    fn prints_units() {
        assert_eq!(human(65536), "64 KiB");
        assert_eq!(human(3 << 30), "3 GiB");
        assert_eq!(human(1000), "1000 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human((3 << 30) + (1 << 29)), "3584 MiB");
        assert_eq!(human((3 << 30) + (1 << 29) + 1), "3.5 GiB");
    }
}
