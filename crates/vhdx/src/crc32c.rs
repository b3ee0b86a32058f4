//! CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): the checksum of every VHDX header,
//! region table and log entry. Not the CRC-32 of zlib (`crc32fast`), which uses another
//! polynomial.

/// Eight lookup tables for slicing-by-8: eight bytes per step instead of one, which keeps the
/// checksum of a large log entry cheap without any `unsafe` or CPU-specific code.
const TABLES: [[u32; 256]; 8] = build_tables();

const fn build_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut k = 0;
        while k < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            k += 1;
        }
        t[0][i] = crc;
        i += 1;
    }
    let mut s = 1;
    while s < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        s += 1;
    }
    t
}

/// A running CRC-32C, for checksums computed over several pieces (a log entry whose sectors
/// wrap around the end of the log).
#[derive(Debug, Clone, Copy)]
pub struct Crc32c(u32);

impl Default for Crc32c {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32c {
    /// A checksum of nothing yet.
    pub fn new() -> Self {
        Crc32c(!0)
    }

    /// Add `data`.
    pub fn update(&mut self, data: &[u8]) {
        let mut crc = self.0;
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            let lo = crc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            crc = TABLES[7][(lo & 0xff) as usize]
                ^ TABLES[6][((lo >> 8) & 0xff) as usize]
                ^ TABLES[5][((lo >> 16) & 0xff) as usize]
                ^ TABLES[4][(lo >> 24) as usize]
                ^ TABLES[3][c[4] as usize]
                ^ TABLES[2][c[5] as usize]
                ^ TABLES[1][c[6] as usize]
                ^ TABLES[0][c[7] as usize];
        }
        for &b in chunks.remainder() {
            crc = (crc >> 8) ^ TABLES[0][((crc ^ u32::from(b)) & 0xff) as usize];
        }
        self.0 = crc;
    }

    /// Add `n` zero bytes (the checksum field, counted as zero).
    pub fn update_zeros(&mut self, n: usize) {
        const Z: [u8; 64] = [0; 64];
        let mut left = n;
        while left > 0 {
            let k = left.min(Z.len());
            self.update(&Z[..k]);
            left -= k;
        }
    }

    /// The checksum of everything added.
    pub fn finish(self) -> u32 {
        !self.0
    }
}

/// The CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut c = Crc32c::new();
    c.update(data);
    c.finish()
}

/// The VHDX checksum of a structure whose 4-byte checksum field sits at `field`: the CRC-32C
/// of all of `data` with that field counted as zero.
pub fn checksum_with_field_zeroed(data: &[u8], field: usize) -> u32 {
    let mut c = Crc32c::new();
    let end = (field + 4).min(data.len());
    let field = field.min(data.len());
    c.update(&data[..field]);
    c.update_zeros(end - field);
    c.update(&data[end..]);
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // RFC 3720 (iSCSI) test vectors for CRC-32C.
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&inc), 0x46DD_794E);
    }

    #[test]
    fn pieces_equal_whole_and_field_is_zeroed() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut c = Crc32c::new();
        c.update(&data[..13]);
        c.update(&data[13..600]);
        c.update(&data[600..]);
        assert_eq!(c.finish(), crc32c(&data));
        let mut zeroed = data.clone();
        zeroed[4..8].fill(0);
        assert_eq!(checksum_with_field_zeroed(&data, 4), crc32c(&zeroed));
    }
}
