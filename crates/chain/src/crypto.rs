//! Keys and sealing: a repository's master key, the keys derived from it (block identities,
//! sealing), the sealing of every object it writes, and the password-derived key that wraps
//! the master key of an encrypted repository.
//!
//! - A block's identity is BLAKE3 keyed with the *id key* (derived from the master key): equal
//!   blocks get equal ids in one repository, and the ids say nothing of the data to anyone
//!   without the key.
//! - Every object is sealed with *associated data* naming what it is and where it belongs (its
//!   kind and its own id: a blob's block id, a pack's or an index's id, a point's key), so an
//!   object moved, swapped or replayed under another name fails to open.
//! - Encrypted: XChaCha20-Poly1305 with a random 192-bit nonce per seal (random nonces of that
//!   size never repeat in practice, so no counter has to be kept across hosts), `nonce ||
//!   ciphertext || tag`.
//! - Unencrypted: the plaintext followed by a 128-bit BLAKE3 MAC keyed with the sealing key
//!   (kept in the clear in `config`): it checks integrity and binds the object to its name
//!   (a replayed object fails), but anyone who can read `config` can forge; encryption is
//!   what stops a writer with access to the store.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use vdisk_core::{Error, ErrorKind, Result};

/// Bytes of a block id.
pub const ID_LEN: usize = 32;
/// Bytes the XChaCha20-Poly1305 seal adds (nonce and tag).
const AEAD_OVERHEAD: usize = 24 + 16;
/// Bytes the MAC of an unencrypted seal adds.
const MAC_LEN: usize = 16;

/// The identity of a block or of a chunk of a disk's index: BLAKE3 of its bytes, keyed with
/// the repository's id key. The all-zero id stands for an all-zero block (stored nowhere).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct BlockId(pub [u8; ID_LEN]);

impl BlockId {
    /// The id of a block that is all zero (nothing stored).
    pub const ZERO: BlockId = BlockId([0; ID_LEN]);

    /// Whether this is [`BlockId::ZERO`].
    pub fn is_zero(&self) -> bool {
        self.0 == [0; ID_LEN]
    }

    /// The id as 64 lowercase hex digits.
    pub fn hex(&self) -> String {
        hex(&self.0)
    }

    /// The first 8 bytes as a big-endian number (the index's fences order by it).
    pub fn prefix(&self) -> u64 {
        u64::from_be_bytes(self.0[..8].try_into().unwrap_or([0; 8]))
    }

    /// The id in `bytes` (exactly [`ID_LEN`] long).
    pub fn from_slice(bytes: &[u8]) -> Option<BlockId> {
        bytes.try_into().ok().map(BlockId)
    }

    /// The id written as 64 hex digits.
    pub fn parse_hex(s: &str) -> Option<BlockId> {
        let v = unhex(s)?;
        BlockId::from_slice(&v)
    }
}

impl std::fmt::Debug for BlockId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlockId({})", &self.hex()[..16])
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// The bytes of lowercase (or uppercase) hex text; `None` if it is not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// `n` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("cannot get random bytes from the system: {e}"),
        )
    })?;
    Ok(b)
}

/// A random 128-bit id as 32 hex digits (packs, indexes, locks, key files).
pub fn random_id() -> Result<String> {
    Ok(hex(&random_bytes::<16>()?))
}

/// What an object is, for the associated data of its seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A block or a chunk of a disk's index, in a pack (id: the block id).
    Blob,
    /// A pack's header (id: the pack id).
    PackHeader,
    /// A page of an index table (id: index id and page number).
    IndexPage,
    /// The fences of an index table (id: the index id).
    IndexFences,
    /// A point (id: its object key).
    Point,
    /// A writer's registration (id: its object key).
    Lock,
    /// A list of condemned objects (id: its object key).
    Condemned,
    /// The repository's configuration check (id: the repository id).
    Config,
    /// The master key wrapped by a password (id: repository id and key id).
    Key,
}

impl Kind {
    fn tag(self) -> &'static [u8] {
        match self {
            Kind::Blob => b"vdisk3 blob",
            Kind::PackHeader => b"vdisk3 pack header",
            Kind::IndexPage => b"vdisk3 index page",
            Kind::IndexFences => b"vdisk3 index fences",
            Kind::Point => b"vdisk3 point",
            Kind::Lock => b"vdisk3 lock",
            Kind::Condemned => b"vdisk3 condemned",
            Kind::Config => b"vdisk3 config",
            Kind::Key => b"vdisk3 key",
        }
    }
}

