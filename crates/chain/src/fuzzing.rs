//! Entry points for the cargo-fuzz targets of the repository's parsers, shared with the
//! corpus replay tests: any bytes, no panic; what decodes round-trips.

use crate::crypto::{Keys, Kind, MasterKey};

/// Decode layout-2 repository metadata; when it decodes, it must round-trip.
pub fn repo_meta(data: &[u8]) {
    use crate::layout2::RepoMeta;
    if let Ok(m) = RepoMeta::decode(data) {
        assert_eq!(RepoMeta::decode(&m.encode()).ok(), Some(m));
    }
}

/// Fixed keys, so that a fuzzer's seeds stay valid across runs: unencrypted (whose seals the
/// harness makes right, [`remac`]), and encrypted.
fn keys(encrypted: bool) -> Keys {
    Keys::derive(&MasterKey([7; 32]), encrypted)
}

/// Decode a `config`; when it decodes, it must round-trip.
pub fn config(data: &[u8]) {
    if let Ok(c) = crate::config::Config::decode(data) {
        let again = crate::config::Config::decode(&c.encode()).expect("a config re-encodes");
        assert_eq!(again, c);
        if let Some((_, k)) = c.plain_keys() {
            let _ = c.verify(&k);
        }
    }
}

/// Decode a key file named after its own id (the id is read from the data).
pub fn key_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let id = text
        .split("\"id\": \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("")
        .to_string();
    if let Ok(k) = crate::config::KeyFile::decode(data, &id) {
        assert_eq!(
            crate::config::KeyFile::decode(&k.encode(), &id).ok(),
            Some(k)
        );
    }
}

/// Re-seal `sealed` (a whole object of `kind` named `id`, its MAC last) with the fixed
/// unencrypted keys `k`, in place: the harness signs whatever the fuzzer wrote, as anyone who
/// can read an unencrypted repository's `config` can, so that the parser behind the seal is
/// reached (a 128-bit MAC is beyond a fuzzer), and real objects of any unencrypted
/// repository are seeds. Nothing when it is shorter than a MAC.
fn remac(k: &Keys, kind: Kind, id: &[u8], sealed: &mut [u8]) {
    if let Some(n) = sealed.len().checked_sub(k.overhead()) {
        if let Ok(s) = k.seal(kind, id, &sealed[..n]) {
            sealed.copy_from_slice(&s);
        }
    }
}

/// Parse a whole pack named `00000000000000000000000000000000`, then open each blob it
/// lists. Byte 0 picks the keys: even, unencrypted, with the header's and the blobs' MACs
/// made right by the harness ([`remac`]: the pack's parser and the blobs' decoding are
/// reached); odd, encrypted, as they are (only a pack sealed with the fixed key gets past
/// the seal).
pub fn pack(data: &[u8]) {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let encrypted = which & 1 == 1;
    let k = keys(encrypted);
    let id = "0".repeat(32);
    let mut bytes = bytes.to_vec();
    let len = bytes.len();
    let trailer = crate::pack::trailer_len() as usize;
    if !encrypted && len >= trailer {
        if let Ok((start, n)) = crate::pack::header_range(&bytes[len - trailer..], len as u64) {
            let header = &mut bytes[start as usize..(start + n) as usize];
            remac(&k, Kind::PackHeader, id.as_bytes(), header);
        }
    }
    if let Ok(entries) = crate::pack::parse_pack(&k, &id, &bytes) {
        for e in entries {
            let (at, n) = (e.offset as usize, e.len as usize);
            let mut blob = bytes[at..at + n].to_vec();
            if !encrypted {
                remac(&k, Kind::Blob, &e.id.0, &mut blob);
            }
            let _ = crate::pack::open_blob(&k, &e.id, &blob, 1 << 20);
        }
    }
}

/// The magic and the length of an index table's trailer (`index.rs`).
const INDEX_MAGIC: &[u8; 8] = b"VDINDX03";
const INDEX_TRAILER: usize = 40;

