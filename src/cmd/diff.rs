use std::path::Path;

use serde_json::json;
use vdisk::bitmap::ChangeMap;
use vdisk::diff::{diff, diff_manifest, is_manifest, DiffReport, Manifest, ScanOptions};
use vdisk::raw::MappedFile;
use vdisk::size::human;
use vdisk::vmdk::writer::{write_delta_link, LinkTarget, Subformat, WriteOptions};
use vdisk::vmdk::{FsStore, VmdkImage};
use vdisk::{DiskImage, Error, ErrorKind, Result};

use super::convert::Progress;
use super::{print_json, Status};
use crate::Ctx;

/// Options of `vdisk diff`.
pub struct DiffArgs<'a> {
    pub old: &'a Path,
    pub new: &'a Path,
    pub granularity: Option<u64>,
    pub bitmap: Option<&'a Path>,
    pub delta: Option<&'a Path>,
    pub json: bool,
    pub force: bool,
}

pub fn run(ctx: &Ctx, a: DiffArgs<'_>) -> Result<Status> {
    let new = vdisk::open_with(a.new, &ctx.open)?;
    let progress = Progress::new(ctx, new.size());
    let tick = |n: u64| progress.tick(n);
    let scan = |g| ScanOptions {
        granularity: g,
        throttle: Some(&ctx.throttle),
        progress: Some(&tick),
    };
    let manifest_file = if is_manifest(&vdisk::read_head(a.old, vdisk::diff::MANIFEST_MAGIC.len())?)
    {
        Some(MappedFile::open(a.old)?)
    } else {
        None
    };
    let (report, old_size) = match &manifest_file {
        Some(file) => {
            let bytes = file
                .bytes()
                .ok_or_else(|| Error::unsupported("cannot map the manifest").with_path(a.old))?;
            let m = Manifest::decode(bytes).map_err(|e| e.with_path(a.old))?;
            if a.delta.is_some() {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "--delta needs the old image itself, not a manifest",
                )
                .with_path(a.old));
            }
            let mut report = diff_manifest(&m, &new, &scan(m.granularity()))?;
            if let Some(g) = a.granularity {
                if g < m.granularity() {
                    return Err(Error::new(
                        ErrorKind::InvalidArgument,
                        format!(
                            "manifest was made at {} blocks; a diff cannot be finer",
                            human(m.granularity())
                        ),
                    )
                    .with_path(a.old));
                }
                report.map = report.map.resample(g)?;
            }
            (report, m.size())
        }
        None => {
            let old = vdisk::open_with(a.old, &ctx.open)?;
            let report = diff(&old, &new, &scan(a.granularity.unwrap_or(64 << 10)))?;
            (report, old.size())
        }
    };
    progress.done(&format!("compared ({} read)", human(report.bytes_read)));
    let DiffReport { map, .. } = report;
    if let Some(path) = a.bitmap {
        vdisk::output::write_file(path, &map.encode(), a.force)?;
    }
    if let Some(path) = a.delta {
        let old = VmdkImage::open_with(&FsStore, a.old, &ctx.open.vmdk).map_err(|e| {
            if e.kind() == ErrorKind::InvalidFormat {
                Error::new(
                    ErrorKind::InvalidArgument,
                    "--delta needs OLD to be a VMDK (the link's parent)",
                )
                .with_path(a.old)
            } else {
                e
            }
        })?;
        let changed: Vec<(u64, u64)> = map.extents().collect();
        let opts = WriteOptions {
            overwrite: a.force,
            ..Default::default()
        };
        write_delta_link(
            &LinkTarget {
                parent_path: a.old,
                parent: &old,
                subformat: Subformat::MonolithicSparse,
                opts: &opts,
                on_grain: None,
            },
            &new,
            &changed,
            path,
        )?;
    }
    print_result(&map, old_size, a.json)?;
    Ok(u8::from(!map.is_empty() || old_size != map.size()))
}

fn print_result(map: &ChangeMap, old_size: u64, json_out: bool) -> Result<()> {
    if json_out {
        let extents: Vec<_> = map
            .extents()
            .map(|(s, l)| json!({"start": s, "length": l}))
            .collect();
        return print_json(&json!({
            "old_size": old_size,
            "new_size": map.size(),
            "granularity": map.granularity(),
            "changed_blocks": map.count(),
            "changed_bytes": map.changed_bytes(),
            "extents": extents,
        }));
    }
    if map.is_empty() && old_size == map.size() {
        println!("identical");
    } else {
        if old_size != map.size() {
            println!("size: {} -> {}", human(old_size), human(map.size()));
        }
        println!(
            "{} of {} blocks of {} changed ({} bytes)",
            map.count(),
            map.block_count(),
            human(map.granularity()),
            map.changed_bytes()
        );
    }
    Ok(())
}
