//! Makes fuzz seeds (see `fuzz/make-seeds-vhdx.sh`).
//!
//! - `vhdx_seed compact IN OUT`: the compact form of the VHDX file IN (its non-zero 4 KiB
//!   blocks), the input `vdisk_vhdx::fuzzing::open_compact` takes;
//! - `vhdx_seed structures IN OUT`: IN's two headers (8 KiB), the input of
//!   `vdisk_vhdx::fuzzing::structures`;
//! - `vhdx_seed delta DIR`: DIR/base.vhdx (8 MiB, 1 MiB blocks) and DIR/delta.vhdx, a
//!   differencing disk on it with partially present blocks, written by vdisk.

use std::path::Path;

use vdisk_core::{copy_into, CopyOptions, MemImage};
use vdisk_io::{CreateOptions, DeltaParent, FileStore, Format, FsStore, OutputPolicy};
use vdisk_vhdx::{VhdxImage, VhdxSink, WriteOptions, VHDX};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("compact") => {
            let f = std::fs::read(&args[2]).unwrap();
            std::fs::write(&args[3], vdisk_vhdx::fuzzing::compact(&f)).unwrap();
        }
        Some("structures") => {
            let f = std::fs::read(&args[2]).unwrap();
            let mut both = f[64 << 10..(64 << 10) + 4096].to_vec();
            both.extend_from_slice(&f[128 << 10..(128 << 10) + 4096]);
            std::fs::write(&args[3], both).unwrap();
        }
        Some("delta") => {
            let dir = Path::new(&args[2]);
            let mut disk = vec![0u8; 8 << 20];
            for block in 0..3 {
                disk[block << 20..(block << 20) + 4096].fill(0x40 + block as u8);
            }
            let base = dir.join("base.vhdx");
            let opts = WriteOptions {
                block_size: 1 << 20,
                ..Default::default()
            };
            let sink =
                VhdxSink::create(&base, disk.len() as u64, &opts, &OutputPolicy::replacing())
                    .unwrap();
            copy_into(
                &MemImage::new(disk.clone()),
                Box::new(sink),
                &CopyOptions::default(),
            )
            .unwrap();
            let parent = VhdxImage::open(FsStore::default().load(&base).unwrap()).unwrap();
            // The new disk: a few sectors of blocks 0 and 2 rewritten.
            disk[512..1024].fill(7);
            disk[(2 << 20) + 4096..(2 << 20) + 8192].fill(9);
            let mut changed = vec![0u8; 8 << 20];
            changed[..(2 << 20) + 8192].copy_from_slice(&disk[..(2 << 20) + 8192]);
            let sink = VHDX
                .create_delta(
                    &dir.join("delta.vhdx"),
                    &DeltaParent {
                        name: Path::new("base.vhdx"),
                        format: "vhdx",
                        layer: &parent,
                    },
                    8 << 20,
                    &CreateOptions {
                        cluster_size: Some(1 << 20),
                        policy: OutputPolicy::replacing(),
                        ..Default::default()
                    },
                )
                .unwrap();
            // MemImage reports its non-zero 4 KiB blocks as data: the zeroed block is not
            // given and reads from the parent.
            copy_into(&MemImage::new(changed), sink, &CopyOptions::default()).unwrap();
        }
        _ => eprintln!("usage: vhdx_seed compact IN OUT | structures IN OUT | delta DIR"),
    }
}
