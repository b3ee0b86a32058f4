//! Images vdisk writes, judged by qemu-img: `check` finds no leak and no error, `compare`
//! finds the source's bytes, `info` shows the format and backing intended, and `map` agrees
//! with vdisk's own map of what it wrote.

mod common;

use std::path::Path;

use common::*;
use vdisk_core::{copy_into, Allocation, CopyOptions, DiskImage, ErrorKind, MemImage};
use vdisk_io::{CreateOptions, DeltaParent, Format, Layer, OutputPolicy};
use vdisk_qcow2::QCOW2;

const SIZE: u64 = (24 << 20) + 1536;

/// qemu-img check finds nothing, compare finds `src`, the map is qemu's.
fn judge(dir: &Path, img: &str, src: &str) -> vdisk_qcow2::Qcow2Image {
    let q = qemu_check(dir, img);
    assert_eq!(q["check-errors"], 0, "{img}: {q}");
    assert!(q.get("corruptions").is_none_or(|v| v == 0), "{img}: {q}");
    assert!(q.get("leaks").is_none_or(|v| v == 0), "{img}: {q}");
    let (same, out) = try_run(
        dir,
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", img, src],
    );
    assert!(same, "{img}: {out}");
    let info: serde_json::Value =
        serde_json::from_str(&qemu_img(dir, &["info", "--output=json", img])).unwrap();
    assert_eq!(info["format"], "qcow2");
    let ours = open(dir, img).unwrap();
    assert_eq!(our_map(&ours), qemu_map(dir, img), "{img}: map");
    assert!(ours.check().is_empty(), "{img}: {:?}", ours.check());
    ours
}

#[test]
fn sparse_images_in_every_cluster_size() {
    if !have_qemu() {
        return;
    }
    let d = tempdir();
    let dir = d.path();
    let src = make_raw(dir, "src.raw", SIZE, 11);
    for cs in [512u64, 4096, 65536, 2 << 20] {
        let name = format!("w{cs}.qcow2");
        let opts = CreateOptions {
            cluster_size: Some(cs),
            ..CreateOptions::default()
        };
        write_qcow2(dir, "src.raw", &name, &opts);
        let img = judge(dir, &name, "src.raw");
        assert_eq!(img.header().cluster_size, cs);
        assert_eq!(read_all(&img), src);
        // Zero blocks of the source are not stored.
        let map = our_map(&img);
        assert!(map.iter().any(|e| e.2 == Allocation::Unallocated));
        assert!(!map.iter().any(|e| e.2 == Allocation::Zero));
        let info: serde_json::Value =
            serde_json::from_str(&qemu_img(dir, &["info", "--output=json", &name])).unwrap();
        assert_eq!(info["cluster-size"], cs);
        assert_eq!(info["format-specific"]["data"]["compat"], "1.1");
        assert_eq!(info["format-specific"]["data"]["refcount-bits"], 16);
    }
}

#[test]
fn compressed_images() {
    if !have_qemu() {
        return;
    }
    let d = tempdir();
    let dir = d.path();
    let src = make_raw(dir, "src.raw", SIZE, 5);
    for cs in [512u64, 65536, 2 << 20] {
        let name = format!("c{cs}.qcow2");
        let opts = CreateOptions {
            compress: true,
            cluster_size: Some(cs),
            ..CreateOptions::default()
        };
        write_qcow2(dir, "src.raw", &name, &opts);
        let img = judge(dir, &name, "src.raw");
        assert_eq!(read_all(&img), src);
        let info: serde_json::Value =
            serde_json::from_str(&qemu_img(dir, &["info", "--output=json", &name])).unwrap();
        assert_eq!(
            info["format-specific"]["data"]["compression-type"], "zstd",
            "{info}"
        );
        // Text compresses: the file is smaller than the data it holds.
        let plain: u64 = our_map(&img)
            .iter()
            .filter(|e| e.2 == Allocation::Data)
            .map(|e| e.1)
            .sum();
        let file = std::fs::metadata(dir.join(&name)).unwrap().len();
        assert!(file < plain, "{name}: {file} bytes for {plain} of data");
        // qemu reads what was written.
        assert_same(&name, &qemu_raw(dir, &name), &src);
    }
}

