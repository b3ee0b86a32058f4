//! Writer-to-reader round trips: every subformat written from an in-memory disk and read back
//! by this crate's reader, and delta links written on a written parent.

use std::path::Path;
use std::sync::Mutex;

use vdisk_core::{copy_into, Allocation, CopyOptions, DiskImage, ErrorKind, MemImage, SECTOR};

use super::*;
use crate::testutil::TestChain;
use crate::VmdkLayer;
use vdisk_core::{write_delta, DeltaStats, DeltaTarget};

/// The grain of every sparse output, spelled out (64 KiB) rather than taken from the writer.
const G: usize = 64 << 10;

/// A small deterministic generator (xorshift64), so that contents look random but every
/// run writes the same disk.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// How a grain of a test disk is filled.
#[derive(Clone, Copy)]
enum Fill {
    /// Every byte random (zeros included, as they come).
    Random,
    /// One 4 KiB block of random bytes somewhere in the grain, zeros around it.
    OneBlock,
    /// Only the grain's last byte is set.
    LastByte,
}

/// A disk of `size` bytes, zero except for `grains`, filled as given (clipped to the size).
fn disk(size: usize, grains: &[(usize, Fill)], seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut d = vec![0u8; size];
    for &(g, fill) in grains {
        let start = g * G;
        let end = ((g + 1) * G).min(size);
        assert!(
            start < end,
            "grain {g} is past the end of a {size}-byte disk"
        );
        let grain = &mut d[start..end];
        match fill {
            Fill::Random => grain.iter_mut().for_each(|b| *b = rng.next() as u8),
            Fill::OneBlock => {
                let blocks = grain.len().div_ceil(4096);
                let at = (rng.next() as usize % blocks) * 4096;
                let stop = (at + 4096).min(grain.len());
                grain[at..stop]
                    .iter_mut()
                    .for_each(|b| *b = rng.next() as u8 | 1);
            }
            Fill::LastByte => *grain.last_mut().unwrap() = 0xff,
        }
    }
    d
}

/// The test disks: odd sizes, zero grains between data ones, and one large enough for two
/// grain tables (a table covers 512 grains, 32 MiB).
fn cases() -> Vec<(&'static str, Vec<u8>)> {
    let mut rng = Rng(0x5eed);
    // Every grain of 17 and a bit chosen at random: zero, or one of the fills.
    let mixed: Vec<(usize, Fill)> = (0..18)
        .filter_map(|g| match rng.next() % 4 {
            0 => None,
            1 => Some((g, Fill::Random)),
            2 => Some((g, Fill::OneBlock)),
            _ => Some((g, Fill::LastByte)),
        })
        .collect();
    let two_tables = 512 * G + 3 * G + 100;
    vec![
        ("3 sectors", disk(3 * 512, &[(0, Fill::Random)], 1)),
        ("one grain + 1 byte", disk(G + 1, &[(1, Fill::LastByte)], 2)),
        (
            "one grain + 1 byte, both set",
            disk(G + 1, &[(0, Fill::OneBlock), (1, Fill::Random)], 3),
        ),
        (
            "17 grains + 700 bytes, mixed",
            disk(17 * G + 700, &mixed, 4),
        ),
        (
            "two grain tables",
            disk(
                two_tables,
                &[
                    (0, Fill::Random),
                    (5, Fill::OneBlock),
                    (511, Fill::LastByte),
                    (512, Fill::Random),
                    (514, Fill::OneBlock),
                    (515, Fill::Random),
                ],
                5,
            ),
        ),
        ("all zero", vec![0u8; 5 * G]),
    ]
}

/// Every byte of `img`.
fn read_all(img: &dyn DiskImage) -> Vec<u8> {
    let mut buf = vec![0u8; img.size() as usize];
    img.read_at(&mut buf, 0).unwrap();
    buf
}

/// The extents of `img`'s map that overlap `[start, end)`.
fn overlapping(img: &VmdkLayer, start: usize, end: usize) -> Vec<Allocation> {
    img.allocation(start as u64, (end - start) as u64)
        .unwrap()
        .iter()
        .map(|e| e.allocation)
        .collect()
}

