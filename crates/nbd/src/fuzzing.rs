//! Entry points shared by the cargo-fuzz target in `fuzz/` and the corpus replay tests.
//! Each takes arbitrary bytes and must return without panicking, whatever they are.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use vdisk_core::{check_range, Allocation, DiskImage, Error, Extent, Result};

use crate::export::{Export, ExportConfig};
use crate::handshake::negotiate;
use crate::transmission::{ChunkBuf, Connection, Inline};

/// Size of the image the fuzzed server exports: small, so that no read is expensive.
const SIZE: u64 = 64 << 10;

/// A 64 KiB image with every kind of range: data `[0, 16K)`, zero `[16K, 32K)`,
/// unallocated `[32K, 48K)`, data `[48K, 64K)` whose reads fail in `[56K, 60K)`, and an
/// allocation map that fails for windows starting at 62K or later.
struct FuzzImage;

impl DiskImage for FuzzImage {
    fn size(&self) -> u64 {
        SIZE
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(SIZE, offset, buf.len() as u64)?;
        let end = offset + buf.len() as u64;
        if offset < 60 << 10 && end > 56 << 10 {
            return Err(Error::corrupt("grain hash mismatch"));
        }
        for (i, b) in buf.iter_mut().enumerate() {
            let at = offset + i as u64;
            *b = if (16 << 10..48 << 10).contains(&at) {
                0
            } else {
                (at % 251) as u8
            };
        }
        Ok(())
    }

    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        check_range(SIZE, offset, length)?;
        if offset >= 62 << 10 {
            return Err(Error::corrupt("grain table unreadable"));
        }
        let kinds = [
            (0, Allocation::Data),
            (16 << 10, Allocation::Zero),
            (32 << 10, Allocation::Unallocated),
            (48 << 10, Allocation::Data),
        ];
        let end = offset + length;
        let mut map = Vec::new();
        for (i, &(start, allocation)) in kinds.iter().enumerate() {
            let stop = kinds.get(i + 1).map_or(SIZE, |k| k.0);
            let (s, e) = (start.max(offset), stop.min(end));
            if s < e {
                map.push(Extent {
                    start: s,
                    length: e - s,
                    allocation,
                    depth: 0,
                });
            }
        }
        Ok(map)
    }

    fn format_name(&self) -> &'static str {
        "fuzz"
    }
}

/// The client's bytes in, the server's bytes dropped.
struct Duplex<'a, 'b> {
    input: &'a mut &'b [u8],
}

impl Read for Duplex<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Duplex<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Feed `data` to the server as everything a client sends on one connection: the
/// handshake (options), then transmission requests, served one at a time in this thread.
pub fn client_bytes(data: &[u8]) {
    let config = ExportConfig::new("fuzz").with_description("a fuzzed export");
    let export = Export::new(Arc::new(FuzzImage), config);
    let mut input = data;
    let negotiated = negotiate(&mut Duplex { input: &mut input }, &export);
    let Ok(Some(negotiated)) = negotiated else {
        return;
    };
    let close = || {};
    let conn = Connection::new(&export, negotiated, io::sink(), &close);
    let inline = Inline {
        conn: &conn,
        buf: Mutex::new(ChunkBuf::default()),
    };
    conn.read_requests(&mut input, &inline);
}
