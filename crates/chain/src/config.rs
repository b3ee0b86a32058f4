//! The repository's `config` (created once, never changed) and its key files (`keys/ID`).
//!
//! `config` says what the repository is: layout version 3, its id, the block size, whether
//! it is encrypted; for an unencrypted repository it holds the master key itself (ids and
//! seals still need one). A `check` field, sealed with the master key, covers those values,
//! so a changed block size or a swapped config is found as soon as the key is known.
//!
//! A key file holds the master key wrapped (XChaCha20-Poly1305) by a key derived from a
//! password with Argon2id, with its costs and salt. Any key file whose password is given
//! opens the repository; `key passwd` adds a new one, then removes the old.
//!
//! Both are JSON followed by a `crc32 XXXXXXXX` line, so damage is named as damage.

use serde::{Deserialize, Serialize};
use vdisk_core::{Error, ErrorKind, Result};

use crate::crypto::{hex, unhex, KdfParams, Keys, Kind, MasterKey};

/// The config object's name.
pub const CONFIG: &str = "config";
/// Largest config or key file read.
pub const MAX_SMALL: u64 = 64 << 10;
/// Smallest and largest block sizes.
pub const MIN_BLOCK: u64 = 4 << 10;
/// See [`MIN_BLOCK`].
pub const MAX_BLOCK: u64 = 1 << 20;
/// The default block size: VMware's CBT and the layout-2 grain.
pub const DEFAULT_BLOCK: u64 = 64 << 10;
const FORMAT: &str = "vdisk-repository";
const KEY_FORMAT: &str = "vdisk-key";
const AEAD: &str = "xchacha20-poly1305";

/// What `config` holds (the parsed, checked form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The repository's id (32 hex digits).
    pub id: String,
    /// Bytes a block.
    pub block_size: u64,
    /// Whether objects are encrypted.
    pub encrypted: bool,
    /// When it was made (RFC 3339).
    pub created: String,
    /// The master key of an unencrypted repository.
    master: Option<MasterKey>,
    /// The sealed check of the fields above.
    check: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigJson {
    format: String,
    version: u32,
    id: String,
    block_size: u64,
    encryption: String,
    ids: String,
    compression: String,
    created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    master_key: Option<String>,
    check: String,
}

fn check_text(id: &str, block_size: u64, encrypted: bool) -> Vec<u8> {
    format!("vdisk3|{id}|{block_size}|{encrypted}").into_bytes()
}

/// JSON text and its crc line.
fn with_crc(mut text: String) -> Vec<u8> {
    text.push('\n');
    let crc = crc32fast::hash(text.as_bytes());
    text.push_str(&format!("crc32 {crc:08x}\n"));
    text.into_bytes()
}

/// The JSON part of `bytes`, if its crc line matches.
fn strip_crc<'a>(bytes: &'a [u8], what: &str) -> Result<&'a [u8]> {
    let body_end = bytes
        .strip_suffix(b"\n")
        .and_then(|b| b.iter().rposition(|&c| c == b'\n'))
        .map(|i| i + 1)
        .ok_or_else(|| Error::corrupt(format!("{what} has no checksum line")))?;
    let (body, tail) = bytes.split_at(body_end);
    if tail != format!("crc32 {:08x}\n", crc32fast::hash(body)).as_bytes() {
        return Err(Error::corrupt(format!(
            "{what} does not match its checksum (damaged)"
        )));
    }
    Ok(body)
}

/// Whether `s` is `n` lowercase hex digits.
pub fn is_id(s: &str, n: usize) -> bool {
    s.len() == n && crate::pack::is_hex(s)
}

/// Refuse a block size vdisk does not write.
pub fn check_block_size(bs: u64) -> Result<()> {
    if !bs.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&bs) {
        return Err(Error::invalid(format!(
            "block size {bs} is not a power of two from 4 KiB to 1 MiB"
        )));
    }
    Ok(())
}

impl Config {
    /// A new repository's config and its master key.
    pub fn new(block_size: u64, encrypted: bool) -> Result<(Config, MasterKey)> {
        check_block_size(block_size)?;
        let master = MasterKey::generate()?;
        let id = crate::crypto::random_id()?;
        let keys = Keys::derive(&master, encrypted);
        let check = keys.seal(
            Kind::Config,
            id.as_bytes(),
            &check_text(&id, block_size, encrypted),
        )?;
        Ok((
            Config {
                id,
                block_size,
                encrypted,
                created: crate::layout2::now_rfc3339(),
                master: (!encrypted).then(|| master.clone()),
                check,
            },
            master,
        ))
    }

