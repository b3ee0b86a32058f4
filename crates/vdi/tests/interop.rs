//! Interoperability with qemu-img 10: VDI images qemu makes (dynamic and static) read back
//! byte for byte, their maps agree with what they hold, and their metadata checks clean.

use std::path::Path;
use std::process::Command;

use vdisk_core::{for_each_extent, Allocation, DiskImage};
use vdisk_io::Layer;
use vdisk_vdi::{ImageType, VdiImage};

fn have_qemu() -> bool {
    let ok = ["qemu-img", "qemu-io"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ok {
        eprintln!("note: qemu-img or qemu-io is missing; skipping the qemu interop test");
    }
    ok
}

fn run(dir: &Path, prog: &str, args: &[&str]) {
    let out = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{prog} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn qemu_raw(dir: &Path, img: &str) -> Vec<u8> {
    run(
        dir,
        "qemu-img",
        &["convert", "-f", "vdi", "-O", "raw", img, "out.raw"],
    );
    std::fs::read(dir.join("out.raw")).unwrap()
}

fn assert_same(img: &VdiImage, qemu: &[u8], what: &str) {
    assert_eq!(img.size(), qemu.len() as u64, "{what}");
    for piece in [1usize << 20, 4096 + 512, 3 << 20] {
        let mut ours = vec![0u8; qemu.len()];
        for (i, c) in ours.chunks_mut(piece).enumerate() {
            img.read_at(c, (i * piece) as u64).unwrap();
        }
        assert!(ours == qemu, "{what}: read in {piece}-byte pieces");
    }
    let mut pos = 0;
    for_each_extent(img, |e| {
        assert_eq!(e.start, pos);
        pos = e.end();
        if e.allocation != Allocation::Data {
            assert!(
                qemu[e.start as usize..e.end() as usize]
                    .iter()
                    .all(|&b| b == 0),
                "{what}: {e:?}"
            );
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(pos, img.size());
    assert!(img.check().is_empty(), "{what}: {:?}", img.check());
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            if (i / 4096) % 3 == 2 {
                0
            } else {
                (i * 7 + i / 4096) as u8 | 1
            }
        })
        .collect()
}

#[test]
fn qemu_vdi_images_read_back_byte_for_byte() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let writes = [
        "write -P 0x31 0 200k",
        "write -P 0x32 3M 4k",
        "write -P 0x33 1023k 2k",
        "write -z 5M 64k",
        "write -P 0x34 6M 1M",
    ];
    for (name, opts) in [("dyn.vdi", "static=off"), ("static.vdi", "static=on")] {
        run(
            d,
            "qemu-img",
            &["create", "-q", "-f", "vdi", "-o", opts, name, "10M"],
        );
        let mut args = vec!["-f", "vdi"];
        for w in &writes {
            args.extend(["-c", w]);
        }
        args.push(name);
        run(d, "qemu-io", &args);
        let img = VdiImage::open(&d.join(name)).unwrap();
        let expect = if opts == "static=on" {
            ImageType::Static
        } else {
            ImageType::Dynamic
        };
        assert_eq!(img.header().image_type, expect);
        assert_same(&img, &qemu_raw(d, name), name);
    }
    // A static image nobody wrote to is one hole: its map says so (but for the data that
    // shares the file's first 4 KiB with the header), fast.
    run(
        d,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vdi",
            "-o",
            "static=on",
            "empty.vdi",
            "64M",
        ],
    );
    let img = VdiImage::open(&d.join("empty.vdi")).unwrap();
    let map = img.allocation(0, img.size()).unwrap();
    assert!(map.len() <= 2, "{map:?}");
    assert_eq!(map.last().unwrap().allocation, Allocation::Zero);
    assert!(map.last().unwrap().start <= 4096);
}

#[test]
fn qemu_converted_images_of_odd_sizes_read_back() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for len in [(3 << 20) + 12800, 5 << 20, 512] {
        let data = pattern(len);
        std::fs::write(d.join("src.raw"), &data).unwrap();
        for opts in ["static=off", "static=on"] {
            let _ = std::fs::remove_file(d.join("c.vdi"));
            run(
                d,
                "qemu-img",
                &[
                    "convert", "-f", "raw", "-O", "vdi", "-o", opts, "src.raw", "c.vdi",
                ],
            );
            let img = VdiImage::open(&d.join("c.vdi")).unwrap();
            let qemu = qemu_raw(d, "c.vdi");
            assert_eq!(&qemu[..len], &data[..]);
            assert_same(&img, &qemu, &format!("{len} {opts}"));
        }
    }
}

#[test]
fn discarded_blocks_read_as_zero_and_map_as_zero() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run(d, "qemu-img", &["create", "-q", "-f", "vdi", "x.vdi", "4M"]);
    run(
        d,
        "qemu-io",
        &["-f", "vdi", "-c", "write -P 0x61 0 4M", "x.vdi"],
    );
    // Mark block 1 discarded (0xfffffffe) and fix the allocated count.
    let mut bytes = std::fs::read(d.join("x.vdi")).unwrap();
    bytes[0x204..0x208].copy_from_slice(&0xffff_fffeu32.to_le_bytes());
    bytes[0x184..0x188].copy_from_slice(&3u32.to_le_bytes());
    std::fs::write(d.join("x.vdi"), &bytes).unwrap();
    let img = VdiImage::open(&d.join("x.vdi")).unwrap();
    let qemu = qemu_raw(d, "x.vdi");
    assert!(qemu[1 << 20..2 << 20].iter().all(|&b| b == 0));
    assert_same(&img, &qemu, "discarded");
    let map = img.allocation(1 << 20, 1 << 20).unwrap();
    assert_eq!(map[0].allocation, Allocation::Zero);
}
