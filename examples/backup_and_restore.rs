//! Keep restore points of a disk in a backup repository, check them, and restore each one.
//!
//! `cargo run --example backup_and_restore`: turns the fixture chain's `top.vmdk` into a
//! working disk in a temporary folder, backs it up into a (layout-3) repository as points of
//! the NAME `disk`, changes it, backs it up again, lists and verifies the repository, then
//! restores both points and compares each with the disk as it was when it was backed up.
//! Exits non-zero if anything differs.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::ExitCode;

use vdisk::DiskImage;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("backup_and_restore: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The whole disk of the image at `path`.
fn read_disk(path: &Path) -> vdisk::Result<Vec<u8>> {
    let img = vdisk::open(path)?;
    let mut disk = vec![0u8; img.size() as usize];
    img.read_at(&mut disk, 0)?;
    Ok(disk)
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/chain/top.vmdk");
    let tmp = tempfile::tempdir()?;
    let disk = tmp.path().join("disk.raw");
    let repo = tmp.path().join("repo");

    // The disk being backed up: a raw copy of the fixture chain, which we can change.
    let raw = vdisk::output_format(&disk, None)?;
    vdisk::convert(&vdisk::open(&top)?, &disk, raw, &Default::default())?;
    let mut states = vec![read_disk(&disk)?];

    // 1. A full point: every block that holds data, stored once each (the repository is
    //    made by this first backup).
    let first = vdisk::backup(&disk, &repo)?;
    println!(
        "point {}: {}, {} bytes read, {} bytes stored",
        first.point,
        first.kind.name(),
        first.bytes_read,
        first.bytes_added
    );

    // 2. The disk changes (one 64 KiB block rewritten), and an incremental point keeps the
    //    change: the blocks whose fingerprints did not change keep the first point's entries.
    let file = std::fs::OpenOptions::new().write(true).open(&disk)?;
    file.write_all_at(b"changed after the first backup", 70_000)?;
    drop(file);
    states.push(read_disk(&disk)?);
    let second = vdisk::backup(&disk, &repo)?;
    println!(
        "point {}: {}, {} bytes read, {} bytes stored",
        second.point,
        second.kind.name(),
        second.bytes_read,
        second.bytes_added
    );

    // 3. The points, as `vdisk list` shows them.
    let repository = vdisk::Repository::open(&repo, &Default::default())?;
    let list = repository.points()?;
    for p in &list.points {
        let r = &p.record;
        println!(
            "  {} point {} {:<11} {} {:>7} bytes, {:>7} of data, {:>4} stored in {} blob(s)",
            r.name,
            r.seq,
            if r.parent.is_some() {
                "incremental"
            } else {
                "full"
            },
            r.time,
            r.logical_bytes(),
            r.data_bytes(),
            r.stats.added_bytes,
            r.stats.added_blobs
        );
    }
    // The second point adds two blobs: the changed block, and the disk's index (one chunk
    // for a disk of up to 1024 blocks) that now names it.
    let points = list.of("disk");
    if points.len() != 2
        || points[1].record.parent != Some(1)
        || points[1].record.stats.added_blobs != 2
        || second.blobs_added != 2
    {
        return Err(
            "expected two points, the second storing one changed block (and its index)".into(),
        );
    }

    // 4. Verify: every block and every chunk of the index, opened and checked against its id.
    let reports = vdisk::verify(&repo)?;
    if reports.len() != 2 {
        return Err(format!("verify reported on {} points, not 2", reports.len()).into());
    }
    for report in reports {
        println!(
            "verify {} point {}: {}",
            report.name,
            report.point,
            if report.sound() { "ok" } else { "DAMAGED" }
        );
        if !report.sound() {
            return Err(format!("point {} is damaged: {:?}", report.point, report.problems).into());
        }
    }

    // 5. Restore each point and compare with the disk as it was at that backup.
    for (n, want) in (1u64..).zip(&states) {
        let out = tmp.path().join(format!("restored-{n}.raw"));
        vdisk::restore(&repo, Some(n), &out)?;
        let got = std::fs::read(&out)?;
        if &got != want {
            return Err(format!("point {n} does not restore to the disk it backed up").into());
        }
        println!("restore point {n}: {} bytes, identical", got.len());
    }
    if states[0] == states[1] {
        return Err("the change was not written".into());
    }
    println!("ok: both points restore to the disk as it was backed up");
    Ok(())
}
