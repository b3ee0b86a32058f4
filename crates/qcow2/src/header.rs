//! The qcow2 header and its extensions: the on-disk fields as they are ([`RawHeader`]), then
//! checked against the file they come from ([`Header`]), and written back for new images.
//!
//! Every number is big-endian. Nothing past [`Header::parse`] sees an unchecked field.

use std::path::PathBuf;

use byteorder::{BigEndian, ByteOrder};
use vdisk_core::{Error, Result};

/// "QFI\xfb".
pub const MAGIC: u32 = 0x5146_49fb;
/// Bytes of a version 2 header (and of the fields common to every version).
pub const V2_HEADER_LEN: u32 = 72;
/// Bytes of a version 3 header up to `header_length`, the least a version 3 image may have.
pub const V3_MIN_HEADER_LEN: u32 = 104;
/// Bytes of the version 3 header qemu (and vdisk) writes: up to the compression type, padded.
pub const V3_HEADER_LEN: u32 = 112;
/// Smallest and largest cluster sizes qemu opens (512 B and 2 MiB).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// See [`MIN_CLUSTER_BITS`].
pub const MAX_CLUSTER_BITS: u32 = 21;
/// qemu's limit on the active L1 table (32 MiB of entries).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// qemu's limit on the refcount table (8 MiB of entries).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// qemu's limit on a backing file name.
pub const MAX_BACKING_NAME: usize = 1023;

/// Header extension types.
pub mod ext {
    /// End of the extension area.
    pub const END: u32 = 0;
    /// The backing file's format name.
    pub const BACKING_FORMAT: u32 = 0xe279_2aca;
    /// Names of the feature bits the image uses.
    pub const FEATURE_NAMES: u32 = 0x6803_f857;
    /// Where the bitmap directory is.
    pub const BITMAPS: u32 = 0x2385_2875;
    /// Where a LUKS header is.
    pub const CRYPTO: u32 = 0x0537_be77;
    /// The external data file's name.
    pub const DATA_FILE: u32 = 0x4441_5441;
}

/// Incompatible feature bits (an implementation must refuse bits it does not know).
pub mod incompat {
    /// Refcounts may be stale (lazy refcounts, or a crash).
    pub const DIRTY: u64 = 1 << 0;
    /// Some metadata is known to be corrupt.
    pub const CORRUPT: u64 = 1 << 1;
    /// Guest clusters live in an external data file.
    pub const DATA_FILE: u64 = 1 << 2;
    /// `compression_type` (byte 104) is not deflate.
    pub const COMPRESSION: u64 = 1 << 3;
    /// 128-bit L2 entries with 32 subclusters each.
    pub const EXTENDED_L2: u64 = 1 << 4;
    /// Every bit vdisk knows.
    pub const KNOWN: u64 = DIRTY | CORRUPT | DATA_FILE | COMPRESSION | EXTENDED_L2;
}

/// Compatible feature bits.
pub mod compat {
    /// Refcount updates may be postponed (the image is then marked dirty while open).
    pub const LAZY_REFCOUNTS: u64 = 1 << 0;
}

/// Autoclear feature bits.
pub mod autoclear {
    /// The bitmaps extension is consistent.
    pub const BITMAPS: u64 = 1 << 0;
    /// The external data file is a consistent raw image on its own.
    pub const DATA_FILE_RAW: u64 = 1 << 1;
}

/// How compressed clusters are compressed (header byte 104).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Raw deflate (no zlib header), which qemu calls "zlib".
    Deflate,
    /// Zstandard frames.
    Zstd,
}

impl Compression {
    /// The name qemu-img prints.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Deflate => "zlib",
            Compression::Zstd => "zstd",
        }
    }
}

