//! Open an image and read it: the size, the chain behind it, its allocation map, and the
//! first bytes of every 64 KiB.
//!
//! `cargo run --example open_and_read [IMAGE]`: with no argument it reads the fixture chain
//! `fixtures/chain/top.vmdk` and checks what it reads against `fixtures/README.md`, exiting
//! non-zero if anything differs.

use std::path::PathBuf;
use std::process::ExitCode;

use vdisk::{Allocation, DiskImage};

const BLOCK: u64 = 64 << 10;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("open_and_read: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let fixture = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/chain/top.vmdk"
    ));
    let path = std::env::args_os()
        .nth(1)
        .map_or(fixture.clone(), PathBuf::from);

    // The format is detected from the bytes; a delta link brings its parents.
    let img = vdisk::open(&path)?;
    println!(
        "{}: {} bytes, {}",
        path.display(),
        img.size(),
        img.format_name()
    );
    for (depth, layer) in img.layers().iter().enumerate() {
        println!(
            "  link {depth}: {} ({})",
            layer.path().display(),
            img.format_of(depth).name()
        );
    }

    // The allocation map, walked in windows (a hostile image may describe millions of runs).
    println!("allocation:");
    let mut map = Vec::new();
    vdisk::for_each_extent(&img, |e| {
        let kind = match e.allocation {
            Allocation::Data => "data",
            Allocation::Zero => "zero",
            Allocation::Unallocated => "unallocated",
        };
        println!(
            "  {:>8} +{:<8} {kind:<11} (link {})",
            e.start, e.length, e.depth
        );
        map.push((e.start, e.length, e.allocation, e.depth));
        Ok(())
    })?;

    // Positional reads from &self: the first 8 bytes of every 64 KiB block.
    println!("first bytes of each 64 KiB:");
    let mut firsts = Vec::new();
    let mut off = 0;
    while off < img.size() {
        let mut head = [0u8; 8];
        let n = (img.size() - off).min(8) as usize;
        img.read_at(&mut head[..n], off)?;
        println!("  {off:>8}: {:02x?}", &head[..n]);
        firsts.push(head[0]);
        off += BLOCK;
    }

    if path != fixture {
        return Ok(());
    }
    // fixtures/README.md: 0x42 from the flat base, 0x4d from mid.vmdk, 0x54 from top.vmdk,
    // then a zeroed grain of top.vmdk masking the base.
    let mut disk = vec![0u8; img.size() as usize];
    img.read_at(&mut disk, 0)?;
    let expected: Vec<u8> = [0x42u8, 0x4d, 0x54, 0x00]
        .iter()
        .flat_map(|&b| std::iter::repeat_n(b, BLOCK as usize))
        .collect();
    if disk != expected {
        return Err("the fixture chain does not read as fixtures/README.md describes".into());
    }
    if firsts != [0x42, 0x4d, 0x54, 0x00] {
        return Err(format!("unexpected first bytes {firsts:02x?}").into());
    }
    let k = BLOCK;
    let want = [
        (0, k, Allocation::Data, 2),
        (k, k, Allocation::Data, 1),
        (2 * k, k, Allocation::Data, 0),
        (3 * k, k, Allocation::Zero, 0),
    ];
    if map != want {
        return Err(format!("unexpected allocation map {map:?}").into());
    }
    println!("ok: the chain reads as fixtures/README.md describes");
    Ok(())
}
