//! ESXi snapshot links read whole: an SEsparse link (VMFS6, 4 KiB grains) and a COWD link
//! (vmfsSparse, VMFS5 and older, ESX's 512-byte grains), each over a 64 MiB flat base, read
//! through `vdisk::open(…).read_at` in 4 MiB chunks on one thread. The images are made here
//! with `vdisk::vmdk::testing` (the layout qemu-img reads, see tests/it/esx.rs), like a
//! snapshot after some hours of guest writes (as `examples/make_esx.rs` makes them): in each
//! MiB of the disk, with probability 0.30 one run of 64 KiB to 1 MiB of new data, with
//! probability 0.05 a 64 KiB run of zeroed (or, in SEsparse, unmapped) grains, otherwise
//! nothing (the base shows through); regions are written in a shuffled order, so the
//! grains area holds them in write order, not disk order, as ESXi's files do.

use std::path::Path;

use criterion::{Criterion, Throughput};
use vdisk::vmdk::testing::{esx_descriptor, CowdWriter, EsxGrain, SeSparseWriter};
use vdisk::DiskImage;

use super::fixtures::{assert_same, disk_bytes, read_whole, Fixtures, CHUNK, IMAGE_SIZE, MIB};

/// xorshift64: fast, deterministic filler.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a link stores in one grain.
#[derive(Clone, Copy)]
enum Put {
    Data,
    Zero,
    Unmapped,
}

/// The grains a link stores: runs `(first grain, grains, what)` in write order, for grains
/// of `grain` bytes, as the module comment describes.
fn snapshot_writes(rng: &mut Rng, grain: u64, unmapped: bool) -> Vec<(u64, u64, Put)> {
    let per_region = MIB / grain;
    let small = (64 << 10) / grain; // grains in 64 KiB
    let mut regions: Vec<u64> = (0..IMAGE_SIZE / MIB).collect();
    for i in (1..regions.len()).rev() {
        regions.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut runs = Vec::new();
    for r in regions {
        let first = r * per_region;
        let roll = rng.below(100);
        if roll < 30 {
            let len = small + rng.below(per_region - small + 1);
            let start = first + rng.below(per_region - len + 1);
            runs.push((start, len, Put::Data));
        } else if roll < 35 {
            let start = first + rng.below(per_region - small + 1);
            let what = if unmapped && roll % 2 == 1 {
                Put::Unmapped
            } else {
                Put::Zero
            };
            runs.push((start, small, what));
        }
    }
    runs
}

/// Write a link's grains with `put`, and apply them to `disk` (the base's bytes): what the
/// link must read as.
fn write_link(
    rng: &mut Rng,
    grain: u64,
    unmapped: bool,
    disk: &mut [u8],
    mut put: impl FnMut(u64, EsxGrain<'_>) -> std::io::Result<()>,
) {
    let mut data = vec![0u8; grain as usize];
    for (start, len, what) in snapshot_writes(rng, grain, unmapped) {
        for g in start..start + len {
            let at = (g * grain) as usize..((g + 1) * grain) as usize;
            match what {
                Put::Data => {
                    rng.fill(&mut data);
                    put(g, EsxGrain::Data(&data)).expect("write a grain");
                    disk[at].copy_from_slice(&data);
                }
                Put::Zero => {
                    put(g, EsxGrain::Zero).expect("write a grain");
                    disk[at].fill(0);
                }
                Put::Unmapped => {
                    put(g, EsxGrain::Unmapped).expect("write a grain");
                    disk[at].fill(0);
                }
            }
        }
    }
}

/// Make `dir`/base.vmdk (a thick flat disk, random bytes), `dir`/se.vmdk (an SEsparse link
/// on it) and `dir`/cowd.vmdk (a COWD link on it); returns what the two links read as.
fn make(dir: &Path) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut base = vec![0u8; IMAGE_SIZE as usize];
    rng.fill(&mut base);
    std::fs::write(dir.join("base-flat.vmdk"), &base)?;
    let base_cid = 0x0ba5_e001;
    std::fs::write(
        dir.join("base.vmdk"),
        esx_descriptor(
            "vmfs",
            base_cid,
            None,
            &[(IMAGE_SIZE / 512, "VMFS", "base-flat.vmdk")],
        ),
    )?;

    let mut se_disk = base.clone();
    let mut w = SeSparseWriter::create(&dir.join("se-sesparse.vmdk"), IMAGE_SIZE)?;
    write_link(&mut rng, 4096, true, &mut se_disk, |g, what| w.put(g, what));
    w.finish()?;
    std::fs::write(
        dir.join("se.vmdk"),
        esx_descriptor(
            "seSparse",
            0x5e5e_0001,
            Some((base_cid, "base.vmdk")),
            &[(IMAGE_SIZE / 512, "SESPARSE", "se-sesparse.vmdk")],
        ),
    )?;

    let mut cowd_disk = base;
    let mut w = CowdWriter::create(&dir.join("cowd-delta.vmdk"), IMAGE_SIZE, 1, "base.vmdk")?;
    write_link(&mut rng, 512, false, &mut cowd_disk, |g, what| {
        w.put(g, what)
    });
    w.finish()?;
    std::fs::write(
        dir.join("cowd.vmdk"),
        esx_descriptor(
            "vmfsSparse",
            0xc0d0_0001,
            Some((base_cid, "base.vmdk")),
            &[(IMAGE_SIZE / 512, "VMFSSPARSE", "cowd-delta.vmdk")],
        ),
    )?;
    Ok((se_disk, cowd_disk))
}

pub fn bench(c: &mut Criterion, fx: &Fixtures) {
    let dir = fx.dir().join("esx");
    std::fs::create_dir_all(&dir).expect("a folder for the ESX images");
    let (se_disk, cowd_disk) = make(&dir).expect("make the ESX images");
    let mut buf = vec![0u8; CHUNK];
    let mut g = c.benchmark_group("esx/read_4MiB_chunks");
    g.throughput(Throughput::Bytes(IMAGE_SIZE));
    for (name, file, want) in [
        ("seSparse_over_flat", "se.vmdk", &se_disk),
        ("cowd_512B_grains_over_flat", "cowd.vmdk", &cowd_disk),
    ] {
        let img = vdisk::open(dir.join(file)).expect("open the link");
        // The link and its base, reading as the writes made them (checked once, before
        // timing).
        assert_eq!(img.layers().len(), 2, "{name}: the link and its base");
        assert_eq!(img.size(), IMAGE_SIZE);
        assert_same(name, want, &disk_bytes(&img));
        g.bench_function(name, |b| b.iter(|| read_whole(&img, &mut buf)));
    }
    g.finish();
}
