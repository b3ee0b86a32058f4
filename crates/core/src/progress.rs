/// Where a long job (a copy, a scan, a backup, a verify) reports how far it got, from any of
/// its threads.
///
/// Bytes come in two kinds, so that a rate and an ETA can be drawn from the reads alone:
/// bytes [read](Progress::read) from a source (what the I/O limit paces and what takes time)
/// and bytes [passed over](Progress::skipped) without a read (unallocated, unchanged, or known
/// to be zero). Together they cover the job's span once.
///
/// Any `Fn(u64) + Sync` is a `Progress` that counts both kinds alike:
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use vdisk_core::Progress;
///
/// let done = AtomicU64::new(0);
/// let count = |n: u64| {
///     done.fetch_add(n, Ordering::Relaxed);
/// };
/// let p: &dyn Progress = &count;
/// p.read(4096);
/// p.skipped(1 << 20);
/// assert_eq!(done.load(Ordering::Relaxed), 4096 + (1 << 20));
/// ```
pub trait Progress: Sync {
    /// `bytes` were read from the source.
    fn read(&self, bytes: u64);

    /// `bytes` of the job's span were passed over without being read.
    fn skipped(&self, bytes: u64) {
        let _ = bytes;
    }
}

impl<F: Fn(u64) + Sync> Progress for F {
    fn read(&self, bytes: u64) {
        self(bytes)
    }

    fn skipped(&self, bytes: u64) {
        self(bytes)
    }
}