    /// A new repository's config with the block size, encryption and master key of
    /// `src` (a copy made by sync: sealed blobs move between them as they are).
    pub fn copy_of(src: &Config, master: &MasterKey) -> Result<Config> {
        let id = crate::crypto::random_id()?;
        let keys = Keys::derive(master, src.encrypted);
        let check = keys.seal(
            Kind::Config,
            id.as_bytes(),
            &check_text(&id, src.block_size, src.encrypted),
        )?;
        Ok(Config {
            id,
            block_size: src.block_size,
            encrypted: src.encrypted,
            created: crate::layout2::now_rfc3339(),
            master: (!src.encrypted).then(|| master.clone()),
            check,
        })
    }

    /// The config as stored.
    pub fn encode(&self) -> Vec<u8> {
        let j = ConfigJson {
            format: FORMAT.into(),
            version: 3,
            id: self.id.clone(),
            block_size: self.block_size,
            encryption: if self.encrypted { AEAD } else { "none" }.into(),
            ids: "blake3-keyed".into(),
            compression: "zstd".into(),
            created: self.created.clone(),
            master_key: self.master.as_ref().map(|m| hex(&m.0)),
            check: hex(&self.check),
        };
        with_crc(serde_json::to_string_pretty(&j).unwrap_or_default())
    }

    /// Parse and check a stored config.
    pub fn decode(bytes: &[u8]) -> Result<Config> {
        if bytes.len() as u64 > MAX_SMALL {
            return Err(Error::corrupt("config is far too large"));
        }
        let body = strip_crc(bytes, "config")?;
        let j: ConfigJson = serde_json::from_slice(body)
            .map_err(|e| Error::corrupt(format!("config does not parse: {e}")))?;
        if j.format != FORMAT {
            return Err(Error::corrupt("config is not a vdisk repository's"));
        }
        if j.version != 3 {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "repository layout {} (this vdisk reads layouts 2 and 3)",
                    j.version
                ),
            ));
        }
        let encrypted = match j.encryption.as_str() {
            "none" => false,
            AEAD => true,
            other => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!("encryption \"{other}\" is unknown to this vdisk"),
                ))
            }
        };
        if j.ids != "blake3-keyed" || j.compression != "zstd" {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "block ids or compression unknown to this vdisk",
            ));
        }
        if !is_id(&j.id, 32) || j.created.len() > 64 {
            return Err(Error::corrupt("config's id is not 32 hex digits"));
        }
        check_block_size(j.block_size).map_err(|e| Error::corrupt(e.message().to_string()))?;
        let master = match (&j.master_key, encrypted) {
            (Some(k), false) => Some(MasterKey(
                unhex(k)
                    .and_then(|v| v.try_into().ok())
                    .ok_or_else(|| Error::corrupt("config's key is not 32 bytes of hex"))?,
            )),
            (None, true) => None,
            _ => return Err(Error::corrupt("config's key does not fit its encryption")),
        };
        let check = unhex(&j.check)
            .filter(|c| c.len() <= 256)
            .ok_or_else(|| Error::corrupt("config's check is not hex"))?;
        Ok(Config {
            id: j.id,
            block_size: j.block_size,
            encrypted,
            created: j.created,
            master,
            check,
        })
    }

    /// The keys of an unencrypted repository (`None` when encrypted: a password is needed).
    pub fn plain_keys(&self) -> Option<(MasterKey, Keys)> {
        self.master
            .as_ref()
            .map(|m| (m.clone(), Keys::derive(m, false)))
    }

    /// Check the config against `keys` (derived from its master key).
    pub fn verify(&self, keys: &Keys) -> Result<()> {
        let plain = keys
            .open(Kind::Config, self.id.as_bytes(), &self.check)
            .map_err(|_| Error::corrupt("config does not match the repository's key (altered)"))?;
        if plain != check_text(&self.id, self.block_size, self.encrypted) {
            return Err(Error::corrupt("config's values were altered"));
        }
        Ok(())
    }
}

/// A key file: the master key wrapped by a password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    format: String,
    version: u32,
    /// The key's id (its object is `keys/ID`).
    pub id: String,
    /// When it was made.
    pub created: String,
    kdf: String,
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
    salt: String,
    wrapped: String,
}

impl KeyFile {
    /// The name of key `id`.
    pub fn name(id: &str) -> String {
        format!("keys/{id}")
    }

