//! The per-point hash manifests (version 2: only blocks that hold data cost anything) and
//! stored-grain bitmaps.

use std::io::Write;

use vdisk_bitmap::ChangeMap;
use vdisk_core::Result;
use vdisk_diff::{Manifest, ManifestBytes, ManifestWriter};
use vdisk_image::Image;

use crate::layout2::GRAIN;
use crate::store::{ManifestSource, Store};

/// A point's manifest, read from its store.
pub(crate) type PointManifest = Manifest<ManifestSource>;

/// Write the manifest of a `size`-byte disk as `name` in `store`, its hashes pushed by `fill`
/// in block order; complete before it appears. Returns `fill`'s value and the manifest's
/// length.
pub(crate) fn write_manifest<T>(
    store: &dyn Store,
    name: &str,
    size: u64,
    fill: impl FnOnce(&mut ManifestWriter<&mut (dyn Write + Send)>) -> Result<T>,
) -> Result<(T, u64)> {
    let mut out = store.create_stream(name)?;
    let value = {
        let mut m = ManifestWriter::new(out.writer(), size, GRAIN)?;
        let value = fill(&mut m).map_err(|e| e.with_path(store.path(name)))?;
        m.finish().map_err(|e| e.with_path(store.path(name)))?;
        value
    };
    let len = out.finish()?;
    Ok((value, len))
}

/// Push into `out` the hashes of a disk of `size` bytes that is the disk `old` describes
/// (of `old_size` bytes) with the blocks in `fresh` (ascending, `(block, hash)`) replaced.
/// A block of the old disk is kept only where it is whole in both sizes (the caller gives
/// fresh hashes for blocks across either end and past the old one).
pub(crate) fn merge_manifest<B: ManifestBytes, W: Write>(
    old: &vdisk_diff::Manifest<B>,
    size: u64,
    fresh: &[(u64, u128)],
    out: &mut ManifestWriter<W>,
) -> Result<()> {
    let keep_below = old.size().min(size) / GRAIN; // blocks whole in both sizes
    let mut fresh = fresh.iter().copied().peekable();
    'windows: for w in old.data_windows() {
        let window = old.window(w)?;
        for (i, h) in window.stored {
            let b = window.first_block + i;
            if b >= keep_below {
                break 'windows;
            }
            while let Some((fb, fh)) = fresh.next_if(|e| e.0 < b) {
                out.push(fb, fh)?;
            }
            match fresh.next_if(|e| e.0 == b) {
                Some((fb, fh)) => out.push(fb, fh)?,
                None => out.push(b, h)?,
            }
        }
    }
    for (fb, fh) in fresh {
        out.push(fb, fh)?;
    }
    Ok(())
}

/// The grains a point's own files store (data or zeroed).
pub(crate) fn stored_map(img: &Image) -> Result<ChangeMap> {
    let mut map = ChangeMap::new(img.top().size(), GRAIN)?;
    vdisk_image::for_each_stored(img, 0, |s, l| map.mark_bytes(s, l))?;
    Ok(map)
}

/// Open manifest `name` of `store`.
pub(crate) fn open_manifest(store: &dyn Store, name: &str) -> Result<PointManifest> {
    Manifest::decode(store.manifest_bytes(name)?).map_err(|e| e.with_path(store.path(name)))
}
