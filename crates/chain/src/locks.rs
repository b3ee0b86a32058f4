//! Writers' registrations (`locks/ID`): who is writing, refreshed while they write.
//!
//! Layout 3 needs no exclusive lock to stay whole: objects are immutable and uniquely named,
//! and a commit is a conditional create. Registrations serve two other ends:
//!
//! - garbage collection deletes nothing while a live writer is registered, so it never
//!   deletes a block a running backup has referenced but not yet committed;
//! - one backup per NAME at a time (and one prune, one sync): a second one is refused at
//!   once rather than losing at its commit.
//!
//! A registration is *live* until proven otherwise: it is stale when not refreshed for
//! [`stale_secs`] (its holder died or was cut off), or dead when it names this host and
//! this boot and its process is gone (or is another process with the same pid: the start
//! time differs, or a zombie). Nothing here is kept in `$TMPDIR` or any folder of the host:
//! the proof of life is the holder's own record in the repository, refreshed by it alone, and
//! released (deleted) by it alone. A prune removes only registrations proven dead, or stale
//! for a week.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vdisk_core::{Error, ErrorKind, Result};

use crate::clock::now_secs;
use crate::crypto::{Keys, Kind};
use crate::repository::Repository;
use crate::store::objects::{ObjectInfo, Objects};

/// Seconds between refreshes (`VDISK_LOCK_REFRESH_SECS` overrides, for tests).
pub fn refresh_secs() -> u64 {
    env_secs("VDISK_LOCK_REFRESH_SECS", 60)
}

/// Seconds without a refresh after which a registration is stale (`VDISK_LOCK_STALE_SECS`).
pub fn stale_secs() -> u64 {
    env_secs("VDISK_LOCK_STALE_SECS", 600).max(2)
}

fn env_secs(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v: &u64| v > 0)
        .unwrap_or(default)
}

/// What a registration says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockBody {
    /// `backup`, `prune` or `sync`.
    pub kind: String,
    /// The NAME a backup writes.
    pub name: Option<String>,
    /// The holder's host name.
    pub host: String,
    /// The holder's boot id.
    pub boot: String,
    /// The holder's pid.
    pub pid: u32,
    /// The holder's start time (clock ticks since boot, from /proc).
    pub start: u64,
    /// When it registered, nanoseconds since 1970 (the older of two writers goes on).
    pub since: u64,
    /// When it last refreshed.
    pub refreshed: u64,
}

fn read_proc(p: &str) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Field 22 of /proc/PID/stat (the start time) and whether the process is a zombie.
fn proc_start(pid: u32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, *state == "Z" || *state == "X"))
}

impl LockBody {
    fn new(kind: &str, name: Option<&str>) -> Self {
        let now = now_secs();
        LockBody {
            kind: kind.into(),
            name: name.map(str::to_string),
            host: read_proc("/proc/sys/kernel/hostname"),
            boot: read_proc("/proc/sys/kernel/random/boot_id"),
            pid: std::process::id(),
            start: proc_start(std::process::id()).map_or(0, |s| s.0),
            since: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            refreshed: now,
        }
    }

    /// Whether the holder is proven gone: on this host and boot, its process is not running
    /// (or its pid is another process's now); on this host after a reboot.
    pub fn proven_dead(&self) -> bool {
        let host = read_proc("/proc/sys/kernel/hostname");
        if self.host != host || host.is_empty() {
            return false;
        }
        let boot = read_proc("/proc/sys/kernel/random/boot_id");
        if self.boot != boot {
            return !boot.is_empty();
        }
        match proc_start(self.pid) {
            None => true,
            Some((start, zombie)) => zombie || start != self.start,
        }
    }

    /// Whether it was not refreshed for [`stale_secs`].
    pub fn stale(&self, now: u64) -> bool {
        now.saturating_sub(self.refreshed) > stale_secs()
    }

