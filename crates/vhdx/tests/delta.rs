//! Differencing disks: written with `create_delta` over a VHDX parent, read back through
//! the chain the way the registry reads it (qemu-img 10 does not read them).

mod common;

use std::path::Path;

use common::*;
use vdisk_core::{copy_into, Allocation, CopyOptions, DiskImage, Extent, Result};
use vdisk_io::{CreateOptions, DeltaParent, Format, Layer};
use vdisk_vhdx::{BlockState, Subformat, WriteOptions, VHDX};

const MIB: u64 = 1 << 20;

/// A disk whose map says only the `changed` ranges hold data: what a delta is written from.
struct Changed {
    data: Vec<u8>,
    size: u64,
    changed: Vec<(u64, u64)>,
}

impl DiskImage for Changed {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let o = (offset as usize).min(self.data.len());
        let have = (self.data.len() - o).min(buf.len());
        buf[..have].copy_from_slice(&self.data[o..o + have]);
        buf[have..].fill(0);
        Ok(())
    }
    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        let end = offset + length;
        let mut map = Vec::new();
        let mut pos = offset;
        let mut push = |s: u64, e: u64, a| {
            vdisk_core::coalesce(
                &mut map,
                Extent {
                    start: s,
                    length: e.saturating_sub(s),
                    allocation: a,
                    depth: 0,
                },
            )
        };
        for &(s, l) in &self.changed {
            let (s, e) = (s.max(offset), (s + l).min(end));
            if s >= e {
                continue;
            }
            push(pos, s, Allocation::Unallocated);
            push(s, e, Allocation::Data);
            pos = e;
        }
        push(pos, end, Allocation::Unallocated);
        Ok(map)
    }
    fn format_name(&self) -> &'static str {
        "test"
    }
}

fn write_delta(dst: &Path, parent: &dyn Layer, name: &str, src: &Changed, cluster: Option<u64>) {
    let sink = VHDX
        .create_delta(
            dst,
            &DeltaParent {
                name: Path::new(name),
                format: "vhdx",
                layer: parent,
            },
            src.size,
            &CreateOptions {
                cluster_size: cluster,
                ..Default::default()
            },
        )
        .unwrap();
    copy_into(src, sink, &CopyOptions::default()).unwrap();
}

fn apply(base: &[u8], changes: &[(u64, u64, Option<u64>)]) -> (Vec<u8>, Vec<(u64, u64)>) {
    let mut new = base.to_vec();
    let mut changed = Vec::new();
    for &(off, len, seed) in changes {
        let piece = &mut new[off as usize..(off + len) as usize];
        match seed {
            Some(s) => piece.copy_from_slice(&pattern(len as usize, s)),
            None => piece.fill(0),
        }
        changed.push((off, len));
    }
    changed.sort_unstable();
    (new, changed)
}

