//! L1 and L2 table entries: how a guest cluster (or subcluster) is stored.
//!
//! An L1 entry points at an L2 table (one cluster); an L2 entry describes one guest cluster:
//! unallocated (read from the backing file), zero, a host cluster, or compressed bytes. With
//! extended L2 entries (128 bits), each of the 32 subclusters of a cluster is allocated, zero
//! or unallocated on its own.

use byteorder::{BigEndian, ByteOrder};
use vdisk_core::{Error, Result};

use crate::header::Header;

/// Bits 9-55 of an L1 or standard L2 entry: a host offset.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 63: the cluster's refcount is exactly one (writes need no copy).
pub const COPIED: u64 = 1 << 63;
/// Bit 62 of an L2 entry: the cluster is compressed.
pub const COMPRESSED: u64 = 1 << 62;
/// Bit 0 of a standard L2 entry (version 3): the cluster reads as zero.
pub const ZERO: u64 = 1;
/// Subclusters per cluster with extended L2 entries.
pub const SUBCLUSTERS: u64 = 32;

/// How a guest cluster or subcluster is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Not stored here: read from the backing file, or as zero without one.
    Unallocated,
    /// Reads as zero (masks the backing file).
    Zero,
    /// Stored at this host offset (in the external data file when the image has one).
    Data(u64),
    /// Compressed: `len` bytes at host offset `offset` inflate to the whole cluster.
    Compressed {
        /// Where the compressed bytes start (not aligned).
        offset: u64,
        /// How many bytes to read (to the end of the last 512-byte sector).
        len: u64,
    },
}

impl Mapping {
    /// Whether the range holds data (stored or compressed).
    pub fn is_data(&self) -> bool {
        matches!(self, Mapping::Data(_) | Mapping::Compressed { .. })
    }
}

/// One L2 entry, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterMapping {
    /// The whole cluster is stored one way.
    Whole(Mapping),
    /// An extended entry with subclusters: host cluster (if any), allocation and zero bits.
    Sub {
        /// The host cluster of the allocated subclusters.
        host: u64,
        /// Bit `i`: subcluster `i` is stored at `host + i * subcluster size`.
        alloc: u32,
        /// Bit `i`: subcluster `i` reads as zero.
        zero: u32,
    },
}

/// What decoding an L2 entry needs to know of the image.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Bytes per cluster.
    pub cluster_size: u64,
    /// Entries per L2 table.
    pub l2_entries: u64,
    /// 128-bit L2 entries with subclusters.
    pub extended: bool,
    /// Bytes per subcluster (the cluster size without extended entries).
    pub subcluster_size: u64,
    /// Guest clusters live in an external data file (offset 0 is valid there).
    pub external_data: bool,
    /// Where the compressed size field starts in a compressed descriptor.
    csize_shift: u32,
    /// Its width, as a mask.
    csize_mask: u64,
}

impl Geometry {
    /// The geometry of the image `h` describes.
    pub fn of(h: &Header) -> Self {
        let cluster_bits = h.raw.cluster_bits;
        let extended = h.extended_l2;
        Geometry {
            cluster_bits,
            cluster_size: h.cluster_size,
            l2_entries: h.l2_entries(),
            extended,
            subcluster_size: if extended {
                h.cluster_size / SUBCLUSTERS
            } else {
                h.cluster_size
            },
            external_data: h.data_file.is_some(),
            csize_shift: 62 - (cluster_bits - 8),
            csize_mask: (1 << (cluster_bits - 8)) - 1,
        }
    }

    /// Bytes of one L2 entry.
    pub fn entry_bytes(&self) -> usize {
        if self.extended {
            16
        } else {
            8
        }
    }

    /// Bytes of disk one L2 table maps.
    pub fn l2_coverage(&self) -> u64 {
        self.l2_entries << self.cluster_bits
    }

    /// The raw entry `index` of the L2 table `table` (and its subcluster bitmap, 0 without
    /// extended entries).
    pub fn raw_entry(&self, table: &[u8], index: usize) -> (u64, u64) {
        let at = index * self.entry_bytes();
        let entry = BigEndian::read_u64(&table[at..]);
        let bitmap = if self.extended {
            BigEndian::read_u64(&table[at + 8..])
        } else {
            0
        };
        (entry, bitmap)
    }

