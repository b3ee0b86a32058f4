//! `vdisk diff`: the blocks that changed between two disk states.

use std::path::PathBuf;

use serde_json::json;
use vdisk::bitmap::ChangeMap;
use vdisk::diff::{
    diff, diff_changed, diff_manifest, diff_manifest_changed, is_manifest, ManifestFile,
    ScanOptions,
};
use vdisk::size::human;
use vdisk::{DiskImage, Error, ErrorKind, Granularity, Protected, Result};

use super::{policy, print_json, print_text, Ctx, Expect, Status};
use crate::progress::secs;

/// Find the blocks that changed between two disk states
///
/// Exit status 0 when they are identical, 1 when they differ. OLD may be a manifest that
/// `vdisk hash` wrote, so the old state need not be kept.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  vdisk diff monday.vmdk tuesday.vmdk
  vdisk diff --bitmap changes.cbt monday.raw tuesday.raw
  vdisk diff --delta tuesday-delta.qcow2 monday.qcow2 tuesday.raw   # an overlay on monday")]
pub struct Args {
    /// The old state: an image, or a manifest written by `vdisk hash`.
    pub old: PathBuf,
    /// The new state.
    pub new: PathBuf,
    /// Block size: 512, 4K, 64K (default), 1M, … up to 64M.
    #[arg(long)]
    pub granularity: Option<Granularity>,
    /// Write the changed blocks as a bitmap.
    #[arg(long, value_name = "OUT")]
    pub bitmap: Option<PathBuf>,
    /// Write a delta on OLD holding the changed blocks (it reads as NEW), in the format its
    /// name says (OUT.vmdk), or OLD's.
    #[arg(long, value_name = "OUT")]
    pub delta: Option<PathBuf>,
    /// Only these blocks may have changed (the hypervisor says so): a bitmap file, or
    /// qemu:dirty-bitmap:NAME, a QEMU dirty bitmap of NEW (an NBD export's or a qcow2
    /// file's). Only they are read and compared; no other block is reported.
    #[arg(long, value_name = "CHANGES")]
    pub changed: Option<PathBuf>,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
    /// Replace existing output files.
    #[arg(long)]
    pub force: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<Status> {
    let new = vdisk::open_with(&a.new, &ctx.open)?;
    let mut protected = Protected::new();
    protected.add_image(&new);
    protected.add_path(&a.old);
    // The candidates, at the granularity asked (a manifest's, when OLD is one).
    let candidates = |g: u64| -> Result<Option<ChangeMap>> {
        let Some(spec) = &a.changed else {
            return Ok(None);
        };
        let map = super::bitmap::changes(spec, &new, g)?;
        if map.size() != new.size() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "the changed-block bitmap describes a disk of {} bytes, but the new state has {} bytes",
                    map.size(),
                    new.size()
                ),
            )
            .with_path(spec));
        }
        Ok(Some(map))
    };
    // An NBD export is never a manifest (and has no head to read as a file).
    let live = vdisk::ImageLocation::from(&a.old).is_live();
    let manifest = !live
        && is_manifest(&vdisk::read_head(
            &a.old,
            vdisk::diff::MANIFEST_MAGIC.len(),
        )?);
    let old = if manifest {
        None
    } else {
        Some(vdisk::open_with(&a.old, &ctx.open)?)
    };
    // Data on either side is read (the new side only, against a manifest); with --changed,
    // only the candidates, so the bar counts the span and shrinks by what is passed over.
    let expect = if a.changed.is_some() {
        Expect::Span(new.size() * if manifest { 1 } else { 2 })
    } else {
        Expect::Reads(super::data_bytes(&new) + old.as_ref().map_or(0, |o| super::data_bytes(o)))
    };
    let progress = ctx.progress(&format!("diff {}", super::label(&a.new)), expect);
    let scan = |g| ScanOptions {
        granularity: g,
        throttle: Some(&ctx.throttle),
        progress: Some(&progress),
    };
    let (report, old_size, old) = if manifest {
        if a.delta.is_some() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "--delta needs the old image itself, not a manifest",
            )
            .with_path(&a.old));
        }
        let m = ManifestFile::open(&a.old)?;
        let mut report = match candidates(m.granularity())? {
            Some(c) => diff_manifest_changed(&m, &new, &c, &scan(m.granularity()))?,
            None => diff_manifest(&m, &new, &scan(m.granularity()))?,
        };
        if let Some(g) = a.granularity {
            if g.bytes() < m.granularity() {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "manifest was made at {} blocks; a diff cannot be finer",
                        human(m.granularity())
                    ),
                )
                .with_path(&a.old));
            }
            report.map = report.map.resample(g.bytes())?;
        }
        (report, m.size(), None)
    } else {
        let old = old.expect("opened above: not a manifest");
        protected.add_image(&old);
        let g = a.granularity.unwrap_or_default().bytes();
        let report = match candidates(g)? {
            Some(c) => diff_changed(&old, &new, &c, &scan(g))?,
            None => diff(&old, &new, &scan(g))?,
        };
        let size = old.size();
        (report, size, Some(old))
    };
    let seconds = progress.seconds();
    let map = report.map;
    let policy = policy(a.force, protected);
    if let Some(path) = &a.bitmap {
        vdisk::io::write_file(path, &map.encode(), &policy)?;
    }
    if let (Some(path), Some(old)) = (&a.delta, &old) {
        if old.archive().is_some() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "the parent of a delta must be a file of its own, not a disk inside an archive (extract it first)",
            )
            .with_path(&a.old));
        }
        // The delta's format: what its name says, or OLD's.
        let format = match vdisk::output_format(path, None)? {
            f if f.name() == "raw" => old.format(),
            f => f,
        };
        let opts = vdisk::DeltaOptions {
            format: Some(format),
            create: vdisk::CreateOptions {
                policy: policy.clone(),
                ..Default::default()
            },
            on_block: None,
        };
        vdisk::write_delta(old, &new, map.extents(), path, &opts)?;
        // A parent outside the delta's folder is named by its absolute path, which readers
        // follow only when told to: say so now rather than at the first read.
        if let Ok((name, false)) = vdisk::image::parent_name(path, old.path()) {
            eprintln!(
                "vdisk: warning: {} names its parent by an absolute path ({}), as it lies outside the delta's folder; reading it will need --allow-outside-paths",
                path.display(),
                name.display()
            );
        }
    }
    print_result(&map, old_size, a.json)?;
    // A diff that writes says what it wrote; one that only compares has said it on stdout.
    let wrote: Vec<String> = [("bitmap", &a.bitmap), ("delta", &a.delta)]
        .into_iter()
        .filter_map(|(what, p)| p.as_ref().map(|p| format!("{what} {}", p.display())))
        .collect();
    if wrote.is_empty() {
        progress.clear();
    } else {
        progress.finish(format_args!(
            "compared {} with {}: {} of {} blocks changed; wrote {}; read {} in {}",
            a.new.display(),
            a.old.display(),
            map.count(),
            map.block_count(),
            wrote.join(" and "),
            crate::progress::amount(report.bytes_read),
            secs(seconds)
        ));
    }
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
    let mut text = String::new();
    if map.is_empty() && old_size == map.size() {
        text.push_str("identical\n");
    } else {
        if old_size != map.size() {
            text.push_str(&format!(
                "size: {} -> {}\n",
                human(old_size),
                human(map.size())
            ));
        }
        text.push_str(&format!(
            "{} of {} blocks of {} changed ({} bytes)\n",
            map.count(),
            map.block_count(),
            human(map.granularity()),
            map.changed_bytes()
        ));
    }
    print_text(&text)
}