#[test]
fn many_small_compressed_clusters_share_host_clusters() {
    if !have_qemu() {
        return;
    }
    let d = tempdir();
    let dir = d.path();
    // Clusters of one repeated byte compress to a few bytes each: hundreds share a host
    // cluster, whose refcount counts them all.
    let cs = 2u64 << 20;
    let size = 256 * cs;
    let mut disk = vec![0u8; size as usize];
    for (i, c) in disk.chunks_mut(cs as usize).enumerate() {
        c.fill(i as u8 | 1);
    }
    std::fs::write(dir.join("rep.raw"), &disk).unwrap();
    let opts = CreateOptions {
        compress: true,
        cluster_size: Some(4096),
        ..CreateOptions::default()
    };
    write_qcow2(dir, "rep.raw", "rep.qcow2", &opts);
    let img = judge(dir, "rep.qcow2", "rep.raw");
    assert_eq!(read_all(&img), disk);
}

#[test]
fn deltas_mask_the_parent_and_name_it() {
    if !have_qemu() {
        return;
    }
    let d = tempdir();
    let dir = d.path();
    let base = make_raw(dir, "base.raw", 8 << 20, 2);
    qemu_img(dir, &["convert", "-O", "qcow2", "base.raw", "base.qcow2"]);
    let parent = open(dir, "base.qcow2").unwrap();
    for compress in [false, true] {
        let name = if compress { "dc.qcow2" } else { "d.qcow2" };
        // The delta is bigger than its parent.
        let size = 10 << 20;
        let cs = 65536u64;
        let sink = QCOW2
            .create_delta(
                &dir.join(name),
                &DeltaParent {
                    name: Path::new("base.qcow2"),
                    format: "qcow2",
                    layer: &parent,
                },
                size,
                &CreateOptions {
                    compress,
                    ..CreateOptions::default()
                },
            )
            .unwrap();
        assert_eq!(sink.block_size(), cs);
        let mut sink = sink;
        let data = vec![0xabu8; cs as usize];
        let zero = vec![0u8; cs as usize];
        let blocks: Vec<(u64, &[u8])> = vec![
            (0, &data),
            (cs, &zero),
            (5 * cs, &data),
            (100 * cs, &zero),
            (150 * cs, &data),
        ];
        sink.put(&blocks[..2]).unwrap();
        sink.put(&blocks[2..]).unwrap();
        sink.finish().unwrap();

        let mut want = base.clone();
        want.resize(size as usize, 0);
        for (off, b) in &blocks {
            want[*off as usize..*off as usize + b.len()].copy_from_slice(b);
        }
        std::fs::write(dir.join("want.raw"), &want).unwrap();
        let q = qemu_check(dir, name);
        assert_eq!(q["check-errors"], 0, "{q}");
        assert!(q.get("leaks").is_none_or(|v| v == 0), "{q}");
        let (same, out) = try_run(
            dir,
            "qemu-img",
            &["compare", "-f", "qcow2", "-F", "raw", name, "want.raw"],
        );
        assert!(same, "{out}");
        let chain = qemu_img(dir, &["info", "--backing-chain", "--output=json", name]);
        let chain: serde_json::Value = serde_json::from_str(&chain).unwrap();
        assert_eq!(chain[0]["backing-filename"], "base.qcow2");
        assert_eq!(chain[0]["backing-filename-format"], "qcow2");
        assert_eq!(chain[1]["filename"], "base.qcow2");
        let img = open(dir, name).unwrap();
        let b = img.backing().unwrap();
        assert_eq!(b.names, [Path::new("base.qcow2")]);
        assert_eq!(b.format.as_deref(), Some("qcow2"));
        let map = our_map(&img);
        assert_eq!(map, qemu_map(dir, name));
        assert!(map.contains(&(cs, cs, Allocation::Zero)));
        assert!(map.contains(&(100 * cs, cs, Allocation::Zero)));
        assert!(map.contains(&(2 * cs, 3 * cs, Allocation::Unallocated)));
        assert!(img.check().is_empty());
    }
}

