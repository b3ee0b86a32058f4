//! The machine's ceiling for comparing two files: map both, and compare them with one thread
//! per core, each on its own contiguous share, in 64 MiB pieces that are populated (mapped in
//! one call) before they are compared and unmapped (MADV_DONTNEED) by the same thread after,
//! so that tearing down page tables is shared by the threads rather than left to the exit.
//! No allocation maps, no blocks, no bitmap, no output: only what any memory-mapped parallel
//! compare must do. `benches/compare-more.sh` runs it
//! next to `vdisk diff`, so the two are measured on the same files in the same run.
//!
//! Usage: `bare_compare A B` (exit 0 identical, 1 different, 2 usage).
#![allow(unsafe_code)] // the memory maps

use std::fs::File;
use std::process::ExitCode;

use memmap2::{Advice, Mmap};

const PIECE: usize = 64 << 20;

fn map(path: &str) -> Mmap {
    let f = File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: a benchmark on files nobody changes while it runs.
    unsafe { Mmap::map(&f) }.unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn unmap(m: &Mmap, at: usize, len: usize) {
    // SAFETY: MADV_DONTNEED on a private read-only file mapping drops this process's
    // page-table entries only; the piece is not touched again.
    let _ = unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, at, len) };
}

fn populate(m: &Mmap, at: usize, len: usize) {
    // Best effort: older kernels lack MADV_POPULATE_READ; pages then fault in as read.
    let _ = m.advise_range(Advice::PopulateRead, at, len);
}

/// Each thread's share of `len` bytes: contiguous, split on piece boundaries.
fn shares(len: usize, threads: usize) -> Vec<(usize, usize)> {
    let pieces = len.div_ceil(PIECE);
    let per = pieces.div_ceil(threads.max(1));
    (0..threads)
        .map(|t| ((t * per * PIECE).min(len), ((t + 1) * per * PIECE).min(len)))
        .filter(|(s, e)| s < e)
        .collect()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    match args.as_slice() {
        [a, b] => {
            let (ma, mb) = (map(a), map(b));
            if ma.len() != mb.len() {
                return ExitCode::from(1);
            }
            let same = std::thread::scope(|s| {
                let jobs: Vec<_> = shares(ma.len(), threads)
                    .into_iter()
                    .map(|(start, end)| {
                        let (ma, mb) = (&ma, &mb);
                        s.spawn(move || {
                            let mut same = true;
                            let mut at = start;
                            while at < end {
                                let len = PIECE.min(end - at);
                                populate(ma, at, len);
                                populate(mb, at, len);
                                same &= ma[at..at + len] == mb[at..at + len];
                                unmap(ma, at, len);
                                unmap(mb, at, len);
                                at += len;
                            }
                            same
                        })
                    })
                    .collect();
                jobs.into_iter().all(|j| j.join().unwrap())
            });
            ExitCode::from(u8::from(!same))
        }
        _ => {
            eprintln!("usage: bare_compare A B");
            ExitCode::from(2)
        }
    }
}