    /// A key file wrapping `master` with `password` for repository `repo_id`.
    pub fn new(master: &MasterKey, password: &[u8], repo_id: &str) -> Result<KeyFile> {
        let params = KdfParams::default_new();
        let salt: [u8; 32] = crate::crypto::random_bytes()?;
        let id = crate::crypto::random_id()?;
        let k = crate::crypto::password_key(password, &salt, params)?;
        let wrapped = crate::crypto::wrap(master, &k, repo_id, &id)?;
        Ok(KeyFile {
            format: KEY_FORMAT.into(),
            version: 1,
            id,
            created: crate::layout2::now_rfc3339(),
            kdf: "argon2id".into(),
            memory_kib: params.memory_kib,
            iterations: params.iterations,
            parallelism: params.parallelism,
            salt: hex(&salt),
            wrapped: hex(&wrapped),
        })
    }

    /// The key file as stored.
    pub fn encode(&self) -> Vec<u8> {
        with_crc(serde_json::to_string_pretty(self).unwrap_or_default())
    }

    /// Parse and check a stored key file named `id`.
    pub fn decode(bytes: &[u8], id: &str) -> Result<KeyFile> {
        if bytes.len() as u64 > MAX_SMALL {
            return Err(Error::corrupt("key file is far too large"));
        }
        let body = strip_crc(bytes, "key file")?;
        let k: KeyFile = serde_json::from_slice(body)
            .map_err(|e| Error::corrupt(format!("key file does not parse: {e}")))?;
        let salt_ok = unhex(&k.salt).is_some_and(|s| (16..=64).contains(&s.len()));
        let wrapped_ok = unhex(&k.wrapped).is_some_and(|w| w.len() == 72);
        if k.format != KEY_FORMAT
            || k.version != 1
            || k.kdf != "argon2id"
            || k.id != id
            || !salt_ok
            || !wrapped_ok
            || k.created.len() > 64
        {
            return Err(Error::corrupt(
                "key file is not a vdisk key, or not this one",
            ));
        }
        k.params().check()?;
        Ok(k)
    }

    fn params(&self) -> KdfParams {
        KdfParams {
            memory_kib: self.memory_kib,
            iterations: self.iterations,
            parallelism: self.parallelism,
        }
    }

    /// The master key, if `password` is this key's.
    pub fn unlock(&self, password: &[u8], repo_id: &str) -> Result<Option<MasterKey>> {
        let salt = unhex(&self.salt).unwrap_or_default();
        let wrapped = unhex(&self.wrapped).unwrap_or_default();
        let k = crate::crypto::password_key(password, &salt, self.params())?;
        Ok(crate::crypto::unwrap(&wrapped, &k, repo_id, &self.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_round_trip_and_damage_or_alteration_is_found() {
        for enc in [false, true] {
            let (c, master) = Config::new(65536, enc).unwrap();
            let bytes = c.encode();
            let d = Config::decode(&bytes).unwrap();
            assert_eq!(d, c);
            assert_eq!(d.plain_keys().is_some(), !enc);
            let keys = Keys::derive(&master, enc);
            d.verify(&keys).unwrap();
            for i in (0..bytes.len()).step_by(5) {
                let mut b = bytes.clone();
                b[i] ^= 0x20;
                assert!(Config::decode(&b).is_err(), "flip at {i}");
            }
            // Another block size with a fixed crc: found by the sealed check.
            let mut altered = d.clone();
            altered.block_size = 4096;
            let a = Config::decode(&altered.encode()).unwrap();
            assert!(a.verify(&keys).is_err());
        }
        assert!(Config::new(3000, false).is_err());
        assert!(Config::new(2 << 20, false).is_err());
    }

    #[test]
    fn key_files_unlock_with_their_password_only() {
        std::env::set_var("VDISK_KDF_MEMORY_KIB", "8192");
        let master = MasterKey::generate().unwrap();
        let k = KeyFile::new(&master, b"secret", "repo").unwrap();
        let bytes = k.encode();
        let d = KeyFile::decode(&bytes, &k.id).unwrap();
        assert_eq!(d.unlock(b"secret", "repo").unwrap().unwrap().0, master.0);
        assert!(d.unlock(b"Secret", "repo").unwrap().is_none());
        assert!(d.unlock(b"secret", "other").unwrap().is_none());
        assert!(KeyFile::decode(&bytes, "another-id").is_err());
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.contains("secret"));
    }
}
