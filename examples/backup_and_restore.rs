//! Keep restore points of a disk in a backup repository, check them, and restore each one.
//!
//! `cargo run --example backup_and_restore`: turns the fixture chain's `top.vmdk` into a
//! working disk in a temporary folder, backs it up, changes it, backs it up again, lists and
//! verifies the repository, then restores both points and compares each with the disk as it
//! was when it was backed up. Exits non-zero if anything differs.

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

    // 1. A full point.
    let first = vdisk::backup(&disk, &repo)?;
    println!(
        "point {}: {}, {} bytes read",
        first.point,
        first.kind.name(),
        first.bytes_read
    );

    // 2. The disk changes (one grain rewritten), and an incremental point keeps the change.
    let file = std::fs::OpenOptions::new().write(true).open(&disk)?;
    file.write_all_at(b"changed after the first backup", 70_000)?;
    drop(file);
    states.push(read_disk(&disk)?);
    let second = vdisk::backup(&disk, &repo)?;
    println!(
        "point {}: {}, {} bytes read, {} bytes written",
        second.point,
        second.kind.name(),
        second.bytes_read,
        second.bytes_written
    );

    // 3. The points, as `vdisk list` shows them.
    let repository = vdisk::Repository::open(&repo)?;
    for p in repository.points() {
        println!(
            "  {} {:<11} {} {:>7} bytes, {:>6} stored  {}",
            p.point,
            p.kind.name(),
            p.created,
            p.size,
            p.changed_bytes,
            p.image
        );
    }
    if repository.points().len() != 2 || repository.points()[1].changed_bytes != 64 << 10 {
        return Err("expected two points, the second storing one 64 KiB grain".into());
    }

    // 4. Verify: every stored grain against the hash kept at backup time.
    for report in vdisk::verify(&repo)? {
        println!(
            "verify point {}: {}",
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