    fn seal(&self, keys: &Keys, key: &str) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(self).map_err(|e| Error::invalid(e.to_string()))?;
        keys.seal(Kind::Lock, key.as_bytes(), &json)
    }

    fn open(keys: &Keys, key: &str, sealed: &[u8]) -> Result<Self> {
        let json = keys.open(Kind::Lock, key.as_bytes(), sealed)?;
        let b: LockBody = serde_json::from_slice(&json)
            .map_err(|e| Error::corrupt(format!("registration does not parse: {e}")))?;
        if b.host.len() > 256 || b.boot.len() > 64 || b.kind.len() > 16 {
            return Err(Error::corrupt("registration is not valid"));
        }
        Ok(b)
    }
}

/// A registration as others see it.
#[derive(Debug, Clone)]
pub struct Registered {
    /// Its object.
    pub key: String,
    /// What it says (`None` when it cannot be read).
    pub body: Option<LockBody>,
    /// When its object was last written, by the store's clock.
    pub modified: u64,
}

impl Registered {
    /// Whether it may still be writing: readable, not stale, not proven dead; an unreadable
    /// one counts while its object is recent.
    pub fn live(&self, now: u64) -> bool {
        match &self.body {
            Some(b) => !b.stale(now) && !b.proven_dead(),
            None => now.saturating_sub(self.modified) <= stale_secs(),
        }
    }

    fn order(&self) -> (u64, &str) {
        (self.body.as_ref().map_or(0, |b| b.since), &self.key)
    }
}

/// Every registration of the repository.
pub fn registrations(repo: &Repository) -> Result<Vec<Registered>> {
    read_registrations(repo, None)
}

/// Every registration of the repository; with `me` (a writer's own registration), those
/// proven dead are taken over: each is removed as soon as it is read, and left out.
///
/// One at a time, not after all are read: a run killed half-way through the list has still
/// removed what it read, so registrations left by killed runs cannot pile up faster than
/// the next runs clear them (each killed run leaves one; a run that removed nothing before
/// it was killed would leave the next one more to read).
fn read_registrations(repo: &Repository, me: Option<&str>) -> Result<Vec<Registered>> {
    let store = repo.store();
    let mut out = Vec::new();
    for ObjectInfo { name, modified, .. } in store.list("locks/")? {
        let body = match store.read(&name, 64 << 10) {
            Ok(b) => LockBody::open(repo.keys(), &name, &b).ok(),
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(_) => None,
        };
        if me.is_some_and(|me| me != name) && body.as_ref().is_some_and(LockBody::proven_dead) {
            // Taken over, with that proof. Others are only ever removed by their holder.
            let _ = store.delete(&name);
            continue;
        }
        out.push(Registered {
            key: name,
            body,
            modified,
        });
    }
    Ok(out)
}

/// This run's registration: refreshed by a thread of its own, deleted when dropped.
#[derive(Debug)]
pub struct Registration {
    store: Arc<dyn Objects>,
    /// Its object.
    pub key: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// When it was last written successfully.
    last_ok: Arc<AtomicU64>,
    lost: Arc<AtomicBool>,
}

