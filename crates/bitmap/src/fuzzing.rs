//! Entry points for the cargo-fuzz targets in `fuzz/` and the corpus replay tests. Each takes
//! arbitrary bytes and must return without panicking, whatever they are; when the input is
//! accepted, the map's invariants are asserted (a failed assertion is a finding).

use crate::ChangeMap;

/// Decode `data` as an on-disk bitmap. An accepted input must re-encode to the same bytes
/// (the form has exactly one encoding per map) and satisfy [`check_map`].
pub fn decode(data: &[u8]) {
    if let Ok(m) = ChangeMap::decode(data) {
        assert_eq!(m.encode(), data, "decode accepted a non-canonical encoding");
        check_map(&m);
    }
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

/// What holds for every map: runs are sorted, maximal and inside the map and add up to
/// `count`; extents are the runs in bytes, clipped to the size; the on-disk form round-trips;
/// a map united with itself is itself, and minus itself is empty.
pub fn check_map(m: &ChangeMap) {
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
