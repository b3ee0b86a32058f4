//! Bench inputs, made with qemu-img and qemu-io in a temporary folder, and what the benches
//! share: whole-image reads in 4 MiB chunks, output comparison, the disk the repositories'
//! points are of, and the filter check that lets an area skip an expensive set-up when the
//! command line's filter leaves it out.

use std::cell::OnceCell;
use std::collections::HashSet;
use std::fs::File;
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;
use vdisk::chain::{DiskSource, InitOptions};
use vdisk::{BackupOptions, DiskImage, Repository, Source};

pub const MIB: u64 = 1 << 20;
/// Virtual size of the images read and converted whole.
pub const IMAGE_SIZE: u64 = 64 * MIB;
/// Virtual size of the image used for grain lookups (262144 grains of 64 KiB).
pub const LOOKUP_SIZE: u64 = 16 << 30;
/// Block size of hashes, changed-block maps and repository points (a repository's default).
pub const BLOCK: u64 = 64 << 10;
/// The NAME the repositories of the benches keep their points under.
pub const NAME: &str = "mixed";
/// Bytes per `read_at` call in the whole-image reads: the chunk `copy_into` reads with.
pub const CHUNK: usize = 4 << 20;

/// The images every bench uses; the folder goes away when this is dropped.
pub struct Fixtures {
    dir: TempDir,
    /// A 64 MiB raw disk, about half data (random, log-like text, repeating records) and half
    /// holes, the source of the two VMDKs.
    pub raw: PathBuf,
    /// `raw` as a monolithicSparse VMDK.
    pub sparse: PathBuf,
    /// `raw` as a streamOptimized VMDK (deflated grains).
    pub stream: PathBuf,
    /// A 16 GiB monolithicSparse VMDK with grains written at scattered offsets, for lookups.
    pub lookup: PathBuf,
    /// `raw` with one byte flipped in 1% of its 64 KiB blocks (every hundredth block, some
    /// of them holes in `raw`): the "new" disk of diffs and incremental backups.
    pub changed: PathBuf,
    /// The blocks `changed` differs in (block numbers, 64 KiB each).
    pub changed_blocks: Vec<u64>,
    /// A repository with two points of [`NAME`], made on first use by
    /// [`Fixtures::repository`].
    repo: OnceCell<PathBuf>,
}

