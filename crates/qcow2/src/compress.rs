//! Compressed clusters: raw deflate (qemu's "zlib") and zstd, inflated to exactly one
//! cluster, the way qemu does it; and zstd compression for the writer.
//!
//! Contexts are kept per thread: creating a zstd context costs more than inflating a 64 KiB
//! cluster, and reads of a compressed image run on every rayon thread at once.

use std::cell::RefCell;

use flate2::{Decompress, FlushDecompress};
use vdisk_core::{Error, Result};
use zstd::zstd_safe::{CCtx, DCtx, InBuffer, OutBuffer, ResetDirective};

use crate::header::Compression;

/// The zstd level the writer uses: level 1 packs ordinary disk contents within a few per
/// cent of qemu's level 3 at about twice its speed.
pub const ZSTD_LEVEL: i32 = 1;

thread_local! {
    static INFLATE: RefCell<Option<Decompress>> = const { RefCell::new(None) };
    static ZSTD_D: RefCell<Option<DCtx<'static>>> = const { RefCell::new(None) };
    static ZSTD_C: RefCell<Option<CCtx<'static>>> = const { RefCell::new(None) };
}

/// Inflate the compressed bytes `src` into all of `dst` (one cluster). `src` may run past
/// the end of the compressed data (to the end of its last sector): what follows is ignored.
pub fn decompress(kind: Compression, src: &[u8], dst: &mut [u8]) -> Result<()> {
    match kind {
        Compression::Deflate => inflate(src, dst),
        Compression::Zstd => unzstd(src, dst),
    }
}

fn inflate(src: &[u8], dst: &mut [u8]) -> Result<()> {
    INFLATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        // Raw deflate (no zlib header), as qemu writes it.
        let d = slot.get_or_insert_with(|| Decompress::new(false));
        d.reset(false);
        let r = d.decompress(src, dst, FlushDecompress::Finish);
        // qemu accepts a buffer error (the input ends mid-sector) as long as the cluster is
        // whole.
        match r {
            Ok(_) if d.total_out() == dst.len() as u64 => Ok(()),
            Ok(_) => Err(Error::corrupt(format!(
                "compressed cluster inflates to {} bytes, not {}",
                d.total_out(),
                dst.len()
            ))),
            Err(e) => Err(Error::corrupt(format!(
                "compressed cluster does not inflate: {e}"
            ))),
        }
    })
}

fn unzstd(src: &[u8], dst: &mut [u8]) -> Result<()> {
    ZSTD_D.with(|cell| {
        let mut slot = cell.borrow_mut();
        let d = match &mut *slot {
            Some(d) => d,
            None => slot.insert(DCtx::try_create().ok_or_else(|| {
                Error::new(
                    vdisk_core::ErrorKind::Io,
                    "cannot allocate a zstd decompression context",
                )
            })?),
        };
        let bad = |why: String| Error::corrupt(format!("compressed zstd cluster: {why}"));
        d.reset(ResetDirective::SessionOnly)
            .map_err(|c| bad(zstd::zstd_safe::get_error_name(c).to_string()))?;
        let want = dst.len();
        let mut input = InBuffer::around(src);
        let mut output = OutBuffer::around(dst);
        // As qemu: frames are decoded until the cluster is full; every step must make
        // progress, so the loop ends within the input's and the output's length.
        while output.pos() < want {
            let (in_before, out_before) = (input.pos(), output.pos());
            d.decompress_stream(&mut output, &mut input)
                .map_err(|c| bad(zstd::zstd_safe::get_error_name(c).to_string()))?;
            if input.pos() <= in_before && output.pos() <= out_before {
                return Err(bad(format!(
                    "the data ends after {} of {want} bytes",
                    output.pos()
                )));
            }
        }
        Ok(())
    })
}

/// Compress one cluster with zstd; `None` when the result would not be smaller than the
/// cluster (it is then stored as it is).
pub fn zstd_cluster(src: &[u8]) -> Option<Vec<u8>> {
    ZSTD_C.with(|cell| {
        let mut slot = cell.borrow_mut();
        let c = match &mut *slot {
            Some(c) => c,
            None => slot.insert(CCtx::try_create()?),
        };
        // At most one byte less than a cluster, as qemu: a frame that does not fit is
        // refused by zstd and the cluster is stored plain.
        let mut out = Vec::with_capacity(src.len().saturating_sub(1));
        match c.compress(&mut out, src, ZSTD_LEVEL) {
            Ok(n) if n < src.len() => Some(out),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sample() -> Vec<u8> {
        (0..65536u32)
            .map(|i| (i / 7 % 13) as u8 ^ (i >> 12) as u8)
            .collect()
    }

    #[test]
    fn raw_deflate_with_trailing_bytes_inflates_to_the_cluster() {
        let data = sample();
        let mut enc =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&data).unwrap();
        let mut packed = enc.finish().unwrap();
        packed.extend_from_slice(&[0xaa; 300]); // the rest of the last sector
        let mut out = vec![0u8; 65536];
        decompress(Compression::Deflate, &packed, &mut out).unwrap();
        assert_eq!(out, data);
        // Too short an output is fine (the cluster is full), too long is not.
        let mut long = vec![0u8; 65536 * 2];
        assert!(decompress(Compression::Deflate, &packed, &mut long).is_err());
        assert!(decompress(Compression::Deflate, &[0xff; 64], &mut out).is_err());
    }

    #[test]
    fn zstd_round_trip_and_garbage() {
        let data = sample();
        let mut packed = zstd_cluster(&data).unwrap();
        assert!(packed.len() < data.len());
        packed.extend_from_slice(&[0x55; 100]);
        let mut out = vec![0u8; 65536];
        decompress(Compression::Zstd, &packed, &mut out).unwrap();
        assert_eq!(out, data);
        // The context survives an error.
        assert!(decompress(Compression::Zstd, &[1, 2, 3, 4, 5, 6], &mut out).is_err());
        assert!(decompress(Compression::Zstd, &packed[..10], &mut out).is_err());
        out.fill(0);
        decompress(Compression::Zstd, &packed, &mut out).unwrap();
        assert_eq!(out, data);
        // Random bytes do not compress.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(zstd_cluster(&noise).is_none());
    }
}
