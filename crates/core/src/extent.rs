/// How a byte range of an image is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Allocation {
    /// Stored data (which may still happen to be zero bytes).
    Data,
    /// Known to read as zero without stored data: a zeroed grain, a ZERO extent.
    /// In a chain, this masks whatever a parent holds.
    Zero,
    /// Not stored at this level: reads fall through to a parent, or as zero when there is none.
    /// A hole in a raw file is reported this way.
    Unallocated,
}

/// A byte range of an image's virtual disk and how it is stored.
///
/// An allocation map ([`crate::DiskImage::allocation`]) is a sorted list of these covering the
/// range asked for; [`coalesce`] builds one, joining touching runs of the same kind:
///
/// ```
/// use vdisk_core::{coalesce, Allocation, Extent};
/// let run = |start, length, allocation| Extent { start, length, allocation, depth: 0 };
/// let mut map = Vec::new();
/// coalesce(&mut map, run(0, 4096, Allocation::Data));
/// coalesce(&mut map, run(4096, 4096, Allocation::Data)); // joins the first
/// coalesce(&mut map, run(8192, 0, Allocation::Zero)); // empty: dropped
/// coalesce(&mut map, run(8192, 512, Allocation::Zero));
/// assert_eq!(map, [run(0, 8192, Allocation::Data), run(8192, 512, Allocation::Zero)]);
/// assert_eq!(map[1].end(), 8704);
/// assert!(!map[0].reads_as_zero() && map[1].reads_as_zero());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Extent {
    /// First byte of the range.
    pub start: u64,
    /// Length in bytes (never 0 in a map).
    pub length: u64,
    /// How the range is stored.
    pub allocation: Allocation,
    /// How many links below the top of a chain the range was found (0: the image itself).
    pub depth: u32,
}

impl Extent {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.length
    }

    /// Whether the range reads as zero without reading anything.
    pub fn reads_as_zero(&self) -> bool {
        self.allocation != Allocation::Data
    }
}

/// Append `ext` to `map`, joining it with the last extent when they touch and agree.
/// Zero-length extents are dropped.
pub fn coalesce(map: &mut Vec<Extent>, ext: Extent) {
    if ext.length == 0 {
        return;
    }
    if let Some(last) = map.last_mut() {
        if last.end() == ext.start && last.allocation == ext.allocation && last.depth == ext.depth {
            last.length += ext.length;
            return;
        }
    }
    map.push(ext);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(start: u64, length: u64, allocation: Allocation) -> Extent {
        Extent {
            start,
            length,
            allocation,
            depth: 0,
        }
    }

    #[test]
    fn coalesce_joins_touching_equal_runs_only() {
        let mut m = Vec::new();
        coalesce(&mut m, e(0, 10, Allocation::Data));
        coalesce(&mut m, e(10, 5, Allocation::Data));
        coalesce(&mut m, e(15, 0, Allocation::Zero));
        coalesce(&mut m, e(15, 5, Allocation::Zero));
        coalesce(&mut m, e(30, 5, Allocation::Zero));
        assert_eq!(
            m,
            vec![
                e(0, 15, Allocation::Data),
                e(15, 5, Allocation::Zero),
                e(30, 5, Allocation::Zero)
            ]
        );
    }
}
