//! What `vdisk info` and `vdisk check` will show of a qcow2 file, with timings.
//!
//! ```text
//! cargo run --release -p vdisk-qcow2 --example inspect -- IMAGE.qcow2
//! ```

use std::time::Instant;

use vdisk_core::{for_each_extent, Allocation, DiskImage};
use vdisk_io::Layer;

fn main() -> vdisk_core::Result<()> {
    let path = std::env::args().nth(1).expect("usage: inspect IMAGE.qcow2");
    let t = Instant::now();
    let img = vdisk_qcow2::Qcow2Image::open(path.as_ref())?;
    println!("opened in {:.3} s", t.elapsed().as_secs_f64());
    for line in img.info().text {
        println!("{line}");
    }
    let t = Instant::now();
    let (mut data, mut zero, mut runs) = (0u64, 0u64, 0u64);
    for_each_extent(&img, |e| {
        runs += 1;
        match e.allocation {
            Allocation::Data => data += e.length,
            Allocation::Zero => zero += e.length,
            Allocation::Unallocated => {}
        }
        Ok(())
    })?;
    println!(
        "map: {runs} runs, {data} bytes of data, {zero} of zeros, of {} ({:.3} s)",
        img.size(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let findings = img.check();
    println!(
        "check: {} findings ({:.3} s)",
        findings.len(),
        t.elapsed().as_secs_f64()
    );
    for f in findings {
        println!("  {:?}: {}", f.severity, f.message);
    }
    for b in img.bitmaps() {
        let mut dirty = 0u64;
        let g = img.read_bitmap(&b.name, &mut |_, l| {
            dirty += l;
            Ok(())
        });
        println!(
            "bitmap {}: {:?} granularity, {dirty} bytes dirty",
            b.name, g
        );
    }
    Ok(())
}