/// The header's fields as stored, before any check (version 2 images read the version 3
/// fields as their defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawHeader {
    /// Bytes 0-3.
    pub magic: u32,
    /// Bytes 4-7: 2 or 3.
    pub version: u32,
    /// Bytes 8-15: where the backing file name is (0: none).
    pub backing_file_offset: u64,
    /// Bytes 16-19: its length.
    pub backing_file_size: u32,
    /// Bytes 20-23: log2 of the cluster size.
    pub cluster_bits: u32,
    /// Bytes 24-31: virtual size in bytes.
    pub size: u64,
    /// Bytes 32-35: 0 none, 1 AES, 2 LUKS.
    pub crypt_method: u32,
    /// Bytes 36-39: entries of the active L1 table.
    pub l1_size: u32,
    /// Bytes 40-47: where it is.
    pub l1_table_offset: u64,
    /// Bytes 48-55: where the refcount table is.
    pub refcount_table_offset: u64,
    /// Bytes 56-59: its length in clusters.
    pub refcount_table_clusters: u32,
    /// Bytes 60-63: internal snapshots.
    pub nb_snapshots: u32,
    /// Bytes 64-71: where the snapshot table is.
    pub snapshots_offset: u64,
    /// Bytes 72-79 (v3).
    pub incompatible_features: u64,
    /// Bytes 80-87 (v3).
    pub compatible_features: u64,
    /// Bytes 88-95 (v3).
    pub autoclear_features: u64,
    /// Bytes 96-99 (v3; 4 for v2): refcount width is `1 << refcount_order` bits.
    pub refcount_order: u32,
    /// Bytes 100-103 (v3; 72 for v2).
    pub header_length: u32,
    /// Byte 104 (v3, when `header_length` > 104): 0 deflate, 1 zstd.
    pub compression_type: u8,
}

impl RawHeader {
    /// Read the fields from the start of the file (at least 72 bytes; a short version 3
    /// header is refused).
    pub fn read(b: &[u8]) -> Result<Self> {
        if b.len() < V2_HEADER_LEN as usize {
            return Err(Error::invalid(format!(
                "file of {} bytes is too short for a qcow2 header",
                b.len()
            )));
        }
        let mut h = RawHeader {
            magic: BigEndian::read_u32(&b[0..]),
            version: BigEndian::read_u32(&b[4..]),
            backing_file_offset: BigEndian::read_u64(&b[8..]),
            backing_file_size: BigEndian::read_u32(&b[16..]),
            cluster_bits: BigEndian::read_u32(&b[20..]),
            size: BigEndian::read_u64(&b[24..]),
            crypt_method: BigEndian::read_u32(&b[32..]),
            l1_size: BigEndian::read_u32(&b[36..]),
            l1_table_offset: BigEndian::read_u64(&b[40..]),
            refcount_table_offset: BigEndian::read_u64(&b[48..]),
            refcount_table_clusters: BigEndian::read_u32(&b[56..]),
            nb_snapshots: BigEndian::read_u32(&b[60..]),
            snapshots_offset: BigEndian::read_u64(&b[64..]),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            compression_type: 0,
        };
        if h.version >= 3 {
            if b.len() < V3_MIN_HEADER_LEN as usize {
                return Err(Error::invalid(format!(
                    "file of {} bytes is too short for a version 3 qcow2 header",
                    b.len()
                )));
            }
            h.incompatible_features = BigEndian::read_u64(&b[72..]);
            h.compatible_features = BigEndian::read_u64(&b[80..]);
            h.autoclear_features = BigEndian::read_u64(&b[88..]);
            h.refcount_order = BigEndian::read_u32(&b[96..]);
            h.header_length = BigEndian::read_u32(&b[100..]);
            if h.header_length > V3_MIN_HEADER_LEN && b.len() > V3_MIN_HEADER_LEN as usize {
                h.compression_type = b[104];
            }
        }
        Ok(h)
    }