/// Re-seal the pages and the fences of an unencrypted index table named `id`, where its
/// trailer says they lie (nothing when the trailer is not one).
fn remac_table(k: &Keys, id: &str, bytes: &mut [u8]) {
    use crate::index::{ENTRY_LEN, MAX_TABLE_ENTRIES, PAGE_ENTRIES};
    let Some(end) = bytes.len().checked_sub(INDEX_TRAILER) else {
        return;
    };
    let t = &bytes[end..];
    if &t[..8] != INDEX_MAGIC {
        return;
    }
    let word = |i: usize| u64::from_le_bytes(t[8 + i * 8..16 + i * 8].try_into().unwrap_or([0; 8]));
    let (entries, pages, fences_len) = (word(0), word(1), word(3));
    if entries > MAX_TABLE_ENTRIES || pages != entries.div_ceil(PAGE_ENTRIES as u64) {
        return;
    }
    // The fences lie just before the trailer.
    if let Some(at) = (end as u64).checked_sub(fences_len) {
        remac(
            k,
            Kind::IndexFences,
            id.as_bytes(),
            &mut bytes[at as usize..end],
        );
    }
    let full = PAGE_ENTRIES * ENTRY_LEN + k.overhead();
    for p in 0..pages {
        let n = if p + 1 == pages {
            (entries - p * PAGE_ENTRIES as u64) as usize
        } else {
            PAGE_ENTRIES
        };
        let at = p as usize * full;
        let stop = at + n * ENTRY_LEN + k.overhead();
        if stop > end {
            break;
        }
        let mut ad = id.as_bytes().to_vec();
        ad.extend_from_slice(&p.to_le_bytes());
        remac(k, Kind::IndexPage, &ad, &mut bytes[at..stop]);
    }
}

/// Open an index table named `t` and read every page; what a page holds is sorted. Byte 0
/// picks the keys: even, unencrypted, with the pages' and the fences' MACs made right by
/// the harness ([`remac`]); odd, encrypted, as they are.
pub fn index_table(data: &[u8]) {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let encrypted = which & 1 == 1;
    let k = keys(encrypted);
    let mut bytes = bytes.to_vec();
    if !encrypted {
        remac_table(&k, "t", &mut bytes);
    }
    if let Ok(t) = crate::index::IndexTable::open(&k, "t", crate::index::TableBytes::Memory(bytes))
    {
        for p in 0..t.pages().min(1 << 16) {
            if let Ok(entries) = t.page(p) {
                assert!(entries.windows(2).all(|w| w[0].id < w[1].id));
            }
        }
        let _ = t.filter_matches();
        let set = crate::index::IndexSet::new(vec![t]);
        let _ = set.lookup(&crate::crypto::BlockId([1; 32]));
    }
}

/// Open a point object. Byte 0 picks the keys: even, unencrypted, the object named for the
/// NAME and number its JSON gives (`points/0123456789abcdef-0000000001` when it gives none)
/// and its MAC made right by the harness ([`remac`]), so that a point that holds together
/// opens; odd, encrypted, as it is, named `points/0123456789abcdef-0000000001`. A point
/// that opens re-seals and opens the same.
pub fn point(data: &[u8]) {
    use crate::point::{point_key, PointRecord, MAX_SEQ};
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let encrypted = which & 1 == 1;
    let k = keys(encrypted);
    let mut key = "points/0123456789abcdef-0000000001".to_string();
    let mut sealed = bytes.to_vec();
    if !encrypted {
        if let Some(n) = sealed.len().checked_sub(k.overhead()) {
            if let Ok(p) = serde_json::from_slice::<PointRecord>(&sealed[..n]) {
                if (1..=MAX_SEQ).contains(&p.seq) {
                    key = point_key(&k.name_tag(&p.name), p.seq);
                }
            }
        }
        remac(&k, Kind::Point, key.as_bytes(), &mut sealed);
    }
    if let Ok(p) = PointRecord::open(&k, &key, &sealed, 65536) {
        assert!(p.validate(65536).is_ok());
        let again = p.seal(&k, &key).expect("a point re-seals");
        assert_eq!(PointRecord::open(&k, &key, &again, 65536).ok(), Some(p));
    }
    // The same bytes as the plain JSON of a point: validated, never trusted.
    if let Ok(p) = serde_json::from_slice::<PointRecord>(bytes) {
        let _ = p.validate(65536);
    }
}

