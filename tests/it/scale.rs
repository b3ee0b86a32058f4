//! Costs follow the data, not the disk: a 4 TiB thin disk holding a few MiB is backed up,
//! hashed, diffed, verified, restored, pruned, synced, converted, and made into a chain that
//! is merged, in about the time and memory of a dense disk holding the same bytes, and its
//! repository points cost what they store.
//! Fails if memory, time or repository metadata grow with the virtual size again.

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::common::*;

const MIB: u64 = 1 << 20;
const PIECES: u64 = 8;
const PIECE: u64 = 512 << 10;

/// A disk of `size` bytes holding `PIECES` pieces of random data, spread evenly; `seed`
/// varies one piece (the "changed" version).
fn make_disk(path: &Path, size: u64, changed: bool) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for i in 0..PIECES {
        let at = i * (size / PIECES);
        let seed = if changed && i == 3 { 999 } else { 100 + i };
        f.write_all_at(&pattern(seed, PIECE as usize), at).unwrap();
    }
}

/// Bytes of metadata the repository keeps for its points: everything but the stored grains
/// (the pieces' data), and the number of files.
fn repo_shape(repo: &Path) -> (u64, usize) {
    let mut bytes = 0;
    let mut files = 0;
    for e in std::fs::read_dir(repo).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            let (b, f) = repo_shape(&e.path());
            bytes += b;
            files += f;
        } else {
            bytes += e.metadata().unwrap().len();
            files += 1;
        }
    }
    (bytes, files)
}

struct Costs {
    /// Peak RSS and CPU seconds per command.
    runs: Vec<(String, u64, f64)>,
    repo_bytes: u64,
    repo_files: usize,
}

fn costs(dir: &Path, size: u64) -> Costs {
    make_disk(&dir.join("disk.raw"), size, false);
    make_disk(&dir.join("new.raw"), size, true);
    let commands: Vec<Vec<&str>> = vec![
        vec!["hash", "disk.raw", "-o", "disk.hashes"],
        vec!["diff", "disk.raw", "new.raw"],
        vec!["diff", "disk.hashes", "new.raw"],
        vec!["backup", "disk.raw", "repo"],
        vec!["backup", "new.raw", "repo", "--name", "disk", "--force"],
        vec!["verify", "repo"],
        vec!["restore", "repo", "restored.raw", "--point", "1"],
        vec!["convert", "new.raw", "conv.vmdk", "-O", "vmdk"],
        vec!["prune", "repo", "--keep-last", "1"],
        vec!["sync", "repo", "repo-copy"],
        // A chain: a base, a delta link of what changed, merged into one image.
        vec!["convert", "disk.raw", "base.vmdk", "-O", "vmdk"],
        vec!["diff", "base.vmdk", "new.raw", "--delta", "link.vmdk"],
        vec!["merge", "link.vmdk", "-o", "merged.vmdk"],
    ];
    let runs = vdisk_measured(dir, &commands);
    let mut out = Vec::new();
    for (args, r) in commands.iter().zip(&runs) {
        let want = if args[0] == "diff" { 1 } else { 0 };
        assert_eq!(r.code, Some(want), "{args:?} on a {size}-byte disk: {r:#?}");
        out.push((args.join(" "), r.max_rss, r.cpu.as_secs_f64()));
    }
    // The restored point is the disk.
    assert_same_bytes(&dir.join("disk.raw"), &dir.join("restored.raw"));
    // The chain merged reads as the new disk, and the synced copy verifies.
    vdisk_in(dir, &["convert", "merged.vmdk", "merged.raw"]).expect_code(0, "convert merged");
    assert_same_bytes(&dir.join("new.raw"), &dir.join("merged.raw"));
    vdisk_in(dir, &["verify", "repo-copy"]).expect_code(0, "verify the copy");
    let (repo_bytes, repo_files) = repo_shape(&dir.join("repo"));
    Costs {
        runs: out,
        repo_bytes,
        repo_files,
    }
}

#[test]
fn a_4_tib_thin_disk_costs_what_its_data_costs() {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dense_dir = tempfile::tempdir_in(base).unwrap();
    let thin_dir = tempfile::tempdir_in(base).unwrap();
    // The same pieces: packed into 64 MiB, and spread over 4 TiB (a sparse file).
    let dense = costs(dense_dir.path(), 64 * MIB);
    let thin = costs(thin_dir.path(), 4 << 40);
    for ((cmd, rss_d, cpu_d), (_, rss_t, cpu_t)) in dense.runs.iter().zip(&thin.runs) {
        eprintln!(
            "{cmd}: dense {} MiB {cpu_d:.2} s, thin {} MiB {cpu_t:.2} s",
            rss_d >> 20,
            rss_t >> 20
        );
        assert!(
            *rss_t < 256 * MIB,
            "{cmd}: {} MiB resident on 4 TiB",
            rss_t >> 20
        );
        assert!(
            *rss_t <= rss_d + 32 * MIB,
            "{cmd}: {} MiB resident on 4 TiB, {} MiB on 64 MiB of the same data",
            rss_t >> 20,
            rss_d >> 20
        );
        assert!(
            *cpu_t <= 2.0 * cpu_d + 1.0,
            "{cmd}: {cpu_t:.2} s of CPU on 4 TiB, {cpu_d:.2} s on 64 MiB of the same data"
        );
    }
    eprintln!(
        "repository: dense {} bytes in {} files, thin {} bytes in {} files",
        dense.repo_bytes, dense.repo_files, thin.repo_bytes, thin.repo_files
    );
    // One point of 4 MiB of data is left after the prune: its metadata must not grow with
    // the disk (a few hundred bytes per cluster of data and per gap is the whole cost).
    assert!(
        thin.repo_bytes <= dense.repo_bytes + 256 * 1024,
        "thin repository {} bytes, dense {}",
        thin.repo_bytes,
        dense.repo_bytes
    );
    assert!(
        thin.repo_files <= dense.repo_files + 2 * PIECES as usize + 2,
        "thin repository {} files, dense {}",
        thin.repo_files,
        dense.repo_files
    );
}