impl Registration {
    /// Register a writer of `kind` (writing `name`), and refuse when an older live writer of
    /// the same kind (and NAME) is registered.
    pub fn register(repo: &Repository, kind: &str, name: Option<&str>) -> Result<Registration> {
        let key = format!("locks/{}", crate::crypto::random_id()?);
        let body = LockBody::new(kind, name);
        let sealed = body.seal(repo.keys(), &key)?;
        if !repo.store().create(&key, &sealed)? {
            return Err(Error::invalid("a fresh registration's name was taken"));
        }
        let (tx, rx) = mpsc::channel::<()>();
        let last_ok = Arc::new(AtomicU64::new(now_secs()));
        let lost = Arc::new(AtomicBool::new(false));
        let thread = {
            let store = Arc::clone(&repo.inner.store);
            let keys = repo.keys().clone();
            let key = key.clone();
            let last_ok = Arc::clone(&last_ok);
            let lost = Arc::clone(&lost);
            let mut body = body.clone();
            std::thread::Builder::new()
                .name("vdisk-lock".into())
                .spawn(move || loop {
                    match rx.recv_timeout(Duration::from_secs(refresh_secs())) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    body.refreshed = now_secs();
                    let ok = body
                        .seal(&keys, &key)
                        .and_then(|s| store.replace(&key, &s))
                        .is_ok();
                    if ok {
                        last_ok.store(body.refreshed, Ordering::SeqCst);
                    } else if now_secs().saturating_sub(last_ok.load(Ordering::SeqCst))
                        > stale_secs()
                    {
                        lost.store(true, Ordering::SeqCst);
                    }
                })
                .map_err(|e| Error::io("cannot start the registration's refresher", e))?
        };
        let reg = Registration {
            store: Arc::clone(&repo.inner.store),
            key,
            stop: Some(tx),
            thread: Some(thread),
            last_ok,
            lost,
        };
        // Refuse when an older live writer of this kind (and NAME) is registered; a younger
        // one will see us and refuse itself.
        let now = now_secs();
        // Registrations proven dead (this host and boot, their process gone) are taken over
        // as they are read.
        let all = read_registrations(repo, Some(&reg.key))?;
        let me = all.iter().find(|r| r.key == reg.key).cloned();
        let my_order = me
            .as_ref()
            .map_or((body.since, reg.key.as_str()), |m| m.order());
        for r in &all {
            let Some(b) = &r.body else { continue };
            if r.key == reg.key || b.kind != kind || b.name.as_deref() != name || !r.live(now) {
                continue;
            }
            if r.order() < my_order {
                let what = match name {
                    Some(n) => format!("a {kind} of \"{n}\""),
                    None => format!("a {kind}"),
                };
                return Err(Error::new(
                    ErrorKind::InUse,
                    format!(
                        "{what} is running (host {}, pid {}, since {}); try again when it is done",
                        b.host,
                        b.pid,
                        crate::clock::rfc3339(b.since / 1_000_000_000)
                    ),
                )
                .with_path(repo.location()));
            }
        }
        Ok(reg)
    }

    /// Fail unless the registration was refreshed recently enough that nobody can have
    /// judged it stale: a run that was cut off for too long commits nothing.
    pub fn check_fresh(&self) -> Result<()> {
        let age = now_secs().saturating_sub(self.last_ok.load(Ordering::SeqCst));
        if self.lost.load(Ordering::SeqCst)
            || age + refresh_secs().min(stale_secs() / 2) > stale_secs()
        {
            return Err(Error::new(
                ErrorKind::InUse,
                format!(
                    "this run's registration was not refreshed for {age} s (cut off from the store?), so a prune may have judged it gone; nothing was committed"
                ),
            )
            .with_path(self.store.location().join(&self.key)));
        }
        Ok(())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Released by its holder only.
        let _ = self.store.delete(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicI64;

    use super::*;
    use crate::store::objects::MemoryObjects;

    /// Objects in memory, as a run killed after its `left`-th request leaves them: every
    /// request after that fails and changes nothing, its own clean-up included (`left` goes
    /// below 0 once it was killed).
    #[derive(Debug)]
    struct KilledAt {
        inner: MemoryObjects,
        left: AtomicI64,
    }

    impl KilledAt {
        fn request(&self) -> Result<()> {
            if self.left.fetch_sub(1, Ordering::SeqCst) > 0 {
                Ok(())
            } else {
                Err(Error::new(ErrorKind::Io, "killed"))
            }
        }
    }

    impl Objects for KilledAt {
        fn location(&self) -> &std::path::Path {
            self.inner.location()
        }
        fn read(&self, name: &str, max: u64) -> Result<Vec<u8>> {
            self.request()?;
            self.inner.read(name, max)
        }
        fn read_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
            self.request()?;
            self.inner.read_range(name, offset, len)
        }
        fn create(&self, name: &str, bytes: &[u8]) -> Result<bool> {
            self.request()?;
            self.inner.create(name, bytes)
        }
        fn replace(&self, name: &str, bytes: &[u8]) -> Result<()> {
            self.request()?;
            self.inner.replace(name, bytes)
        }
        fn create_streamed(
            &self,
            name: &str,
            fill: &mut dyn FnMut(&mut dyn std::io::Write) -> Result<()>,
        ) -> Result<()> {
            self.request()?;
            self.inner.create_streamed(name, fill)
        }
        fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
            self.request()?;
            self.inner.list(prefix)
        }
        fn delete(&self, name: &str) -> Result<()> {
            self.request()?;
            self.inner.delete(name)
        }
        fn prepare(&self) -> Result<()> {
            Ok(())
        }
    }

