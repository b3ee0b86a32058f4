/// Whether every byte of `buf` is zero.
///
/// Works a 64-byte block at a time with an OR-reduction the compiler vectorises; the early exit
/// is taken per block, so data that is not zero is detected within the first block.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut blocks = buf.chunks_exact(64);
    for block in &mut blocks {
        let mut acc = 0u8;
        for &b in block {
            acc |= b;
        }
        if acc != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::is_zero;

    #[test]
    fn finds_a_single_set_byte_anywhere() {
        for len in [0usize, 1, 63, 64, 65, 1000] {
            let mut buf = vec![0u8; len];
            assert!(is_zero(&buf));
            for i in 0..len {
                buf[i] = 1;
                assert!(!is_zero(&buf), "len {len} byte {i}");
                buf[i] = 0;
            }
        }
    }
}
