//! `vdisk bitmap show|import`, and the union of bitmaps behind `vdisk merge BITMAP...`.

use std::path::{Path, PathBuf};

use serde_json::json;
use vdisk::bitmap::ChangeMap;
use vdisk::io::MappedFile;
use vdisk::size::human;
use vdisk::{DiskImage, Error, ErrorKind, Granularity, Image, Protected, Result};

use super::{path_text, policy, print_json, print_text, Ctx, Status};

/// The prefix that makes a `--changed` argument a QEMU dirty bitmap of the source.
pub const QEMU_BITMAP: &str = "qemu:dirty-bitmap:";

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
    /// Make a bitmap from a JSON extent list (vdisk's, VMware's changedArea, Hyper-V's
    /// ranges), or from a QEMU dirty bitmap of an image (a qcow2 file's, or an NBD export's:
    /// `bitmap import nbd+unix:///vda?socket=S --qemu-bitmap NAME -o OUT`).
    Import {
        /// The extent list; with --qemu-bitmap, the image or NBD export holding the bitmap.
        extents: PathBuf,
        /// Size of the disk in bytes (suffixes allowed); needed for an extent list.
        #[arg(long, value_parser = crate::parse_size)]
        size: Option<u64>,
        /// Read this QEMU dirty bitmap of the image (NAME, or qemu:dirty-bitmap:NAME).
        #[arg(long, value_name = "NAME")]
        qemu_bitmap: Option<String>,
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

/// The changes `--changed` names: a bitmap file, or `qemu:dirty-bitmap:NAME`, the QEMU
/// dirty bitmap NAME of `img`'s top layer (an NBD export's meta context, or a qcow2 file's
/// bitmap directory), as a map at `granularity` over `img`'s size. (A bitmap file whose
/// name starts so is reached as `./qemu:dirty-bitmap:…`.)
pub fn changes(spec: &Path, img: &Image, granularity: u64) -> Result<ChangeMap> {
    match spec.to_str().and_then(|s| s.strip_prefix(QEMU_BITMAP)) {
        Some(name) => qemu_bitmap(img, name, granularity),
        None => load(spec),
    }
}

/// The QEMU dirty bitmap `name` of `img`'s top layer as a change map at `granularity`.
pub fn qemu_bitmap(img: &Image, name: &str, granularity: u64) -> Result<ChangeMap> {
    let name = name.strip_prefix(QEMU_BITMAP).unwrap_or(name);
    if name.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "names no bitmap: qemu:dirty-bitmap:NAME",
        )
        .with_path(img.path()));
    }
    let mut map = ChangeMap::new(img.size(), granularity)?;
    img.top()
        .read_bitmap(name, &mut |s, l| map.mark_bytes(s, l))
        .map_err(|e| e.with_path(img.path()))?;
    Ok(map)
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
            qemu_bitmap: bitmap,
            granularity,
            out,
            force,
            json,
        } => {
            let mut protected = Protected::new();
            protected.add_path(&extents);
            let map = match &bitmap {
                Some(name) => {
                    let img = vdisk::open_with(&extents, &ctx.open)?;
                    if size.is_some_and(|s| s != img.size()) {
                        return Err(Error::new(
                            ErrorKind::InvalidArgument,
                            format!(
                                "--size differs from the image's size ({} bytes); leave it out with --qemu-bitmap",
                                img.size()
                            ),
                        )
                        .with_path(&extents));
                    }
                    protected.add_image(&img);
                    qemu_bitmap(&img, name, granularity.bytes())?
                }
                None => {
                    let size = size.ok_or_else(|| {
                        Error::new(
                            ErrorKind::InvalidArgument,
                            "an extent list needs the disk's --size (or name a QEMU bitmap of an image with --qemu-bitmap)",
                        )
                        .with_path(&extents)
                    })?;
                    let text = std::fs::read(&extents)
                        .map_err(|e| Error::io("cannot read", e).with_path(&extents))?;
                    ChangeMap::from_extents_json(&text, size, granularity.bytes())
                        .map_err(|e| e.with_path(&extents))?
                }
            };
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