/// How a test disk is handed to a writer.
#[derive(Debug, Clone, Copy)]
enum Feed {
    /// Through [`copy_into`] from a [`MemImage`], whose map leaves out zero 4 KiB blocks.
    Copy,
    /// Every block put in order, zero ones included, as a source that maps everything as
    /// data (a fully allocated raw file) hands them over.
    Dense,
}

/// Write `bytes` as `subformat` at `dir/out.vmdk` and open the result.
fn write(dir: &Path, bytes: &[u8], subformat: Subformat, feed: Feed) -> VmdkLayer {
    let dst = dir.join("out.vmdk");
    let mut sink = create(
        &dst,
        bytes.len() as u64,
        subformat,
        &WriteOptions::default(),
    )
    .unwrap();
    match feed {
        Feed::Copy => {
            let stats = copy_into(
                &MemImage::new(bytes.to_vec()),
                sink,
                &CopyOptions::default(),
            )
            .unwrap();
            assert_eq!(stats.size, bytes.len() as u64);
        }
        Feed::Dense => {
            let bs = sink.block_size() as usize;
            for (i, block) in bytes.chunks(bs).enumerate() {
                sink.put(&[((i * bs) as u64, block)]).unwrap();
            }
            sink.finish().unwrap();
        }
    }
    VmdkLayer::open(&dst).unwrap()
}

