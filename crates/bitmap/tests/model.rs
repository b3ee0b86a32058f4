//! Property tests: ChangeMap against a model of plain sets of block indices.
//!
//! A map is modelled as its size, granularity and the `BTreeSet<u64>` of its changed blocks.
//! Maps of different shapes are compared at the finer granularity and the larger size, where a
//! coarse block stands for every fine block of the smaller disk that it covers.

use std::collections::BTreeSet;

use proptest::prelude::*;
use vdisk_bitmap::{fuzzing, ChangeMap};

#[derive(Clone, Debug)]
struct Model {
    size: u64,
    granularity: u64,
    blocks: BTreeSet<u64>,
}

impl Model {
    fn block_count(&self) -> u64 {
        self.size.div_ceil(self.granularity)
    }

    fn to_map(&self) -> ChangeMap {
        let mut m = ChangeMap::new(self.size, self.granularity).unwrap();
        for &b in &self.blocks {
            m.set(b);
        }
        m
    }

    /// The blocks at `granularity` (finer or equal) that hold a changed byte.
    fn at(&self, granularity: u64) -> BTreeSet<u64> {
        let ratio = self.granularity / granularity;
        let fine_count = self.size.div_ceil(granularity);
        self.blocks
            .iter()
            .flat_map(|&b| b * ratio..((b + 1) * ratio).min(fine_count))
            .collect()
    }
}

fn blocks(m: &ChangeMap) -> BTreeSet<u64> {
    m.runs().flat_map(|(first, n)| first..first + n).collect()
}

/// The 512-byte sectors that the map's extents touch: a byte-level view at the finest
/// granularity, to compare maps of any shape.
fn sectors(m: &ChangeMap) -> BTreeSet<u64> {
    m.extents()
        .flat_map(|(start, len)| start / 512..(start + len).div_ceil(512))
        .collect()
}

/// A disk of up to ~200 KB (a few hundred blocks, so several words) at 512 B to 4 KiB.
fn shape() -> impl Strategy<Value = (u64, u64)> {
    (0u64..200_000, 0u32..4).prop_map(|(size, k)| (size, 512u64 << k))
}

fn model_of(shape: (u64, u64)) -> impl Strategy<Value = Model> {
    let (size, granularity) = shape;
    let count = size.div_ceil(granularity);
    // Single blocks plus a few runs, so that both sparse bits and long word-spanning runs
    // (and runs touching the end) turn up.
    let singles = prop::collection::vec(0..count.max(1), 0..20);
    let runs = prop::collection::vec((0..count.max(1), 0u64..200), 0..4);
    (singles, runs).prop_map(move |(singles, runs)| {
        let mut blocks: BTreeSet<u64> = singles.into_iter().filter(|&b| b < count).collect();
        for (first, len) in runs {
            blocks.extend(first..(first + len).min(count));
        }
        Model {
            size,
            granularity,
            blocks,
        }
    })
}

fn model() -> impl Strategy<Value = Model> {
    shape().prop_flat_map(model_of)
}

fn same_shape_pair() -> impl Strategy<Value = (Model, Model)> {
    shape().prop_flat_map(|s| (model_of(s), model_of(s)))
}