#[test]
fn writes_are_invisible_until_finished_and_refuse_bad_input() {
    let d = tempdir();
    let dir = d.path();
    let dst = dir.join("x.qcow2");
    let mut sink = QCOW2
        .create(&dst, 1 << 20, &CreateOptions::default())
        .unwrap();
    sink.put(&[(65536, &[1u8; 65536][..])]).unwrap();
    assert!(!dst.exists());
    // Out of order, misaligned, past the end.
    assert!(sink.put(&[(0, &[1u8; 65536][..])]).is_err());
    let mut sink = QCOW2
        .create(&dst, 1 << 20, &CreateOptions::default())
        .unwrap();
    assert!(sink.put(&[(100, &[1u8; 100][..])]).is_err());
    assert!(sink.put(&[(1 << 20, &[1u8; 65536][..])]).is_err());
    drop(sink);
    assert!(
        std::fs::read_dir(dir).unwrap().next().is_none(),
        "nothing left behind"
    );
    for bad in [1000u64, 256, 4 << 20] {
        let e = QCOW2
            .create(
                &dst,
                1 << 20,
                &CreateOptions {
                    cluster_size: Some(bad),
                    ..CreateOptions::default()
                },
            )
            .err()
            .unwrap();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    }
    // An existing output is refused unless replaced.
    std::fs::write(&dst, b"keep").unwrap();
    let e = QCOW2
        .create(&dst, 1 << 20, &CreateOptions::default())
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    let opts = CreateOptions {
        policy: OutputPolicy::replacing(),
        ..CreateOptions::default()
    };
    let sink = QCOW2.create(&dst, 1 << 20, &opts).unwrap();
    sink.finish().unwrap();
    let img = open(dir, "x.qcow2").unwrap();
    assert_eq!(img.size(), 1 << 20);
    assert!(img.check().is_empty());
}

#[test]
fn round_trips_without_qemu() {
    // Sizes around cluster and L2 boundaries, with and without compression.
    let d = tempdir();
    let dir = d.path();
    for (i, (size, cs, compress)) in [
        (0u64, 65536u64, false),
        (512, 512, false),
        (513 * 512, 512, true),
        ((64 << 10) * 8 + 4096, 4096, false),
        (3 << 20, 65536, true),
    ]
    .into_iter()
    .enumerate()
    {
        let mut disk = vec![0u8; size as usize];
        Noise::new(i as u64 + 1).fill(&mut disk);
        for c in disk.chunks_mut(3 * cs as usize) {
            let n = c.len().min(cs as usize);
            c[..n].fill(0);
        }
        let name = format!("r{i}.qcow2");
        let opts = CreateOptions {
            compress,
            cluster_size: Some(cs),
            ..CreateOptions::default()
        };
        let sink = QCOW2.create(&dir.join(&name), size, &opts).unwrap();
        copy_into(&MemImage::new(disk.clone()), sink, &CopyOptions::default()).unwrap();
        let img = open(dir, &name).unwrap();
        assert_eq!(img.size(), size);
        assert_eq!(read_all(&img), disk, "{name}");
        assert!(img.check().is_empty(), "{name}: {:?}", img.check());
    }
}