/// The associated data of a seal: the kind's tag, a zero byte, the id.
fn associated(kind: Kind, id: &[u8]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(32 + id.len());
    ad.extend_from_slice(kind.tag());
    ad.push(0);
    ad.extend_from_slice(id);
    ad
}

/// A repository's 256-bit master key: every other key derives from it.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey(pub(crate) [u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self> {
        Ok(MasterKey(random_bytes()?))
    }
}

/// How objects are sealed.
#[derive(Clone)]
enum Sealer {
    /// A MAC after the plaintext (unencrypted repositories).
    Mac([u8; 32]),
    /// XChaCha20-Poly1305.
    Aead(Box<XChaCha20Poly1305>),
}

/// The keys of an open repository: block ids and sealing.
#[derive(Clone)]
pub struct Keys {
    id_key: [u8; 32],
    /// A key for the tags of names in point keys.
    name_key: [u8; 32],
    sealer: Sealer,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.sealer {
            Sealer::Mac(_) => "Keys(unencrypted)",
            Sealer::Aead(_) => "Keys(encrypted)",
        })
    }
}

impl Keys {
    /// The keys of a repository with master key `master`, encrypted or not.
    pub fn derive(master: &MasterKey, encrypted: bool) -> Self {
        let id_key = blake3::derive_key("vdisk 2026 layout 3 block id", &master.0);
        let name_key = blake3::derive_key("vdisk 2026 layout 3 name tag", &master.0);
        let seal_key = blake3::derive_key("vdisk 2026 layout 3 seal", &master.0);
        let sealer = if encrypted {
            Sealer::Aead(Box::new(XChaCha20Poly1305::new(&seal_key.into())))
        } else {
            Sealer::Mac(seal_key)
        };
        Keys {
            id_key,
            name_key,
            sealer,
        }
    }

    /// Whether objects are encrypted.
    pub fn encrypted(&self) -> bool {
        matches!(self.sealer, Sealer::Aead(_))
    }

    /// Whether `other` derives the same block ids (the same id key).
    pub fn same_ids(&self, other: &Keys) -> bool {
        self.id_key == other.id_key
    }

    /// Whether `other` seals exactly as these keys do (sealed bytes move unchanged).
    pub fn same_seal(&self, other: &Keys) -> bool {
        match (&self.sealer, &other.sealer) {
            (Sealer::Mac(a), Sealer::Mac(b)) => a == b,
            // Same derivation: the same master key gives the same id key and seal key.
            (Sealer::Aead(_), Sealer::Aead(_)) => {
                self.id_key == other.id_key && self.name_key == other.name_key
            }
            _ => false,
        }
    }

    /// The id of a block (or chunk) whose bytes are `data`.
    pub fn block_id(&self, data: &[u8]) -> BlockId {
        // BLAKE3's SIMD hashes several 1 KiB chunks of one input at once; callers hash
        // blocks in parallel, so no rayon here.
        BlockId(*blake3::keyed_hash(&self.id_key, data).as_bytes())
    }

    /// The tag of a name in point keys: 16 hex digits that name the same NAME in one
    /// repository and say nothing about it to anyone without the key.
    pub fn name_tag(&self, name: &str) -> String {
        let mut h = blake3::Hasher::new_keyed(&self.name_key);
        h.update(name.as_bytes());
        hex(&h.finalize().as_bytes()[..8])
    }

    /// Bytes a seal adds to its plaintext.
    pub fn overhead(&self) -> usize {
        match self.sealer {
            Sealer::Mac(_) => MAC_LEN,
            Sealer::Aead(_) => AEAD_OVERHEAD,
        }
    }

    /// Seal `plaintext` as an object of `kind` named `id`.
    pub fn seal(&self, kind: Kind, id: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(plaintext.len() + AEAD_OVERHEAD);
        self.seal_into(kind, id, plaintext, &mut out)?;
        Ok(out)
    }

    /// Seal `plaintext` as an object of `kind` named `id`, appending to `out`.
    pub fn seal_into(
        &self,
        kind: Kind,
        id: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let ad = associated(kind, id);
        match &self.sealer {
            Sealer::Mac(key) => {
                out.extend_from_slice(plaintext);
                out.extend_from_slice(&mac(key, &ad, plaintext));
            }
            Sealer::Aead(cipher) => {
                let nonce: [u8; 24] = random_bytes()?;
                let start = out.len();
                out.extend_from_slice(&nonce);
                out.extend_from_slice(plaintext);
                let tag = cipher
                    .encrypt_in_place_detached(
                        XNonce::from_slice(&nonce),
                        &ad,
                        &mut out[start + 24..],
                    )
                    .map_err(|_| Error::new(ErrorKind::Io, "cannot encrypt"))?;
                out.extend_from_slice(&tag);
            }
        }
        Ok(())
    }