    /// The header's bytes: 72 for version 2, `header_length` (at least 112) for version 3.
    pub fn to_bytes(&self) -> Vec<u8> {
        let len = if self.version >= 3 {
            self.header_length.max(V3_HEADER_LEN)
        } else {
            V2_HEADER_LEN
        };
        let mut b = vec![0u8; len as usize];
        BigEndian::write_u32(&mut b[0..], self.magic);
        BigEndian::write_u32(&mut b[4..], self.version);
        BigEndian::write_u64(&mut b[8..], self.backing_file_offset);
        BigEndian::write_u32(&mut b[16..], self.backing_file_size);
        BigEndian::write_u32(&mut b[20..], self.cluster_bits);
        BigEndian::write_u64(&mut b[24..], self.size);
        BigEndian::write_u32(&mut b[32..], self.crypt_method);
        BigEndian::write_u32(&mut b[36..], self.l1_size);
        BigEndian::write_u64(&mut b[40..], self.l1_table_offset);
        BigEndian::write_u64(&mut b[48..], self.refcount_table_offset);
        BigEndian::write_u32(&mut b[56..], self.refcount_table_clusters);
        BigEndian::write_u32(&mut b[60..], self.nb_snapshots);
        BigEndian::write_u64(&mut b[64..], self.snapshots_offset);
        if self.version >= 3 {
            BigEndian::write_u64(&mut b[72..], self.incompatible_features);
            BigEndian::write_u64(&mut b[80..], self.compatible_features);
            BigEndian::write_u64(&mut b[88..], self.autoclear_features);
            BigEndian::write_u32(&mut b[96..], self.refcount_order);
            BigEndian::write_u32(&mut b[100..], len);
            b[104] = self.compression_type;
        }
        b
    }
}

/// One entry of the feature name table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureName {
    /// 0 incompatible, 1 compatible, 2 autoclear.
    pub kind: u8,
    /// Bit number in that bitmask.
    pub bit: u8,
    /// The name.
    pub name: String,
}

/// The bitmaps extension: where the bitmap directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitmapsExtension {
    /// Bitmaps in the directory.
    pub count: u32,
    /// Bytes of the directory.
    pub directory_size: u64,
    /// Where it starts.
    pub directory_offset: u64,
}

/// The header, checked: every offset aligned and inside the file or refused.
#[derive(Debug, Clone)]
pub struct Header {
    /// The fields as stored.
    pub(crate) raw: RawHeader,
    /// Bytes per cluster.
    pub cluster_size: u64,
    /// Virtual size in bytes.
    pub size: u64,
    /// Whether L2 entries are 128 bits with subclusters.
    pub extended_l2: bool,
    /// How compressed clusters are compressed.
    pub compression: Compression,
    /// Bits per refcount.
    pub refcount_bits: u32,
    /// The backing file's name as written.
    pub backing_file: Option<PathBuf>,
    /// Its format, from the backing format extension.
    pub backing_format: Option<String>,
    /// The external data file's name.
    pub data_file: Option<PathBuf>,
    /// The bitmaps extension, if any.
    pub bitmaps: Option<BitmapsExtension>,
    /// The feature name table.
    pub feature_names: Vec<FeatureName>,
    /// Where the header extension area ends (the extensions and backing name lie before).
    pub extensions_end: u64,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::corrupt(msg)
}