/// Random disks (runs of noise, text, zeros and holes, at random sizes) written in every
/// mode and read back; vdisk's check finds nothing; blocks arrive in batches of random
/// sizes, as many small refcount blocks fill (512-byte clusters hold 256 refcounts each).
#[test]
fn random_round_trips() {
    let d = tempdir();
    let dir = d.path();
    let mut rng = Noise::new(0x5eed);
    let mut pick = |n: u64| {
        let mut b = [0u8; 8];
        rng.fill(&mut b);
        u64::from_le_bytes(b) % n
    };
    for case in 0..60 {
        let cs = [512u64, 4096, 65536][pick(3) as usize];
        let compress = pick(2) == 1;
        let delta = pick(3) == 0;
        let size = (pick(4 << 20) + 1).next_multiple_of(512);
        let mut disk = vec![0u8; size as usize];
        let mut given: Vec<u64> = Vec::new(); // clusters handed to the sink
        let mut noise = Noise::new(case + 1);
        let mut off = 0u64;
        while off < size {
            let len = (pick(8) + 1) * cs / 2 + pick(cs);
            let end = (off + len).min(size);
            let r = &mut disk[off as usize..end as usize];
            match pick(4) {
                0 => noise.fill(r),
                1 => r
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, b)| *b = b"qcow2 "[i % 6]),
                _ => {}
            }
            off = end;
        }
        let name = format!("rnd{case}.qcow2");
        let opts = CreateOptions {
            compress,
            cluster_size: Some(cs),
            ..CreateOptions::default()
        };
        let parent = vdisk_raw::RawImage::open(&dir.join("rnd0.qcow2")).ok();
        let mut sink = match (&parent, delta) {
            (Some(p), true) => QCOW2
                .create_delta(
                    &dir.join(&name),
                    &DeltaParent {
                        name: Path::new("parent.raw"),
                        format: "raw",
                        layer: p,
                    },
                    size,
                    &opts,
                )
                .unwrap(),
            _ => QCOW2.create(&dir.join(&name), size, &opts).unwrap(),
        };
        // Hand over a random half of the clusters (all of them for a full image), in
        // batches of random lengths.
        let clusters: Vec<u64> = (0..size.div_ceil(cs))
            .filter(|_| !delta || pick(2) == 0)
            .collect();
        let mut i = 0;
        while i < clusters.len() {
            let n = (pick(40) + 1) as usize;
            let batch: Vec<(u64, &[u8])> = clusters[i..(i + n).min(clusters.len())]
                .iter()
                .map(|&c| {
                    let s = (c * cs) as usize;
                    (c * cs, &disk[s..(s + cs as usize).min(size as usize)])
                })
                .collect();
            given.extend(clusters[i..(i + n).min(clusters.len())].iter());
            sink.put(&batch).unwrap();
            i += n;
        }
        sink.finish().unwrap();
        let img = open(dir, &name).unwrap();
        assert!(img.check().is_empty(), "{name}: {:?}", img.check());
        if !delta && case % 4 == 0 && have_qemu() {
            let q = qemu_check(dir, &name);
            assert_eq!(q["check-errors"], 0, "{name}: {q}");
            assert!(q.get("corruptions").is_none_or(|v| v == 0), "{name}: {q}");
            assert!(q.get("leaks").is_none_or(|v| v == 0), "{name}: {q}");
        }
        let got = read_all(&img);
        let map = our_map(&img);
        for c in 0..size.div_ceil(cs) {
            let s = (c * cs) as usize;
            let e = (s + cs as usize).min(size as usize);
            if given.binary_search(&c).is_ok() || !delta {
                assert!(got[s..e] == disk[s..e], "{name}: cluster {c}");
            } else {
                assert!(got[s..e].iter().all(|&b| b == 0), "{name}: cluster {c}");
                assert!(
                    map.iter().any(|m| m.0 <= c * cs
                        && m.0 + m.1 >= e as u64
                        && m.2 == Allocation::Unallocated),
                    "{name}: cluster {c} not given must be unallocated"
                );
            }
        }
    }
}

