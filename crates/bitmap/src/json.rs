//! Extent lists as JSON: import from the shapes vdisk, VMware and Hyper-V write; export in
//! vdisk's shape.
//!
//! The document is read as a stream: each extent is checked and turned into a block range as
//! it is parsed, nothing is sized from a count in the input, and nesting is bounded by
//! serde_json's recursion limit.

use std::fmt;
use std::fmt::Write as _;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use vdisk_core::{Error, ErrorKind, Result};

use crate::ChangeMap;

/// The accepted places of an extent list, which also decide the names of an extent's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// `{"extents":[{"start","length"}]}`: vdisk (`diff --json`, `bitmap show --json`).
    Extents,
    /// `{"changedArea":[{"start","length"}]}`: VMware's `QueryChangedDiskAreas` result.
    ChangedArea,
    /// `{"ranges":[{"ByteOffset","ByteLength"}]}`: Hyper-V RCT ranges wrapped in an object.
    Ranges,
    /// `[{"ByteOffset","ByteLength"}]`: Hyper-V RCT ranges (`GetVirtualDiskChanges`) as a list.
    TopLevelList,
}

impl Shape {
    /// The names of the start and length fields of an extent.
    fn fields(self) -> (&'static str, &'static str) {
        match self {
            Shape::Extents | Shape::ChangedArea => ("start", "length"),
            Shape::Ranges | Shape::TopLevelList => ("ByteOffset", "ByteLength"),
        }
    }

    /// How to name extent `i` of this list in a message.
    fn name(self, i: u64) -> String {
        match self {
            Shape::Extents => format!("extents[{i}]"),
            Shape::ChangedArea => format!("changedArea[{i}]"),
            Shape::Ranges => format!("ranges[{i}]"),
            Shape::TopLevelList => format!("extent [{i}]"),
        }
    }
}

const EXPECTING: &str = "an extent list: {\"extents\":[{\"start\",\"length\"}]}, \
    {\"changedArea\":[{\"start\",\"length\"}]}, [{\"ByteOffset\",\"ByteLength\"}] \
    or {\"ranges\":[{\"ByteOffset\",\"ByteLength\"}]}";

/// What the parse has gathered so far.
struct Collector<'m> {
    map: &'m ChangeMap,
    /// Block ranges `first..end`, in input order.
    ranges: Vec<(u64, u64)>,
    /// The list found, to refuse a document with two.
    found: Option<Shape>,
    /// The extent being parsed, to name it when the JSON inside it is wrong.
    current: Option<String>,
    /// An error of ours that aborted the parse; serde only carries it as text.
    error: Option<Error>,
}

impl Collector<'_> {
    /// Records `err` and returns a serde error that stops the parse.
    fn fail<E: de::Error>(&mut self, err: Error) -> E {
        let e = E::custom(err.message());
        self.error = Some(err);
        e
    }

    fn add(&mut self, name: &str, start: u64, length: u64) -> Result<()> {
        if length == 0 {
            return Ok(());
        }
        let range = self.map.blocks_of_bytes(start, length).map_err(|end| {
            Error::new(
                ErrorKind::OutOfBounds,
                format!(
                    "{name} (start {start}, length {length}) ends at {end}, past the end \
                     of the {}-byte disk",
                    self.map.size()
                ),
            )
        })?;
        self.ranges.push(range);
        Ok(())
    }
}

/// The whole document.
struct DocumentSeed<'c, 'm>(&'c mut Collector<'m>);

impl<'de> DeserializeSeed<'de> for DocumentSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DocumentSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(EXPECTING)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        self.0.found = Some(Shape::TopLevelList);
        ListSeed(self.0, Shape::TopLevelList).visit_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Keys other than the lists are ignored: a `vdisk diff --json` report, or VMware's
        // DiskChangeInfo with its startOffset/length, imports as it is.
        while let Some(key) = map.next_key::<Key>()? {
            let shape = match key.0.as_deref() {
                Some("extents") => Shape::Extents,
                Some("changedArea") => Shape::ChangedArea,
                Some("ranges") => Shape::Ranges,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if let Some(first) = self.0.found {
                let err = Error::invalid(format!(
                    "the document has two extent lists ({:?} and {:?}); give one",
                    list_key(first),
                    list_key(shape)
                ));
                return Err(self.0.fail(err));
            }
            self.0.found = Some(shape);
            map.next_value_seed(ListSeed(self.0, shape))?;
        }
        if self.0.found.is_none() {
            let err = Error::invalid(
                "no extent list in the document: expected a key \"extents\", \"changedArea\" \
                 or \"ranges\"",
            );
            return Err(self.0.fail(err));
        }
        Ok(())
    }
}

