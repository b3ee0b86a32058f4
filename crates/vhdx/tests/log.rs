//! Log replay: a dirty file (a log qemu wrote, not yet applied) reads as the clean one, in
//! memory, without the file changing; a damaged log is refused by name.

mod common;

use std::path::Path;

use common::*;
use vdisk_core::ErrorKind;
use vdisk_io::Layer;
use vdisk_vhdx::RawHeader;

const MIB: usize = 1 << 20;

/// The offset in the file of the header qemu made current (the higher sequence number).
fn current_header(f: &[u8]) -> usize {
    let h1 = RawHeader::parse(&f[64 << 10..]);
    let h2 = RawHeader::parse(&f[128 << 10..]);
    if h1.sequence_number > h2.sequence_number {
        64 << 10
    } else {
        128 << 10
    }
}

/// Make `path` dirty: point its current header at the newest log entry's GUID and undo that
/// entry's first write in the file (as if the crash came before the log was applied).
/// Returns the offset of the undone sector.
fn make_dirty(path: &Path) -> u64 {
    let mut f = std::fs::read(path).unwrap();
    let log = MIB; // qemu puts the log at 1 MiB
    let mut newest: Option<(u64, usize)> = None;
    for pos in (log..log + MIB).step_by(4096) {
        if &f[pos..pos + 4] == b"loge" {
            let seq = u64::from_le_bytes(f[pos + 16..pos + 24].try_into().unwrap());
            if newest.is_none_or(|(s, _)| seq > s) {
                newest = Some((seq, pos));
            }
        }
    }
    let (_, pos) = newest.expect("qemu left no log entry");
    let guid = vdisk_vhdx::Guid::from_slice(&f[pos + 32..pos + 48]);
    // The first descriptor follows the 64-byte entry header.
    let d = pos + 64;
    assert_eq!(&f[d..d + 4], b"desc");
    let target = u64::from_le_bytes(f[d + 16..d + 24].try_into().unwrap());
    let at = current_header(&f);
    let mut h = RawHeader::parse(&f[at..]);
    h.log_guid = guid;
    f[at..at + 4096].copy_from_slice(&h.to_bytes());
    f[target as usize..target as usize + 4096].fill(0);
    std::fs::write(path, &f).unwrap();
    target
}

#[test]
fn a_log_qemu_left_is_replayed_in_memory() {
    if !have_qemu() {
        return;
    }
    let dir = tmp();
    let p = dir.path().join("dirty.vhdx");
    must(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vhdx",
            "-o",
            "block_size=1M",
            s(&p),
            "16M",
        ],
    );
    must(
        "qemu-io",
        &[
            "-f",
            "vhdx",
            "-c",
            "write -P 0x61 0 64k",
            "-c",
            "write -P 0x62 3M 1M",
            "-c",
            "write -P 0x63 9M 4k",
            s(&p),
        ],
    );
    let clean = qemu_raw(&p, "vhdx");
    make_dirty(&p);
    let before = std::fs::read(&p).unwrap();
    // qemu will not read it without writing it.
    let (ok, _, err) = run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "vhdx",
            "-O",
            "raw",
            s(&p),
            s(&dir.path().join("x.raw")),
        ],
    );
    assert!(
        !ok && err.contains("log"),
        "qemu-img read a dirty file: {err}"
    );
    // We read it as it will be once replayed, without touching the file.
    let img = open(&p);
    assert!(img.view().replay.is_some());
    assert!(read_all(&img) == clean, "replayed contents differ");
    assert!(img.info().fields["log"]
        .as_str()
        .unwrap()
        .starts_with("replayed"));
    assert!(img.check().iter().any(|f| f.message.contains("log")));
    drop(img);
    assert!(std::fs::read(&p).unwrap() == before, "the file changed");
    // Without the replay the last block written would read as zero: the log mattered.
    // And qemu's own replay (check -r all, on a copy) agrees with ours.
    let copy = dir.path().join("copy.vhdx");
    std::fs::copy(&p, &copy).unwrap();
    must(
        "qemu-img",
        &["check", "-q", "-r", "all", "-f", "vhdx", s(&copy)],
    );
    assert!(qemu_raw(&copy, "vhdx") == clean);
}

#[test]
fn a_damaged_log_is_refused_by_name() {
    if !have_qemu() {
        return;
    }
    let dir = tmp();
    let p = dir.path().join("bad.vhdx");
    must(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vhdx",
            "-o",
            "block_size=1M",
            s(&p),
            "8M",
        ],
    );
    must(
        "qemu-io",
        &["-f", "vhdx", "-c", "write -P 0x61 2M 64k", s(&p)],
    );
    make_dirty(&p);
    let mut f = std::fs::read(&p).unwrap();
    // Flip a byte of the entry's data sector: its checksum no longer matches.
    f[MIB + 4096 + 100] ^= 0xff;
    std::fs::write(&p, &f).unwrap();
    let e = try_open(&p).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(e.to_string().contains("log"), "{e}");
    assert!(e.to_string().contains("bad.vhdx"), "{e}");
    // A file shorter than the log says it was: truncated.
    let mut f = std::fs::read(&p).unwrap();
    f[MIB + 4096 + 100] ^= 0xff;
    std::fs::write(&p, &f).unwrap();
    assert!(try_open(&p).is_ok());
    let flushed = u64::from_le_bytes(f[MIB + 48..MIB + 56].try_into().unwrap());
    f.truncate(flushed as usize - MIB);
    std::fs::write(&p, &f).unwrap();
    let e = try_open(&p).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
}