#[test]
fn every_subformat_reads_back_what_was_written() {
    for subformat in Subformat::ALL {
        for ((name, bytes), feed) in cases()
            .into_iter()
            .flat_map(|c| [(c.clone(), Feed::Copy), (c, Feed::Dense)])
        {
            let tmp = tempfile::tempdir().unwrap();
            let img = write(tmp.path(), &bytes, subformat, feed);
            let what = format!("{} / {name} / {feed:?}", subformat.name());

            // A VMDK counts whole sectors: the size rounds up, the tail reads as zero.
            let sectors = (bytes.len() as u64).div_ceil(SECTOR);
            assert_eq!(img.size(), sectors * SECTOR, "{what}");
            let back = read_all(&img);
            assert!(back[..bytes.len()] == bytes[..], "{what}: bytes differ");
            assert!(back[bytes.len()..].iter().all(|&b| b == 0), "{what}");

            let layer = &img;
            assert_eq!(
                layer.descriptor().create_type.as_deref(),
                Some(subformat.name()),
                "{what}"
            );
            assert_eq!(layer.extents().len(), 1, "{what}");
            assert!(!layer.descriptor().has_parent(), "{what}");
            let findings = crate::check::check(&img);
            assert!(findings.is_empty(), "{what}: {findings:?}");

            // All-zero grains are not stored; grains with data are, whole (sparse) or at
            // least their non-zero 4 KiB blocks (flat files, whose holes are the map).
            let flat = matches!(
                subformat,
                Subformat::MonolithicFlat | Subformat::TwoGbMaxExtentFlat
            );
            for (g, grain) in bytes.chunks(G).enumerate() {
                let (start, end) = (g * G, g * G + grain.len());
                let map = overlapping(&img, start, end);
                if grain.iter().all(|&b| b == 0) {
                    assert!(
                        !map.contains(&Allocation::Data),
                        "{what}: zero grain {g} is stored: {map:?}"
                    );
                } else if !flat {
                    assert_eq!(map, [Allocation::Data], "{what}: grain {g}");
                } else {
                    for (i, block) in grain.chunks(4096).enumerate() {
                        if block.iter().any(|&b| b != 0) {
                            let at = start + i * 4096;
                            let m = overlapping(&img, at, at + block.len());
                            assert_eq!(m, [Allocation::Data], "{what}: grain {g} block {i}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn sparse_outputs_hold_no_more_than_their_data_grains() {
    // File size is the metadata plus one grain per data grain (compressed for
    // streamOptimized), whatever the disk's size.
    let (_, bytes) = cases().swap_remove(4); // two grain tables, 6 data grains
    let data_grains = bytes
        .chunks(G)
        .filter(|g| g.iter().any(|&b| b != 0))
        .count();
    assert_eq!(data_grains, 6);
    for subformat in [Subformat::MonolithicSparse, Subformat::TwoGbMaxExtentSparse] {
        let tmp = tempfile::tempdir().unwrap();
        let img = write(tmp.path(), &bytes, subformat, Feed::Dense);
        let ext = img.first_sparse().unwrap();
        let overhead = ext.header().overhead * SECTOR;
        assert_eq!(
            ext.bytes().len(),
            overhead + (data_grains * G) as u64,
            "{}",
            subformat.name()
        );
    }
}

/// Write a delta link of `subformat` at `dst` on `parent` (whose top file is `parent_top`,
/// named `base.vmdk`-style beside the link) for `new`, listing `changed` grains; returns the
/// stats and the grains the hook saw.
fn link(
    parent_top: &VmdkLayer,
    parent: &dyn DiskImage,
    new: &[u8],
    changed: &[usize],
    subformat: Subformat,
    dst: &Path,
) -> Result<(DeltaStats, Vec<u64>)> {
    let seen = Mutex::new(Vec::new());
    let hook = |g: u64, data: &[u8]| {
        // The hook sees the new image's bytes of the grain.
        let start = g as usize * G;
        assert!(data == &new[start..(start + G).min(new.len())]);
        seen.lock().unwrap().push(g);
    };
    let hint = parent_top.path().file_name().unwrap().into();
    let sink = LinkSink::create(
        dst,
        ParentLink {
            cid: parent_top.descriptor().cid.unwrap(),
            hint,
        },
        new.len() as u64,
        Layout::of(subformat).expect("a sparse subformat"),
        &WriteOptions::default(),
    )?;
    let ranges = changed.iter().map(|&g| ((g * G) as u64, G as u64));
    let new = MemImage::new(new.to_vec());
    let stats = write_delta(
        DeltaTarget {
            parent,
            new: &new,
            sink: Box::new(sink),
            on_block: Some(&hook),
        },
        ranges,
    )?;
    let mut seen = seen.into_inner().unwrap();
    seen.sort_unstable();
    Ok((stats, seen))
}

#[test]
fn a_delta_link_on_a_written_parent_reads_as_the_new_disk() {
    // The parent: 16 grains and a sector, data in grains 0..=10.
    let old_size = 16 * G + 512;
    let old = disk(
        old_size,
        &(0..=10).map(|g| (g, Fill::Random)).collect::<Vec<_>>(),
        7,
    );
    // The new disk, grown by two grains and 1000 bytes: grain 1 rewritten, grain 2 zeroed
    // (data in the parent: a zeroed grain), grain 4 changed in one byte, grain 13 written
    // (zero in the parent), and the new last, partial grain.
    let new_size = old_size + 2 * G + 1000;
    let mut new = old.clone();
    new.resize(new_size, 0);
    let fresh = disk(
        new_size,
        &[(1, Fill::Random), (13, Fill::OneBlock), (18, Fill::Random)],
        8,
    );
    for g in [1, 13, 18] {
        let r = g * G..((g + 1) * G).min(new_size);
        new[r.clone()].copy_from_slice(&fresh[r]);
    }
    new[2 * G..3 * G].fill(0);
    new[4 * G + 77] ^= 0x01;
    // Grain 12 is listed but did not change (zero before and after): nothing is stored.
    let changed = [1, 2, 4, 12, 13, 18];
    let (data, zeroed) = ([1usize, 4, 13, 18], [2usize]);

    for subformat in [Subformat::MonolithicSparse, Subformat::TwoGbMaxExtentSparse] {
        let tmp = tempfile::tempdir().unwrap();
        let base_path = tmp.path().join("base.vmdk");
        let sink = create(
            &base_path,
            old_size as u64,
            Subformat::MonolithicSparse,
            &WriteOptions::default(),
        )
        .unwrap();
        copy_into(&MemImage::new(old.clone()), sink, &CopyOptions::default()).unwrap();
        let parent = VmdkLayer::open(&base_path).unwrap();
        let dst = tmp.path().join("link.vmdk");
        let (stats, seen) = link(&parent, &parent, &new, &changed, subformat, &dst).unwrap();
        let what = subformat.name();
        assert_eq!(stats.data_blocks, data.len() as u64, "{what}");
        assert_eq!(stats.zeroed_blocks, zeroed.len() as u64, "{what}");
        assert_eq!(
            seen,
            changed.iter().map(|&g| g as u64).collect::<Vec<_>>(),
            "{what}"
        );
        // Listed grains are read, except those the new disk's map says read as zero
        // (grains 2 and 12): those are taken as zeros without a read.
        let listed: u64 = changed
            .iter()
            .map(|&g| g * G..((g + 1) * G).min(new_size))
            .filter(|r| new[r.clone()].iter().any(|&b| b != 0))
            .map(|r| r.len() as u64)
            .sum();
        assert_eq!(stats.bytes_read, listed, "{what}");

        let img = TestChain::open(&vdisk_io::FsStore::default(), &dst).unwrap();
        assert_eq!(img.0.len(), 2, "{what}");
        let d = img.0[0].descriptor();
        assert_eq!(d.parent_hint.as_deref(), Some(Path::new("base.vmdk")));
        assert_eq!(d.parent_cid, parent.descriptor().cid);
        assert_eq!(d.create_type.as_deref(), Some(what));
        assert_eq!(img.size(), (new_size as u64).div_ceil(SECTOR) * SECTOR);
        let back = read_all(&img);
        assert!(
            back[..new_size] == new[..],
            "{what}: the link does not read as new"
        );
        assert!(back[new_size..].iter().all(|&b| b == 0));

        // The link itself stores exactly the data and zeroed grains.
        let own = img.0[0].allocation(0, img.size()).unwrap();
        for g in 0..new_size.div_ceil(G) {
            let (s, e) = (g * G, ((g + 1) * G).min(img.size() as usize));
            let kinds: Vec<_> = own
                .iter()
                .filter(|x| (x.start as usize) < e && x.end() as usize > s)
                .map(|x| x.allocation)
                .collect();
            let want = if data.contains(&g) {
                Allocation::Data
            } else if zeroed.contains(&g) {
                Allocation::Zero
            } else {
                Allocation::Unallocated
            };
            assert_eq!(kinds, [want], "{what}: grain {g}");
        }
        assert!(crate::check::check(&img.0[0]).is_empty(), "{what}");

        // A second link on the first: the chain of three still reads as the newest disk.
        let mut newer = new.clone();
        newer[..G].fill(0); // zero now, data two levels down: a zeroed grain
        newer[5 * G + 3] = 0x33;
        let dst2 = tmp.path().join("link2.vmdk");
        let (stats2, _) = link(
            &img.0[0],
            &img,
            &newer,
            &[0, 5],
            Subformat::MonolithicSparse,
            &dst2,
        )
        .unwrap();
        assert_eq!((stats2.data_blocks, stats2.zeroed_blocks), (1, 1), "{what}");
        let img2 = TestChain::open(&vdisk_io::FsStore::default(), &dst2).unwrap();
        assert_eq!(img2.0.len(), 3);
        assert!(
            read_all(&img2)[..new_size] == newer[..],
            "{what}: second link"
        );
    }
}

#[test]
fn a_delta_link_is_sparse_and_its_destination_is_not_the_parent() {
    let tmp = tempfile::tempdir().unwrap();
    let base_path = tmp.path().join("base.vmdk");
    let old = disk(4 * G, &[(0, Fill::Random)], 9);
    let sink = create(
        &base_path,
        old.len() as u64,
        Subformat::MonolithicSparse,
        &WriteOptions::default(),
    )
    .unwrap();
    copy_into(&MemImage::new(old.clone()), sink, &CopyOptions::default()).unwrap();
    let parent = VmdkLayer::open(&base_path).unwrap();
    // Flat and streamOptimized subformats have no sparse layout: a link cannot be one.
    for subformat in [
        Subformat::MonolithicFlat,
        Subformat::TwoGbMaxExtentFlat,
        Subformat::StreamOptimized,
    ] {
        assert_eq!(Layout::of(subformat), None, "{}", subformat.name());
    }
    // An existing destination is refused, and left as it was.
    let e = link(
        &parent,
        &parent,
        &old,
        &[0],
        Subformat::MonolithicSparse,
        &base_path,
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    assert!(read_all(&VmdkLayer::open(&base_path).unwrap()) == old);
}
