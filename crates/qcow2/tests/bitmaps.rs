//! QEMU's persistent dirty bitmaps: made with `qemu-img bitmap`, written to by `qemu-io`
//! (an enabled bitmap records writes made while QEMU has the image open).

mod common;

use common::*;
use vdisk_core::ErrorKind;
use vdisk_io::Layer;

fn ranges(img: &dyn Layer, name: &str) -> vdisk_core::Result<(u64, Vec<(u64, u64)>)> {
    let mut v = Vec::new();
    let g = img.read_bitmap(name, &mut |o, l| {
        v.push((o, l));
        Ok(())
    })?;
    Ok((g, v))
}

#[test]
fn bitmaps_record_what_qemu_wrote() {
    if !have_qemu() {
        return;
    }
    let d = tempdir();
    let dir = d.path();
    let size = (64 << 20) + 512;
    qemu_img(
        dir,
        &["create", "-f", "qcow2", "b.qcow2", &size.to_string()],
    );
    qemu_img(dir, &["bitmap", "--add", "b.qcow2", "b0"]);
    qemu_img(dir, &["bitmap", "--add", "--disable", "b.qcow2", "off"]);
    qemu_img(dir, &["bitmap", "--add", "-g", "4096", "b.qcow2", "fine"]);
    qemu_img(dir, &["bitmap", "--add", "-g", "2M", "b.qcow2", "coarse"]);
    qemu_io(
        dir,
        "b.qcow2",
        &[
            "write -P 1 0 64k",
            "write -P 2 1M 128k",
            "write 8200k 4k",
            "write -z 32M 1M",
            "write 64M 512",
        ],
    );
    let img = open(dir, "b.qcow2").unwrap();
    let list = img.bitmaps();
    let names: Vec<_> = list.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["b0", "off", "fine", "coarse"]);
    assert!(list[0].enabled && !list[1].enabled);
    assert!(list.iter().all(|b| !b.in_use));
    assert_eq!(list[2].granularity, 4096);

    let (g, r) = ranges(&img, "b0").unwrap();
    assert_eq!(g, 65536);
    assert_eq!(
        r,
        [
            (0, 65536),
            (1 << 20, 128 << 10),
            (8192 << 10, 65536), // 8200k rounds down to a 64 KiB bit
            (32 << 20, 1 << 20),
            (64 << 20, 512), // clipped at the end of the disk
        ]
    );
    let (_, r) = ranges(&img, "fine").unwrap();
    assert_eq!(r[2], (8200 << 10, 4096));
    let (_, r) = ranges(&img, "coarse").unwrap();
    assert_eq!(r[0], (0, 2 << 20));
    assert!(ranges(&img, "off").unwrap().1.is_empty());

    // Info lists them as qemu-img does.
    let info = img.info();
    assert_eq!(info.fields["bitmaps"][0]["name"], "b0");
    assert_eq!(info.fields["bitmaps"][0]["flags"][0], "auto");

    // A missing name: refused, naming those there are.
    let e = ranges(&img, "nope").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("b0, off, fine, coarse"), "{e}");

    // Merged with qemu-img: the union.
    qemu_img(dir, &["bitmap", "--add", "b.qcow2", "sum"]);
    qemu_img(dir, &["bitmap", "--merge", "fine", "b.qcow2", "sum"]);
    let img = open(dir, "b.qcow2").unwrap();
    let (g, r) = ranges(&img, "sum").unwrap();
    assert_eq!(g, 65536);
    assert_eq!(r[2], (8192 << 10, 65536));
    assert!(img.check().is_empty(), "{:?}", img.check());
}

#[test]
fn a_bitmap_in_use_is_refused() {
    if !have_qemu() {
        return;
    }
    let d = tempdir();
    let dir = d.path();
    qemu_img(dir, &["create", "-f", "qcow2", "u.qcow2", "16M"]);
    qemu_img(dir, &["bitmap", "--add", "u.qcow2", "live"]);
    // qemu-io aborts with the image open: the bitmap stays marked in use.
    let _ = try_run(
        dir,
        "qemu-io",
        &["-c", "write 0 4k", "-c", "abort", "u.qcow2"],
    );
    let img = open(dir, "u.qcow2").unwrap();
    assert!(img.bitmaps()[0].in_use);
    let e = ranges(&img, "live").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InUse);
    assert!(
        e.to_string().ends_with(
            "u.qcow2: bitmap live is in use: a VM still runs on this image; stop it, or use \
             the NBD export of the running VM"
        ),
        "{e}"
    );
    assert!(img.check().iter().any(|f| f.message.contains("in use")));
}

#[test]
fn all_ones_entries_and_large_disks() {
    if !have_qemu() {
        return;
    }
    let d = tempdir();
    let dir = d.path();
    // A bitmap of 512-byte granularity over 64 MiB: 16 KiB of bits, several data clusters
    // of 4 KiB; the whole disk written marks every bit.
    qemu_img(
        dir,
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            "a.qcow2",
            "64M",
        ],
    );
    qemu_img(dir, &["bitmap", "--add", "-g", "512", "a.qcow2", "all"]);
    qemu_io(dir, "a.qcow2", &["write -z 0 64M", "write 40M 512"]);
    let img = open(dir, "a.qcow2").unwrap();
    let (g, r) = ranges(&img, "all").unwrap();
    assert_eq!(g, 512);
    assert_eq!(r, [(0, 64 << 20)]);
    // Set a table entry to "all ones" by hand (offset 0, bit 0) and clear another to "all
    // zeros": the cluster it replaces reads as all ones / zeros.
    let mut bytes = std::fs::read(dir.join("a.qcow2")).unwrap();
    let ext = find_bitmap_table(&bytes);
    bytes[ext..ext + 8].copy_from_slice(&1u64.to_be_bytes());
    bytes[ext + 8..ext + 16].copy_from_slice(&0u64.to_be_bytes());
    std::fs::write(dir.join("a.qcow2"), &bytes).unwrap();
    let img = open(dir, "a.qcow2").unwrap();
    let (_, r) = ranges(&img, "all").unwrap();
    // One 4 KiB cluster of bits covers 16 MiB at 512 bytes per bit.
    assert_eq!(r, [(0, 16 << 20), (32 << 20, 32 << 20)]);
}

/// The offset of the first bitmap's table, from the bitmaps extension and directory.
fn find_bitmap_table(b: &[u8]) -> usize {
    let u32_at = |o: usize| u32::from_be_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_be_bytes(b[o..o + 8].try_into().unwrap());
    let mut pos = u32_at(100) as usize;
    loop {
        let kind = u32_at(pos);
        let len = u32_at(pos + 4) as usize;
        assert_ne!(kind, 0, "no bitmaps extension");
        if kind == 0x2385_2875 {
            let dir = u64_at(pos + 8 + 16) as usize;
            return u64_at(dir) as usize;
        }
        pos += 8 + len.next_multiple_of(8);
    }
}