proptest! {
    #[test]
    fn map_matches_its_model(a in model()) {
        let m = a.to_map();
        prop_assert_eq!(blocks(&m), a.blocks.clone());
        prop_assert_eq!(m.count(), a.blocks.len() as u64);
        prop_assert_eq!(m.block_count(), a.block_count());
        fuzzing::check_map(&m);
    }

    #[test]
    fn algebra_same_shape((a, b) in same_shape_pair()) {
        let (ma, mb) = (a.to_map(), b.to_map());
        let union = ma.union(&mb).unwrap();
        prop_assert_eq!(blocks(&union), &a.blocks | &b.blocks);
        prop_assert_eq!(blocks(&ma.intersection(&mb).unwrap()), &a.blocks & &b.blocks);
        prop_assert_eq!(blocks(&ma.difference(&mb).unwrap()), &a.blocks - &b.blocks);
        let mut with = ma.clone();
        with.union_with(&mb).unwrap();
        prop_assert_eq!(with, union);
    }

    #[test]
    fn algebra_mixed_shapes(a in model(), b in model()) {
        let (ma, mb) = (a.to_map(), b.to_map());
        let g = a.granularity.min(b.granularity);
        let size = a.size.max(b.size);
        let (fa, fb) = (a.at(g), b.at(g));

        for (result, expected) in [
            (ma.union(&mb).unwrap(), &fa | &fb),
            (mb.union(&ma).unwrap(), &fa | &fb),
            (ma.intersection(&mb).unwrap(), &fa & &fb),
            (mb.intersection(&ma).unwrap(), &fa & &fb),
            (ma.difference(&mb).unwrap(), &fa - &fb),
            (mb.difference(&ma).unwrap(), &fb - &fa),
        ] {
            prop_assert_eq!((result.size(), result.granularity()), (size, g));
            prop_assert_eq!(blocks(&result), expected);
            fuzzing::check_map(&result);
        }
        let mut with = ma.clone();
        with.union_with(&mb).unwrap();
        prop_assert_eq!(&with, &ma.union(&mb).unwrap());
        let mut with = mb.clone();
        with.union_with(&ma).unwrap();
        prop_assert_eq!(&with, &ma.union(&mb).unwrap());
    }

    #[test]
    fn resample_coarser_covers_every_changed_byte(a in model(), k in 1u32..5) {
        let m = a.to_map();
        let g = a.granularity << k;
        let c = m.resample(g).unwrap();
        prop_assert_eq!((c.size(), c.granularity()), (a.size, g));
        prop_assert!(sectors(&m).is_subset(&sectors(&c)));
        // And no more than that: a coarse block is set exactly when a block folded into it is.
        let ratio = 1u64 << k;
        let expected: BTreeSet<u64> = a.blocks.iter().map(|&b| b / ratio).collect();
        prop_assert_eq!(blocks(&c), expected);
    }

    #[test]
    fn resample_finer_is_exact(a in model(), k in 1u32..4) {
        prop_assume!(a.granularity >> k >= 512);
        let m = a.to_map();
        let g = a.granularity >> k;
        let f = m.resample(g).unwrap();
        prop_assert_eq!(blocks(&f), a.at(g));
        prop_assert_eq!(sectors(&f), sectors(&m));
        prop_assert_eq!(f.resample(a.granularity).unwrap(), m);
    }

    #[test]
    fn resize_keeps_the_blocks_that_remain(a in model(), size in 0u64..300_000) {
        let r = a.to_map().resize(size).unwrap();
        let count = size.div_ceil(a.granularity);
        let expected: BTreeSet<u64> = a.blocks.iter().copied().filter(|&b| b < count).collect();
        prop_assert_eq!(r.block_count(), count);
        prop_assert_eq!(blocks(&r), expected);
        fuzzing::check_map(&r);
    }

    #[test]
    fn encode_decode_round_trip(a in model()) {
        let m = a.to_map();
        prop_assert_eq!(ChangeMap::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn any_flipped_byte_fails_decode(a in model(), at in any::<prop::sample::Index>(), x in 1u8..) {
        let mut enc = a.to_map().encode();
        let i = at.index(enc.len());
        enc[i] ^= x;
        prop_assert!(ChangeMap::decode(&enc).is_err(), "byte {} ^ {:#x} went unnoticed", i, x);
    }

    #[test]
    fn json_export_imports_back(a in model()) {
        let m = a.to_map();
        let back = ChangeMap::from_extents_json(m.to_extents_json().as_bytes(), a.size, a.granularity);
        prop_assert_eq!(back.unwrap(), m);
    }

    #[test]
    fn json_import_marks_every_touched_block(
        (size, g) in shape(),
        raw in prop::collection::vec((any::<u64>(), 0u64..20_000), 0..20),
    ) {
        prop_assume!(size > 0);
        // Unaligned, unsorted, overlapping extents inside the disk.
        let extents: Vec<(u64, u64)> = raw
            .into_iter()
            .map(|(s, l)| {
                let s = s % size;
                (s, l.min(size - s))
            })
            .collect();
        let mut text = String::from("{\"changedArea\":[");
        let mut expected = BTreeSet::new();
        for (i, &(s, l)) in extents.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&format!("{{\"start\":{s},\"length\":{l}}}"));
            if l > 0 {
                expected.extend(s / g..=(s + l - 1) / g);
            }
        }
        text.push_str("]}");
        let m = ChangeMap::from_extents_json(text.as_bytes(), size, g).unwrap();
        prop_assert_eq!(blocks(&m), expected);
    }

    /// Changed-block tracking across two backups: if A→B and B→C were tracked (at any
    /// granularities), their union covers every byte that differs between A and C, even when
    /// the disk was resized along the way.
    #[test]
    fn merged_diffs_cover_the_end_to_end_diff(
        versions in prop::collection::vec(prop::collection::vec(0u8..3, 1..300), 3),
        gs in prop::collection::vec(0u32..4, 3),
    ) {
        // A version is one value per 512-byte sector; few values, so that some sectors match.
        let (a, b, c) = (&versions[0], &versions[1], &versions[2]);
        let diff = |x: &[u8], y: &[u8], g: u64| -> ChangeMap {
            let sectors = x.len().max(y.len());
            let mut m = ChangeMap::new(sectors as u64 * 512, g).unwrap();
            for s in 0..sectors {
                if x.get(s) != y.get(s) {
                    m.mark_bytes(s as u64 * 512, 512).unwrap();
                }
            }
            m
        };
        let ab = diff(a, b, 512 << gs[0]);
        let bc = diff(b, c, 512 << gs[1]);
        let ac = diff(a, c, 512);
        let merged = ab.union(&bc).unwrap();
        prop_assert!(sectors(&ac).is_subset(&sectors(&merged)));
        // The same, said with the algebra: nothing of A→C is left once the merge is taken away.
        prop_assert!(ac.difference(&merged).unwrap().is_empty());
    }
}