impl Fixtures {
    /// Make the images, or say why they cannot be made.
    pub fn create() -> Result<Self, String> {
        for tool in ["qemu-img", "qemu-io"] {
            match Command::new(tool).arg("--version").output() {
                Ok(o) if o.status.success() => {}
                _ => return Err(format!("{tool} is not installed (or does not run)")),
            }
        }
        let dir =
            tempfile::tempdir().map_err(|e| format!("cannot make a temporary folder: {e}"))?;
        let raw = dir.path().join("mixed.raw");
        write_mixed_raw(&raw, IMAGE_SIZE).map_err(|e| format!("cannot write {raw:?}: {e}"))?;
        let sparse = dir.path().join("mixed-sparse.vmdk");
        let stream = dir.path().join("mixed-stream.vmdk");
        for (dst, sub) in [(&sparse, "monolithicSparse"), (&stream, "streamOptimized")] {
            run(Command::new("qemu-img")
                .args(["convert", "-q", "-f", "raw", "-O", "vmdk", "-o"])
                .arg(format!("subformat={sub}"))
                .arg(&raw)
                .arg(dst))?;
        }
        let lookup = dir.path().join("lookup.vmdk");
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "vmdk"])
            .arg(&lookup)
            .arg(LOOKUP_SIZE.to_string()))?;
        // One 64 KiB grain every 7 MiB + 192 KiB: scattered over every grain table.
        let mut io = Command::new("qemu-io");
        io.args(["-f", "vmdk"]);
        let step = 7 * MIB + 192 * 1024;
        let mut off = 0;
        let mut n = 0u32;
        while off + 65536 <= LOOKUP_SIZE {
            io.arg("-c")
                .arg(format!("write -q -P {} {off} 64k", 1 + n % 250));
            off += step;
            n += 1;
        }
        run(io.arg(&lookup))?;
        let changed = dir.path().join("changed.raw");
        let changed_blocks =
            write_changed(&raw, &changed).map_err(|e| format!("cannot write {changed:?}: {e}"))?;
        Ok(Fixtures {
            dir,
            raw,
            sparse,
            stream,
            lookup,
            changed,
            changed_blocks,
            repo: OnceCell::new(),
        })
    }

    /// The disk of the repositories' points: `img` (`raw` or `changed`, two states of one
    /// disk) under the identity and label the points of [`NAME`] know it by.
    pub fn disk(img: &dyn DiskImage) -> DiskSource<'_> {
        DiskSource {
            image: img,
            source: Source {
                identity: "bench/mixed.raw".into(),
                unclean: false,
            },
            label: "mixed.raw".into(),
        }
    }

    /// Back up `img` as the next point of [`NAME`] into the repository at `repo` (made, if
    /// missing, unencrypted with 64 KiB blocks).
    pub fn backup(
        repo: impl Into<vdisk::Location>,
        img: &dyn DiskImage,
        opts: &BackupOptions<'_>,
    ) -> vdisk::BackupSummary {
        Repository::open_or_init(repo, &Default::default())
            .expect("open the repository")
            .backup(NAME, &[Self::disk(img)], opts)
            .expect("back up")
    }

    /// Blobs an incremental point of `changed` adds to a repository holding a point of
    /// `raw`: each distinct content of the changed blocks that `raw` does not hold (a block
    /// is stored once however many disks, points or places hold it: the changed blocks that
    /// were holes in `raw` are all alike), and the disk's index, one chunk (a leaf holds
    /// 1024 blocks: the whole 64 MiB disk).
    pub fn incremental_blobs(&self) -> u64 {
        const _: () = assert!(IMAGE_SIZE / BLOCK <= 1024, "the disk's index is one chunk");
        let raw = std::fs::read(&self.raw).expect("read the disk");
        let changed = std::fs::read(&self.changed).expect("read the changed disk");
        let had: HashSet<&[u8]> = raw.chunks(BLOCK as usize).collect();
        let new: HashSet<&[u8]> = self
            .changed_blocks
            .iter()
            .map(|&b| &changed[(b * BLOCK) as usize..((b + 1) * BLOCK) as usize])
            .filter(|blk| blk.iter().any(|&x| x != 0) && !had.contains(blk))
            .collect();
        new.len() as u64 + 1
    }

    /// A folder repository holding a full point of `raw` and a hash-based incremental
    /// point of `changed` (1% of its blocks), made on first use.
    pub fn repository(&self) -> &Path {
        self.repo.get_or_init(|| {
            let repo = self.dir().join("repo-two-points");
            let r = Repository::init(&repo, &InitOptions::default()).expect("a fresh repository");
            for path in [&self.raw, &self.changed] {
                let img = vdisk::open(path).expect("open the disk");
                r.backup(NAME, &[Self::disk(&img)], &BackupOptions::default())
                    .expect("back up the disk");
            }
            let list = r.points().expect("the points");
            let points = list.of(NAME);
            assert_eq!(points.len(), 2);
            assert_eq!(
                points[1].record.stats.added_blobs,
                self.incremental_blobs(),
                "the incremental point stores the changed blocks and its index"
            );
            repo
        })
    }

    /// The temporary folder (for outputs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A copy of `src` at `dst` with one byte flipped in every hundredth 64 KiB block (1%);
/// returns the blocks changed.
fn write_changed(src: &Path, dst: &Path) -> std::io::Result<Vec<u64>> {
    std::fs::copy(src, dst)?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dst)?;
    let blocks = f.metadata()?.len() / BLOCK;
    let changed: Vec<u64> = (0..blocks).step_by(100).collect();
    for &b in &changed {
        let at = b * BLOCK + 4097;
        let mut byte = [0u8];
        f.read_exact_at(&mut byte, at)?;
        f.write_all_at(&[byte[0] ^ 0xa5], at)?;
    }
    f.sync_all()?;
    Ok(changed)
}

/// Read the whole of `img` through `read_at` in chunks of `buf`'s length, on one thread;
/// returns the bytes read.
pub fn read_whole(img: &dyn DiskImage, buf: &mut [u8]) -> u64 {
    let size = img.size();
    let mut off = 0;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        img.read_at(&mut buf[..n], off).expect("read");
        black_box(&buf[..n]);
        off += n as u64;
    }
    size
}

/// The whole disk of `img`, read in 4 MiB chunks.
pub fn disk_bytes(img: &dyn DiskImage) -> Vec<u8> {
    let mut disk = vec![0u8; img.size() as usize];
    for (i, chunk) in disk.chunks_mut(CHUNK).enumerate() {
        img.read_at(chunk, (i * CHUNK) as u64).expect("read");
    }
    disk
}

/// Copy the folder `src` (files and folders in it) to `dst`, which must not exist.
pub fn copy_dir(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let to = dst.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &to)?;
        } else {
            std::fs::copy(entry.path(), to)?;
        }
    }
    Ok(())
}

