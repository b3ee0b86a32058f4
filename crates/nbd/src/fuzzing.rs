//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the corpus replay tests.
//! Each takes arbitrary bytes and must return without panicking, whatever they are:
//! [`client_bytes`] plays a client against the server, [`server_bytes`] a server against
//! the client.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vdisk_core::{check_range, Allocation, DiskImage, Error, Extent, Result};

use crate::client::{client_negotiate as negotiate_client, Conn, Transport, Wanted, Wire};
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

/// Bytes a fuzzed server sends, as the client's transport: reads come from the bytes (then
/// end of stream), writes are dropped.
struct ServerBytes {
    data: Vec<u8>,
    pos: usize,
}

impl Read for ServerBytes {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for ServerBytes {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for ServerBytes {
    fn close(&self) {}
}

/// Feed `data` to the client as everything a server sends on one connection: the handshake
/// (greeting, option replies), then the replies to a read of the first 64 KiB (or less), a
/// block-status walk of the same range in every context the handshake selected, and a read
/// of the export's last bytes.
pub fn server_bytes(data: &[u8]) {
    let transport = ServerBytes {
        data: data.to_vec(),
        pos: 0,
    };
    let mut wire = Wire::new(Box::new(transport));
    wire.deadline_in(Duration::from_secs(60));
    let want = Wanted {
        export: "fuzz",
        bitmaps: true,
    };
    let Ok(neg) = negotiate_client(&mut wire, &want) else {
        return;
    };
    let size = neg.size;
    let contexts: Vec<u32> = neg.contexts.iter().map(|c| c.0).collect();
    let min = u64::from(neg.min_block.max(1));
    let mut conn = Conn::new(wire, neg, Duration::from_secs(60));
    let len = (size.min(64 << 10) / min * min) as usize;
    let mut buf = vec![0u8; len];
    if len > 0 && conn.read(&mut buf, 0).is_err() {
        return;
    }
    for id in contexts {
        let mut pos = 0u64;
        // A walk ends at the range's end, at the first failure, or after a bounded number
        // of replies (the bytes run out long before).
        for _ in 0..64 {
            if pos >= len as u64 {
                break;
            }
            let mut runs = Vec::new();
            match conn.block_status(pos, (len as u64 - pos) as u32, id, &mut runs) {
                Ok(covered) => {
                    assert!(covered > 0 && covered <= len as u64 - pos);
                    assert_eq!(runs.iter().map(|r| r.0).sum::<u64>(), covered);
                    pos += covered;
                }
                Err(_) => return,
            }
        }
    }
    if size > len as u64 && size >= min {
        let start = (size - min) / min * min;
        let mut tail = vec![0u8; (size - start).min(64 << 10) as usize];
        let _ = conn.read(&mut tail, start);
    }
}
