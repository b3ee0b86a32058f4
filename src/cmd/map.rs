//! `vdisk map`: which byte ranges hold data and which read as zero.

use std::io::Write;
use std::path::PathBuf;

use serde_json::json;
use vdisk::{for_each_extent, Allocation, Result};

use super::{stdout_error, Ctx, Status};

/// Show which byte ranges hold data and which read as zero.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image (a file, or an NBD export: nbd://HOST/EXPORT, nbd+unix:///EXPORT?socket=PATH).
    pub image: PathBuf,
    /// One JSON document on stdout: [{"start","length","data","zero","depth"}].
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<Status> {
    let img = vdisk::open_with(&args.image, &ctx.open)?;
    let out = std::io::stdout().lock();
    let mut out = std::io::BufWriter::new(out);
    let io = stdout_error;
    let mut first = true;
    if args.json {
        write!(out, "[").map_err(io)?;
    } else {
        writeln!(
            out,
            "{:>20} {:>20}  {:<5} {:<5} depth",
            "start", "length", "data", "zero"
        )
        .map_err(io)?;
    }
    for_each_extent(&img, |e| {
        let data = e.allocation == Allocation::Data;
        if args.json {
            let v = json!({"start": e.start, "length": e.length, "data": data, "zero": !data, "depth": e.depth});
            write!(out, "{}\n  {v}", if first { "" } else { "," }).map_err(io)?;
        } else {
            writeln!(
                out,
                "{:>20} {:>20}  {:<5} {:<5} {}",
                e.start, e.length, data, !data, e.depth
            )
            .map_err(io)?;
        }
        first = false;
        Ok(())
    })?;
    if args.json {
        writeln!(out, "\n]").map_err(io)?;
    }
    out.flush().map_err(io)?;
    Ok(0)
}
