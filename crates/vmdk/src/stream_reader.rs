//! Reading a streamOptimized image front to back from any `Read` (a pipe, standard input),
//! without seeking: the header, then markers one after another until the end of the stream.
//! Works for VMware's layout (tables after the grains, behind markers) and qemu-img's (tables
//! before the grains, skipped as part of the header area).

use std::io::Read;

use rayon::prelude::*;
use vdisk_core::{Error, Result, SECTOR};

use crate::header::SparseHeader;
use crate::marker::{Marker, MarkerType};
use crate::sparse::inflate_grain;

/// Largest metadata payload skipped after a GT or GD marker, in sectors: a directory for the
/// largest disk qemu-img accepts (32 Mi entries) is 256 Ki sectors.
const MAX_META_SECTORS: u64 = 1 << 18;

/// A streamOptimized image being read front to back.
pub struct StreamReader<R: Read> {
    input: R,
    header: SparseHeader,
    /// Bytes consumed so far.
    pos: u64,
    /// One past the last grain seen, in grains (grains must come in increasing order).
    next_grain: u64,
    done: bool,
}

impl<R: Read> StreamReader<R> {
    /// Read and check the header, and skip to the first grain.
    pub fn new(mut input: R) -> Result<Self> {
        let mut head = [0u8; 512];
        read_exact(&mut input, &mut head, 0)?;
        let header = SparseHeader::parse(&head)?;
        // The length is unknown: check fields against the largest possible file.
        header.validate(u64::MAX)?;
        if !(header.flags.compressed() && header.flags.markers()) {
            return Err(Error::unsupported(
                "only streamOptimized images (compressed grains with markers) can be read from a stream",
            ));
        }
        let mut me = StreamReader {
            input,
            header,
            pos: 512,
            next_grain: 0,
            done: false,
        };
        let start = header.overhead.max(1).saturating_mul(SECTOR);
        me.skip(start - me.pos)?;
        Ok(me)
    }

    /// The header at the start of the stream.
    pub fn header(&self) -> &SparseHeader {
        &self.header
    }

    /// The disk's size in bytes.
    pub fn capacity(&self) -> u64 {
        self.header.capacity * SECTOR
    }

    fn skip(&mut self, mut n: u64) -> Result<()> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            read_exact(&mut self.input, &mut buf[..k], self.pos)?;
            self.pos += k as u64;
            n -= k as u64;
        }
        Ok(())
    }

    /// The next compressed grain: (grain index, compressed bytes), or `None` at the end.
    fn next_compressed(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
        let gb = self.header.grain_bytes();
        loop {
            if self.done {
                return Ok(None);
            }
            let mut m = [0u8; 12];
            // The end of the input at a marker boundary ends a stream without an EOS marker.
            let got = read_some(&mut self.input, &mut m, self.pos)?;
            if got == 0 {
                self.done = true;
                return Ok(None);
            }
            if got < m.len() {
                return Err(Error::corrupt("stream ends inside a marker").at(self.pos));
            }
            let at = self.pos;
            self.pos += 12;
            let mut full = [0u8; 16];
            full[..12].copy_from_slice(&m);
            let grain_marker = m[8..12] != [0, 0, 0, 0];
            if !grain_marker {
                // A metadata marker: the type is in the rest of its sector.
                let mut rest = [0u8; 500];
                read_exact(&mut self.input, &mut rest, self.pos)?;
                self.pos += 500;
                full[12..].copy_from_slice(&rest[..4]);
            }
            match Marker::parse(&full)? {
                Marker::Grain { lba, size } => {
                    let size = u64::from(size);
                    // Incompressible data grows by a few bytes per 16 KiB; anything far larger
                    // is damage, not a grain.
                    if size > gb + gb / 8 + 1024 {
                        return Err(Error::corrupt(format!("compressed grain of {size} bytes is larger than a grain could compress to")).at(at));
                    }
                    if lba % self.header.grain_size != 0 || lba >= self.header.capacity {
                        return Err(Error::corrupt(format!("grain marker for sector {lba}, which does not start a grain of the disk")).at(at));
                    }
                    let grain = lba / self.header.grain_size;
                    if grain < self.next_grain {
                        return Err(Error::corrupt("grains are not in increasing order, so the image cannot be read as a stream").at(at));
                    }
                    self.next_grain = grain + 1;
                    let mut data = vec![0u8; size as usize];
                    read_exact(&mut self.input, &mut data, self.pos)?;
                    self.pos += size;
                    // Grains start on sector boundaries.
                    self.skip(self.pos.next_multiple_of(SECTOR) - self.pos)?;
                    return Ok(Some((grain, data)));
                }
                Marker::Meta { kind, value } => match kind {
                    MarkerType::EndOfStream => self.done = true,
                    MarkerType::GrainTable | MarkerType::GrainDirectory | MarkerType::Footer => {
                        if value > MAX_META_SECTORS {
                            return Err(Error::corrupt(format!(
                                "metadata marker declares {value} sectors"
                            ))
                            .at(at));
                        }
                        self.skip(value * SECTOR)?;
                    }
                    MarkerType::Unknown(t) => {
                        return Err(Error::corrupt(format!("unknown stream marker type {t}")).at(at))
                    }
                },
            }
        }
    }

    /// Up to `max` next grains, inflated in parallel: (byte offset on the disk, data), the last
    /// grain of the disk cut to the disk's size. Empty at the end of the stream.
    pub fn next_grains(&mut self, max: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut compressed = Vec::new();
        while compressed.len() < max {
            match self.next_compressed()? {
                Some(g) => compressed.push(g),
                None => break,
            }
        }
        let gb = self.header.grain_bytes();
        let capacity = self.capacity();
        compressed
            .into_par_iter()
            .map(|(grain, input)| {
                let mut out = vec![0u8; gb as usize];
                inflate_grain(&input, &mut out)
                    .map_err(|what| Error::corrupt(format!("compressed grain {grain} {what}")))?;
                let off = grain * gb;
                out.truncate((capacity - off).min(gb) as usize);
                Ok((off, out))
            })
            .collect()
    }
}

fn read_some(r: &mut impl Read, buf: &mut [u8], at: u64) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("cannot read the stream", e).at(at)),
        }
    }
    Ok(n)
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], at: u64) -> Result<()> {
    if read_some(r, buf, at)? < buf.len() {
        return Err(Error::corrupt("stream ends early (truncated?)").at(at));
    }
    Ok(())
}
