//! One conversion, for timing and profiling: raw to qcow2 (`-c`: zstd-compressed), or with
//! `--to-raw`, qcow2 to raw.
//!
//! ```text
//! cargo run --release -p vdisk-qcow2 --example convert -- SRC DST [-c] [--to-raw]
//! ```

use std::path::PathBuf;

use vdisk_core::{copy_into, CopyOptions, DiskImage};
use vdisk_io::{CreateOptions, Format, OutputPolicy};

fn main() -> vdisk_core::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let files: Vec<PathBuf> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(PathBuf::from)
        .collect();
    let [src, dst] = files.as_slice() else {
        eprintln!("usage: convert SRC DST [-c] [--to-raw]");
        std::process::exit(2);
    };
    let opts = CreateOptions {
        policy: OutputPolicy::replacing(),
        compress: flag("-c"),
        ..CreateOptions::default()
    };
    let t = std::time::Instant::now();
    let stats = if flag("--to-raw") {
        let img = vdisk_qcow2::Qcow2Image::open(src)?;
        let sink = vdisk_raw::RAW.create(dst, img.size(), &opts)?;
        copy_into(&img, sink, &CopyOptions::default())?
    } else {
        let img = vdisk_raw::RawImage::open(src)?;
        let sink = vdisk_qcow2::QCOW2.create(dst, img.size(), &opts)?;
        copy_into(&img, sink, &CopyOptions::default())?
    };
    eprintln!(
        "{} bytes of data copied in {:.3} s",
        stats.bytes_read,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
