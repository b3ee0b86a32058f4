//! Criterion benchmarks of vdisk, one harness with a module per area:
//!
//! - `vmdk`: grain-table lookups, and whole-image reads of a monolithicSparse and a
//!   streamOptimized image through `DiskImage::read_at`;
//! - `convert`: `vdisk::convert` of those images to raw (a sparse raw file);
//! - `write`: raw -> monolithicSparse and raw -> streamOptimized, and a delta link of 10% of
//!   the grains on a monolithicSparse parent (`vdisk::write_delta`);
//! - `diff`: diff of two raw images, hashing into a manifest, diff against a manifest;
//! - `bitmap`: union, runs, encode and decode of maps of a 2 TiB disk, and of a sparse and a
//!   full map of a 64 TiB disk;
//! - `backup`: a full backup into a fresh folder repository (layout 3), and incrementals with
//!   1% of the blocks changed, found by fingerprints or taken from a changed-block map (CBT);
//! - `restore`: a checked point (every block checked against its id) copied into a raw file;
//! - `verify`: verify of a two-point repository;
//! - `nbd`: reads of a whole export through `vdisk::nbd::Server` on a Unix socket;
//! - `esx`: whole-image reads of an SEsparse and a COWD link over a flat base;
//! - `ova`: whole-image reads of a streamOptimized VMDK inside an OVA, in place;
//! - `stream`: `vdisk::convert_stream` of a streamOptimized VMDK from memory, as from a pipe;
//! - `s3`: a repository on SeaweedFS on loopback (when `weed` is installed): a full backup,
//!   and checked reads of a point, from a freshly opened repository and with its packs cached.
//!
//! Inputs are made once per run by `fixtures` with qemu-img and qemu-io in a temporary folder
//! (and by some areas themselves); without qemu-img the benchmarks that need them are skipped
//! with a note. See benches/README.md.

use std::time::Duration;

use criterion::Criterion;

// The modules live in benches/areas/ so that Cargo does not take them for bench targets of
// their own (it auto-discovers every benches/*.rs).
mod areas {
    pub mod backup;
    pub mod bitmap;
    pub mod convert;
    pub mod diff;
    pub mod esx;
    pub mod fixtures;
    pub mod nbd;
    pub mod ova;
    pub mod restore;
    pub mod s3;
    pub mod stream;
    pub mod verify;
    pub mod vmdk;
    pub mod write;
}

use areas::fixtures::Fixtures;
use areas::{backup, convert, diff, esx, nbd, ova, restore, s3, stream, verify, vmdk, write};

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
            c.final_summary();
            return;
        }
    };
    vmdk::bench(&mut c, &fx);
    convert::bench(&mut c, &fx);
    write::bench(&mut c, &fx);
    write::bench_delta_link(&mut c, &fx);
    diff::bench(&mut c, &fx);
    backup::bench(&mut c, &fx);
    restore::bench(&mut c, &fx);
    verify::bench(&mut c, &fx);
    nbd::bench(&mut c, &fx);
    esx::bench(&mut c, &fx);
    ova::bench(&mut c, &fx);
    stream::bench(&mut c, &fx);
    s3::bench(&mut c, &fx);
    c.final_summary();
}
