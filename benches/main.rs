//! Criterion benchmarks of vdisk, one harness with a module per area:
//!
//! - `vmdk`: grain-table lookups, and whole-image reads of a monolithicSparse and a
//!   streamOptimized image through `DiskImage::read_at`;
//! - `convert`: `vdisk::convert::to_raw` of those images into a sparse raw file;
//! - `write`: raw -> monolithicSparse and raw -> streamOptimized, and a delta link of 10% of
//!   the grains on a monolithicSparse parent;
//! - `diff`: diff of two raw images, hashing into a manifest, diff against a manifest;
//! - `bitmap`: union, runs, encode and decode of maps of a 2 TiB disk, and of a sparse and a
//!   full map of a 64 TiB disk.
//!
//! Inputs are made once per run by `fixtures` with qemu-img and qemu-io in a temporary folder;
//! without qemu-img the benchmarks are skipped with a note. See benches/README.md.

use std::time::Duration;

use criterion::Criterion;

// The modules live in benches/areas/ so that Cargo does not take them for bench targets of
// their own (it auto-discovers every benches/*.rs).
mod areas {
    pub mod bitmap;
    pub mod convert;
    pub mod diff;
    pub mod fixtures;
    pub mod vmdk;
    pub mod write;
}

use areas::{convert, diff, fixtures::Fixtures, vmdk, write};

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    areas::bitmap::bench(&mut c); // needs no fixtures
    let fx = match Fixtures::create() {
        Ok(fx) => fx,
        Err(note) => {
            eprintln!("vdisk benches skipped: {note}");
            return;
        }
    };
    vmdk::bench(&mut c, &fx);
    convert::bench(&mut c, &fx);
    write::bench(&mut c, &fx);
    write::bench_delta_link(&mut c, &fx);
    diff::bench(&mut c, &fx);
    c.final_summary();
}