    /// The host offset and byte count of a compressed entry (its offset field, and its
    /// sectors counted from the sector holding the offset).
    pub fn compressed(&self, entry: u64) -> Result<(u64, u64)> {
        let offset = entry & ((1u64 << self.csize_shift) - 1);
        if offset >> 56 != 0 {
            return Err(Error::corrupt(format!(
                "compressed cluster offset {offset:#x} is past 64 PiB"
            )));
        }
        let sectors = ((entry >> self.csize_shift) & self.csize_mask) + 1;
        Ok((offset, sectors * 512 - (offset & 511)))
    }

    /// Decode an L2 entry.
    pub fn decode(&self, entry: u64, bitmap: u64) -> Result<ClusterMapping> {
        if entry & COMPRESSED != 0 {
            if self.external_data {
                return Err(Error::corrupt(
                    "compressed cluster in an image with an external data file",
                ));
            }
            let (offset, len) = self.compressed(entry)?;
            return Ok(ClusterMapping::Whole(Mapping::Compressed { offset, len }));
        }
        let host = entry & OFFSET_MASK;
        // Offset 0 is unallocated, except in an external data file where the refcount of
        // every cluster is one (COPIED set) and guest offset 0 lies at host offset 0.
        let allocated = host != 0 || (self.external_data && entry & COPIED != 0);
        if allocated && host & (self.cluster_size - 1) != 0 {
            return Err(Error::corrupt(format!(
                "L2 entry points at host offset {host:#x}, not a cluster boundary"
            )));
        }
        if !self.extended {
            return Ok(ClusterMapping::Whole(if entry & ZERO != 0 {
                Mapping::Zero
            } else if allocated {
                Mapping::Data(host)
            } else {
                Mapping::Unallocated
            }));
        }
        let alloc = bitmap as u32;
        let zero = (bitmap >> 32) as u32;
        if alloc & zero != 0 {
            return Err(Error::corrupt(format!(
                "extended L2 entry marks subclusters both allocated and zero (bitmap {bitmap:#018x})"
            )));
        }
        if !allocated && alloc != 0 {
            return Err(Error::corrupt(format!(
                "extended L2 entry allocates subclusters without a host cluster (bitmap {bitmap:#018x})"
            )));
        }
        Ok(match (alloc, zero) {
            (0, 0) => ClusterMapping::Whole(Mapping::Unallocated),
            (0, u32::MAX) => ClusterMapping::Whole(Mapping::Zero),
            (u32::MAX, 0) => ClusterMapping::Whole(Mapping::Data(host)),
            _ => ClusterMapping::Sub { host, alloc, zero },
        })
    }
}

