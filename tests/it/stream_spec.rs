//! A streamOptimized image laid out the way VMware writes it (qemu-img does not), built here
//! from the format description: header version 3 with gdOffset = GD_AT_END, compressed grains
//! with markers, GT and GD markers with their tables after the data, a footer marker, the
//! footer (a header copy holding the real gdOffset) and an end-of-stream marker.

use std::io::Write;
use std::path::Path;

use crate::common::*;

const GRAIN: usize = 65536;
const GRAIN_SECTORS: u64 = 128;
const GTES: usize = 512;

fn u32le(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

fn header(capacity: u64, gd_offset: u64) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[0..4].copy_from_slice(b"KDMV");
    h[4..8].copy_from_slice(&u32le(3));
    h[8..12].copy_from_slice(&u32le(0x3_0001)); // newline test, compressed, markers
    h[12..20].copy_from_slice(&capacity.to_le_bytes());
    h[20..28].copy_from_slice(&GRAIN_SECTORS.to_le_bytes());
    h[28..36].copy_from_slice(&1u64.to_le_bytes()); // descriptor at sector 1
    h[36..44].copy_from_slice(&2u64.to_le_bytes()); // two sectors long
    h[44..48].copy_from_slice(&u32le(GTES as u32));
    h[48..56].copy_from_slice(&0u64.to_le_bytes()); // no redundant directory
    h[56..64].copy_from_slice(&gd_offset.to_le_bytes());
    h[64..72].copy_from_slice(&128u64.to_le_bytes()); // overhead: grains start at sector 128
    h[73..77].copy_from_slice(b"\n \r\n");
    h[77..79].copy_from_slice(&1u16.to_le_bytes()); // deflate
    h
}

fn pad(out: &mut Vec<u8>) {
    let r = out.len() % 512;
    if r != 0 {
        out.resize(out.len() + 512 - r, 0);
    }
}

fn meta_marker(out: &mut Vec<u8>, value: u64, kind: u32) {
    let mut m = vec![0u8; 512];
    m[0..8].copy_from_slice(&value.to_le_bytes());
    m[12..16].copy_from_slice(&u32le(kind));
    out.extend_from_slice(&m);
}

/// Build the stream for `disk` (its length a multiple of 512); all-zero grains are left out.
pub(crate) fn vmware_stream(disk: &[u8]) -> Vec<u8> {
    let capacity = disk.len() as u64 / 512;
    let grains = disk.len().div_ceil(GRAIN);
    let tables = grains.div_ceil(GTES);
    let mut out = header(capacity, u64::MAX);
    let desc = format!(
        "# Disk DescriptorFile\nversion=1\nCID=3a5c7e91\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n\n\
         RW {capacity} SPARSE \"vmware.vmdk\"\n\nddb.adapterType = \"lsilogic\"\nddb.virtualHWVersion = \"4\"\n"
    );
    out.extend_from_slice(desc.as_bytes());
    out.resize(128 * 512, 0);
    let mut gt = vec![0u32; tables * GTES];
    for g in 0..grains {
        let mut data = disk[g * GRAIN..((g + 1) * GRAIN).min(disk.len())].to_vec();
        if data.iter().all(|&b| b == 0) {
            continue;
        }
        data.resize(GRAIN, 0); // a whole grain, as VMware compresses the last one too
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&data).unwrap();
        let comp = z.finish().unwrap();
        gt[g] = (out.len() / 512) as u32;
        out.extend_from_slice(&(g as u64 * GRAIN_SECTORS).to_le_bytes());
        out.extend_from_slice(&u32le(comp.len() as u32));
        out.extend_from_slice(&comp);
        pad(&mut out);
    }
    let mut gd = vec![0u32; tables];
    for (t, entry) in gd.iter_mut().enumerate() {
        let table = &gt[t * GTES..(t + 1) * GTES];
        if table.iter().all(|&e| e == 0) {
            continue;
        }
        meta_marker(&mut out, (GTES * 4 / 512) as u64, 1);
        *entry = (out.len() / 512) as u32;
        for e in table {
            out.extend_from_slice(&u32le(*e));
        }
    }
    let gd_sectors = (tables * 4).div_ceil(512) as u64;
    meta_marker(&mut out, gd_sectors, 2);
    let gd_offset = (out.len() / 512) as u64;
    for e in &gd {
        out.extend_from_slice(&u32le(*e));
    }
    pad(&mut out);
    meta_marker(&mut out, 1, 3);
    out.extend_from_slice(&header(capacity, gd_offset));
    out.extend_from_slice(&[0u8; 512]); // end of stream
    out
}

/// 2.25 MiB + 3.5 KiB of disk: random grains, a compressible run, zero grains and an odd
/// tail (the last grain is partly past the end of the disk).
fn disk_contents() -> Vec<u8> {
    let len = (2 << 20) + (256 << 10) + 3584;
    let mut d = vec![0u8; len];
    d[..200_000].copy_from_slice(&pattern(9, 200_000));
    d[(1 << 20)..(1 << 20) + 70_000].fill(b'a');
    let tail = pattern(10, 3584 + 1000);
    d[len - tail.len()..].copy_from_slice(&tail);
    d
}

#[test]
fn vmware_layout_stream_reads_back_exactly_and_qemu_agrees() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let disk = disk_contents();
    std::fs::write(dir.join("vmware.vmdk"), vmware_stream(&disk)).unwrap();
    std::fs::write(dir.join("expected.raw"), &disk).unwrap();
    vdisk_in(dir, &["convert", "vmware.vmdk", "v.raw"]).expect_code(0, "vdisk convert");
    assert_same_bytes(&dir.join("expected.raw"), &dir.join("v.raw"));
    // qemu-img reads VMware's layout too: it must see the same disk.
    qemu_img(dir, &["convert", "-O", "raw", "vmware.vmdk", "q.raw"]);
    assert_same_bytes(&dir.join("expected.raw"), &dir.join("q.raw"));
    vdisk_in(dir, &["check", "vmware.vmdk"]).expect_code(0, "check");
    let info: serde_json::Value =
        serde_json::from_str(&vdisk_in(dir, &["info", "vmware.vmdk", "--json"]).stdout).unwrap();
    assert_eq!(info["version"], 3);
    assert_eq!(info["subformat"], "streamOptimized");
    assert_eq!(info["virtual_size"], disk.len() as u64);
}

#[test]
fn truncated_vmware_stream_is_a_clean_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let full = vmware_stream(&disk_contents());
    for cut in [512usize, 1536, full.len() / 2] {
        std::fs::write(dir.join("cut.vmdk"), &full[..full.len() - cut]).unwrap();
        let r = vdisk_in(dir, &["info", "cut.vmdk"]);
        r.expect_code(2, "truncated stream");
        assert!(
            r.stderr.starts_with("vdisk: error: cut.vmdk: "),
            "{}",
            r.stderr
        );
        assert_eq!(r.stderr.lines().count(), 1);
    }
}

/// Write the stream for other tests that want a VMware-layout image.
pub fn write_vmware_stream(path: &Path) -> Vec<u8> {
    let disk = disk_contents();
    std::fs::write(path, vmware_stream(&disk)).unwrap();
    disk
}
