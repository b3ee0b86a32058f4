//! The internal snapshot table: listed by `info`, walked by `check`; reads are always of the
//! active L1 table (the current state).

use byteorder::{BigEndian, ByteOrder};
use vdisk_core::{Error, Result};
use vdisk_io::Bytes;

use crate::header::Header;

/// qemu's limit on internal snapshots.
pub const MAX_SNAPSHOTS: u32 = 65536;
/// qemu's limit on a snapshot entry's extra data.
const MAX_EXTRA: u32 = 1024;
/// Bytes of a snapshot entry before its extra data.
const ENTRY_FIXED: usize = 40;

/// One internal snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Its unique id ("1", "2", ...).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Where its L1 table is.
    pub l1_offset: u64,
    /// Entries of its L1 table.
    pub l1_size: u32,
    /// When it was taken: seconds since the epoch.
    pub date_sec: u32,
    /// ...and nanoseconds.
    pub date_nsec: u32,
    /// Guest time when it was taken, in nanoseconds.
    pub vm_clock_nsec: u64,
    /// Bytes of saved VM state (0: a disk-only snapshot).
    pub vm_state_size: u64,
    /// The disk's virtual size when it was taken (version 3 extra data).
    pub disk_size: Option<u64>,
}

/// Read the snapshot table the header points at, and the bytes it takes. Every entry lies in
/// the file; the number of entries is bounded by qemu's limit and by the file's size.
pub fn read_snapshots(bytes: &Bytes, h: &Header) -> Result<(Vec<Snapshot>, u64)> {
    let n = h.raw.nb_snapshots;
    if n == 0 {
        return Ok((Vec::new(), 0));
    }
    if n > MAX_SNAPSHOTS {
        return Err(Error::corrupt(format!(
            "{n} snapshots (qemu allows {MAX_SNAPSHOTS})"
        )));
    }
    let file_len = bytes.len();
    let mut pos = h.raw.snapshots_offset;
    let mut out = Vec::new();
    let past_end = |what: &str, at: u64| {
        Error::corrupt(format!(
            "snapshot table: {what} runs past the end of the file"
        ))
        .at(at)
    };
    for i in 0..n {
        let mut fixed = [0u8; ENTRY_FIXED];
        if pos
            .checked_add(ENTRY_FIXED as u64)
            .is_none_or(|e| e > file_len)
        {
            return Err(past_end(&format!("entry {i}"), pos));
        }
        bytes.read_at(&mut fixed, pos)?;
        let id_len = u64::from(BigEndian::read_u16(&fixed[12..]));
        let name_len = u64::from(BigEndian::read_u16(&fixed[14..]));
        let extra_len = BigEndian::read_u32(&fixed[36..]);
        if extra_len > MAX_EXTRA {
            return Err(Error::corrupt(format!(
                "snapshot {i} has {extra_len} bytes of extra data (qemu allows {MAX_EXTRA})"
            ))
            .at(pos));
        }
        let var_len = u64::from(extra_len) + id_len + name_len;
        let end = pos + ENTRY_FIXED as u64 + var_len;
        if end > file_len {
            return Err(past_end(&format!("entry {i}"), pos));
        }
        // At most 1024 + 2 * 65535 bytes.
        let mut var = vec![0u8; var_len as usize];
        bytes.read_at(&mut var, pos + ENTRY_FIXED as u64)?;
        let (extra, rest) = var.split_at(extra_len as usize);
        let (id, name) = rest.split_at(id_len as usize);
        let mut vm_state_size = u64::from(BigEndian::read_u32(&fixed[32..]));
        if extra.len() >= 8 {
            vm_state_size = BigEndian::read_u64(extra);
        }
        let disk_size = (extra.len() >= 16).then(|| BigEndian::read_u64(&extra[8..]));
        out.push(Snapshot {
            id: String::from_utf8_lossy(id).into_owned(),
            name: String::from_utf8_lossy(name).into_owned(),
            l1_offset: BigEndian::read_u64(&fixed[0..]),
            l1_size: BigEndian::read_u32(&fixed[8..]),
            date_sec: BigEndian::read_u32(&fixed[16..]),
            date_nsec: BigEndian::read_u32(&fixed[20..]),
            vm_clock_nsec: BigEndian::read_u64(&fixed[24..]),
            vm_state_size,
            disk_size,
        });
        pos = end.next_multiple_of(8);
    }
    Ok((out, pos - h.raw.snapshots_offset))
}

/// `secs` since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn format_date(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Guest clock nanoseconds as `HH:MM:SS.mmm`, as qemu-img prints it.
pub fn format_clock(nsec: u64) -> String {
    let ms = nsec / 1_000_000;
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(format_date(0), "1970-01-01 00:00:00");
        assert_eq!(format_date(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_date(1_700_000_000), "2023-11-14 22:13:20");
        assert_eq!(format_clock(3_723_004_000_000), "01:02:03.004");
    }
}
