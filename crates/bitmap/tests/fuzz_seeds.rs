//! The seed corpora of the bitmap fuzz targets (`fuzz/seeds/bitmap_decode/`,
//! `fuzz/seeds/extents_json/`), made here from the encoder and from hand-written JSON in each
//! accepted shape, and run through the fuzzing entry points.
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
    vec![
        ("empty-size-0", empty.encode()),
        ("tiny-1000b-512", tiny.encode()),
        ("unaligned-3-words-4k", words.encode()),
        ("full-2-words", full.encode()),
        ("64m-at-64k", disk.encode()),
        (
            "clear-64m-at-1m",
            ChangeMap::new(64 << 20, 1 << 20).unwrap().encode(),
        ),
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
    for (_, data) in &decode {
        assert!(ChangeMap::decode(data).is_ok());
        fuzzing::decode(data);
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