fn delta_round_trip(cluster: Option<u64>, qemu_base: bool) {
    let dir = tmp();
    let size = 48 * MIB;
    let raw_path = dir.path().join("base.raw");
    let base_raw = make_raw(
        &raw_path,
        size,
        &[
            (0, 12 * MIB as usize, 1),
            (20 * MIB, 8 * MIB as usize, 2),
            (size - MIB, MIB as usize, 3),
        ],
    );
    let base_path = dir.path().join("base.vhdx");
    if qemu_base {
        if !have_qemu() {
            return;
        }
        must(
            "qemu-img",
            &[
                "convert",
                "-q",
                "-f",
                "raw",
                "-O",
                "vhdx",
                "-o",
                "block_size=1M",
                s(&raw_path),
                s(&base_path),
            ],
        );
    } else {
        write_vhdx(
            &raw_path,
            &base_path,
            &WriteOptions {
                block_size: MIB,
                ..Default::default()
            },
        );
    }
    let base = open(&base_path);
    let (new, changed) = apply(
        &base_raw,
        &[
            (2 * MIB, MIB, Some(10)),         // a whole block rewritten
            (5 * MIB, MIB, None),             // a whole block zeroed: masks the parent
            (8 * MIB + 4096, 4096, Some(11)), // a few sectors of a block
            (9 * MIB + 8192, 8192, None),     // a few sectors zeroed
            (15 * MIB, 4096, Some(12)),       // where the parent holds nothing
            (size - 4096, 4096, Some(13)),    // the last sectors
        ],
    );
    let src = Changed {
        data: new.clone(),
        size,
        changed: changed.clone(),
    };
    let delta_path = dir.path().join("delta.vhdx");
    write_delta(&delta_path, &base, "base.vhdx", &src, cluster);
    let delta = open(&delta_path);
    assert_eq!(delta.subformat(), Subformat::Differencing);
    assert_eq!(delta.size(), size);
    let b = delta.backing().unwrap();
    assert_eq!(b.names, [Path::new("base.vhdx")]);
    assert_eq!(b.format.as_deref(), Some("vhdx"));
    assert_eq!(
        b.link,
        base.link_id(),
        "parent_linkage is the parent's DataWriteGuid"
    );
    assert!(delta.check().is_empty(), "{:?}", delta.check());
    // Through the chain, the delta reads as the new disk.
    let layers: [&dyn Layer; 2] = [&delta, &base];
    assert!(read_chain(&layers, 0, size) == new, "chain contents differ");
    // Alone, it holds exactly what changed: data (zeros included) where given, nothing
    // elsewhere.
    let own = map(&delta);
    for e in &own {
        let inside = changed.iter().any(|&(s, l)| e.start < s + l && s < e.end());
        match e.allocation {
            Allocation::Unallocated => assert!(!inside, "{e:?} lost a change"),
            _ => assert!(
                changed
                    .iter()
                    .any(|&(s, l)| s <= e.start && e.end() <= s + l),
                "{e:?} claims more than was given"
            ),
        }
    }
    if cluster == Some(MIB) {
        let bat = delta.bat();
        assert!(matches!(bat.state(2), BlockState::Full(_)));
        assert_eq!(bat.state(5), BlockState::Zero);
        assert!(matches!(bat.state(8), BlockState::Partial(..)));
        assert!(matches!(bat.state(9), BlockState::Partial(..)));
        assert_eq!(bat.state(1), BlockState::NotPresent);
    }
    // qemu-img 10 refuses differencing VHDX files.
    if have_qemu() {
        let (ok, out, err) = run("qemu-img", &["info", "-f", "vhdx", s(&delta_path)]);
        assert!(!ok, "qemu-img opened a differencing VHDX: {out}");
        eprintln!("qemu-img info on a differencing VHDX: {}", err.trim());
    }
}

#[test]
fn delta_over_our_base_with_1m_blocks() {
    delta_round_trip(Some(MIB), false);
}

#[test]
fn delta_over_our_base_with_default_blocks() {
    delta_round_trip(None, false);
}

#[test]
fn delta_over_a_qemu_base() {
    delta_round_trip(Some(MIB), true);
}

