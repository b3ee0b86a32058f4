//! The Linux calls vdisk makes, in one place, each behind a safe function.
//!
//! vdisk runs on Linux: it relies on `O_TMPFILE` and `linkat(2)` to publish complete files,
//! `SEEK_DATA`/`SEEK_HOLE` for holes, `posix_fadvise(2)`, `cachestat(2)` and `mincore(2)` for
//! page-cache hygiene, `sync_file_range(2)` to start writeback early, `BLKZEROOUT` on block
//! devices, `flock(2)` for repository locks, and signals and `poll(2)` for servers. Nothing
//! outside this module calls `libc` directly.
#![allow(unsafe_code)] // every block below is a system call on our own descriptors or memory

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::path::Path;

use vdisk_core::FileId;

/// `open(2)` flags passed through `OpenOptionsExt::custom_flags`.
pub mod flags {
    /// Create an unnamed file in a folder (linked under its name once complete).
    pub const O_TMPFILE: i32 = libc::O_TMPFILE;
    /// Refuse to follow a symbolic link at the last component.
    pub const O_NOFOLLOW: i32 = libc::O_NOFOLLOW;
    /// Close on exec.
    pub const O_CLOEXEC: i32 = libc::O_CLOEXEC;
    /// For a block device: refuse it when it is mounted or opened exclusively elsewhere.
    pub const O_EXCL: i32 = libc::O_EXCL;
}

/// `errno` values the callers tell apart.
pub mod errno {
    pub use libc::{
        EBUSY, EINVAL, EISDIR, EMFILE, ENFILE, ENOBUFS, ENOENT, ENOMEM, ENOSPC, ENXIO, EOPNOTSUPP,
        EPERM, EPROTO, EWOULDBLOCK,
    };
}

/// Page-cache advice on a file's byte range (`posix_fadvise(2)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAdvice {
    /// No read-ahead: reads fetch what they ask for.
    Random,
    /// Drop clean cached pages of the range.
    DontNeed,
}

/// Give the kernel `advice` on `len` bytes of `file` at `offset` (0 bytes: to the end).
/// Advice changes caching only; failures are ignored.
pub fn fadvise(file: &File, offset: u64, len: u64, advice: FileAdvice) {
    let how = match advice {
        FileAdvice::Random => libc::POSIX_FADV_RANDOM,
        FileAdvice::DontNeed => libc::POSIX_FADV_DONTNEED,
    };
    let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: posix_fadvise only changes the kernel's caching of our open file.
    let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), off, n, how) };
}

/// `cachestat(2)` (Linux 6.5): the number of pages of `len` bytes at `offset` of `file` in
/// the page cache, counted folio by folio; `None` where the kernel lacks it.
pub fn cached_pages(file: &File, offset: u64, len: u64) -> Option<u64> {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    /// The same number on every architecture Rust builds for (the unified syscall table).
    const SYS_CACHESTAT: libc::c_long = 451;
    let range = Range { off: offset, len };
    let mut stat = Stat::default();
    // SAFETY: cachestat reads the range and writes the statistics into structs laid out as
    // the kernel's (five u64 counters), both alive for the call; flags must be 0.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut Stat,
            0 as libc::c_uint,
        )
    };
    (r == 0).then_some(stat.nr_cache)
}

/// `mincore(2)`: one byte per page of `pages` (a page-aligned slice of a mapping of ours),
/// whose low bit says whether the page is in memory. `None` when the kernel refuses.
pub fn resident_pages(pages: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0u8; pages.len().div_ceil(4096)];
    // SAFETY: mincore only reads the residency of the pages behind a slice we hold (so they
    // are mapped), writing one byte per page into a vector of that many bytes.
    let r = unsafe {
        libc::mincore(
            pages.as_ptr() as *mut libc::c_void,
            pages.len(),
            out.as_mut_ptr(),
        )
    };
    (r == 0).then_some(out)
}

/// Where the next data at or after `pos` starts (`lseek(2)` with `SEEK_DATA`); `Ok(None)`
/// when only a hole follows.
pub fn seek_data(file: &File, pos: u64) -> io::Result<Option<u64>> {
    seek(file, pos, libc::SEEK_DATA)
}

/// Where the hole at or after `pos` starts (`SEEK_HOLE`: the end of the file at worst).
pub fn seek_hole(file: &File, pos: u64) -> io::Result<Option<u64>> {
    seek(file, pos, libc::SEEK_HOLE)
}

fn seek(file: &File, pos: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let off =
        libc::off_t::try_from(pos).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: lseek only moves the offset of our own descriptor (reads here are positional,
    // so no one depends on it).
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(err)
    }
}