/// Bytes as a path (names are bytes on Linux).
fn path_of(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

impl Header {
    /// Check the header in `head` (the file's first bytes: at least the first cluster, or
    /// the whole file when shorter) against a file of `file_len` bytes.
    pub fn parse(head: &[u8], file_len: u64) -> Result<Self> {
        let raw = RawHeader::read(head)?;
        if raw.magic != MAGIC {
            return Err(Error::invalid("not a qcow2 image (bad magic)"));
        }
        if raw.version == 1 {
            return Err(Error::unsupported(
                "a qcow (version 1) image: vdisk reads qcow2 (versions 2 and 3)",
            ));
        }
        if raw.version != 2 && raw.version != 3 {
            return Err(Error::unsupported(format!(
                "qcow2 version {} (vdisk reads versions 2 and 3)",
                raw.version
            )));
        }
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&raw.cluster_bits) {
            return Err(bad(format!(
                "cluster_bits {} is outside 9..=21 (512 bytes to 2 MiB)",
                raw.cluster_bits
            )));
        }
        let cluster_size = 1u64 << raw.cluster_bits;
        if raw.version >= 3 {
            if raw.header_length < V3_MIN_HEADER_LEN
                || raw.header_length % 8 != 0
                || u64::from(raw.header_length) > cluster_size
            {
                return Err(bad(format!(
                    "header_length {} is not a multiple of 8 between 104 and the cluster size",
                    raw.header_length
                )));
            }
            if raw.header_length as usize > head.len() {
                return Err(bad(format!(
                    "header_length {} runs past the end of the file",
                    raw.header_length
                )));
            }
        }
        match raw.crypt_method {
            0 => {}
            1 => {
                return Err(Error::unsupported(
                    "an encrypted qcow2 (AES) image: vdisk does not read encrypted images",
                ))
            }
            2 => {
                return Err(Error::unsupported(
                    "an encrypted qcow2 (LUKS) image: vdisk does not read encrypted images",
                ))
            }
            m => return Err(bad(format!("unknown crypt_method {m}"))),
        }
        if raw.version == 3 && raw.refcount_order > 6 {
            return Err(bad(format!(
                "refcount_order {} is above 6 (64-bit refcounts)",
                raw.refcount_order
            )));
        }
        vdisk_core::check_disk_size(raw.size)?;

        let mut h = Header {
            cluster_size,
            size: raw.size,
            extended_l2: raw.incompatible_features & incompat::EXTENDED_L2 != 0,
            compression: Compression::Deflate,
            refcount_bits: 1 << raw.refcount_order,
            backing_file: None,
            backing_format: None,
            data_file: None,
            bitmaps: None,
            feature_names: Vec::new(),
            extensions_end: 0,
            raw,
        };
        h.read_extensions(head)?;
        let raw = &h.raw;

        let unknown = raw.incompatible_features & !incompat::KNOWN;
        if unknown != 0 {
            let bit = unknown.trailing_zeros();
            let named = h
                .feature_names
                .iter()
                .find(|f| f.kind == 0 && u32::from(f.bit) == bit)
                .map(|f| format!(" (\"{}\")", f.name))
                .unwrap_or_default();
            return Err(Error::unsupported(format!(
                "qcow2 incompatible feature bit {bit}{named}, which vdisk does not know"
            )));
        }
        if raw.incompatible_features & incompat::COMPRESSION != 0 {
            h.compression = match raw.compression_type {
                1 => Compression::Zstd,
                0 => {
                    return Err(bad(
                        "the compression type bit is set but compression_type is 0 (deflate)",
                    ))
                }
                t => {
                    return Err(Error::unsupported(format!(
                        "qcow2 compression type {t} (vdisk reads zlib and zstd)"
                    )))
                }
            };
        } else if raw.compression_type != 0 {
            return Err(bad(format!(
                "compression_type {} without the compression type bit",
                raw.compression_type
            )));
        }
        if h.extended_l2 && raw.cluster_bits < 14 {
            return Err(bad(format!(
                "extended L2 entries need clusters of 16 KiB or more, not {cluster_size} bytes"
            )));
        }
        if raw.incompatible_features & incompat::DATA_FILE != 0 {
            if h.data_file.is_none() {
                return Err(Error::unsupported(
                    "the image keeps its data in an external data file it does not name",
                ));
            }
            if h.backing_file.is_some() && raw.autoclear_features & autoclear::DATA_FILE_RAW != 0 {
                return Err(bad("a raw external data file and a backing file"));
            }
        } else {
            h.data_file = None;
        }

        // The active L1 table: aligned, big enough for the disk, inside the file.
        let l1_needed = h.l1_entries_needed();
        let l1_size = u64::from(raw.l1_size);
        if l1_size < l1_needed {
            return Err(bad(format!(
                "L1 table of {l1_size} entries is too small for a disk of {} bytes ({l1_needed} needed)",
                raw.size
            )));
        }
        if l1_needed * 8 > MAX_L1_BYTES {
            return Err(Error::unsupported(format!(
                "a disk of {} bytes with {cluster_size}-byte clusters needs an L1 table above qemu's 32 MiB",
                raw.size
            )));
        }
        h.check_table("L1 table", raw.l1_table_offset, l1_size * 8, file_len)?;
        if raw.nb_snapshots > 0 {
            h.check_table(
                "snapshot table",
                raw.snapshots_offset,
                u64::from(raw.nb_snapshots) * 40,
                file_len,
            )?;
        }
        if !raw.refcount_table_offset.is_multiple_of(cluster_size) {
            return Err(bad(format!(
                "refcount table offset {} is not aligned to a cluster",
                raw.refcount_table_offset
            )));
        }
        Ok(h)
    }

    /// The header's version: 2 (compat 0.10) or 3 (compat 1.1).
    pub fn version(&self) -> u32 {
        self.raw.version
    }

    /// Where the active L1 table is in the file.
    pub fn l1_table_offset(&self) -> u64 {
        self.raw.l1_table_offset
    }

    /// Where the refcount table is in the file.
    pub fn refcount_table_offset(&self) -> u64 {
        self.raw.refcount_table_offset
    }

    /// Entries the active L1 table needs to map the whole disk.
    pub fn l1_entries_needed(&self) -> u64 {
        self.size.div_ceil(self.l2_coverage())
    }

    /// Entries of one L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size / if self.extended_l2 { 16 } else { 8 }
    }

    /// Bytes of disk one L2 table maps.
    pub fn l2_coverage(&self) -> u64 {
        self.cluster_size * self.l2_entries()
    }

    /// Whether the image is at the compat level 1.1 (version 3).
    pub fn is_v3(&self) -> bool {
        self.raw.version >= 3
    }

    /// Incompatible feature `bit` is set.
    pub fn incompatible(&self, bit: u64) -> bool {
        self.raw.incompatible_features & bit != 0
    }

    /// Whether refcount updates may be postponed.
    pub fn lazy_refcounts(&self) -> bool {
        self.raw.compatible_features & compat::LAZY_REFCOUNTS != 0
    }

    /// Whether the external data file is a raw image on its own.
    pub fn data_file_raw(&self) -> bool {
        self.data_file.is_some() && self.raw.autoclear_features & autoclear::DATA_FILE_RAW != 0
    }

    /// Check that `len` bytes of a table at `offset` are cluster-aligned and in the file.
    pub fn check_table(&self, what: &str, offset: u64, len: u64, file_len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if !offset.is_multiple_of(self.cluster_size) || offset == 0 {
            return Err(bad(format!(
                "{what} offset {offset} is not a cluster boundary past the header"
            )));
        }
        match offset.checked_add(len) {
            Some(end) if end <= file_len => Ok(()),
            _ => Err(bad(format!(
                "{what} ({len} bytes at offset {offset}) runs past the end of the file ({file_len} bytes)"
            ))),
        }
    }

    /// Read the header extensions (from the end of the header to the backing file name or
    /// the end of the first cluster) and the backing file name.
    fn read_extensions(&mut self, head: &[u8]) -> Result<()> {
        let raw = &self.raw;
        let first_cluster = (self.cluster_size as usize).min(head.len());
        let mut end = first_cluster;
        if raw.backing_file_offset != 0 {
            let off = raw.backing_file_offset;
            let len = u64::from(raw.backing_file_size);
            if len == 0 || len as usize > MAX_BACKING_NAME {
                return Err(bad(format!(
                    "backing file name of {len} bytes (1 to {MAX_BACKING_NAME})"
                )));
            }
            if off < u64::from(raw.header_length) || off.saturating_add(len) > self.cluster_size {
                return Err(bad(format!(
                    "backing file name ({len} bytes at offset {off}) is not in the first cluster after the header"
                )));
            }
            let name = head
                .get(off as usize..(off + len) as usize)
                .ok_or_else(|| {
                    bad(format!(
                        "backing file name at offset {off} runs past the end of the file"
                    ))
                })?;
            self.backing_file = Some(path_of(name));
            end = end.min(off as usize);
        }
        self.extensions_end = end as u64;
        // Version 2 images have extensions too, right after their 72 bytes.
        let mut pos = raw.header_length as usize;
        // Each extension takes at least 8 bytes: the loop ends within a cluster's worth.
        while pos + 8 <= end {
            let kind = BigEndian::read_u32(&head[pos..]);
            let len = BigEndian::read_u32(&head[pos + 4..]) as usize;
            if kind == ext::END {
                break;
            }
            let data_at = pos + 8;
            if len > end - data_at {
                return Err(bad(format!(
                    "header extension {kind:#010x} of {len} bytes at offset {pos} runs past the header area"
                )));
            }
            let data = &head[data_at..data_at + len];
            match kind {
                ext::BACKING_FORMAT => {
                    self.backing_format = Some(String::from_utf8_lossy(data).into_owned())
                }
                ext::DATA_FILE => self.data_file = Some(path_of(data)),
                ext::FEATURE_NAMES => {
                    self.feature_names = data
                        .chunks_exact(48)
                        .map(|e| {
                            let name = &e[2..];
                            let n = name.iter().position(|&c| c == 0).unwrap_or(name.len());
                            FeatureName {
                                kind: e[0],
                                bit: e[1],
                                name: String::from_utf8_lossy(&name[..n]).into_owned(),
                            }
                        })
                        .collect()
                }
                ext::BITMAPS => {
                    if len != 24 {
                        return Err(bad(format!(
                            "bitmaps extension of {len} bytes (24 expected)"
                        )));
                    }
                    self.bitmaps = Some(BitmapsExtension {
                        count: BigEndian::read_u32(data),
                        directory_size: BigEndian::read_u64(&data[8..]),
                        directory_offset: BigEndian::read_u64(&data[16..]),
                    });
                }
                // The LUKS header pointer only comes with crypt_method 2, refused before.
                ext::CRYPTO => {}
                // Unknown extensions may be ignored.
                _ => {}
            }
            pos = data_at + len.next_multiple_of(8);
        }
        Ok(())
    }
}

