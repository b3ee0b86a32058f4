//! The block size of change maps, hash manifests and scans.

use std::fmt;
use std::str::FromStr;

use crate::{size, Error, ErrorKind, Result};

/// A block size for changed-block maps, manifests and scans: a power of two from 512 bytes
/// (one sector) to 64 MiB.
///
/// The upper bound keeps every per-block buffer small: a scan reads at least a block at a
/// time on each thread, and a hostile or mistyped `--granularity 1T` must not make vdisk
/// allocate a terabyte.
///
/// ```
/// use vdisk_core::Granularity;
/// let g: Granularity = "64K".parse()?;
/// assert_eq!(g.bytes(), 65536);
/// assert_eq!(g.blocks(1 << 20), 16);
/// assert!(Granularity::new(1000).is_err());
/// # Ok::<(), vdisk_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Granularity(u64);

impl Granularity {
    /// The smallest block: one sector.
    pub const MIN: Granularity = Granularity(512);
    /// The largest block: 64 MiB.
    pub const MAX: Granularity = Granularity(64 << 20);
    /// vdisk's default, and the grain size of every sparse VMDK it writes: 64 KiB.
    pub const DEFAULT: Granularity = Granularity(64 << 10);

    /// `bytes` as a granularity, or [`ErrorKind::InvalidArgument`] when it is not a power of
    /// two between 512 bytes and 64 MiB.
    pub fn new(bytes: u64) -> Result<Granularity> {
        if bytes.is_power_of_two() && (Self::MIN.0..=Self::MAX.0).contains(&bytes) {
            Ok(Granularity(bytes))
        } else {
            Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "granularity of {bytes} bytes is not a power of two from 512 bytes to 64 MiB"
                ),
            ))
        }
    }

    /// The block size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Blocks needed to cover `size` bytes (the last one may be partial).
    pub fn blocks(self, size: u64) -> u64 {
        size.div_ceil(self.0)
    }
}

impl Default for Granularity {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl TryFrom<u64> for Granularity {
    type Error = Error;
    fn try_from(bytes: u64) -> Result<Self> {
        Granularity::new(bytes)
    }
}

impl From<Granularity> for u64 {
    fn from(g: Granularity) -> u64 {
        g.0
    }
}

impl FromStr for Granularity {
    type Err = Error;
    /// `512`, `4K`, `64K`, `1M` …
    fn from_str(s: &str) -> Result<Self> {
        let bytes = size::parse(s).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("\"{s}\" is not a size (512, 4K, 64K, 1M)"),
            )
        })?;
        Granularity::new(bytes).map_err(|_| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "\"{s}\" is not a power of two from 512 bytes to 64 MiB (512, 4K, 64K, 1M)"
                ),
            )
        })
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&size::human(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_powers_of_two_in_range() {
        for ok in [512u64, 4096, 65536, 64 << 20] {
            assert_eq!(Granularity::new(ok).unwrap().bytes(), ok);
        }
        for bad in [0u64, 1, 256, 1000, 65535, 128 << 20, 1 << 40, u64::MAX] {
            assert_eq!(
                Granularity::new(bad).unwrap_err().kind(),
                ErrorKind::InvalidArgument,
                "{bad}"
            );
        }
    }

    #[test]
    fn parses_and_prints_sizes() {
        assert_eq!("64K".parse::<Granularity>().unwrap(), Granularity::DEFAULT);
        assert_eq!("1M".parse::<Granularity>().unwrap().bytes(), 1 << 20);
        assert!("1T".parse::<Granularity>().is_err());
        assert!("3K".parse::<Granularity>().is_err());
        assert!("x".parse::<Granularity>().is_err());
        assert_eq!(Granularity::DEFAULT.to_string(), "64 KiB");
        assert_eq!(Granularity::MIN.blocks(1000), 2);
    }
}
