//! Entry points for the cargo-fuzz targets in `fuzz/` and the corpus replay tests. Each takes
//! arbitrary bytes and must return without panicking, whatever they are; when the input is
//! accepted, the map's invariants are asserted (a failed assertion is a finding).

use crate::chunk::{chunk_len, count_and_runs, Node, CHUNK_BLOCKS, CHUNK_SHIFT, LIST_MAX_RUNS};
use crate::ChangeMap;

/// Blocks per chunk of the in-memory form and of version 2 chunk records, for tests that
/// place runs across chunk boundaries.
pub const CHUNK: u64 = CHUNK_BLOCKS;

/// Decode `data` as an on-disk bitmap. An accepted input must re-encode, in its version, to
/// the same bytes (each version has exactly one encoding per map) and satisfy [`check_map`].
pub fn decode(data: &[u8]) {
    if let Ok(m) = ChangeMap::decode(data) {
        // Accepted, so at least a header long.
        let again = if data[8..12] == 1u32.to_le_bytes() {
            // The size of the input, which is as dense as this.
            m.encode_v1()
        } else {
            m.encode()
        };
        assert!(again == data, "decode accepted a non-canonical encoding");
        check_map(&m);
    }
}

/// The version 1 (dense) encoding of `m`, `block_count / 8` bytes: for tests and seeds of
/// the version 1 reader. [`ChangeMap::encode`] writes version 2.
pub fn encode_v1(m: &ChangeMap) -> Vec<u8> {
    m.encode_v1()
}

/// Asserts the invariants of the in-memory form (see `ChangeMap`'s field docs): nodes apart,
/// full stretches joined, each chunk in its canonical form, counts kept right, nothing past
/// the last block.
pub fn check_form(m: &ChangeMap) {
    let mut count = 0u64;
    // The end (in chunks) of the previous node, and whether it was a full stretch.
    let mut prev: Option<(u64, bool)> = None;
    for (&k, node) in &m.nodes {
        assert!(
            k << CHUNK_SHIFT < m.block_count,
            "chunk {k} past the last block"
        );
        if let Some((end, full)) = prev {
            assert!(k >= end, "node at chunk {k} overlaps the one before");
            assert!(
                !(full && k == end && matches!(node, Node::Full(_))),
                "full stretches at chunk {k} not joined"
            );
        }
        let len = chunk_len(m.block_count, k);
        match node {
            Node::Full(n) => {
                assert!(*n >= 1);
                let end = k + n;
                assert!(
                    (end - 1) << CHUNK_SHIFT < m.block_count,
                    "full stretch past the end"
                );
                count += crate::build::blocks_in(m.block_count, k, end);
                prev = Some((end, true));
                continue;
            }
            Node::List(list) => {
                assert!(!list.is_empty() && list.len() <= LIST_MAX_RUNS);
                assert!(list.capacity() <= LIST_MAX_RUNS.max(4));
                for w in list.windows(2) {
                    assert!(
                        u32::from(w[0].1) + 1 < u32::from(w[1].0),
                        "list runs not sorted/apart"
                    );
                }
                for &(lo, hi) in list {
                    assert!(lo <= hi && u32::from(hi) < len, "list run past the chunk");
                    count += u64::from(hi - lo) + 1;
                }
                assert!(
                    !(list.len() == 1 && list[0].0 == 0 && u32::from(list[0].1) + 1 == len),
                    "a full chunk {k} held as a list"
                );
            }
            Node::Bits(bits) => {
                assert_eq!(
                    count_and_runs(&bits.words),
                    (bits.count, bits.runs),
                    "stale counts in chunk {k}"
                );
                assert!(
                    bits.runs as usize > LIST_MAX_RUNS,
                    "chunk {k} should be a list"
                );
                if len < CHUNK_BLOCKS as u32 {
                    let words = &bits.words[(len / 64) as usize..];
                    assert!(
                        words[0] >> (len % 64) == 0 && words[1..].iter().all(|&w| w == 0),
                        "bits past the last block"
                    );
                }
                count += u64::from(bits.count);
            }
        }
        prev = Some((k + 1, false));
    }
    assert_eq!(count, m.count, "stale count");
}

/// Import a JSON extent list. The first 5 bytes choose the disk: bytes 0..4, a u32 LE, masked
/// to below 1 GiB, are the size in bytes (so unaligned sizes happen); byte 4 picks the
/// granularity `512 << (byte % 8)`. The rest is the JSON text. An accepted list must satisfy
/// [`check_map`] and export to JSON that imports back to the same map.
pub fn extents_json(data: &[u8]) {
    let Some((head, text)) = data.split_first_chunk::<5>() else {
        return;
    };
    let size =
        u64::from(u32::from_le_bytes([head[0], head[1], head[2], head[3]]) & ((1 << 30) - 1));
    let granularity = 512u64 << (head[4] % 8);
    if let Ok(m) = ChangeMap::from_extents_json(text, size, granularity) {
        assert_eq!((m.size(), m.granularity()), (size, granularity));
        check_map(&m);
        let again = ChangeMap::from_extents_json(m.to_extents_json().as_bytes(), size, granularity);
        assert_eq!(again.ok().as_ref(), Some(&m), "export does not import back");
    }
}

/// What holds for every map: its form is canonical ([`check_form`]); runs are sorted, maximal and inside the map and add up to
/// `count`; extents are the runs in bytes, clipped to the size; the on-disk form round-trips;
/// a map united with itself is itself, and minus itself is empty.
pub fn check_map(m: &ChangeMap) {
    check_form(m);
    let g = m.granularity();
    let mut total = 0u64;
    let mut prev_end: Option<u64> = None;
    for (first, count) in m.runs() {
        assert!(count > 0, "empty run at {first}");
        assert!(
            first + count <= m.block_count(),
            "run {first}+{count} past the end"
        );
        if let Some(end) = prev_end {
            assert!(first > end, "runs not sorted or not joined at {first}");
        }
        assert!(m.test(first) && m.test(first + count - 1));
        prev_end = Some(first + count);
        total += count;
    }
    assert_eq!(total, m.count(), "runs do not add up to count");
    assert_eq!(m.is_empty(), total == 0);

    let mut bytes = 0u64;
    for ((start, len), (first, count)) in m.extents().zip(m.runs()) {
        assert_eq!(start, first * g);
        assert!(len > 0 && len <= count.saturating_mul(g));
        assert!(
            start + len <= m.size(),
            "extent {start}+{len} past the size"
        );
        bytes += len;
    }
    assert_eq!(m.extents().count(), m.runs().count());
    assert_eq!(bytes, m.changed_bytes());

    let back = ChangeMap::decode(&m.encode()).expect("an encoded map decodes");
    assert_eq!(&back, m, "encode/decode changed the map");
    assert_eq!(&m.union(m).expect("same shape"), m);
    assert!(m.difference(m).expect("same shape").is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_garbage_inputs_are_fine() {
        for data in [
            &b""[..],
            b"\0",
            b"\0\0\0\0\0",
            b"\xff\xff\xff\xff\x07[",
            b"VDBITMAP\x01",
        ] {
            decode(data);
            extents_json(data);
        }
    }

    #[test]
    fn accepted_inputs_pass_the_checks() {
        let mut m = ChangeMap::new(100_000, 1024).unwrap();
        m.set_blocks(3, 70);
        m.set(97);
        decode(&m.encode());
        let mut input = 100_000u32.to_le_bytes().to_vec();
        input.push(1); // 1024
        input.extend_from_slice(m.to_extents_json().as_bytes());
        extents_json(&input);
    }
}
