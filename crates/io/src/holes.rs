//! Finding the data in sparse files: SEEK_DATA/SEEK_HOLE.

use std::fs::File;

use crate::sys;

/// Where the first data of `file` at or after `pos` starts (`SEEK_DATA`), `None` when there
/// is none before the end; `Some(pos)` where the file system cannot tell.
pub fn next_data(file: &File, pos: u64) -> Option<u64> {
    sys::seek_data(file, pos).unwrap_or(Some(pos))
}

/// The ranges of `file` between `start` and `end` that hold data, as `(offset, length)` pairs,
/// found with `lseek(SEEK_DATA/SEEK_HOLE)`.
///
/// Where the file system cannot tell (no support, or an error), the whole range is reported as
/// data: that is always correct, only slower to read.
pub fn data_ranges(file: &File, start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = start;
    while pos < end {
        let data = match sys::seek_data(file, pos) {
            Ok(Some(d)) => d,
            // No data from pos to the end of the file.
            Ok(None) => break,
            // Cannot tell: report the rest as data.
            Err(_) => {
                out.push((pos, end - pos));
                break;
            }
        };
        if data >= end {
            break;
        }
        let hole = match sys::seek_hole(file, data) {
            Ok(Some(h)) => h.min(end),
            _ => end,
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
