use std::path::Path;

use vdisk::convert::{create_sink, ConvertOptions, Target};
use vdisk::vmdk::writer::WriteOptions;
use vdisk::vmdk::StreamReader;
use vdisk::{Error, Result};

use super::convert::Progress;
use super::Status;
use crate::Ctx;

/// Grains inflated in parallel per step.
const BATCH: usize = 256;

/// `vdisk convert - DST`: a streamOptimized image read front to back from standard input.
pub fn convert(ctx: &Ctx, dst: &Path, target: Target, vmdk: WriteOptions) -> Result<Status> {
    let stdin = std::io::stdin().lock();
    let input = std::io::BufReader::with_capacity(1 << 20, stdin);
    let name = Path::new("<stdin>");
    let mut reader = StreamReader::new(input).map_err(|e| e.with_path(name))?;
    let opts = ConvertOptions {
        overwrite: vmdk.overwrite,
        vmdk,
        ..Default::default()
    };
    let mut sink = create_sink(dst, reader.capacity(), target, &opts)?;
    let progress = Progress::new(ctx, reader.capacity());
    loop {
        let grains = reader.next_grains(BATCH).map_err(|e| e.with_path(name))?;
        if grains.is_empty() {
            break;
        }
        let read: u64 = grains.iter().map(|g| g.1.len() as u64).sum();
        ctx.throttle.take(read);
        progress.tick(read);
        let blocks: Vec<(u64, &[u8])> = grains.iter().map(|(o, d)| (*o, d.as_slice())).collect();
        sink.put(&blocks).map_err(|e: Error| e.with_path(dst))?;
    }
    sink.finish()?;
    progress.done("converted the stream");
    Ok(0)
}