impl ClusterMapping {
    /// Split `[from, to)` (byte offsets inside the cluster) into runs of one mapping each,
    /// handing `(start in cluster, length, mapping)` to `f` in order.
    pub fn runs(
        &self,
        g: &Geometry,
        from: u64,
        to: u64,
        mut f: impl FnMut(u64, u64, Mapping) -> Result<()>,
    ) -> Result<()> {
        match *self {
            ClusterMapping::Whole(m) => {
                let m = match m {
                    Mapping::Data(h) => Mapping::Data(h + from),
                    m => m,
                };
                f(from, to - from, m)
            }
            ClusterMapping::Sub { host, alloc, zero } => {
                let scs = g.subcluster_size;
                let mut pos = from;
                while pos < to {
                    let i = (pos / scs) as u32;
                    let kind = |i: u32| (alloc >> i & 1, zero >> i & 1);
                    // Extend over the following subclusters of the same kind.
                    let mut j = i + 1;
                    while u64::from(j) * scs < to && kind(j) == kind(i) {
                        j += 1;
                    }
                    let end = (u64::from(j) * scs).min(to);
                    let m = match kind(i) {
                        (1, _) => Mapping::Data(host + pos),
                        (_, 1) => Mapping::Zero,
                        _ => Mapping::Unallocated,
                    };
                    f(pos, end - pos, m)?;
                    pos = end;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(cluster_bits: u32, extended: bool, external_data: bool) -> Geometry {
        let cluster_size = 1u64 << cluster_bits;
        Geometry {
            cluster_bits,
            cluster_size,
            l2_entries: cluster_size / if extended { 16 } else { 8 },
            extended,
            subcluster_size: if extended {
                cluster_size / 32
            } else {
                cluster_size
            },
            external_data,
            csize_shift: 62 - (cluster_bits - 8),
            csize_mask: (1 << (cluster_bits - 8)) - 1,
        }
    }

    #[test]
    fn standard_entries() {
        let g = geometry(16, false, false);
        let whole = |m| ClusterMapping::Whole(m);
        assert_eq!(g.decode(0, 0).unwrap(), whole(Mapping::Unallocated));
        assert_eq!(
            g.decode(COPIED | 0x50000, 0).unwrap(),
            whole(Mapping::Data(0x50000))
        );
        assert_eq!(g.decode(ZERO, 0).unwrap(), whole(Mapping::Zero));
        // Zero with a preallocated host cluster still reads as zero.
        assert_eq!(g.decode(ZERO | 0x50000, 0).unwrap(), whole(Mapping::Zero));
        assert!(g.decode(0x50200, 0).is_err()); // unaligned
                                                // Offset 0 with COPIED is unallocated without a data file, data with one.
        assert_eq!(g.decode(COPIED, 0).unwrap(), whole(Mapping::Unallocated));
        let ext = geometry(16, false, true);
        assert_eq!(ext.decode(COPIED, 0).unwrap(), whole(Mapping::Data(0)));
    }

    #[test]
    fn compressed_descriptor_depends_on_cluster_bits() {
        // 64 KiB clusters: the offset has 54 bits (62 - 8), the sector count 8 bits above.
        let g = geometry(16, false, false);
        let e = COMPRESSED | (3u64 << 54) | 0x12345;
        assert_eq!(
            g.decode(e, 0).unwrap(),
            ClusterMapping::Whole(Mapping::Compressed {
                offset: 0x12345,
                len: 4 * 512 - 0x145
            })
        );
        // 2 MiB clusters: offset 49 bits, 13 bits of sectors.
        let g = geometry(21, false, false);
        let e = COMPRESSED | (0x1fffu64 << 49) | 0x200;
        assert_eq!(
            g.compressed(e & !COMPRESSED).unwrap(),
            (0x200, 0x2000 * 512)
        );
        // Compressed clusters cannot live in an external data file.
        assert!(geometry(16, false, true).decode(e, 0).is_err());
    }

    #[test]
    fn extended_entries_map_each_subcluster() {
        let g = geometry(16, true, false);
        let scs = 2048;
        // Subclusters 0-1 allocated, 2 zero, the rest unallocated.
        let m = g.decode(COPIED | 0x30000, 0b11 | (0b100 << 32)).unwrap();
        let mut runs = Vec::new();
        m.runs(&g, 0, 65536, |s, l, m| {
            runs.push((s, l, m));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            runs,
            [
                (0, 2 * scs, Mapping::Data(0x30000)),
                (2 * scs, scs, Mapping::Zero),
                (3 * scs, 65536 - 3 * scs, Mapping::Unallocated)
            ]
        );
        // A partial range starts mid-subcluster.
        let mut runs = Vec::new();
        m.runs(&g, 100, 2 * scs + 10, |s, l, m| {
            runs.push((s, l, m));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            runs,
            [
                (100, 2 * scs - 100, Mapping::Data(0x30000 + 100)),
                (2 * scs, 10, Mapping::Zero)
            ]
        );
        // Both allocated and zero: refused. Allocated without a host cluster: refused.
        assert!(g.decode(0x30000, 1 | (1 << 32)).is_err());
        assert!(g.decode(0, 1).is_err());
        // All zero without a host cluster.
        assert_eq!(
            g.decode(0, 0xffff_ffff << 32).unwrap(),
            ClusterMapping::Whole(Mapping::Zero)
        );
    }
}