fn list_key(shape: Shape) -> &'static str {
    match shape {
        Shape::Extents => "extents",
        Shape::ChangedArea => "changedArea",
        Shape::Ranges => "ranges",
        Shape::TopLevelList => "",
    }
}

/// An object key, kept only when it is short enough to be one we know (so a hostile key of
/// megabytes is not copied).
struct Key(Option<String>);

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key((v.len() <= 16).then(|| v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// One list of extents.
struct ListSeed<'c, 'm>(&'c mut Collector<'m>, Shape);

impl<'de> DeserializeSeed<'de> for ListSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ListSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let (start, length) = self.1.fields();
        write!(f, "a list of {{\"{start}\",\"{length}\"}} objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let ListSeed(collector, shape) = self;
        let mut i = 0u64;
        loop {
            collector.current = Some(shape.name(i));
            if seq
                .next_element_seed(ExtentSeed(&mut *collector, shape))?
                .is_none()
            {
                break;
            }
            i += 1;
        }
        collector.current = None;
        Ok(())
    }
}

/// One extent object.
struct ExtentSeed<'c, 'm>(&'c mut Collector<'m>, Shape);

impl<'de> DeserializeSeed<'de> for ExtentSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ExtentSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let (start, length) = self.1.fields();
        write!(f, "an extent {{\"{start}\":N,\"{length}\":N}}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let ExtentSeed(collector, shape) = self;
        let (start_key, length_key) = shape.fields();
        let name = collector.current.clone().unwrap_or_default();
        let (mut start, mut length) = (None, None);
        while let Some(key) = map.next_key::<Key>()? {
            let slot = match key.0.as_deref() {
                Some(k) if k == start_key => (&mut start, start_key),
                Some(k) if k == length_key => (&mut length, length_key),
                // Other fields (vdisk map's "data"/"zero", anything a newer writer adds) do
                // not change which bytes changed.
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if slot.0.is_some() {
                let err = Error::invalid(format!("{name} has \"{}\" twice", slot.1));
                return Err(collector.fail(err));
            }
            *slot.0 = Some(map.next_value::<u64>()?);
        }
        let (start, length) = match (start, length) {
            (Some(s), Some(l)) => (s, l),
            (None, _) => {
                let err = Error::invalid(format!("{name} has no \"{start_key}\""));
                return Err(collector.fail(err));
            }
            (_, None) => {
                let err = Error::invalid(format!("{name} has no \"{length_key}\""));
                return Err(collector.fail(err));
            }
        };
        collector
            .add(&name, start, length)
            .map_err(|err| collector.fail(err))
    }
}

impl ChangeMap {
    /// A map of a disk of `size` bytes at `granularity` with the byte extents listed in the
    /// JSON document `text` marked changed.
    ///
    /// Accepted shapes (other keys, in the document and in each extent, are ignored):
    ///
    /// - vdisk: `{"extents":[{"start":N,"length":N}, …]}`, as [`to_extents_json`](Self::to_extents_json),
    ///   `vdisk diff --json` and `vdisk bitmap show --json` write;
    /// - VMware `QueryChangedDiskAreas` (a DiskChangeInfo): `{"changedArea":[{"start":N,"length":N}, …]}`;
    /// - Hyper-V RCT (`GetVirtualDiskChanges` ranges): `[{"ByteOffset":N,"ByteLength":N}, …]`
    ///   or `{"ranges":[{"ByteOffset":N,"ByteLength":N}, …]}`.
    ///
    /// Extents may be unaligned, unsorted and overlapping: each marks every block it touches.
    /// Zero-length extents are ignored. Offsets and lengths are bytes, JSON integers.
    ///
    /// Errors: [`ErrorKind::InvalidArgument`] for a bad size or granularity (as
    /// [`new`](Self::new)), [`ErrorKind::OutOfBounds`] for an extent that ends past `size`
    /// (the message names it), [`ErrorKind::InvalidFormat`] for anything else wrong with the
    /// document.
    ///
    /// ```
    /// use vdisk_bitmap::ChangeMap;
    /// // VMware's changed areas of a 1 MiB disk, unaligned: each marks every 64 KiB block
    /// // it touches.
    /// let cbt = br#"{"startOffset": 0, "changedArea": [
    ///     {"start": 100, "length": 10},
    ///     {"start": 200000, "length": 70000}
    /// ]}"#;
    /// let map = ChangeMap::from_extents_json(cbt, 1 << 20, 64 << 10)?;
    /// // 200000..270000 touches blocks 3 and 4.
    /// assert_eq!(map.extents().collect::<Vec<_>>(), [(0, 64 << 10), (3 << 16, 128 << 10)]);
    ///
    /// // Hyper-V's ranges read the same way; vdisk's own list reads back what it wrote.
    /// let rct = br#"[{"ByteOffset": 196608, "ByteLength": 131072},
    ///                {"ByteOffset": 0, "ByteLength": 1}]"#;
    /// assert_eq!(ChangeMap::from_extents_json(rct, 1 << 20, 64 << 10)?, map);
    /// let ours = map.to_extents_json();
    /// assert_eq!(ChangeMap::from_extents_json(ours.as_bytes(), 1 << 20, 64 << 10)?, map);
    ///
    /// // An extent past the disk's end names itself.
    /// let past = br#"{"extents":[{"start":1048576,"length":1}]}"#;
    /// let e = ChangeMap::from_extents_json(past, 1 << 20, 64 << 10).unwrap_err();
    /// assert_eq!(e.kind(), vdisk_core::ErrorKind::OutOfBounds);
    /// # Ok::<(), vdisk_core::Error>(())
    /// ```
    pub fn from_extents_json(text: &[u8], size: u64, granularity: u64) -> Result<ChangeMap> {
        let mut map = ChangeMap::new(size, granularity)?;
        let mut collector = Collector {
            map: &map,
            ranges: Vec::new(),
            found: None,
            current: None,
            error: None,
        };
        let mut de = serde_json::Deserializer::from_slice(text);
        let parsed = DocumentSeed(&mut collector)
            .deserialize(&mut de)
            .and_then(|()| de.end());
        if let Err(e) = parsed {
            if let Some(err) = collector.error {
                return Err(err);
            }
            let msg = match &collector.current {
                Some(name) => format!("extent list: {name}: {e}"),
                None => format!("extent list: {e}"),
            };
            return Err(Error::invalid(msg));
        }
        // Marking ranges sorted and joined costs one pass over the bitmap however the input
        // repeats itself: a few kilobytes of whole-disk extents cannot turn into minutes of
        // rewriting the same words.
        let mut ranges = collector.ranges;
        ranges.sort_unstable();
        let mut pending: Option<(u64, u64)> = None;
        for (first, end) in ranges {
            match &mut pending {
                Some((_, pend)) if first <= *pend => *pend = (*pend).max(end),
                _ => {
                    if let Some((f, e)) = pending.replace((first, end)) {
                        map.set_blocks(f, e);
                    }
                }
            }
        }
        if let Some((f, e)) = pending {
            map.set_blocks(f, e);
        }
        Ok(map)
    }

    /// The changed extents as vdisk's JSON extent list, `{"extents":[{"start":N,"length":N}, …]}`:
    /// sorted, adjacent blocks joined, the last extent clipped to the disk size, in bytes.
    /// [`from_extents_json`](Self::from_extents_json) reads it back.
    pub fn to_extents_json(&self) -> String {
        let mut out = String::from("{\"extents\":[");
        for (i, (start, length)) in self.extents().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // Writing to a String cannot fail.
            let _ = write!(out, "{{\"start\":{start},\"length\":{length}}}");
        }
        out.push_str("]}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K64: u64 = 64 << 10;

    fn blocks(m: &ChangeMap) -> Vec<u64> {
        (0..m.block_count()).filter(|&b| m.test(b)).collect()
    }

    fn import(text: &str, size: u64, g: u64) -> Result<ChangeMap> {
        ChangeMap::from_extents_json(text.as_bytes(), size, g)
    }

    #[test]
    fn vdisk_shape() {
        let m = import(
            r#"{"extents":[{"start":0,"length":65536},{"start":196608,"length":131072}]}"#,
            1 << 20,
            K64,
        )
        .unwrap();
        assert_eq!(blocks(&m), [0, 3, 4]);
    }

    #[test]
    fn vdisk_diff_report_imports_as_it_is() {
        let text = r#"{"old_size":1048576,"new_size":1048576,"granularity":65536,
            "changed_blocks":1,"changed_bytes":65536,
            "extents":[{"start":65536,"length":65536}]}"#;
        assert_eq!(blocks(&import(text, 1 << 20, K64).unwrap()), [1]);
    }

    #[test]
    fn vmware_changed_area_shape() {
        let text = r#"{"startOffset":0,"length":1048576,
            "changedArea":[{"start":131072,"length":65536},{"start":983040,"length":65536}]}"#;
        assert_eq!(blocks(&import(text, 1 << 20, K64).unwrap()), [2, 15]);
    }

    #[test]
    fn hyperv_shapes() {
        let list =
            r#"[{"ByteOffset":0,"ByteLength":512},{"ByteOffset":655360,"ByteLength":65536}]"#;
        assert_eq!(blocks(&import(list, 1 << 20, K64).unwrap()), [0, 10]);
        let ranges = format!("{{\"ranges\":{list}}}");
        assert_eq!(blocks(&import(&ranges, 1 << 20, K64).unwrap()), [0, 10]);
    }

    #[test]
    fn unaligned_and_overlapping_extents_round_out() {
        let text = r#"{"extents":[
            {"start":65535,"length":2},
            {"start":300000,"length":10},
            {"start":290000,"length":100000},
            {"start":0,"length":0},
            {"start":1048575,"length":1}]}"#;
        // 65535..65537 touches blocks 0 and 1; 290000..390000 touches 4..5 and holds
        // 300000..300010; the last byte is in block 15.
        assert_eq!(
            blocks(&import(text, 1 << 20, K64).unwrap()),
            [0, 1, 4, 5, 15]
        );
    }

    #[test]
    fn unaligned_disk_size() {
        let text = r#"{"extents":[{"start":1000,"length":100}]}"#;
        let m = import(text, 1100, 512).unwrap();
        assert_eq!(blocks(&m), [1, 2]);
        assert_eq!(m.extents().collect::<Vec<_>>(), [(512, 588)]);
    }

    #[test]
    fn zero_length_extents_are_ignored_even_past_the_end() {
        let m = import(r#"{"extents":[{"start":99999999,"length":0}]}"#, 4096, 512).unwrap();
        assert!(m.is_empty());
    }

    #[test]
    fn extent_past_the_end_is_named() {
        let text = r#"{"changedArea":[{"start":0,"length":512},{"start":1048064,"length":1024}]}"#;
        let e = import(text, 1 << 20, K64).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutOfBounds);
        assert!(e.message().contains("changedArea[1]"), "{}", e.message());
        assert!(
            e.message().contains("start 1048064, length 1024"),
            "{}",
            e.message()
        );
        assert!(e.message().contains("1048576-byte disk"), "{}", e.message());
    }

    #[test]
    fn extent_overflowing_u64_is_past_the_end() {
        let text = format!(r#"[{{"ByteOffset":{},"ByteLength":2}}]"#, u64::MAX);
        let e = import(&text, 1 << 20, K64).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutOfBounds);
        assert!(e.message().contains("[0]"), "{}", e.message());
    }

    #[test]
    fn malformed_documents_are_invalid_format() {
        for (text, words) in [
            ("", "EOF"),
            ("{", "EOF"),
            ("42", "expected an extent list"),
            ("{}", "no extent list"),
            (r#"{"extents":[],"ranges":[]}"#, "two extent lists"),
            (r#"{"extents":{}}"#, "a list of"),
            (r#"{"extents":[{"start":1}]}"#, "no \"length\""),
            (r#"{"extents":[{"length":1}]}"#, "no \"start\""),
            (r#"{"extents":[{"start":1,"start":2,"length":1}]}"#, "twice"),
            (r#"{"extents":[{"start":-1,"length":1}]}"#, "extents[0]"),
            (r#"{"extents":[{"start":1.5,"length":1}]}"#, "extents[0]"),
            (r#"{"extents":[{"start":0,"length":1}, 7]}"#, "extents[1]"),
            (r#"[{"start":0,"length":512}]"#, "no \"ByteOffset\""),
            (r#"{"extents":[]} x"#, "trailing"),
        ] {
            let e = import(text, 1 << 20, K64).unwrap_err();
            assert_eq!(
                e.kind(),
                ErrorKind::InvalidFormat,
                "{text}: {}",
                e.message()
            );
            assert!(e.message().contains(words), "{text}: {}", e.message());
            assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let text = format!("{{\"x\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let e = import(&text, 1 << 20, K64).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidFormat);
    }

    #[test]
    fn bad_size_or_granularity() {
        let e = import("[]", 1 << 20, 1000).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn export_shape() {
        let mut m = ChangeMap::new(10 * K64 + 100, K64).unwrap();
        assert_eq!(m.to_extents_json(), r#"{"extents":[]}"#);
        m.set_blocks(1, 3);
        m.set(5);
        m.set(10);
        assert_eq!(
            m.to_extents_json(),
            r#"{"extents":[{"start":65536,"length":131072},{"start":327680,"length":65536},{"start":655360,"length":100}]}"#
        );
        let back = ChangeMap::from_extents_json(m.to_extents_json().as_bytes(), m.size(), K64);
        assert_eq!(back.unwrap(), m);
    }
}
