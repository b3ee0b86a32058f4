//! streamOptimized markers.
//!
//! Every marker starts on a sector boundary with `value: u64, size: u32`. A non-zero `size`
//! makes it a grain marker: `value` is the grain's first sector on the virtual disk and `size`
//! compressed bytes follow at offset 12. A zero `size` makes it a metadata marker of one
//! sector whose type is the u32 at offset 12.

use byteorder::{ByteOrder, LittleEndian as LE};
use vdisk_core::{Error, Result};

/// Type of a metadata marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerType {
    /// End of stream: an all-zero sector.
    EndOfStream,
    /// A grain table follows (value: its size in sectors).
    GrainTable,
    /// The grain directory follows (value: its size in sectors).
    GrainDirectory,
    /// The footer (a copy of the header) follows.
    Footer,
    /// A type vdisk does not know.
    Unknown(u32),
}

impl MarkerType {
    /// The numeric type written in the marker.
    pub fn code(self) -> u32 {
        match self {
            MarkerType::EndOfStream => 0,
            MarkerType::GrainTable => 1,
            MarkerType::GrainDirectory => 2,
            MarkerType::Footer => 3,
            MarkerType::Unknown(c) => c,
        }
    }

    fn from_code(code: u32) -> Self {
        match code {
            0 => MarkerType::EndOfStream,
            1 => MarkerType::GrainTable,
            2 => MarkerType::GrainDirectory,
            3 => MarkerType::Footer,
            c => MarkerType::Unknown(c),
        }
    }
}

/// A decoded marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// A compressed grain of `size` bytes for virtual sector `lba`; the data starts 12 bytes
    /// after the marker.
    Grain {
        /// First sector of the grain on the virtual disk.
        lba: u64,
        /// Compressed bytes that follow.
        size: u32,
    },
    /// A one-sector metadata marker.
    Meta {
        /// The marker's type.
        kind: MarkerType,
        /// Its value (a size in sectors for GT and GD markers).
        value: u64,
    },
}

impl Marker {
    /// Bytes before a grain's compressed data.
    pub const GRAIN_HEADER: usize = 12;

    /// Decode the marker at the start of `bytes`. A grain marker needs 12 bytes, a metadata
    /// marker 16.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < Self::GRAIN_HEADER {
            return Err(Error::corrupt("stream marker is truncated"));
        }
        let value = LE::read_u64(&bytes[0..8]);
        let size = LE::read_u32(&bytes[8..12]);
        if size != 0 {
            return Ok(Marker::Grain { lba: value, size });
        }
        if bytes.len() < 16 {
            return Err(Error::corrupt("stream marker is truncated"));
        }
        Ok(Marker::Meta {
            kind: MarkerType::from_code(LE::read_u32(&bytes[12..16])),
            value,
        })
    }

    /// Encode the marker's leading bytes (12 for a grain, 16 for metadata).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        match *self {
            Marker::Grain { lba, size } => {
                out.extend_from_slice(&lba.to_le_bytes());
                out.extend_from_slice(&size.to_le_bytes());
            }
            Marker::Meta { kind, value } => {
                out.extend_from_slice(&value.to_le_bytes());
                out.extend_from_slice(&0u32.to_le_bytes());
                out.extend_from_slice(&kind.code().to_le_bytes());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_grain_and_metadata_markers() {
        let mut g = [0u8; 16];
        g[0..8].copy_from_slice(&256u64.to_le_bytes());
        g[8..12].copy_from_slice(&1234u32.to_le_bytes());
        assert_eq!(
            Marker::parse(&g).unwrap(),
            Marker::Grain {
                lba: 256,
                size: 1234
            }
        );

        let mut m = [0u8; 512];
        m[0..8].copy_from_slice(&4u64.to_le_bytes());
        m[12..16].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            Marker::parse(&m).unwrap(),
            Marker::Meta {
                kind: MarkerType::GrainTable,
                value: 4
            }
        );
        assert_eq!(
            Marker::parse(&[0u8; 512]).unwrap(),
            Marker::Meta {
                kind: MarkerType::EndOfStream,
                value: 0
            }
        );
        m[12..16].copy_from_slice(&9u32.to_le_bytes());
        assert!(matches!(
            Marker::parse(&m).unwrap(),
            Marker::Meta {
                kind: MarkerType::Unknown(9),
                ..
            }
        ));
        assert!(Marker::parse(&m[..8]).is_err());
        assert!(Marker::parse(&m[..13]).is_err());
    }

    #[test]
    fn round_trips() {
        for mk in [
            Marker::Grain { lba: 7, size: 9 },
            Marker::Meta {
                kind: MarkerType::Footer,
                value: 1,
            },
        ] {
            assert_eq!(
                Marker::parse(&{
                    let mut v = mk.to_bytes();
                    v.resize(16, 0);
                    v
                })
                .unwrap(),
                mk
            );
        }
    }
}