// Maps over several chunks (2^16 blocks each, the unit of the sparse form): runs across chunk
// boundaries, whole chunks, and chunks fragmented past 512 and 1024 runs (where the on-disk
// and the in-memory forms switch to bits). The model is a plain `Vec<bool>`, one per block.

const CHUNK: u64 = fuzzing::CHUNK;

#[derive(Clone, Debug)]
enum Edit {
    /// Blocks `first..first+len` set, with `set_blocks`.
    Run(u64, u64),
    /// `count` blocks from `first`, every `stride`, set one by one.
    Stripe(u64, u64, u64),
    /// One block cleared.
    Clear(u64),
}

#[derive(Clone, Debug)]
struct Dense {
    size: u64,
    granularity: u64,
    edits: Vec<Edit>,
    bits: Vec<bool>,
}

impl Dense {
    fn to_map(&self) -> ChangeMap {
        let mut m = ChangeMap::new(self.size, self.granularity).unwrap();
        let n = m.block_count();
        for e in &self.edits {
            match *e {
                Edit::Run(first, len) => m.set_blocks(first, (first + len).min(n)),
                Edit::Stripe(first, count, stride) => {
                    for b in (first..n).step_by(stride as usize).take(count as usize) {
                        m.set(b);
                    }
                }
                Edit::Clear(b) => m.clear(b),
            }
        }
        m
    }

    /// The blocks at `granularity` (finer or equal) that hold a changed byte.
    fn at(&self, granularity: u64) -> Vec<bool> {
        let ratio = self.granularity / granularity;
        (0..self.size.div_ceil(granularity))
            .map(|f| self.bits[(f / ratio) as usize])
            .collect()
    }
}

fn dense_blocks(m: &ChangeMap) -> Vec<bool> {
    let mut v = vec![false; m.block_count() as usize];
    for (first, n) in m.runs() {
        v[first as usize..(first + n) as usize].fill(true);
    }
    v
}

/// `a` and `b` padded with unset blocks to `n`, combined block by block.
fn zip(a: &[bool], b: &[bool], n: usize, op: impl Fn(bool, bool) -> bool) -> Vec<bool> {
    (0..n)
        .map(|i| op(a.get(i) == Some(&true), b.get(i) == Some(&true)))
        .collect()
}

