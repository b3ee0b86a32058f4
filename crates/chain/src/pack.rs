//! Blobs and packs.
//!
//! A *blob* is one block of a disk, or one chunk of a disk's index, as stored: a byte saying
//! how it is encoded (0 as it is, 1 zstd), then the bytes, sealed with the block's id as
//! associated data. Opening one checks the seal, inflates it (never past the most a blob may
//! hold), and checks that the bytes hash to the id: what comes out is what went in, or an
//! error.
//!
//! A *pack* (`data/XX/PACKID`, some MiB) is blobs one after another, then the pack's header
//! (sealed with the pack's id: a list of `(id, offset, length)`), then the header's length
//! (u32, little-endian) and the magic `VDPACK03`. The index says where each blob is; the
//! header lets a pack be checked or re-indexed on its own.

use std::cell::RefCell;

use vdisk_core::{Error, ErrorKind, Result};

use crate::crypto::{BlockId, Keys, Kind, ID_LEN};

/// The magic at the end of a pack.
pub const PACK_MAGIC: &[u8; 8] = b"VDPACK03";
/// Bytes of a pack's trailer: header length and magic.
const TRAILER: usize = 12;
/// Bytes of one entry of a pack's header.
const HEADER_ENTRY: usize = ID_LEN + 8;
/// Largest pack read (packs are written at about [`PACK_TARGET`]; a blob may push one over).
pub const MAX_PACK: u64 = 256 << 20;
/// Packs are closed once they hold this much.
pub const PACK_TARGET: usize = 16 << 20;
/// zstd level of blocks: level 3 is zstd's default, the best size for its speed here.
const ZSTD_LEVEL: i32 = 3;

/// How a blob's bytes are encoded inside its seal.
const RAW: u8 = 0;
const ZSTD: u8 = 1;

/// The name of pack `id` (32 hex digits): `data/XX/ID`.
pub fn pack_name(id: &str) -> String {
    format!("data/{}/{id}", &id[..2])
}

/// The pack id in `name` (`data/XX/ID`), if it is one.
pub fn pack_id_of(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("data/")?;
    let (dir, id) = rest.split_once('/')?;
    (id.len() == 32 && id.starts_with(dir) && dir.len() == 2 && is_hex(id)).then_some(id)
}

