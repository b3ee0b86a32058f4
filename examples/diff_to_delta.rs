//! Find what changed between two images and keep just that as a VMDK delta link.
//!
//! `cargo run --example diff_to_delta`: copies the fixture chain (`fixtures/chain/`) into a
//! temporary folder, compares `mid.vmdk` (the old disk) with `top.vmdk` (the new one), writes
//! `delta.vmdk`, a link on `mid.vmdk` holding only the changed grains, and checks that the
//! link reads exactly as `top.vmdk`. Exits non-zero if it does not.

use std::path::Path;
use std::process::ExitCode;

use vdisk::DiskImage;

const CHAIN: [&str; 4] = ["top.vmdk", "mid.vmdk", "base.vmdk", "base-flat.vmdk"];

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("diff_to_delta: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/chain");
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    // A link names its parent relative to its own folder: work on a copy of the chain, so
    // the link and its parent sit side by side.
    for name in CHAIN {
        std::fs::copy(fixtures.join(name), dir.join(name))?;
    }

    let old = vdisk::open(dir.join("mid.vmdk"))?;
    let new = vdisk::open(dir.join("top.vmdk"))?;

    // 1. What changed, in 64 KiB blocks (only ranges holding data on either side are read).
    let changes = vdisk::diff(&old, &new)?;
    println!(
        "{} changed blocks, {} bytes, {} bytes read:",
        changes.map.count(),
        changes.map.changed_bytes(),
        changes.bytes_read
    );
    for (start, len) in changes.map.extents() {
        println!("  {start:>8} +{len}");
    }

    // 2. A delta link on the old image holding just that.
    let delta_path = dir.join("delta.vmdk");
    let stats = vdisk::write_delta(
        &old,
        &new,
        changes.map.extents(),
        &delta_path,
        &Default::default(),
    )?;
    println!(
        "{}: {} data grains, {} zeroed grains, {} bytes",
        delta_path.display(),
        stats.data_blocks,
        stats.zeroed_blocks,
        std::fs::metadata(&delta_path)?.len()
    );

    // 3. Read it back: through the link and its parents, the disk is the new image.
    let delta = vdisk::open(&delta_path)?;
    if delta.size() != new.size() {
        return Err(format!("delta is {} bytes, new is {}", delta.size(), new.size()).into());
    }
    let mut a = vec![0u8; new.size() as usize];
    let mut b = vec![0u8; delta.size() as usize];
    new.read_at(&mut a, 0)?;
    delta.read_at(&mut b, 0)?;
    if a != b {
        let at = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(0);
        return Err(format!("delta.vmdk differs from top.vmdk at byte {at}").into());
    }
    if !vdisk::diff(&new, &delta)?.map.is_empty() {
        return Err("diff finds changes between delta.vmdk and top.vmdk".into());
    }
    // fixtures/README.md: top.vmdk changed one grain (0x54) and zeroed another over
    // the base's 0x42, so the link stores one grain and one zeroed-grain entry.
    if changes.map.extents().collect::<Vec<_>>() != [(128 << 10, 128 << 10)]
        || (stats.data_blocks, stats.zeroed_blocks) != (1, 1)
    {
        return Err(format!("unexpected changes or link contents: {stats:?}").into());
    }
    println!("ok: delta.vmdk on mid.vmdk reads as top.vmdk");
    Ok(())
}