/// Up to 4 chunks and a bit, at 512 B to 4 KiB, with a partial last block now and then.
fn big_shape() -> impl Strategy<Value = (u64, u64)> {
    (1u64..4 * CHUNK + 5000, 0u32..4, 0u64..512).prop_map(|(blocks, k, short)| {
        let g = 512u64 << k;
        (blocks * g - short.min(g - 1), g)
    })
}

fn dense_of(shape: (u64, u64)) -> impl Strategy<Value = Dense> {
    let (size, granularity) = shape;
    let n = size.div_ceil(granularity);
    let edit = prop_oneof![
        3 => (0..n, 0..2 * CHUNK + 10).prop_map(|(f, l)| Edit::Run(f, l)),
        // Up to 3000 blocks 2 to 4 apart: a chunk of more than 512 or 1024 runs.
        3 => (0..n, 1u64..3000, 2u64..5).prop_map(|(f, c, s)| Edit::Stripe(f, c, s)),
        2 => (0..n).prop_map(Edit::Clear),
    ];
    prop::collection::vec(edit, 0..8).prop_map(move |edits| {
        let mut bits = vec![false; n as usize];
        for e in &edits {
            match *e {
                Edit::Run(first, len) => {
                    bits[first as usize..(first + len).min(n) as usize].fill(true)
                }
                Edit::Stripe(first, count, stride) => {
                    for b in (first..n).step_by(stride as usize).take(count as usize) {
                        bits[b as usize] = true;
                    }
                }
                Edit::Clear(b) => bits[b as usize] = false,
            }
        }
        Dense {
            size,
            granularity,
            edits,
            bits,
        }
    })
}