/// Whether `s` is lowercase hex.
pub fn is_hex(s: &str) -> bool {
    s.bytes()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// Seal `data` (a block, or a chunk of an index) whose id is `id`, compressed where that
/// pays: the bytes a pack holds for it.
pub fn seal_blob(keys: &Keys, id: &BlockId, data: &[u8]) -> Result<Vec<u8>> {
    thread_local! {
        static WORK: RefCell<(Option<zstd::bulk::Compressor<'static>>, Vec<u8>)> =
            const { RefCell::new((None, Vec::new())) };
    }
    WORK.with(|w| {
        let mut w = w.borrow_mut();
        let (comp, buf) = &mut *w;
        if comp.is_none() {
            *comp = Some(
                zstd::bulk::Compressor::new(ZSTD_LEVEL)
                    .map_err(|e| Error::new(ErrorKind::Io, format!("zstd: {e}")))?,
            );
        }
        let c = comp
            .as_mut()
            .ok_or_else(|| Error::invalid("no compressor"))?;
        buf.clear();
        buf.reserve(data.len() + 1);
        buf.push(ZSTD);
        // Compressed only where it saves at least 1/32: keeping the rest raw costs little
        // space and saves inflating it on every read.
        let limit = data.len() - data.len() / 32;
        buf.resize(1 + limit, 0);
        let packed = match c.compress_to_buffer(data, &mut buf[1..]) {
            Ok(n) if n < limit => Some(n),
            _ => None,
        };
        match packed {
            Some(n) => buf.truncate(1 + n),
            None => {
                buf.clear();
                buf.push(RAW);
                buf.extend_from_slice(data);
            }
        }
        keys.seal(Kind::Blob, &id.0, buf)
    })
}

/// Open a blob sealed for `id`: its bytes, checked against the id, at most `max` long.
pub fn open_blob(keys: &Keys, id: &BlockId, sealed: &[u8], max: usize) -> Result<Vec<u8>> {
    let plain = keys.open(Kind::Blob, &id.0, sealed)?;
    let (&how, body) = plain
        .split_first()
        .ok_or_else(|| Error::corrupt("blob is empty"))?;
    let data = match how {
        RAW => body.to_vec(),
        ZSTD => with_decompressor(|d| d.decompress(body, max))
            .map_err(|e| Error::corrupt(format!("blob does not inflate: {e}")))?,
        other => return Err(Error::corrupt(format!("blob encoding {other} is unknown"))),
    };
    if data.len() > max {
        return Err(Error::corrupt("blob is larger than a block"));
    }
    check_id(keys, id, &data)?;
    Ok(data)
}

/// Open a blob sealed for `id` in place (`sealed` is overwritten) into `out`, which its
/// bytes must fill exactly; checked against the id. On an error `out` holds no meaning.
/// (A restore's whole blocks: no buffer allocated, no copy made.)
pub fn open_blob_into(keys: &Keys, id: &BlockId, sealed: &mut [u8], out: &mut [u8]) -> Result<()> {
    let plain = keys.open_in_place(Kind::Blob, &id.0, sealed)?;
    let (&how, body) = plain
        .split_first()
        .ok_or_else(|| Error::corrupt("blob is empty"))?;
    let n = match how {
        RAW => {
            if body.len() == out.len() {
                out.copy_from_slice(body);
            }
            body.len()
        }
        ZSTD => with_decompressor(|d| d.decompress_to_buffer(body, &mut *out)).map_err(|e| {
            Error::corrupt(format!("blob does not inflate to {} bytes: {e}", out.len()))
        })?,
        other => return Err(Error::corrupt(format!("blob encoding {other} is unknown"))),
    };
    if n != out.len() {
        return Err(Error::corrupt(format!(
            "blob holds {n} bytes, not the {} expected",
            out.len()
        )));
    }
    check_id(keys, id, out)
}

/// Whether `data` hashes to `id`.
fn check_id(keys: &Keys, id: &BlockId, data: &[u8]) -> Result<()> {
    if keys.block_id(data) != *id {
        return Err(Error::corrupt(
            "blob's bytes do not hash to its id (damaged or replaced)",
        ));
    }
    Ok(())
}

/// Run `f` with this thread's zstd decompressor (made once per thread, not once per blob).
fn with_decompressor<T>(
    f: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> std::io::Result<T>,
) -> std::io::Result<T> {
    thread_local! {
        static D: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    }
    D.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        match d.as_mut() {
            Some(d) => f(d),
            None => Err(std::io::Error::other("no decompressor")),
        }
    })
}

/// Check only the seal of a blob sealed for `id` (sync's check before a blob leaves: the
/// full check, [`check_blob`], is made on arrival).
pub fn check_seal(keys: &Keys, id: &BlockId, sealed: &[u8]) -> Result<()> {
    keys.open(Kind::Blob, &id.0, sealed).map(|_| ())
}

/// Check a sealed blob without keeping its bytes (sync's check on arrival, verify).
pub fn check_blob(keys: &Keys, id: &BlockId, sealed: &[u8], max: usize) -> Result<()> {
    open_blob(keys, id, sealed, max).map(|_| ())
}

/// One blob of a pack, as its header lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// The blob's id.
    pub id: BlockId,
    /// Its first byte in the pack.
    pub offset: u32,
    /// Its sealed length.
    pub len: u32,
}

/// A pack being filled.
#[derive(Debug)]
pub struct PackBuilder {
    /// The pack's id (32 hex digits).
    pub id: String,
    bytes: Vec<u8>,
    entries: Vec<PackEntry>,
}

impl PackBuilder {
    /// An empty pack with a fresh random id.
    pub fn new() -> Result<Self> {
        Ok(PackBuilder {
            id: crate::crypto::random_id()?,
            bytes: Vec::with_capacity(PACK_TARGET + (1 << 20)),
            entries: Vec::new(),
        })
    }