/// Give the unnamed (`O_TMPFILE`) or named `file` the name `name`, which must not exist
/// (`linkat(2)`, through `/proc/self/fd` first, then `AT_EMPTY_PATH`).
pub fn link_unnamed(file: &File, name: &Path) -> io::Result<()> {
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let target = c(name)?;
    let proc = c(Path::new(&format!("/proc/self/fd/{}", file.as_raw_fd())))?;
    // SAFETY: both paths are NUL-terminated strings that live across the call.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            proc.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOENT) {
        return Err(err);
    }
    // No /proc: AT_EMPTY_PATH links the descriptor itself (needs CAP_DAC_READ_SEARCH).
    let empty = c(Path::new(""))?;
    // SAFETY: as above; the empty path with AT_EMPTY_PATH names the descriptor.
    let r = unsafe {
        libc::linkat(
            file.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Start writing back `len` bytes of `file` at `offset` (`sync_file_range(2)`,
/// `SYNC_FILE_RANGE_WRITE`), so a later fsync has little left to do. Failures are ignored.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    let (Ok(off), Ok(n)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return;
    };
    // SAFETY: sync_file_range only starts writeback of our own file's dirty pages.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE) };
}

/// `BLKZEROOUT` (`_IO(0x12, 127)` in `linux/fs.h`): zero a byte range of a block device, by
/// the device's own zeroing command where it has one (WRITE ZEROES, UNMAP with zeroing).
pub fn block_zero_out(device: &File, offset: u64, len: u64) -> io::Result<()> {
    const BLKZEROOUT: libc::c_ulong = 0x127f;
    let range = [offset, len];
    // SAFETY: BLKZEROOUT reads two u64 (start, length) from the array, alive for the call.
    let r = unsafe { libc::ioctl(device.as_raw_fd(), BLKZEROOUT as _, range.as_ptr()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Take the kernel's exclusive lock on `file` without waiting (`flock(2)`): `Ok(false)`
/// when another open file holds it. Released when the file is closed.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock only takes a lock on our own descriptor.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// The identity of the file behind `meta`: device and inode, or for a device node the device
/// it names.
pub fn file_id(meta: &Metadata) -> FileId {
    let t = meta.file_type();
    if t.is_block_device() || t.is_char_device() {
        FileId {
            dev: meta.rdev(),
            ino: 0,
        }
    } else {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// Bytes a file takes on disk (its allocated blocks), which for a sparse file is less than
/// its length. The one definition behind `info`'s disk usage and repository sizes.
pub fn disk_usage(meta: &Metadata) -> u64 {
    meta.blocks().saturating_mul(512)
}

/// Let this process open as many files as the system allows it (a split image keeps each
/// extent open until it is published).
pub fn raise_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write a plain struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Send allocations of `threshold` bytes or more straight to mmap, returned to the system
/// when freed (glibc's sliding threshold would otherwise keep large buffers freed on other
/// threads in per-thread heaps). Call before any thread starts.
pub fn unmap_large_buffers(threshold: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let t = libc::c_int::try_from(threshold).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes the allocator's threshold.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, t);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = threshold;
}

/// The write end of the pipe the signal handler writes to (-1 until installed).
static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(std::sync::atomic::Ordering::Relaxed);
    if fd >= 0 {
        let b = u8::try_from(sig).unwrap_or(0);
        // SAFETY: write(2) is async-signal-safe; one byte from a local into our pipe.
        unsafe {
            libc::write(fd, (&b as *const u8).cast(), 1);
        }
    }
}

/// Catch SIGINT and SIGTERM: each one writes its signal number as one byte to a pipe whose
/// read end is returned (a self-pipe, so any thread can wait for it with `poll` or a read).
/// Installed once per process; later calls fail.
pub fn interrupt_pipe() -> io::Result<File> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if SIGNAL_PIPE
        .compare_exchange(
            -1,
            fds[1],
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
        )
        .is_err()
    {
        // SAFETY: both descriptors were just made by pipe2 and are ours to close.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        return Err(io::Error::other("signals are already being caught"));
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with our handler, an empty mask and SA_RESTART is a valid
        // argument; the handler only calls write(2).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    // SAFETY: fds[0] is a descriptor pipe2 just gave us, owned by the File from now on.
    Ok(unsafe { File::from_raw_fd(fds[0]) })
}

/// Wait until one of `fds` can be read without blocking (`poll(2)`, no timeout, retried on
/// `EINTR`); returns which ones can.
pub fn wait_readable(fds: &[RawFd]) -> io::Result<Vec<bool>> {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: poll reads and writes the array of pollfd structs we own, of that length.
        let n = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, -1) };
        if n >= 0 {
            return Ok(polled.iter().map(|p| p.revents != 0).collect());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
