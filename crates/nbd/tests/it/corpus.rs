//! The `nbd_client_bytes` and `nbd_server_bytes` fuzz targets' inputs replayed on stable:
//! the committed seeds (and corpus and regressions, once campaigns add them), then
//! deterministic mutations of the seeds, through `vdisk_nbd::fuzzing::client_bytes` (the
//! server's parser) and `vdisk_nbd::fuzzing::server_bytes` (the client's).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vdisk_nbd::fuzzing::{client_bytes, server_bytes};

fn inputs() -> Vec<(PathBuf, Vec<u8>)> {
    inputs_of("nbd_client_bytes")
}

fn inputs_of(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut out = Vec::new();
    for kind in ["seeds", "corpus", "regressions"] {
        let Ok(dir) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = dir.map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            out.push((f, data));
        }
    }
    out
}

#[test]
fn fuzz_inputs_replay_without_panics() {
    let inputs = inputs();
    assert!(inputs.len() >= 5, "seeds missing: {}", inputs.len());
    for (path, data) in &inputs {
        let t = Instant::now();
        client_bytes(data);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{} took {:?}",
            path.display(),
            t.elapsed()
        );
    }
}

#[test]
fn mutated_seeds_do_not_panic() {
    mutate(&inputs(), client_bytes);
}

#[test]
fn server_bytes_inputs_replay_without_panics() {
    let inputs = inputs_of("nbd_server_bytes");
    assert!(inputs.len() >= 6, "seeds missing: {}", inputs.len());
    for (path, data) in &inputs {
        let t = Instant::now();
        server_bytes(data);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{} took {:?}",
            path.display(),
            t.elapsed()
        );
    }
}

#[test]
fn mutated_server_bytes_do_not_panic() {
    mutate(&inputs_of("nbd_server_bytes"), server_bytes);
}

/// The committed seeds of `nbd_server_bytes` are what [`server_seeds`] makes (run with
/// `VDISK_WRITE_SEEDS=1` to write them again after a change).
#[test]
fn server_seeds_are_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/nbd_server_bytes");
    let write = std::env::var_os("VDISK_WRITE_SEEDS").is_some();
    if write {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, bytes) in server_seeds() {
        let path = dir.join(name);
        if write {
            std::fs::write(&path, &bytes).unwrap();
        } else {
            assert_eq!(
                std::fs::read(&path).ok(),
                Some(bytes),
                "{} is stale",
                path.display()
            );
        }
    }
}