    /// Add a sealed blob; returns where it lies.
    pub fn add(&mut self, id: BlockId, sealed: &[u8]) -> PackEntry {
        let e = PackEntry {
            id,
            offset: self.bytes.len() as u32,
            len: sealed.len() as u32,
        };
        self.bytes.extend_from_slice(sealed);
        self.entries.push(e);
        e
    }

    /// Whether the pack is full enough to close.
    pub fn full(&self) -> bool {
        self.bytes.len() >= PACK_TARGET
    }

    /// The pack's bytes (blobs, sealed header, trailer) and its entries.
    pub fn finish(mut self, keys: &Keys) -> Result<(String, Vec<u8>, Vec<PackEntry>)> {
        let mut header = Vec::with_capacity(4 + self.entries.len() * HEADER_ENTRY);
        header.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            header.extend_from_slice(&e.id.0);
            header.extend_from_slice(&e.offset.to_le_bytes());
            header.extend_from_slice(&e.len.to_le_bytes());
        }
        let sealed = keys.seal(Kind::PackHeader, self.id.as_bytes(), &header)?;
        self.bytes.extend_from_slice(&sealed);
        self.bytes
            .extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(PACK_MAGIC);
        Ok((self.id, self.bytes, self.entries))
    }
}

/// Where a pack's sealed header lies, from its last [`TRAILER`] bytes and its length.
pub fn header_range(trailer: &[u8], pack_len: u64) -> Result<(u64, u64)> {
    if trailer.len() != TRAILER || &trailer[4..] != PACK_MAGIC {
        return Err(Error::corrupt("is not a pack (no pack trailer)"));
    }
    let n = u64::from(u32::from_le_bytes(
        trailer[..4].try_into().unwrap_or([0; 4]),
    ));
    let start = pack_len
        .checked_sub(TRAILER as u64)
        .and_then(|e| e.checked_sub(n))
        .ok_or_else(|| Error::corrupt("pack header is longer than the pack"))?;
    Ok((start, n))
}

/// Bytes of a pack's trailer.
pub const fn trailer_len() -> u64 {
    TRAILER as u64
}

/// Open and check the sealed header of pack `id` whose blobs end at `blobs_end`: its
/// entries, contiguous from 0 to `blobs_end`.
pub fn decode_header(
    keys: &Keys,
    id: &str,
    sealed: &[u8],
    blobs_end: u64,
) -> Result<Vec<PackEntry>> {
    let h = keys.open(Kind::PackHeader, id.as_bytes(), sealed)?;
    let count = u32::from_le_bytes(
        h.get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::corrupt("pack header is cut short"))?,
    ) as usize;
    if h.len() != 4 + count.saturating_mul(HEADER_ENTRY) {
        return Err(Error::corrupt(
            "pack header's length does not match its count",
        ));
    }
    let mut at = 0u64;
    let mut out = Vec::with_capacity(count);
    for c in h[4..].chunks_exact(HEADER_ENTRY) {
        let e = PackEntry {
            id: BlockId::from_slice(&c[..ID_LEN]).unwrap_or_default(),
            offset: u32::from_le_bytes(c[ID_LEN..ID_LEN + 4].try_into().unwrap_or([0; 4])),
            len: u32::from_le_bytes(c[ID_LEN + 4..].try_into().unwrap_or([0; 4])),
        };
        if u64::from(e.offset) != at || e.len == 0 || e.id.is_zero() {
            return Err(Error::corrupt("pack header lists blobs out of place"));
        }
        at += u64::from(e.len);
        out.push(e);
    }
    if at != blobs_end {
        return Err(Error::corrupt(
            "pack header does not cover the pack's blobs",
        ));
    }
    Ok(out)
}