    fn locks(s: &MemoryObjects) -> usize {
        s.names().iter().filter(|n| n.starts_with("locks/")).count()
    }

    /// "A backup killed at each request never finishes": runs killed while they read the
    /// registrations of runs killed before (dead: this host, their process gone) each left
    /// one more and removed none, so each run, allowed one request more than the last, had
    /// more to read before its first removal (two requests a registration on S3) and none
    /// got through. A dead registration is removed as soon as it is read: killed runs do not
    /// pile up.
    #[test]
    fn registrations_of_killed_runs_are_taken_over_as_they_are_read() {
        std::env::set_var("VDISK_KDF_MEMORY_KIB", "8192");
        let s = MemoryObjects::new("killed");
        let store = Arc::new(KilledAt {
            inner: s.clone(),
            left: AtomicI64::new(i64::MAX),
        });
        let repo = Repository::init_in(
            store.clone(),
            &crate::store::memory::MemoryStore::new("legacy"),
            &Default::default(),
        )
        .unwrap();
        // Registrations of 20 runs killed before, on this host.
        let mut dead = LockBody::new("backup", Some("vm"));
        dead.pid = u32::MAX - 1;
        assert!(dead.proven_dead());
        for _ in 0..20 {
            let key = format!("locks/{}", crate::crypto::random_id().unwrap());
            s.set(&key, dead.seal(repo.keys(), &key).unwrap());
        }
        // Each run is killed a request later than the last: its own create, the list,
        // then reads and removals. Each leaves its own registration behind.
        let mut n = 4;
        let reg = loop {
            let before = locks(&s);
            store.left.store(n, Ordering::SeqCst);
            let run = Registration::register(&repo, "backup", Some("vm"));
            if store.left.load(Ordering::SeqCst) >= 0 {
                break run.unwrap();
            }
            // Killed (whatever it went on to do, it did nothing more to the store), and its
            // process is gone: what it left names a dead pid.
            drop(run);
            for key in s.names().into_iter().filter(|k| k.starts_with("locks/")) {
                let mut b = LockBody::open(repo.keys(), &key, &s.get(&key).unwrap()).unwrap();
                if b.pid == std::process::id() {
                    b.pid = u32::MAX - 1;
                    s.set(&key, b.seal(repo.keys(), &key).unwrap());
                }
            }
            // It removed what it read (a read and a removal each, besides its own).
            assert!(
                locks(&s) + (n as usize - 4) / 2 <= before + 1,
                "{} registrations after a run killed at request {n}, {before} before",
                locks(&s)
            );
            n += 1;
            assert!(n < 30, "the registrations of killed runs piled up");
        };
        store.left.store(i64::MAX, Ordering::SeqCst);
        // The run that got through removed every dead one, and releases its own.
        assert_eq!(locks(&s), 1);
        drop(reg);
        assert_eq!(locks(&s), 0);
    }

    #[test]
    fn this_process_is_alive_and_a_dead_pid_is_proven_dead() {
        let me = LockBody::new("backup", Some("a"));
        assert!(!me.proven_dead());
        assert!(!me.stale(now_secs()));
        let mut gone = me.clone();
        gone.pid = u32::MAX - 1;
        assert!(gone.proven_dead());
        let mut reused = me.clone();
        reused.start += 1;
        assert!(reused.proven_dead());
        let mut elsewhere = me.clone();
        elsewhere.host = "another-host".into();
        elsewhere.pid = u32::MAX - 1;
        assert!(!elsewhere.proven_dead());
        assert!(elsewhere.stale(now_secs() + stale_secs() + 1));
        let mut rebooted = me;
        rebooted.boot = "another-boot".into();
        assert!(rebooted.proven_dead());
    }
}