/// Panic unless `have` is `want`, naming the first differing byte.
pub fn assert_same(what: &str, want: &[u8], have: &[u8]) {
    if want != have {
        let at = want.iter().zip(have).position(|(a, b)| a != b);
        panic!(
            "{what}: differs from what it should hold ({} bytes against {}, first difference at {at:?})",
            have.len(),
            want.len()
        );
    }
}

/// Whether the command line's filter can select a benchmark whose id contains one of
/// `names`: true without a filter, and whenever the filter is not a plain word (Criterion
/// takes it as a regular expression; this only rules out the obvious misses). Areas whose
/// set-up is expensive (starting a server) skip it when this says no.
pub fn selected(names: &[&str]) -> bool {
    // Criterion's options that take a value: the value is not a filter.
    const WITH_VALUE: [&str; 16] = [
        "--save-baseline",
        "-s",
        "--baseline",
        "-b",
        "--baseline-lenient",
        "--load-baseline",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--profile-time",
        "--plotting-backend",
        "--output-format",
    ];
    let mut args = std::env::args().skip(1);
    let mut filter = None;
    while let Some(a) = args.next() {
        if WITH_VALUE.contains(&a.as_str()) || a == "--color" || a == "-c" || a == "--format" {
            args.next();
        } else if !a.starts_with('-') {
            filter = Some(a);
        }
    }
    match filter {
        None => true,
        Some(f)
            if f.chars()
                .any(|c| !(c.is_alphanumeric() || "_-/ ".contains(c))) =>
        {
            true
        }
        Some(f) => names.iter().any(|n| n.contains(&f) || f.contains(n)),
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// xorshift64*: reproducible filler, fast enough that making the inputs takes no time.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Incompressible bytes.
fn fill_random(rng: &mut Rng, buf: &mut [u8]) {
    for c in buf.chunks_mut(8) {
        let v = rng.next().to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
}

/// Log-like lines: compress about 3-4x, like text files and logs on a real disk.
fn fill_text(rng: &mut Rng, buf: &mut [u8]) {
    const PATHS: [&str; 6] = [
        "/api/v1/items",
        "/api/v1/users",
        "/static/app.js",
        "/healthz",
        "/api/v2/orders",
        "/login",
    ];
    const STATUS: [u32; 5] = [200, 200, 200, 404, 500];
    let mut text = String::with_capacity(buf.len() + 200);
    while text.len() < buf.len() {
        let t = rng.next();
        text.push_str(&format!(
            "2024-05-{:02}T{:02}:{:02}:{:02}.{:03}Z host{:02} nginx[{}]: GET {}/{} status={} bytes={} rt={}ms\n",
            1 + t % 28,
            (t >> 5) % 24,
            (t >> 10) % 60,
            (t >> 16) % 60,
            (t >> 22) % 1000,
            (t >> 32) % 16,
            1000 + (t >> 36) % 9000,
            PATHS[rng.below(PATHS.len() as u64) as usize],
            rng.below(100_000),
            STATUS[rng.below(STATUS.len() as u64) as usize],
            rng.below(1 << 20),
            rng.below(2000),
        ));
    }
    buf.copy_from_slice(&text.as_bytes()[..buf.len()]);
}

/// Fixed-size records with a counter: compress very well (tables, zero-padded structures).
fn fill_records(seed: u64, buf: &mut [u8]) {
    for (i, rec) in buf.chunks_mut(64).enumerate() {
        let mut r = [0u8; 64];
        r[..8].copy_from_slice(&(seed + i as u64).to_le_bytes());
        r[8..16].copy_from_slice(b"RECORD01");
        r[16..24].copy_from_slice(&((i as u64) * 4096).to_le_bytes());
        let n = rec.len();
        rec.copy_from_slice(&r[..n]);
    }
}

/// A raw disk of `size` bytes in 1 MiB blocks, cycling through: random, text, hole, random,
/// records, hole, 96 KiB of text then zeros (a partly filled grain), hole. About half the disk
/// holds data.
fn write_mixed_raw(path: &Path, size: u64) -> std::io::Result<()> {
    let f = File::create(path)?;
    f.set_len(size)?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![0u8; MIB as usize];
    for block in 0..size / MIB {
        let off = block * MIB;
        match block % 8 {
            0 | 3 => fill_random(&mut rng, &mut buf),
            1 => fill_text(&mut rng, &mut buf),
            4 => fill_records(block << 20, &mut buf),
            6 => {
                let part = 96 * 1024;
                fill_text(&mut rng, &mut buf[..part]);
                f.write_all_at(&buf[..part], off)?;
                continue;
            }
            _ => continue,
        }
        f.write_all_at(&buf, off)?;
    }
    f.sync_all()
}
