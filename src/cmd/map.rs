use std::io::Write;
use std::path::Path;

use serde_json::json;
use vdisk::{for_each_extent, Allocation, Error, Result};

use super::Status;
use crate::Ctx;

pub fn run(ctx: &Ctx, path: &Path, json_out: bool) -> Result<Status> {
    let img = vdisk::open_with(path, &ctx.open)?;
    let out = std::io::stdout().lock();
    let mut out = std::io::BufWriter::new(out);
    let io = |e: std::io::Error| Error::io("writing output", e);
    let mut first = true;
    if json_out {
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
        if json_out {
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
    if json_out {
        writeln!(out, "\n]").map_err(io)?;
    }
    out.flush().map_err(io)?;
    Ok(0)
}
