//! Make ESXi snapshot images (SEsparse and COWD extents with their descriptors) for the
//! benchmarks and the fuzz seeds. No tool on a test machine writes these formats; this one
//! uses `vdisk::vmdk::testing`, whose layout qemu-img reads (tests/it/esx.rs holds every
//! image it makes to `qemu-img convert`).
//!
//! Usage:
//!   make_esx bench DIR SIZE_MIB   DIR/base.vmdk (vmfs, flat), DIR/link.vmdk (seSparse over it)
//!   make_esx seeds DIR            DIR/sesparse/* and DIR/cowd/*: small extent files
//!
//! The bench link, like a snapshot after some hours of guest writes: in each MiB of the disk,
//! with probability 0.30 one run of 64 KiB to 1 MiB of new data, with probability 0.05 a
//! 64 KiB run of zeroed or unmapped grains, otherwise nothing (the base shows through).
//! Regions are visited in a shuffled order, so the grains area holds them in write order, not
//! disk order, as ESXi's files do.

use std::path::Path;
use std::process::ExitCode;

use vdisk::vmdk::testing::{esx_descriptor, CowdWriter, EsxGrain, SeSparseWriter};

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

fn bench(dir: &Path, size: u64) -> std::io::Result<()> {
    use std::io::Write;
    const GRAIN: u64 = 4096;
    const REGION: u64 = 1 << 20;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // The base: every byte written, as a thick-provisioned flat disk.
    let mut base = std::io::BufWriter::with_capacity(
        8 << 20,
        std::fs::File::create(dir.join("base-flat.vmdk"))?,
    );
    let mut chunk = vec![0u8; 8 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        rng.fill(&mut chunk[..n]);
        base.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    base.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    let base_cid = 0x0ba5_e001;
    std::fs::write(
        dir.join("base.vmdk"),
        esx_descriptor(
            "vmfs",
            base_cid,
            None,
            &[(size / 512, "VMFS", "base-flat.vmdk")],
        ),
    )?;
    // The link.
    let mut regions: Vec<u64> = (0..size / REGION).collect();
    for i in (1..regions.len()).rev() {
        regions.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut w = SeSparseWriter::create(&dir.join("link-sesparse.vmdk"), size)?;
    let mut grain = vec![0u8; GRAIN as usize];
    let per_region = REGION / GRAIN;
    for r in regions {
        let first = r * per_region;
        let roll = rng.below(100);
        if roll < 30 {
            let len = 16 + rng.below(per_region - 16 + 1); // 64 KiB to 1 MiB
            let start = first + rng.below(per_region - len + 1);
            for g in start..start + len {
                rng.fill(&mut grain);
                w.put(g, EsxGrain::Data(&grain))?;
            }
        } else if roll < 35 {
            let start = first + rng.below(per_region - 16 + 1);
            let what = if roll.is_multiple_of(2) {
                EsxGrain::Zero
            } else {
                EsxGrain::Unmapped
            };
            for g in start..start + 16 {
                w.put(g, what)?;
            }
        }
    }
    w.finish()?;
    std::fs::write(
        dir.join("link.vmdk"),
        esx_descriptor(
            "seSparse",
            0x5e5e_0001,
            Some((base_cid, "base.vmdk")),
            &[(size / 512, "SESPARSE", "link-sesparse.vmdk")],
        ),
    )?;
    Ok(())
}

/// Small extent files of every shape the readers know, one per file: the fuzz seeds of the
/// `sesparse` and `cowd` targets.
fn seeds(dir: &Path) -> std::io::Result<()> {
    let se = dir.join("sesparse");
    let cw = dir.join("cowd");
    std::fs::create_dir_all(&se)?;
    std::fs::create_dir_all(&cw)?;
    let mut rng = Rng(42);
    let mut data = vec![0u8; 4096];
    rng.fill(&mut data);
    let d = EsxGrain::Data(&data);
    type SeSeed<'a> = (&'a str, u64, Vec<(u64, EsxGrain<'a>)>);
    let se_seeds: Vec<SeSeed> = vec![
        ("empty", 1 << 20, vec![]),
        (
            "kinds",
            1 << 20,
            vec![
                (0, d),
                (1, EsxGrain::Zero),
                (2, EsxGrain::Unmapped),
                (5, d),
                (6, d),
                (255, d),
            ],
        ),
        // Two tables, the second numbered first; a capacity that ends inside a grain.
        (
            "two-tables",
            (16 << 20) + 2560,
            vec![(4096, d), (4097, EsxGrain::Zero), (3, d), (4095, d)],
        ),
        (
            "bad-entries",
            1 << 20,
            vec![
                (0, EsxGrain::Raw(0x7000_0000_0000_0000)),
                (1, EsxGrain::Raw(5)),
                (2, EsxGrain::Raw(0x3000_0000_00ff_ffff)),
                (3, d),
            ],
        ),
    ];
    for (name, capacity, grains) in se_seeds {
        let mut w = SeSparseWriter::create(&se.join(name), capacity)?;
        for (g, what) in grains {
            w.put(g, what)?;
        }
        w.finish()?;
    }
    type CowdSeed<'a> = (&'a str, u64, u32, Vec<(u64, EsxGrain<'a>)>);
    let cowd_seeds: Vec<CowdSeed> = vec![
        ("empty", 1 << 20, 1, vec![]),
        (
            "kinds",
            1 << 20,
            1,
            vec![(0, d), (1, d), (2, EsxGrain::Zero), (100, d)],
        ),
        (
            "grain-8-two-tables",
            (17 << 20) + 1536,
            8,
            vec![(0, d), (4096, d), (4097, EsxGrain::Zero), (4300, d)],
        ),
        (
            "bad-entries",
            1 << 20,
            1,
            vec![
                (0, EsxGrain::Raw(2)),
                (1, EsxGrain::Raw(0xffff_ffff)),
                (2, d),
            ],
        ),
    ];
    for (name, capacity, grain_sectors, grains) in cowd_seeds {
        let mut w = CowdWriter::create(&cw.join(name), capacity, grain_sectors, "parent.vmdk")?;
        for (g, what) in grains {
            w.put(g, what)?;
        }
        w.finish()?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["bench", dir, mib] => match mib.parse::<u64>() {
            Ok(m) if m > 0 => bench(Path::new(dir), m << 20),
            _ => {
                eprintln!("make_esx: SIZE_MIB must be a positive number of MiB");
                return ExitCode::from(2);
            }
        },
        ["seeds", dir] => seeds(Path::new(dir)),
        _ => {
            eprintln!("usage: make_esx bench DIR SIZE_MIB | make_esx seeds DIR");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("make_esx: {e}");
            ExitCode::FAILURE
        }
    }
}
