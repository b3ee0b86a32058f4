//! vdisk: read, compare and chain virtual-disk images.
//!
//! This facade re-exports the crates of the workspace and adds what needs all of them:
//! format detection ([`open`]) and whole-image operations ([`convert`]).
//!
//! ```no_run
//! use vdisk::DiskImage;
//! let img = vdisk::open("disk.vmdk".as_ref())?;
//! let mut first_sector = [0u8; 512];
//! img.read_at(&mut first_sector, 0)?;
//! println!("{} bytes", img.size());
//! # Ok::<(), vdisk::Error>(())
//! ```

pub mod convert;
mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod merge;
pub mod output;

pub use format::{detect, open, open_with, Format, Image, OpenOptions};
pub use vdisk_core::{size, Allocation, DiskImage, Error, ErrorKind, Extent, Result, Throttle};

/// vdisk-bitmap: changed-block maps.
pub use vdisk_bitmap as bitmap;
/// vdisk-core: image traits, extents, errors.
pub use vdisk_core as core;
/// vdisk-diff: the compare and hash engine.
pub use vdisk_diff as diff;
/// vdisk-raw: raw images and the sparse writer.
pub use vdisk_raw as raw;
/// vdisk-vmdk: VMDK images.
pub use vdisk_vmdk as vmdk;

/// Window in which whole-disk walks ask for allocation maps: a hostile image can describe one
/// extent per 512-byte grain, so maps are never asked for all at once.
pub const MAP_WINDOW: u64 = 1 << 30;

/// Walk the allocation map of `img` from start to end in [`MAP_WINDOW`] windows, joining runs
/// across window edges, and hand each run to `f`.
pub fn for_each_extent(img: &dyn DiskImage, mut f: impl FnMut(Extent) -> Result<()>) -> Result<()> {
    let size = img.size();
    let mut pending: Option<Extent> = None;
    let mut off = 0;
    while off < size {
        let len = (size - off).min(MAP_WINDOW);
        for e in img.allocation(off, len)? {
            match &mut pending {
                Some(p)
                    if p.end() == e.start && p.allocation == e.allocation && p.depth == e.depth =>
                {
                    p.length += e.length
                }
                _ => {
                    if let Some(p) = pending.replace(e) {
                        f(p)?;
                    }
                }
            }
        }
        off += len;
    }
    if let Some(p) = pending {
        f(p)?;
    }
    Ok(())
}