    /// Open `sealed`, an object of `kind` named `id`: its plaintext, or
    /// [`ErrorKind::Corrupt`] if it was damaged, altered, or sealed for another name or
    /// another key.
    pub fn open(&self, kind: Kind, id: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        let mut buf = sealed.to_vec();
        let n = self.open_in_place(kind, id, &mut buf)?.len();
        let start = match self.sealer {
            Sealer::Mac(_) => 0,
            Sealer::Aead(_) => 24,
        };
        buf.copy_within(start..start + n, 0);
        buf.truncate(n);
        Ok(buf)
    }

    /// [`Keys::open`] in place: the plaintext is the returned part of `buf`.
    pub fn open_in_place<'a>(&self, kind: Kind, id: &[u8], buf: &'a mut [u8]) -> Result<&'a [u8]> {
        let bad = || {
            Error::new(
                ErrorKind::Corrupt,
                "does not authenticate (damaged, altered, or sealed for another object or key)",
            )
        };
        let ad = associated(kind, id);
        match &self.sealer {
            Sealer::Mac(key) => {
                let n = buf.len().checked_sub(MAC_LEN).ok_or_else(bad)?;
                let (body, tag) = buf.split_at(n);
                if !constant_eq(&mac(key, &ad, body), tag) {
                    return Err(bad());
                }
                Ok(&buf[..n])
            }
            Sealer::Aead(cipher) => {
                if buf.len() < AEAD_OVERHEAD {
                    return Err(bad());
                }
                let n = buf.len() - 16;
                let (head, tag) = buf.split_at_mut(n);
                let (nonce, body) = head.split_at_mut(24);
                cipher
                    .decrypt_in_place_detached(
                        XNonce::from_slice(nonce),
                        &ad,
                        body,
                        chacha20poly1305::Tag::from_slice(tag),
                    )
                    .map_err(|_| bad())?;
                Ok(&buf[24..n])
            }
        }
    }
}

/// The 128-bit MAC of an unencrypted seal.
fn mac(key: &[u8; 32], ad: &[u8], body: &[u8]) -> [u8; MAC_LEN] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(&(ad.len() as u64).to_le_bytes());
    h.update(ad);
    h.update(body);
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&h.finalize().as_bytes()[..MAC_LEN]);
    out
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Argon2id costs: memory in KiB, passes, lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory, KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KdfParams {
    /// What new keys use: 64 MiB, 3 passes, 1 lane (the second of RFC 9106's recommended
    /// settings), about a third of a second here; `VDISK_KDF_MEMORY_KIB` lowers the memory
    /// for tests (never below 8 MiB).
    pub fn default_new() -> Self {
        let memory_kib = std::env::var("VDISK_KDF_MEMORY_KIB")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .map_or(64 << 10, |m| m.clamp(8 << 10, 1 << 20));
        KdfParams {
            memory_kib,
            iterations: 3,
            parallelism: 1,
        }
    }

    /// Refuse costs no key of ours has (a key file is input: a hostile one must not make
    /// vdisk allocate gigabytes or spin for hours).
    pub fn check(&self) -> Result<()> {
        let ok = (8 << 10..=1 << 20).contains(&self.memory_kib)
            && (1..=64).contains(&self.iterations)
            && (1..=16).contains(&self.parallelism);
        if !ok {
            return Err(Error::corrupt(format!(
                "key costs out of range (memory {} KiB, {} passes, {} lanes)",
                self.memory_kib, self.iterations, self.parallelism
            )));
        }
        Ok(())
    }
}

/// The key a password gives with `salt` and `params` (Argon2id).
pub fn password_key(password: &[u8], salt: &[u8], params: KdfParams) -> Result<[u8; 32]> {
    params.check()?;
    let p = argon2::Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        Some(32),
    )
    .map_err(|e| Error::corrupt(format!("key costs refused: {e}")))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    let mut out = [0u8; 32];
    a.hash_password_into(password, salt, &mut out)
        .map_err(|e| Error::corrupt(format!("cannot derive the key: {e}")))?;
    Ok(out)
}

/// Wrap `master` with the key a password gave (`wrapping`), for key `key_id` of repository
/// `repo_id`.
pub fn wrap(
    master: &MasterKey,
    wrapping: &[u8; 32],
    repo_id: &str,
    key_id: &str,
) -> Result<Vec<u8>> {
    let cipher = XChaCha20Poly1305::new(wrapping.into());
    let nonce: [u8; 24] = random_bytes()?;
    let ad = associated(Kind::Key, format!("{repo_id}/{key_id}").as_bytes());
    let mut out = nonce.to_vec();
    let mut body = master.0.to_vec();
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(&nonce), &ad, &mut body)
        .map_err(|_| Error::new(ErrorKind::Io, "cannot encrypt"))?;
    out.extend_from_slice(&body);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Unwrap a master key wrapped by [`wrap`]; `None` when the password was not this key's.
