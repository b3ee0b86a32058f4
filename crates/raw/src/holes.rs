//! Finding the data in sparse files: SEEK_DATA/SEEK_HOLE.
#![allow(unsafe_code)] // lseek(2) with SEEK_DATA/SEEK_HOLE

use std::fs::File;
use std::os::unix::io::AsRawFd;

/// Where the first data of `file` at or after `pos` starts (`SEEK_DATA`), `None` when there
/// is none before the end; `Some(pos)` where the file system cannot tell.
pub fn next_data(file: &File, pos: u64) -> Option<u64> {
    let Ok(off) = libc::off_t::try_from(pos) else {
        return Some(pos);
    };
    // SAFETY: lseek on a file descriptor we own a reference to; it changes only the file
    // offset, which vdisk never uses (all reads are positional).
    let data = unsafe { libc::lseek(file.as_raw_fd(), off, libc::SEEK_DATA) };
    if data >= 0 {
        Some(data as u64)
    } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
        None
    } else {
        Some(pos)
    }
}

/// The ranges of `file` between `start` and `end` that hold data, as `(offset, length)` pairs,
/// found with `lseek(SEEK_DATA/SEEK_HOLE)`.
///
/// Where the file system cannot tell (no support, or an error), the whole range is reported as
/// data: that is always correct, only slower to read.
pub fn data_ranges(file: &File, start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let fd = file.as_raw_fd();
    let mut pos = start;
    while pos < end {
        let Ok(off) = libc::off_t::try_from(pos) else {
            out.push((pos, end - pos));
            break;
        };
        // SAFETY: lseek on a file descriptor we own a reference to; it changes only the file
        // offset, which vdisk never uses (all reads are positional).
        let data = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ENXIO) {
                // Cannot tell: report the rest as data.
                out.push((pos, end - pos));
            }
            // ENXIO: no data from pos to the end of the file.
            break;
        }
        let data = data as u64;
        if data >= end {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            end
        } else {
            (hole as u64).min(end)
        };
        if hole <= data {
            out.push((data, end - data));
            break;
        }
        out.push((data, hole - data));
        pos = hole;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn finds_written_ranges_in_a_sparse_file() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], 8 << 20).unwrap();
        let ranges = data_ranges(&f, 0, 64 << 20);
        // File systems may round to their block size, but must cover the written block and
        // leave most of the file as holes (tmpfs, ext4, xfs and btrfs all do).
        assert!(ranges
            .iter()
            .any(|&(o, l)| o <= 8 << 20 && o + l >= (8 << 20) + 4096));
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        assert!(total < 8 << 20, "{ranges:?}");
    }
}
