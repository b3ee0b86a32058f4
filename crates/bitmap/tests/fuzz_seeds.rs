//! The seed corpora of the bitmap fuzz targets (`fuzz/seeds/bitmap_decode/`,
//! `fuzz/seeds/extents_json/`), made here from the encoder and from hand-written JSON in each
//! accepted shape, and run through the fuzzing entry points. Bitmap seeds come in both
//! on-disk versions: the version 1 (dense) ones as vdisk 0.1 wrote them, and version 2 (runs
//! and chunk records) ones named `v2-*`.
//!
//! To (re)write the seed files: `VDISK_WRITE_SEEDS=1 cargo test -p vdisk-bitmap --test fuzz_seeds`.

use std::path::Path;

use vdisk_bitmap::{fuzzing, ChangeMap};

fn decode_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let empty = ChangeMap::new(0, 512).unwrap();
    let mut tiny = ChangeMap::new(1000, 512).unwrap();
    tiny.set(1);
    let mut words = ChangeMap::new(130 * 4096 + 17, 4096).unwrap();
    words.set_blocks(0, 3);
    words.set_blocks(62, 66);
    words.set(130);
    let mut full = ChangeMap::new(128 * 512, 512).unwrap();
    full.set_blocks(0, 128);
    let mut disk = ChangeMap::new(64 << 20, 64 << 10).unwrap();
    disk.set_blocks(0, 16);
    disk.set_blocks(500, 700);
    disk.set(1023);
    let clear = ChangeMap::new(64 << 20, 1 << 20).unwrap();
    // Version 2 only: runs across chunks of 2^16 blocks, a full stretch, a chunk of 600 runs
    // (a list in memory, a chunk record on disk) and one of 1500 (bits in both), and the
    // largest maps with a few blocks and with all of them.
    const C: u64 = fuzzing::CHUNK;
    let mut chunks = ChangeMap::new((4 * C + 100) * 512, 512).unwrap();
    chunks.set_blocks(C - 2, 2 * C + 3);
    for i in 0..600 {
        chunks.set(2 * C + 7 * i);
    }
    for i in 0..1500 {
        chunks.set(3 * C + 2 * i + 1);
    }
    chunks.set_blocks(4 * C + 90, 4 * C + 100);
    let mut sparse = ChangeMap::new(vdisk_core::MAX_DISK_SIZE, 512).unwrap();
    for b in [0, 1 << 38, (1 << 39) - 1] {
        sparse.set(b);
    }
    let mut all = sparse.clone();
    all.set_blocks(0, all.block_count());
    let v1 = fuzzing::encode_v1;
    vec![
        ("empty-size-0", v1(&empty)),
        ("tiny-1000b-512", v1(&tiny)),
        ("unaligned-3-words-4k", v1(&words)),
        ("full-2-words", v1(&full)),
        ("64m-at-64k", v1(&disk)),
        ("clear-64m-at-1m", v1(&clear)),
        ("v2-empty-size-0", empty.encode()),
        ("v2-tiny-1000b-512", tiny.encode()),
        ("v2-unaligned-4k", words.encode()),
        ("v2-64m-at-64k", disk.encode()),
        ("v2-clear-64m-at-1m", clear.encode()),
        ("v2-chunk-records", chunks.encode()),
        ("v2-256t-3-blocks", sparse.encode()),
        ("v2-256t-all", all.encode()),
    ]
}

/// `size` (u32 LE) and the granularity byte (`512 << (b % 8)`), then the JSON text: the input
/// layout of `fuzzing::extents_json`.
fn json_seed(size: u32, granularity_byte: u8, text: &str) -> Vec<u8> {
    let mut v = size.to_le_bytes().to_vec();
    v.push(granularity_byte);
    v.extend_from_slice(text.as_bytes());
    v
}

fn extents_json_seeds() -> Vec<(&'static str, Vec<u8>)> {
    const MIB: u32 = 1 << 20;
    vec![
        (
            "vdisk-extents",
            json_seed(
                MIB,
                7,
                r#"{"extents":[{"start":0,"length":65536},{"start":196608,"length":131072}]}"#,
            ),
        ),
        (
            "vdisk-diff-report",
            json_seed(
                MIB,
                7,
                r#"{"old_size":1048576,"new_size":1048576,"granularity":65536,"changed_blocks":1,"changed_bytes":65536,"extents":[{"start":65536,"length":65536}]}"#,
            ),
        ),
        (
            "vmware-changed-area",
            json_seed(
                MIB,
                7,
                r#"{"startOffset":0,"length":1048576,"changedArea":[{"start":131072,"length":65536},{"start":983040,"length":65536}]}"#,
            ),
        ),
        (
            "hyperv-list",
            json_seed(
                MIB,
                0,
                r#"[{"ByteOffset":0,"ByteLength":512},{"ByteOffset":655360,"ByteLength":65536}]"#,
            ),
        ),
        (
            "hyperv-ranges",
            json_seed(
                MIB,
                3,
                r#"{"ranges":[{"ByteOffset":4096,"ByteLength":8192},{"ByteOffset":1044480,"ByteLength":4096}]}"#,
            ),
        ),
        (
            "unaligned-overlapping",
            json_seed(
                1_000_000,
                1,
                r#"{"extents":[{"start":999999,"length":1},{"start":1023,"length":2},{"start":300000,"length":10},{"start":290000,"length":100000},{"start":5,"length":0}]}"#,
            ),
        ),
        (
            "past-the-end",
            json_seed(
                MIB,
                7,
                r#"{"changedArea":[{"start":1048064,"length":1024}]}"#,
            ),
        ),
        ("empty-list", json_seed(4096, 0, r#"{"extents":[]}"#)),
    ]
}

#[test]
fn seeds_pass_the_fuzz_entry_points() {
    let decode = decode_seeds();
    for (name, data) in &decode {
        assert!(ChangeMap::decode(data).is_ok(), "{name}");
        let version = if name.starts_with("v2-") { 2 } else { 1 };
        assert_eq!(data[8], version, "{name}");
        fuzzing::decode(data);
    }
    // The version 1 seeds are the files vdisk 0.1 wrote: still on disk, byte for byte.
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/bitmap_decode");
    for (name, data) in decode.iter().filter(|(n, _)| !n.starts_with("v2-")) {
        let committed = std::fs::read(seeds.join(name)).unwrap();
        assert!(committed == *data, "{name} differs from the committed seed");
    }
    let json = extents_json_seeds();
    for (name, data) in &json {
        fuzzing::extents_json(data);
        let size = u64::from(u32::from_le_bytes(data[..4].try_into().unwrap()));
        let parsed = ChangeMap::from_extents_json(&data[5..], size, 512 << (data[4] % 8));
        assert_eq!(
            parsed.is_ok(),
            *name != "past-the-end",
            "{name}: {parsed:?}"
        );
    }

    if std::env::var_os("VDISK_WRITE_SEEDS").is_some() {
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
        for (target, set) in [("bitmap_decode", decode), ("extents_json", json)] {
            let dir = seeds.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, data) in set {
                std::fs::write(dir.join(name), data).unwrap();
            }
        }
    }
}