/// The first cluster of a new image: the header, the backing format extension when there
/// is a backing file, the feature name table when there is room for it (it is optional),
/// the end marker, then the backing file name.
pub fn header_cluster(
    raw: &RawHeader,
    backing: Option<(&[u8], &str)>,
    cluster_size: u64,
) -> Result<Vec<u8>> {
    if let Some((name, _)) = backing {
        if name.is_empty() || name.len() > MAX_BACKING_NAME {
            return Err(Error::invalid(format!(
                "backing file name of {} bytes (1 to {MAX_BACKING_NAME})",
                name.len()
            )));
        }
    }
    let build = |features: bool| {
        let mut raw = raw.clone();
        let mut b = raw.to_bytes();
        let push_ext = |b: &mut Vec<u8>, kind: u32, data: &[u8]| {
            let mut head = [0u8; 8];
            BigEndian::write_u32(&mut head[0..], kind);
            BigEndian::write_u32(&mut head[4..], data.len() as u32);
            b.extend_from_slice(&head);
            b.extend_from_slice(data);
            b.resize(b.len().next_multiple_of(8), 0);
        };
        if let Some((_, format)) = backing {
            push_ext(&mut b, ext::BACKING_FORMAT, format.as_bytes());
        }
        if features {
            push_ext(&mut b, ext::FEATURE_NAMES, &feature_name_table());
        }
        push_ext(&mut b, ext::END, &[]);
        if let Some((name, _)) = backing {
            raw.backing_file_offset = b.len() as u64;
            raw.backing_file_size = name.len() as u32;
            b.extend_from_slice(name);
            let fields = raw.to_bytes();
            b[..fields.len()].copy_from_slice(&fields);
        }
        b
    };
    let b = build(true);
    if b.len() as u64 <= cluster_size {
        return Ok(b);
    }
    let b = build(false);
    if b.len() as u64 > cluster_size {
        return Err(Error::invalid(format!(
            "the header and backing file name take {} bytes, more than a {cluster_size}-byte cluster",
            b.len()
        )));
    }
    Ok(b)
}

