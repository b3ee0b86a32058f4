//! An OVA appliance read in place: a ustar archive (made with GNU tar, as ovftool lays
//! appliances out: the .ovf first) holding the fixture disk as a streamOptimized VMDK, read
//! whole through `vdisk::open(…).read_at` in 4 MiB chunks on one thread (the disk's grains
//! are found through its grain directory and inflated where they lie in the archive).

use std::process::Command;

use criterion::{Criterion, Throughput};
use vdisk::DiskImage;

use super::fixtures::{assert_same, disk_bytes, read_whole, Fixtures, CHUNK};

/// A minimal OVF descriptor naming the disk (vdisk finds disks by content).
const OVF: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>
    <File ovf:href="disk1.vmdk" ovf:id="file1"/>
  </References>
</Envelope>
"#;

pub fn bench(c: &mut Criterion, fx: &Fixtures) {
    let dir = fx.dir().join("ova");
    std::fs::create_dir_all(&dir).expect("a folder for the appliance");
    std::fs::write(dir.join("appliance.ovf"), OVF).expect("write the OVF");
    std::fs::copy(&fx.stream, dir.join("disk1.vmdk")).expect("copy the disk");
    let out = Command::new("tar")
        .current_dir(&dir)
        .args([
            "--format=ustar",
            "-cf",
            "app.ova",
            "appliance.ovf",
            "disk1.vmdk",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("tar failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            eprintln!("ova benches skipped: cannot run tar: {e}");
            return;
        }
    }
    let img = vdisk::open(dir.join("app.ova")).expect("open the appliance");
    // The disk in the archive is the fixture disk (checked once, before timing).
    let want = std::fs::read(&fx.raw).expect("read the disk");
    assert!(img.archive().is_some(), "read as a disk of an archive");
    assert_same("the disk of the OVA", &want, &disk_bytes(&img));
    let mut buf = vec![0u8; CHUNK];
    let mut g = c.benchmark_group("ova/read_4MiB_chunks");
    g.throughput(Throughput::Bytes(img.size()));
    g.bench_function("streamOptimized_in_ova", |b| {
        b.iter(|| read_whole(&img, &mut buf))
    });
    g.finish();
}