/// Decode a chunk of a disk's index: byte 0 picks leaf or node and bytes 1-2 the count.
pub fn index_chunk(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let n = u64::from(u16::from_le_bytes([data[1], data[2]])) % (crate::tree::FANOUT + 1);
    let body = &data[3..];
    if data[0] & 1 == 0 {
        if let Ok(l) = crate::tree::decode_leaf(body, n) {
            assert_eq!(crate::tree::encode_leaf(&l), body);
        }
    } else if let Ok(c) = crate::tree::decode_node(body, n) {
        assert_eq!(crate::tree::encode_node(&c), body);
    }
}

/// For the tests of crafted objects: seal `json` as the point object `key` of the
/// unencrypted repository at `repo`, with its (public) key — what anyone who can read its
/// `config` can do, and why encryption is what stops a writer with access to the store.
pub fn forge_point(repo: &std::path::Path, key: &str, json: &[u8]) -> vdisk_core::Result<()> {
    let r = crate::Repository::open(repo, &crate::Access::default())?;
    let sealed = r
        .keys()
        .seal(crate::crypto::Kind::Point, key.as_bytes(), json)?;
    r.store().replace(key, &sealed)
}

/// The tag of NAME in the point keys of the repository at `repo`.
pub fn name_tag(repo: &std::path::Path, name: &str) -> vdisk_core::Result<String> {
    let r = crate::Repository::open(repo, &crate::Access::default())?;
    Ok(r.keys().name_tag(name))
}

/// For benches/compare-repo.sh (through `examples/synthetic_index.rs`): add `entries`
/// synthetic entries to the index of the repository at `repo`, as tables of at most
/// [`crate::index::MAX_TABLE_ENTRIES`] written through the crate's own `IndexWriter`, so that
/// a backup can be measured against the index of a repository of that many blocks without
/// storing them. The ids are random (each table's sorted by construction), the packs they
/// name do not exist: a backup's lookups cost what they cost in such a repository (its new
/// blocks miss, a few by way of a page), but verify, restore and prune of it report the
/// missing packs. Returns the tables written.
pub fn synthetic_index(repo: &std::path::Path, entries: u64, seed: u64) -> vdisk_core::Result<u64> {
    use crate::crypto::BlockId;
    use crate::index::{IndexEntry, IndexWriter, Location, PackId, MAX_TABLE_ENTRIES};
    let r = crate::Repository::open(repo, &crate::Access::default())?;
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let (mut left, mut tables, mut blob) = (entries, 0u64, 0u64);
    while left > 0 {
        let n = left.min(MAX_TABLE_ENTRIES);
        let id = crate::crypto::random_id()?;
        let keys = r.keys().clone();
        let step = u64::MAX / n;
        r.store()
            .create_streamed(&format!("index/{id}"), &mut |out| {
                let mut w = IndexWriter::new(out, &keys, &id, n)?;
                for i in 0..n {
                    // The prefix rises with i (the table's order); the rest is random.
                    let mut b = [0u8; 32];
                    b[..8].copy_from_slice(&(i * step + next() % step).to_be_bytes());
                    for k in 1..4 {
                        b[k * 8..k * 8 + 8].copy_from_slice(&next().to_le_bytes());
                    }
                    // About 16 MiB packs of 40 KiB blobs.
                    let mut pack = [0u8; 16];
                    pack[..8].copy_from_slice(&(seed ^ (blob / 400)).to_le_bytes());
                    pack[8..].copy_from_slice(&tables.to_le_bytes());
                    w.push(IndexEntry {
                        id: BlockId(b),
                        at: Location {
                            pack: PackId(pack),
                            offset: ((blob % 400) * 40_960) as u32,
                            len: 40_960,
                        },
                    })?;
                    blob += 1;
                }
                w.finish().map(|_| ())
            })?;
        tables += 1;
        left -= n;
    }
    Ok(tables)
}