fn dense() -> impl Strategy<Value = Dense> {
    big_shape().prop_flat_map(dense_of)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn big_map_matches_its_model(a in dense()) {
        let m = a.to_map();
        prop_assert_eq!(dense_blocks(&m), a.bits.clone());
        prop_assert_eq!(m.count(), a.bits.iter().filter(|&&b| b).count() as u64);
        for (i, &b) in a.bits.iter().enumerate().step_by(97) {
            prop_assert_eq!(m.test(i as u64), b);
        }
        fuzzing::check_map(&m);
        // Both on-disk versions read back, and each re-encodes to itself.
        let v2 = m.encode();
        prop_assert_eq!(&ChangeMap::decode(&v2).unwrap(), &m);
        fuzzing::decode(&v2);
        let v1 = fuzzing::encode_v1(&m);
        prop_assert_eq!(&ChangeMap::decode(&v1).unwrap(), &m);
        fuzzing::decode(&v1);
        // The v2 file is never much larger than the dense one: at most 8 KiB and 8 bytes a
        // chunk (a chunk's runs are written only while they take no more than its bits), and
        // the last, partial, chunk may take a full chunk's 8 KiB.
        let chunks = m.block_count().div_ceil(CHUNK) as usize;
        prop_assert!(v2.len() <= v1.len() + 8 * chunks + 8200 + 16);
    }

    #[test]
    fn big_algebra_same_shape((a, b) in big_shape().prop_flat_map(|s| (dense_of(s), dense_of(s)))) {
        let (ma, mb) = (a.to_map(), b.to_map());
        let n = a.bits.len();
        for (result, expected) in [
            (ma.union(&mb).unwrap(), zip(&a.bits, &b.bits, n, |x, y| x | y)),
            (ma.intersection(&mb).unwrap(), zip(&a.bits, &b.bits, n, |x, y| x & y)),
            (ma.difference(&mb).unwrap(), zip(&a.bits, &b.bits, n, |x, y| x & !y)),
            (mb.difference(&ma).unwrap(), zip(&b.bits, &a.bits, n, |x, y| x & !y)),
        ] {
            prop_assert_eq!(dense_blocks(&result), expected);
            fuzzing::check_map(&result);
        }
        let mut with = ma.clone();
        with.union_with(&mb).unwrap();
        prop_assert_eq!(with, ma.union(&mb).unwrap());
    }

    #[test]
    fn big_algebra_mixed_shapes(a in dense(), b in dense()) {
        let (ma, mb) = (a.to_map(), b.to_map());
        let g = a.granularity.min(b.granularity);
        let size = a.size.max(b.size);
        let n = size.div_ceil(g) as usize;
        let (fa, fb) = (a.at(g), b.at(g));
        for (result, expected) in [
            (ma.union(&mb).unwrap(), zip(&fa, &fb, n, |x, y| x | y)),
            (ma.intersection(&mb).unwrap(), zip(&fa, &fb, n, |x, y| x & y)),
            (ma.difference(&mb).unwrap(), zip(&fa, &fb, n, |x, y| x & !y)),
            (mb.difference(&ma).unwrap(), zip(&fb, &fa, n, |x, y| x & !y)),
        ] {
            prop_assert_eq!((result.size(), result.granularity()), (size, g));
            prop_assert_eq!(dense_blocks(&result), expected);
            fuzzing::check_map(&result);
        }
        let mut with = ma.clone();
        with.union_with(&mb).unwrap();
        prop_assert_eq!(&with, &ma.union(&mb).unwrap());
    }

    #[test]
    fn big_resample_and_resize(a in dense(), k in 1u32..4, size in 1u64..5 * CHUNK * 512) {
        let m = a.to_map();
        let coarse = m.resample(a.granularity << k).unwrap();
        let ratio = 1usize << k;
        let expected: Vec<bool> = (0..coarse.block_count() as usize)
            .map(|c| a.bits[c * ratio..((c + 1) * ratio).min(a.bits.len())].iter().any(|&b| b))
            .collect();
        prop_assert_eq!(dense_blocks(&coarse), expected);
        fuzzing::check_map(&coarse);
        if a.granularity >> k >= 512 {
            let fine = m.resample(a.granularity >> k).unwrap();
            prop_assert_eq!(dense_blocks(&fine), a.at(a.granularity >> k));
            prop_assert_eq!(&fine.resample(a.granularity).unwrap(), &m);
            fuzzing::check_map(&fine);
        }
        let r = m.resize(size).unwrap();
        let count = size.div_ceil(a.granularity) as usize;
        let expected: Vec<bool> = (0..count).map(|i| a.bits.get(i) == Some(&true)).collect();
        prop_assert_eq!(dense_blocks(&r), expected);
        fuzzing::check_map(&r);
    }

    /// `union_with` marks a small map into a large one in place: the same as the union.
    #[test]
    fn union_with_a_small_map_in_place(
        singles in prop::collection::vec(0u64..64 * CHUNK, 40..80),
        b in dense_of((4 * CHUNK * 512 + 1000, 1024)),
    ) {
        let mut a = ChangeMap::new(64 * CHUNK * 512, 512).unwrap();
        for s in singles {
            a.set(s);
        }
        let mb = b.to_map();
        let mut with = a.clone();
        with.union_with(&mb).unwrap();
        let u = a.union(&mb).unwrap();
        prop_assert_eq!(&with, &u);
        fuzzing::check_map(&with);
    }
}

/// `bytes` with a right checksum in its last 4 bytes.
fn with_crc(mut bytes: Vec<u8>) -> Vec<u8> {
    let n = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..n]);
    bytes[n..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Damage that keeps the checksum right (what a buggy or hostile writer makes): decode
    /// refuses it, or accepts exactly the canonical encoding of a valid map. Never a panic,
    /// never a second encoding of a map.
    #[test]
    fn mutations_behind_the_checksum_are_refused_or_canonical(
        a in dense(),
        v1 in any::<bool>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..4),
    ) {
        let m = a.to_map();
        let mut bytes = if v1 { fuzzing::encode_v1(&m) } else { m.encode() };
        // Past the magic and the version, before the checksum: every field and record.
        let body = 12..bytes.len() - 4;
        for (at, x, how) in edits {
            let i = body.start + at.index(body.len());
            match how {
                0 => bytes[i] ^= x,
                1 => bytes[i] = x,
                // A u64 field or record word set to a small number or to a huge one.
                2 if i + 8 <= body.end => {
                    bytes[i..i + 8].copy_from_slice(&u64::from(x).to_le_bytes())
                }
                _ if i + 8 <= body.end => bytes[i..i + 8].copy_from_slice(&(!0u64 >> (x % 64)).to_le_bytes()),
                _ => bytes[i] = !bytes[i],
            }
        }
        let bytes = with_crc(bytes);
        fuzzing::decode(&bytes);
    }
}