#[test]
fn delta_of_a_delta_and_across_chunks() {
    // 9 GiB of 1 MiB blocks: three chunks of 4 GiB, each with its own sector bitmap.
    let dir = tmp();
    let size = 9u64 << 30;
    let raw_path = dir.path().join("base.raw");
    let f = std::fs::File::create(&raw_path).unwrap();
    f.set_len(size).unwrap();
    use std::os::unix::fs::FileExt;
    let edge = 4u64 << 30;
    f.write_all_at(&pattern(2 * MIB as usize, 1), edge - MIB)
        .unwrap();
    drop(f);
    let base_path = dir.path().join("base.vhdx");
    let opts = WriteOptions {
        block_size: MIB,
        ..Default::default()
    };
    write_vhdx(&raw_path, &base_path, &opts);
    let base = open(&base_path);
    // Sparse expectation: (offset, bytes) of everything not zero in the new disk.
    let changes = [
        (edge - 4096, pattern(8192, 5)), // across the chunk edge
        (8 << 30, pattern(4096, 6)),     // in the third chunk
        (MIB + 512, vec![0u8; 512]),     // zeros where the parent has nothing
    ];
    struct Sparse<'a> {
        size: u64,
        base: &'a dyn DiskImage,
        changes: &'a [(u64, Vec<u8>)],
    }
    impl DiskImage for Sparse<'_> {
        fn size(&self) -> u64 {
            self.size
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            self.base.read_at(buf, offset)?;
            for (o, d) in self.changes {
                let (s, e) = (
                    (*o).max(offset),
                    (o + d.len() as u64).min(offset + buf.len() as u64),
                );
                if s < e {
                    buf[(s - offset) as usize..(e - offset) as usize]
                        .copy_from_slice(&d[(s - o) as usize..(e - o) as usize]);
                }
            }
            Ok(())
        }
        fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
            let ch = Changed {
                data: Vec::new(),
                size: self.size,
                changed: self
                    .changes
                    .iter()
                    .map(|(o, d)| (*o, d.len() as u64))
                    .collect(),
            };
            ch.allocation(offset, length)
        }
        fn format_name(&self) -> &'static str {
            "test"
        }
    }
    let mut sorted = changes.to_vec();
    sorted.sort_by_key(|c| c.0);
    let src = Sparse {
        size,
        base: &base,
        changes: &sorted,
    };
    let d1 = dir.path().join("d1.vhdx");
    let sink = VHDX
        .create_delta(
            &d1,
            &DeltaParent {
                name: Path::new("base.vhdx"),
                format: "vhdx",
                layer: &base,
            },
            size,
            &CreateOptions {
                cluster_size: Some(MIB),
                ..Default::default()
            },
        )
        .unwrap();
    copy_into(&src, sink, &CopyOptions::default()).unwrap();
    let delta = open(&d1);
    assert!(delta.check().is_empty(), "{:?}", delta.check());
    // Bitmaps exist for chunks 0, 1 and 2.
    let regions = &delta.metadata()[0].ranges;
    assert_eq!(regions.len(), 4 + 3, "{regions:?}");
    let layers: [&dyn Layer; 2] = [&delta, &base];
    for (off, len) in [
        (edge - MIB, 2 * MIB),
        (8 << 30, MIB),
        (0, 2 * MIB),
        (size - MIB, MIB),
    ] {
        let mut want = vec![0u8; len as usize];
        src.read_at(&mut want, off).unwrap();
        assert!(read_chain(&layers, off, len) == want, "at {off}");
    }
    // A second delta on the first: its parent is the first delta.
    let d2 = dir.path().join("d2.vhdx");
    let top = Changed {
        data: Vec::new(),
        size,
        changed: vec![(edge, 4096)],
    };
    write_delta(&d2, &delta, "d1.vhdx", &top, None);
    let delta2 = open(&d2);
    assert_eq!(delta2.backing().unwrap().link, delta.link_id());
    let layers: [&dyn Layer; 3] = [&delta2, &delta, &base];
    let got = read_chain(&layers, edge - 8192, 16384);
    let mut want = vec![0u8; 16384];
    src.read_at(&mut want, edge - 8192).unwrap();
    want[8192..12288].fill(0); // the second delta zeroed it
    assert_eq!(got, want);
}

#[test]
fn four_kib_sectors_follow_the_parent() {
    let dir = tmp();
    let size = 16 * MIB;
    let raw_path = dir.path().join("base.raw");
    let base_raw = make_raw(&raw_path, size, &[(0, 3 * MIB as usize, 1)]);
    let base_path = dir.path().join("base.vhdx");
    write_vhdx(
        &raw_path,
        &base_path,
        &WriteOptions {
            sector_size: 4096,
            block_size: MIB,
            ..Default::default()
        },
    );
    let base = open(&base_path);
    assert_eq!(base.metadata_items().logical_sector_size, 4096);
    assert!(read_all(&base) == base_raw);
    let (new, changed) = apply(
        &base_raw,
        &[(MIB + 4096, 4096, Some(3)), (2 * MIB, 8192, None)],
    );
    let src = Changed {
        data: new.clone(),
        size,
        changed,
    };
    let d = dir.path().join("d.vhdx");
    write_delta(&d, &base, "base.vhdx", &src, Some(MIB));
    let delta = open(&d);
    assert_eq!(delta.metadata_items().logical_sector_size, 4096);
    let layers: [&dyn Layer; 2] = [&delta, &base];
    assert!(read_chain(&layers, 0, size) == new);
    if have_qemu() {
        // qemu-img 10 reads only 512-byte logical sectors.
        let (ok, _, err) = run("qemu-img", &["info", "-f", "vhdx", s(&base_path)]);
        assert!(!ok && err.contains("not supported"), "{err}");
    }
}

#[test]
fn deltas_need_a_vhdx_parent() {
    let dir = tmp();
    let raw_path = dir.path().join("p.raw");
    make_raw(&raw_path, MIB, &[]);
    let raw = vdisk_raw::RawImage::open(&raw_path).unwrap();
    let e = VHDX
        .create_delta(
            &dir.path().join("d.vhdx"),
            &DeltaParent {
                name: Path::new("p.raw"),
                format: "raw",
                layer: &raw,
            },
            MIB,
            &CreateOptions::default(),
        )
        .err()
        .unwrap();
    assert!(e.to_string().contains("VHDX parent"), "{e}");
    assert!(!dir.path().join("d.vhdx").exists());
}