pub fn unwrap(
    wrapped: &[u8],
    wrapping: &[u8; 32],
    repo_id: &str,
    key_id: &str,
) -> Option<MasterKey> {
    if wrapped.len() != 24 + 32 + 16 {
        return None;
    }
    let cipher = XChaCha20Poly1305::new(wrapping.into());
    let ad = associated(Kind::Key, format!("{repo_id}/{key_id}").as_bytes());
    let mut body = wrapped[24..56].to_vec();
    cipher
        .decrypt_in_place_detached(
            XNonce::from_slice(&wrapped[..24]),
            &ad,
            &mut body,
            chacha20poly1305::Tag::from_slice(&wrapped[56..]),
        )
        .ok()?;
    Some(MasterKey(body.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both() -> [Keys; 2] {
        let m = MasterKey::generate().unwrap();
        [Keys::derive(&m, false), Keys::derive(&m, true)]
    }

    #[test]
    fn seals_open_only_for_their_own_kind_name_and_key() {
        for k in both() {
            let s = k.seal(Kind::Blob, b"id-1", b"hello").unwrap();
            assert_eq!(s.len(), 5 + k.overhead());
            assert_eq!(k.open(Kind::Blob, b"id-1", &s).unwrap(), b"hello");
            // Another name (a replay or a swap), another kind, another key: refused.
            assert!(k.open(Kind::Blob, b"id-2", &s).is_err());
            assert!(k.open(Kind::Point, b"id-1", &s).is_err());
            let other = Keys::derive(&MasterKey::generate().unwrap(), k.encrypted());
            assert!(other.open(Kind::Blob, b"id-1", &s).is_err());
            // Any flipped bit, any cut.
            for i in 0..s.len() {
                let mut t = s.clone();
                t[i] ^= 0x10;
                assert!(k.open(Kind::Blob, b"id-1", &t).is_err(), "flip at {i}");
            }
            for n in 0..s.len() {
                assert!(k.open(Kind::Blob, b"id-1", &s[..n]).is_err(), "cut at {n}");
            }
        }
    }

    #[test]
    fn encrypted_seals_hide_the_plaintext_and_never_repeat() {
        let [_, k] = both();
        let a = k.seal(Kind::Blob, b"x", &[0u8; 64]).unwrap();
        let b = k.seal(Kind::Blob, b"x", &[0u8; 64]).unwrap();
        assert_ne!(a, b);
        assert!(!a.windows(16).any(|w| w == [0u8; 16]));
    }

    #[test]
    fn ids_are_keyed() {
        let [a, _] = both();
        let [b, _] = both();
        assert_eq!(a.block_id(b"data"), a.block_id(b"data"));
        assert_ne!(a.block_id(b"data"), b.block_id(b"data"));
        assert_ne!(a.block_id(b"data"), BlockId::ZERO);
        assert_eq!(a.name_tag("web01").len(), 16);
        assert_ne!(a.name_tag("web01"), b.name_tag("web01"));
    }

    #[test]
    fn a_wrapped_key_opens_with_its_password_only() {
        let m = MasterKey::generate().unwrap();
        let params = KdfParams {
            memory_kib: 8 << 10,
            iterations: 1,
            parallelism: 1,
        };
        let k = password_key(b"right", b"0123456789abcdef", params).unwrap();
        let w = wrap(&m, &k, "repo", "key1").unwrap();
        assert_eq!(unwrap(&w, &k, "repo", "key1").unwrap().0, m.0);
        let wrong = password_key(b"wrong", b"0123456789abcdef", params).unwrap();
        assert!(unwrap(&w, &wrong, "repo", "key1").is_none());
        assert!(unwrap(&w, &k, "repo", "key2").is_none());
        assert!(unwrap(&w[1..], &k, "repo", "key1").is_none());
        // Hostile costs are refused before anything is allocated.
        for bad in [
            KdfParams {
                memory_kib: u32::MAX,
                ..params
            },
            KdfParams {
                iterations: 0,
                ..params
            },
            KdfParams {
                parallelism: 1000,
                ..params
            },
        ] {
            assert!(password_key(b"x", b"0123456789abcdef", bad).is_err());
        }
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(unhex("00ab10").unwrap(), [0, 0xab, 0x10]);
        assert!(unhex("0g").is_none());
        assert!(unhex("abc").is_none());
    }
}
