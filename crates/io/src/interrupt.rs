//! Ending a run on SIGINT or SIGTERM without leaving anything behind.
//!
//! Outputs are written without a name (`O_TMPFILE`) and repositories switch their metadata
//! in one atomic step, so a run that simply stops leaves every destination as it was. Three
//! things need care, and this module keeps track of them:
//!
//! - temporary names (file systems without `O_TMPFILE`): each one is [tracked](TempName)
//!   while it exists, and removed before the process exits;
//! - publications (a file linked or renamed into place, an image of several files put under
//!   their names): an interrupt waits for one in progress to end, and none starts after it;
//! - [clean-ups](on_cleanup): what a file name cannot say, such as the objects a run put in a
//!   repository before its commit (removed only when nothing can depend on them yet).
//!
//! [`on_interrupt`] starts the thread that waits for the signal, tidies up and then calls
//! the program's handler (which reports and exits).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sys;

/// Temporary names that exist now.
static TEMP_NAMES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Publications in progress.
static PUBLISHING: AtomicUsize = AtomicUsize::new(0);
/// Set once an interrupt arrived: no publication starts after it.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Clean-ups registered now, by their [`Cleanup`]'s number.
static CLEANUPS: Mutex<Vec<(u64, CleanupFn)>> = Mutex::new(Vec::new());
static NEXT_CLEANUP: AtomicU64 = AtomicU64::new(0);

type CleanupFn = Box<dyn FnOnce() + Send>;

/// The longest an interrupt waits for a publication in progress (a few renames and fsyncs;
/// a stuck file system is not waited for forever).
const PUBLISH_WAIT: Duration = Duration::from_secs(30);

/// A temporary file name that exists while this lives: removed by an interrupt if it is still
/// registered then. Dropping it (the file was renamed into place or removed) forgets it.
#[derive(Debug)]
pub struct TempName(PathBuf);

impl TempName {
    /// Track `path`, a temporary name just created.
    pub fn new(path: PathBuf) -> Self {
        if let Ok(mut names) = TEMP_NAMES.lock() {
            names.push(path.clone());
        }
        TempName(path)
    }

    /// The name.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempName {
    fn drop(&mut self) {
        if let Ok(mut names) = TEMP_NAMES.lock() {
            if let Some(i) = names.iter().rposition(|p| *p == self.0) {
                names.swap_remove(i);
            }
        }
    }
}

thread_local! {
    /// Publications this thread is inside (one publication may publish several files).
    static DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A publication in progress (see [`publishing`]).
#[must_use]
pub struct Publishing(());

impl Drop for Publishing {
    fn drop(&mut self) {
        PUBLISHING.fetch_sub(1, Ordering::SeqCst);
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Mark the start of a publication: an interrupt waits until the guard is dropped. After an
/// interrupt, a new publication never starts: this does not return (the process is about to
/// exit, and must not publish half an output meanwhile). Inside a publication of this
/// thread's, it always returns (the outer one finishes what it began).
pub fn publishing() -> Publishing {
    PUBLISHING.fetch_add(1, Ordering::SeqCst);
    let outermost = DEPTH.with(|d| {
        d.set(d.get() + 1);
        d.get() == 1
    });
    if outermost && INTERRUPTED.load(Ordering::SeqCst) {
        drop(Publishing(()));
        loop {
            std::thread::park();
        }
    }
    Publishing(())
}

/// Whether an interrupt arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// A clean-up an interrupt runs while this lives (see [`on_cleanup`]); dropping it forgets
/// the clean-up.
#[derive(Debug)]
#[must_use]
pub struct Cleanup(u64);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(mut all) = CLEANUPS.lock() {
            all.retain(|(n, _)| *n != self.0);
        }
    }
}

/// Have an interrupt run `f` once before the process exits: after the publication in
/// progress ended (so `f` sees either all of it or none of it, and no other starts), before
/// the temporary names are removed. It runs on the interrupt's thread while the others go on,
/// so what it reads and removes must be kept under a lock the others take only outside a
/// [publication](publishing).
pub fn on_cleanup(f: impl FnOnce() + Send + 'static) -> Cleanup {
    let n = NEXT_CLEANUP.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut all) = CLEANUPS.lock() {
        all.push((n, Box::new(f)));
    }
    Cleanup(n)
}

/// Run every clean-up still registered, once (one that panics does not stop the others).
fn run_cleanups() {
    let all = match CLEANUPS.lock() {
        Ok(mut all) => std::mem::take(&mut *all),
        Err(_) => return,
    };
    for (_, f) in all {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    }
}

/// Catch SIGINT and SIGTERM. On the first one, a thread waits for any publication in progress
/// to end (none starts after it), runs the [clean-ups](on_cleanup), removes the temporary
/// names that still exist, and calls `handler` with the signal's number; the handler reports
/// and exits the process.
///
/// Only one catcher can be installed in a process (see [`sys::interrupt_pipe`]).
pub fn on_interrupt(handler: impl FnOnce(i32) + Send + 'static) -> std::io::Result<()> {
    use std::io::Read;
    let mut pipe = sys::interrupt_pipe()?;
    std::thread::Builder::new()
        .name("vdisk-interrupt".into())
        .spawn(move || {
            let mut sig = [0u8; 1];
            if pipe.read_exact(&mut sig).is_err() {
                return;
            }
            INTERRUPTED.store(true, Ordering::SeqCst);
            let start = Instant::now();
            while PUBLISHING.load(Ordering::SeqCst) > 0 && start.elapsed() < PUBLISH_WAIT {
                std::thread::sleep(Duration::from_millis(5));
            }
            run_cleanups();
            remove_temp_names();
            handler(i32::from(sig[0]));
        })?;
    Ok(())
}

/// Remove every temporary name still registered (never a folder, never through a link).
fn remove_temp_names() {
    let names = match TEMP_NAMES.lock() {
        Ok(mut n) => std::mem::take(&mut *n),
        Err(_) => return,
    };
    for p in names {
        if std::fs::symlink_metadata(&p).is_ok_and(|m| !m.is_dir()) {
            let _ = std::fs::remove_file(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_forgotten_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join(".a.vdisk-partial");
        let b = dir.path().join(".b.vdisk-partial");
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let ta = TempName::new(a.clone());
        let tb = TempName::new(b.clone());
        drop(ta);
        let names = TEMP_NAMES.lock().unwrap().clone();
        assert!(!names.contains(&a));
        assert!(names.contains(&b));
        remove_temp_names();
        assert!(a.exists(), "a was no longer tracked");
        assert!(!b.exists(), "b was tracked, so removed");
        drop(tb);
    }

    #[test]
    fn clean_ups_run_once_unless_dropped() {
        use std::sync::Arc;
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = |add: usize| {
            let runs = Arc::clone(&runs);
            move || {
                runs.fetch_add(add, Ordering::SeqCst);
            }
        };
        let kept = on_cleanup(counter(1));
        let dropped = on_cleanup(counter(10));
        let also_kept = on_cleanup(counter(100));
        drop(dropped);
        run_cleanups();
        assert_eq!(runs.load(Ordering::SeqCst), 101);
        run_cleanups();
        assert_eq!(runs.load(Ordering::SeqCst), 101, "each runs once");
        drop((kept, also_kept));
    }
}