/// The feature name table qemu writes, so that old readers name what they refuse.
fn feature_name_table() -> Vec<u8> {
    const NAMES: [(u8, u8, &str); 7] = [
        (0, 0, "dirty bit"),
        (0, 1, "corrupt bit"),
        (0, 2, "external data file"),
        (0, 3, "compression type"),
        (0, 4, "extended L2 entries"),
        (1, 0, "lazy refcounts"),
        (2, 0, "bitmaps"),
    ];
    let mut t = Vec::with_capacity(NAMES.len() * 48);
    for (kind, bit, name) in NAMES {
        let mut e = [0u8; 48];
        e[0] = kind;
        e[1] = bit;
        e[2..2 + name.len()].copy_from_slice(name.as_bytes());
        t.extend_from_slice(&e);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version 3 header of a 1 MiB disk with 64 KiB clusters, spelled out byte by byte.
    fn v3_bytes() -> Vec<u8> {
        let mut b = vec![0u8; 65536];
        b[0..4].copy_from_slice(b"QFI\xfb"); // magic
        b[4..8].copy_from_slice(&3u32.to_be_bytes()); // version
        b[20..24].copy_from_slice(&16u32.to_be_bytes()); // cluster_bits
        b[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes()); // size
        b[36..40].copy_from_slice(&1u32.to_be_bytes()); // l1_size
        b[40..48].copy_from_slice(&(3u64 << 16).to_be_bytes()); // l1_table_offset
        b[48..56].copy_from_slice(&(1u64 << 16).to_be_bytes()); // refcount_table_offset
        b[56..60].copy_from_slice(&1u32.to_be_bytes()); // refcount_table_clusters
        b[96..100].copy_from_slice(&4u32.to_be_bytes()); // refcount_order
        b[100..104].copy_from_slice(&112u32.to_be_bytes()); // header_length
        b
    }

    #[test]
    fn version_3_fields_read_at_their_offsets() {
        let b = v3_bytes();
        let h = Header::parse(&b, 4 << 16).unwrap();
        assert_eq!(h.raw.version, 3);
        assert_eq!(h.cluster_size, 65536);
        assert_eq!(h.size, 1 << 20);
        assert_eq!(h.raw.l1_table_offset, 3 << 16);
        assert_eq!(h.refcount_bits, 16);
        assert_eq!(h.l2_entries(), 8192);
        assert_eq!(h.l1_entries_needed(), 1);
        assert_eq!(h.compression, Compression::Deflate);
        assert!(h.backing_file.is_none());
        // Round trip of the fields.
        assert_eq!(RawHeader::read(&h.raw.to_bytes()).unwrap(), h.raw);
    }

    #[test]
    fn extensions_and_backing_name_are_found() {
        let mut raw = RawHeader::read(&v3_bytes()).unwrap();
        raw.incompatible_features = incompat::COMPRESSION;
        raw.compression_type = 1;
        let mut b = header_cluster(&raw, Some((b"base.raw", "raw")), 65536).unwrap();
        b.resize(65536, 0);
        let h = Header::parse(&b, 4 << 16).unwrap();
        assert_eq!(
            h.backing_file.as_deref(),
            Some(std::path::Path::new("base.raw"))
        );
        assert_eq!(h.backing_format.as_deref(), Some("raw"));
        assert_eq!(h.compression, Compression::Zstd);
        assert_eq!(h.feature_names.len(), 7);
        assert_eq!(h.feature_names[4].name, "extended L2 entries");
    }

    #[test]
    fn refusals_name_the_field() {
        let cases: [(usize, &[u8], &str); 6] = [
            (0, b"QFI\xfa", "magic"),
            (4, &4u32.to_be_bytes(), "version 4"),
            (20, &22u32.to_be_bytes(), "cluster_bits 22"),
            (32, &2u32.to_be_bytes(), "(LUKS)"),
            (36, &0u32.to_be_bytes(), "L1 table of 0 entries"),
            (72, &(1u64 << 9).to_be_bytes(), "feature bit 9"),
        ];
        for (at, bytes, want) in cases {
            let mut b = v3_bytes();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            let e = Header::parse(&b, 4 << 16).unwrap_err();
            assert!(e.to_string().contains(want), "{e} lacks {want}");
        }
        // The L1 table past the end of a short file.
        let e = Header::parse(&v3_bytes(), 3 << 16).unwrap_err();
        assert!(e.to_string().contains("L1 table"), "{e}");
        // A huge virtual size.
        let mut b = v3_bytes();
        b[24..32].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(Header::parse(&b, 4 << 16).is_err());
    }
}
