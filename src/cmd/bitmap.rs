//! `vdisk bitmap show|import`, and the union of bitmaps behind `vdisk merge BITMAP...`.

use std::path::{Path, PathBuf};

use serde_json::json;
use vdisk::bitmap::ChangeMap;
use vdisk::io::MappedFile;
use vdisk::size::human;
use vdisk::{Error, ErrorKind, Granularity, Protected, Result};

use super::{path_text, policy, print_json, print_text, Ctx, Status};

/// Changed-block bitmaps.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Show a bitmap's size, granularity and changed extents.
    Show {
        /// The bitmap.
        bitmap: PathBuf,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Make a bitmap from a JSON extent list (vdisk's, VMware's changedArea, Hyper-V's ranges).
    Import {
        /// The extent list.
        extents: PathBuf,
        /// Size of the disk in bytes (suffixes allowed).
        #[arg(long, value_parser = crate::parse_size)]
        size: u64,
        /// Block size: 512, 4K, 64K (default), 1M, … up to 64M.
        #[arg(long, default_value = "64K")]
        granularity: Granularity,
        /// Bitmap to write.
        #[arg(short = 'o', value_name = "OUT")]
        out: PathBuf,
        /// Replace an existing output.
        #[arg(long)]
        force: bool,
        /// Print a JSON summary on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// Read and check a bitmap file.
pub fn load(path: &Path) -> Result<ChangeMap> {
    let file = MappedFile::open(path)?;
    let bytes = file
        .bytes()
        .ok_or_else(|| Error::unsupported("cannot map the bitmap").with_path(path))?;
    ChangeMap::decode(bytes).map_err(|e| e.with_path(path))
}

fn summary(map: &ChangeMap) -> serde_json::Value {
    json!({
        "size": map.size(),
        "granularity": map.granularity(),
        "changed_blocks": map.count(),
        "changed_bytes": map.changed_bytes(),
    })
}

pub fn run(ctx: &Ctx, command: Command) -> Result<Status> {
    match command {
        Command::Show { bitmap, json } => show(&bitmap, json),
        Command::Import {
            extents,
            size,
            granularity,
            out,
            force,
            json,
        } => {
            let text = std::fs::read(&extents)
                .map_err(|e| Error::io("cannot read", e).with_path(&extents))?;
            let map = ChangeMap::from_extents_json(&text, size, granularity.bytes())
                .map_err(|e| e.with_path(&extents))?;
            let mut protected = Protected::new();
            protected.add_path(&extents);
            vdisk::io::write_file(&out, &map.encode(), &policy(force, protected))?;
            if json {
                let mut v = summary(&map);
                v["output"] = path_text(&out).into();
                print_json(&v)?;
            }
            ctx.summary(format_args!(
                "imported {} into {}: {}",
                extents.display(),
                out.display(),
                super::bitmap_line(&map)
            ));
            Ok(0)
        }
    }
}

fn show(path: &Path, json_out: bool) -> Result<Status> {
    let map = load(path)?;
    if json_out {
        let extents: Vec<_> = map
            .extents()
            .map(|(s, l)| json!({"start": s, "length": l}))
            .collect();
        let mut v = summary(&map);
        v["extents"] = extents.into();
        print_json(&v)?;
    } else {
        let mut text = format!(
            "size: {} ({} bytes)\ngranularity: {}\nchanged: {} of {} blocks ({} bytes)\n",
            human(map.size()),
            map.size(),
            human(map.granularity()),
            map.count(),
            map.block_count(),
            map.changed_bytes()
        );
        // Printed as it goes: a map can list millions of extents.
        for (s, l) in map.extents() {
            text.push_str(&format!("{s:>20} {l:>20}\n"));
            if text.len() > 1 << 20 {
                print_text(&text)?;
                text.clear();
            }
        }
        print_text(&text)?;
    }
    Ok(0)
}

/// `vdisk merge BITMAP... -o OUT`: the union (at the finest granularity among them).
pub fn merge(
    ctx: &Ctx,
    inputs: &[PathBuf],
    out: &Path,
    force: bool,
    json_out: bool,
) -> Result<Status> {
    let mut maps = inputs.iter().map(|p| load(p));
    let Some(first) = maps.next() else {
        return Err(Error::new(ErrorKind::InvalidArgument, "no bitmaps to merge").with_path(out));
    };
    let mut acc = first?;
    for m in maps {
        acc = acc.union(&m?).map_err(|e| e.with_path(out))?;
    }
    let mut protected = Protected::new();
    for p in inputs {
        protected.add_path(p);
    }
    vdisk::io::write_file(out, &acc.encode(), &policy(force, protected))?;
    if json_out {
        let mut v = summary(&acc);
        v["output"] = path_text(out).into();
        print_json(&v)?;
    }
    ctx.summary(format_args!(
        "merged {} bitmap(s) into {}: {}",
        inputs.len(),
        out.display(),
        super::bitmap_line(&acc)
    ));
    Ok(0)
}
