use std::path::Path;

use serde_json::json;
use vdisk::bitmap::ChangeMap;
use vdisk::raw::MappedFile;
use vdisk::size::human;
use vdisk::{Error, Result};

use super::{print_json, Status};
use crate::Ctx;

/// Read and check a bitmap file.
pub fn load(path: &Path) -> Result<ChangeMap> {
    let file = MappedFile::open(path)?;
    let bytes = file
        .bytes()
        .ok_or_else(|| Error::unsupported("cannot map the bitmap").with_path(path))?;
    ChangeMap::decode(bytes).map_err(|e| e.with_path(path))
}

pub fn show(_ctx: &Ctx, path: &Path, json_out: bool) -> Result<Status> {
    let map = load(path)?;
    if json_out {
        let extents: Vec<_> = map
            .extents()
            .map(|(s, l)| json!({"start": s, "length": l}))
            .collect();
        print_json(&json!({
            "size": map.size(),
            "granularity": map.granularity(),
            "changed_blocks": map.count(),
            "changed_bytes": map.changed_bytes(),
            "extents": extents,
        }))?;
    } else {
        println!("size: {} ({} bytes)", human(map.size()), map.size());
        println!("granularity: {}", human(map.granularity()));
        println!(
            "changed: {} of {} blocks ({} bytes)",
            map.count(),
            map.block_count(),
            map.changed_bytes()
        );
        for (s, l) in map.extents() {
            println!("{s:>20} {l:>20}");
        }
    }
    Ok(0)
}

pub fn import(
    _ctx: &Ctx,
    extents: &Path,
    size: u64,
    granularity: u64,
    out: &Path,
    force: bool,
) -> Result<Status> {
    let text =
        std::fs::read(extents).map_err(|e| Error::io("cannot read", e).with_path(extents))?;
    let map =
        ChangeMap::from_extents_json(&text, size, granularity).map_err(|e| e.with_path(extents))?;
    vdisk::output::write_file(out, &map.encode(), force)?;
    Ok(0)
}

/// `vdisk merge BITMAP... -o OUT`: the union (at the finest granularity among them).
pub fn merge(_ctx: &Ctx, inputs: &[std::path::PathBuf], out: &Path, force: bool) -> Result<Status> {
    let mut maps = inputs.iter().map(|p| load(p));
    let Some(first) = maps.next() else {
        return Err(
            Error::new(vdisk::ErrorKind::InvalidArgument, "no bitmaps to merge").with_path(out),
        );
    };
    let mut acc = first?;
    for m in maps {
        acc = acc.union(&m?).map_err(|e| e.with_path(out))?;
    }
    vdisk::output::write_file(out, &acc.encode(), force)?;
    Ok(0)
}