/// An output that only appends, as an object store's upload: the first `HEAD_REGION` bytes
/// may be written at any time, everything after them in order (gaps read as zero).
struct AppendOnly {
    dst: std::path::PathBuf,
    done: std::sync::Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

struct AppendFile {
    bytes: Vec<u8>,
    tail: u64,
    len: Option<u64>,
    done: std::sync::Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

impl vdisk_io::OutputFile for AppendFile {
    fn write(&mut self, buf: &[u8], offset: u64) -> vdisk_core::Result<()> {
        self.write_raw(buf, offset)
    }
    fn write_raw(&mut self, buf: &[u8], offset: u64) -> vdisk_core::Result<()> {
        let end = offset + buf.len() as u64;
        // What lies past the head region must come in order.
        let past = offset.max(vdisk_io::HEAD_REGION);
        if end > past {
            assert!(
                past >= self.tail,
                "written out of order: at {past}, after {}",
                self.tail
            );
            self.tail = end;
        }
        if self.bytes.len() < end as usize {
            self.bytes.resize(end as usize, 0);
        }
        self.bytes[offset as usize..end as usize].copy_from_slice(buf);
        Ok(())
    }
    fn set_len(&mut self, len: u64) -> vdisk_core::Result<()> {
        self.len = Some(len);
        Ok(())
    }
    fn seal(mut self: Box<Self>) -> vdisk_core::Result<Box<dyn vdisk_io::SealedOutput>> {
        if let Some(l) = self.len {
            self.bytes.resize(l as usize, 0);
        }
        Ok(self)
    }
}

impl vdisk_io::SealedOutput for AppendFile {
    fn destination(&self) -> &Path {
        Path::new("appended")
    }
    fn publish(self: Box<Self>) -> vdisk_core::Result<()> {
        *self.done.lock().unwrap() = Some(self.bytes);
        Ok(())
    }
}

impl vdisk_io::ImageOutput for AppendOnly {
    fn dst(&self) -> &Path {
        &self.dst
    }
    fn exists(&self, _: &Path) -> vdisk_core::Result<bool> {
        Ok(false)
    }
    fn create(&mut self, name: Option<&Path>) -> vdisk_core::Result<Box<dyn vdisk_io::OutputFile>> {
        assert!(name.is_none(), "qcow2 is one file");
        Ok(Box::new(AppendFile {
            bytes: Vec::new(),
            tail: vdisk_io::HEAD_REGION,
            len: None,
            done: self.done.clone(),
        }))
    }
    fn keep(&mut self, _: Box<dyn vdisk_io::SealedOutput>) -> vdisk_core::Result<()> {
        panic!("qcow2 keeps no other file")
    }
    fn commit(self: Box<Self>, main: Box<dyn vdisk_io::SealedOutput>) -> vdisk_core::Result<()> {
        main.publish()
    }
}

#[test]
fn outputs_that_only_append() {
    let d = tempdir();
    let dir = d.path();
    let src = make_raw(dir, "src.raw", 6 << 20, 4);
    let raw = vdisk_raw::RawImage::open(&dir.join("src.raw")).unwrap();
    for (i, (cs, compress, delta)) in [
        (65536u64, false, false),
        (65536, true, false),
        (512, true, false),
        (4096, false, true),
        (4096, true, true),
    ]
    .into_iter()
    .enumerate()
    {
        let done = std::sync::Arc::new(std::sync::Mutex::new(None));
        let out = Box::new(AppendOnly {
            dst: dir.join("repo.qcow2"),
            done: done.clone(),
        });
        let opts = CreateOptions {
            compress,
            cluster_size: Some(cs),
            ..CreateOptions::default()
        };
        let sink = if delta {
            QCOW2
                .create_delta_in(
                    out,
                    &DeltaParent {
                        name: Path::new("src.raw"),
                        format: "raw",
                        layer: &raw,
                    },
                    raw.size(),
                    &opts,
                )
                .unwrap()
        } else {
            QCOW2.create_in(out, raw.size(), &opts).unwrap()
        };
        copy_into(&raw, sink, &CopyOptions::default()).unwrap();
        let bytes = done.lock().unwrap().take().expect("committed");
        let name = format!("app{i}.qcow2");
        std::fs::write(dir.join(&name), &bytes).unwrap();
        let img = open(dir, &name).unwrap();
        assert!(img.check().is_empty(), "{name}: {:?}", img.check());
        assert_eq!(read_all(&img), src, "{name}");
        if have_qemu() {
            let q = qemu_check(dir, &name);
            assert_eq!(q["check-errors"], 0, "{name}: {q}");
            assert!(q.get("corruptions").is_none_or(|v| v == 0), "{name}: {q}");
            assert!(q.get("leaks").is_none_or(|v| v == 0), "{name}: {q}");
            if !delta {
                assert_same(&name, &qemu_raw(dir, &name), &src);
            }
        }
    }
}