/// Parse a whole pack `id`: its entries (header checked; blobs not opened).
pub fn parse_pack(keys: &Keys, id: &str, bytes: &[u8]) -> Result<Vec<PackEntry>> {
    let len = bytes.len() as u64;
    let trailer = bytes
        .get(bytes.len().saturating_sub(TRAILER)..)
        .filter(|t| t.len() == TRAILER)
        .ok_or_else(|| Error::corrupt("is not a pack (too short)"))?;
    let (start, n) = header_range(trailer, len)?;
    decode_header(
        keys,
        id,
        &bytes[start as usize..(start + n) as usize],
        start,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    /// A block that compresses well and one that does not.
    fn samples() -> (Vec<u8>, Vec<u8>) {
        let text = b"compressible ".repeat(5000);
        let random = (0..65536u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        (text, random)
    }

    #[test]
    fn blobs_round_trip_compressed_or_raw_and_fail_when_touched() {
        for enc in [false, true] {
            let keys = Keys::derive(&MasterKey::generate().unwrap(), enc);
            let (text, random) = samples();
            for data in [&text[..], &random[..], b"x"] {
                let id = keys.block_id(data);
                let s = seal_blob(&keys, &id, data).unwrap();
                assert_eq!(open_blob(&keys, &id, &s, 1 << 20).unwrap(), data);
                // Too small a limit: refused, not allocated.
                if data.len() > 10 {
                    assert!(open_blob(&keys, &id, &s, 10).is_err());
                }
                let other = keys.block_id(b"other");
                assert!(open_blob(&keys, &other, &s, 1 << 20).is_err());
                let mut t = s.clone();
                let n = t.len();
                t[n / 2] ^= 1;
                assert!(open_blob(&keys, &id, &t, 1 << 20).is_err());
            }
            let id = keys.block_id(&text);
            assert!(seal_blob(&keys, &id, &text).unwrap().len() < text.len() / 10);
        }
    }

    #[test]
    fn blobs_open_in_place_into_exactly_their_length_or_not_at_all() {
        for enc in [false, true] {
            let keys = Keys::derive(&MasterKey::generate().unwrap(), enc);
            let (text, random) = samples();
            for data in [&text[..], &random[..]] {
                let id = keys.block_id(data);
                let sealed = seal_blob(&keys, &id, data).unwrap();
                let mut out = vec![0u8; data.len()];
                open_blob_into(&keys, &id, &mut sealed.clone(), &mut out).unwrap();
                assert_eq!(out, data);
                // A buffer one byte short or long, another id, a flipped byte: refused.
                for len in [data.len() - 1, data.len() + 1] {
                    let mut o = vec![0u8; len];
                    assert!(open_blob_into(&keys, &id, &mut sealed.clone(), &mut o).is_err());
                }
                let other = keys.block_id(b"other");
                assert!(open_blob_into(&keys, &other, &mut sealed.clone(), &mut out).is_err());
                let mut t = sealed.clone();
                let n = t.len();
                t[n / 3] ^= 8;
                assert!(open_blob_into(&keys, &id, &mut t, &mut out).is_err());
            }
        }
    }

    #[test]
    fn a_pack_lists_its_blobs_and_any_damage_to_its_header_is_found() {
        let keys = Keys::derive(&MasterKey::generate().unwrap(), true);
        let mut p = PackBuilder::new().unwrap();
        let mut ids = Vec::new();
        for i in 0..5u8 {
            let d = vec![i + 1; 1000];
            let id = keys.block_id(&d);
            let s = seal_blob(&keys, &id, &d).unwrap();
            p.add(id, &s);
            ids.push(id);
        }
        let (pid, bytes, entries) = p.finish(&keys).unwrap();
        assert_eq!(parse_pack(&keys, &pid, &bytes).unwrap(), entries);
        assert_eq!(entries.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
        // Under another pack's name, cut, or flipped anywhere in the header: refused.
        let other = crate::crypto::random_id().unwrap();
        assert!(parse_pack(&keys, &other, &bytes).is_err());
        for cut in [0, 1, 12, bytes.len() - 1] {
            assert!(parse_pack(&keys, &pid, &bytes[..cut]).is_err());
        }
        let last = entries.last().unwrap();
        let header_start = (last.offset + last.len) as usize;
        for i in header_start..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 4;
            assert!(parse_pack(&keys, &pid, &b).is_err(), "flip at {i}");
        }
        assert_eq!(pack_id_of(&pack_name(&pid)), Some(pid.as_str()));
        assert_eq!(pack_id_of("data/ab/cd"), None);
    }
}