/// Server transcripts for the client's fuzz entry, which negotiates (listing dirty bitmaps),
/// reads the first 64 KiB (cookie 1), walks block status for each selected context (cookies
/// 2, 3, …), then reads the last block.
fn server_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use vdisk_nbd::proto::*;
    use vdisk_nbd::wire;
    let greeting = wire::greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_vec();
    let rep = |opt, kind, data: &[u8]| wire::option_reply(opt, kind, data);
    let ctx = |id: u32, name: &str| {
        let mut d = id.to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d
    };
    let info_export = |size: u64, flags: u16| {
        let mut d = INFO_EXPORT.to_be_bytes().to_vec();
        d.extend_from_slice(&size.to_be_bytes());
        d.extend_from_slice(&flags.to_be_bytes());
        d
    };
    let block_size = {
        let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for v in [512u32, 4096, 32 << 20] {
            d.extend_from_slice(&v.to_be_bytes());
        }
        d
    };
    let chunk = |flags, kind, cookie, p: &[u8]| {
        let mut m = wire::chunk_header(flags, kind, cookie, p.len() as u32).to_vec();
        m.extend_from_slice(p);
        m
    };
    let data = |flags, cookie, off: u64, len: usize| {
        let mut p = off.to_be_bytes().to_vec();
        p.extend((0..len).map(|i| (i % 251) as u8));
        chunk(flags, REPLY_TYPE_OFFSET_DATA, cookie, &p)
    };
    let hole = |flags, cookie, off: u64, len: u32| {
        let mut p = off.to_be_bytes().to_vec();
        p.extend_from_slice(&len.to_be_bytes());
        chunk(flags, REPLY_TYPE_OFFSET_HOLE, cookie, &p)
    };
    let status = |flags, cookie, id: u32, ds: &[(u32, u32)]| {
        let mut p = id.to_be_bytes().to_vec();
        for (l, f) in ds {
            p.extend_from_slice(&l.to_be_bytes());
            p.extend_from_slice(&f.to_be_bytes());
        }
        chunk(flags, REPLY_TYPE_BLOCK_STATUS, cookie, &p)
    };
    let done = REPLY_FLAG_DONE;
    let size = 128u64 << 10;
    let ro = FLAG_HAS_FLAGS | FLAG_READ_ONLY | FLAG_CAN_MULTI_CONN;
    let mut seeds = Vec::new();

    // qemu-nbd -r -B b0, as it answers.
    let mut s = greeting.clone();
    s.extend(rep(OPT_STRUCTURED_REPLY, REP_ACK, b""));
    s.extend(rep(
        OPT_LIST_META_CONTEXT,
        REP_META_CONTEXT,
        &ctx(0, "qemu:dirty-bitmap:b0"),
    ));
    s.extend(rep(OPT_LIST_META_CONTEXT, REP_ACK, b""));
    s.extend(rep(
        OPT_SET_META_CONTEXT,
        REP_META_CONTEXT,
        &ctx(1, "base:allocation"),
    ));
    s.extend(rep(
        OPT_SET_META_CONTEXT,
        REP_META_CONTEXT,
        &ctx(2, "qemu:dirty-bitmap:b0"),
    ));
    s.extend(rep(OPT_SET_META_CONTEXT, REP_ACK, b""));
    s.extend(rep(OPT_GO, REP_INFO, &info_export(size, ro)));
    s.extend(rep(OPT_GO, REP_INFO, &block_size));
    let mut desc = INFO_DESCRIPTION.to_be_bytes().to_vec();
    desc.extend_from_slice(b"a disk");
    s.extend(rep(OPT_GO, REP_INFO, &desc));
    s.extend(rep(OPT_GO, REP_ACK, b""));
    let mut structured = s.clone();
    s.extend(hole(0, 1, 32 << 10, 32 << 10));
    s.extend(data(0, 1, 0, 32 << 10));
    s.extend(chunk(done, REPLY_TYPE_NONE, 1, b""));
    s.extend(status(0, 2, 2, &[(4096, 1), (61440, 0)]));
    s.extend(status(done, 2, 1, &[(32768, 0), (32768, 3)]));
    s.extend(status(0, 3, 1, &[(65536, 0)]));
    s.extend(status(done, 3, 2, &[(65536, 1)]));
    s.extend(data(done, 4, size - 512, 512));
    seeds.push(("qemu-nbd-bitmap", s));

    // Errors: an EIO at an offset of the read, then block status refused.
    let mut p = EIO.to_be_bytes().to_vec();
    p.extend_from_slice(&4u16.to_be_bytes());
    p.extend_from_slice(b"boom");
    p.extend_from_slice(&100u64.to_be_bytes());
    structured.extend(data(0, 1, 0, 4096));
    structured.extend(chunk(done, REPLY_TYPE_ERROR_OFFSET, 1, &p));
    seeds.push(("error-chunks", structured));

    // An old server: no structured replies, no metadata contexts, simple replies.
    let mut s = greeting.clone();
    s.extend(rep(OPT_STRUCTURED_REPLY, REP_ERR_UNSUP, b""));
    s.extend(rep(OPT_GO, REP_INFO, &info_export(size, FLAG_HAS_FLAGS)));
    s.extend(rep(OPT_GO, REP_ACK, b""));
    s.extend(wire::simple_reply(0, 1));
    s.extend((0..65536).map(|i| (i % 7) as u8));
    s.extend(wire::simple_reply(0, 2));
    s.extend((0..4096).map(|i| (i % 5) as u8));
    seeds.push(("simple-replies", s));

    // Older still: no NBD_OPT_GO either.
    let mut s = greeting.clone();
    s.extend(rep(OPT_STRUCTURED_REPLY, REP_ERR_UNSUP, b""));
    s.extend(rep(OPT_GO, REP_ERR_UNSUP, b""));
    s.extend(wire::export_name_reply(
        size,
        FLAG_HAS_FLAGS | FLAG_READ_ONLY,
        true,
    ));
    s.extend(wire::simple_reply(0, 1));
    s.extend(vec![9u8; 65536]);
    seeds.push(("export-name", s));

    // No such export: the server lists what it has.
    let mut s = greeting.clone();
    s.extend(rep(OPT_STRUCTURED_REPLY, REP_ACK, b""));
    s.extend(rep(OPT_LIST_META_CONTEXT, REP_ACK, b""));
    s.extend(rep(OPT_SET_META_CONTEXT, REP_ACK, b""));
    s.extend(rep(OPT_GO, REP_ERR_UNKNOWN, b"no such export"));
    let mut e = 5u32.to_be_bytes().to_vec();
    e.extend_from_slice(b"alpha");
    s.extend(rep(OPT_LIST, REP_SERVER, &e));
    s.extend(rep(OPT_LIST, REP_ACK, b""));
    seeds.push(("unknown-export", s));

    // An oldstyle server.
    let mut s = NBDMAGIC.to_be_bytes().to_vec();
    s.extend_from_slice(&wire::OLDSTYLE_MAGIC.to_be_bytes());
    s.extend_from_slice(&[0u8; 2]);
    seeds.push(("oldstyle", s));
    seeds
}

fn mutate(inputs: &[(PathBuf, Vec<u8>)], entry: fn(&[u8])) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..3000 {
        let (_, seed) = &inputs[round % inputs.len()];
        let mut data = seed.clone();
        for _ in 0..1 + next() % 8 {
            if data.is_empty() {
                break;
            }
            let at = (next() % data.len() as u64) as usize;
            match next() % 4 {
                0 => data[at] = next() as u8,
                1 => data[at] ^= 1 << (next() % 8),
                2 => {
                    data.truncate(at);
                }
                _ => {
                    // Overwrite 4 bytes with an interesting number.
                    let v: u32 =
                        [0, 1, 0x7fff_ffff, 0xffff_ffff, 0x1_0000, 4096][next() as usize % 6];
                    for (i, b) in v.to_be_bytes().iter().enumerate() {
                        if let Some(d) = data.get_mut(at + i) {
                            *d = *b;
                        }
                    }
                }
            }
        }
        entry(&data);
    }
}
