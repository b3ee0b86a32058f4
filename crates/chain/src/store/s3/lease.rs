//! The writer's lease: one writer at a time, across hosts.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use vdisk_core::{Error, ErrorKind, Result};

use super::client::retrying;
use super::{random_u64, unix_now, S3Store, LEASE};
use crate::layout2::lock::RepoLock;
use crate::store::{Store, WriterLock};

/// A lease not renewed for this long has expired (its holder is gone or cut off).
const LEASE_TTL: Duration = Duration::from_secs(30);
/// How often the holder renews its lease.
const LEASE_RENEW: Duration = Duration::from_secs(10);

/// The writer's lease (see the module docs).
#[derive(Debug)]
pub(super) struct Lease {
    pub(super) store: S3Store,
    /// The kernel lock that tells other runs on this host that the holder is alive.
    pub(super) _local: RepoLock,
    pub(super) state: Arc<Mutex<LeaseState>>,
    pub(super) stop: Option<std::sync::mpsc::Sender<()>>,
    pub(super) renewer: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug)]
pub(super) struct LeaseState {
    pub(super) version: UpdateVersion,
    pub(super) lost: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct LeaseBody {
    pub(super) format: String,
    pub(super) host: String,
    pub(super) boot: String,
    pub(super) pid: u32,
    pub(super) token: String,
    pub(super) expires: u64,
}

pub(super) fn host_ids() -> (String, String) {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    (
        read("/proc/sys/kernel/hostname"),
        read("/proc/sys/kernel/random/boot_id"),
    )
}

impl Lease {
    fn body(token: &str) -> Vec<u8> {
        let (host, boot) = host_ids();
        let b = LeaseBody {
            format: "vdisk-lease".into(),
            host,
            boot,
            pid: std::process::id(),
            token: token.into(),
            expires: unix_now() + LEASE_TTL.as_secs(),
        };
        serde_json::to_vec_pretty(&b).unwrap_or_default()
    }

    pub(super) fn acquire(store: S3Store) -> Result<Self> {
        let root = store.inner.root.clone();
        let in_use = |why: String| {
            Error::new(
                ErrorKind::InUse,
                format!("repository is in use by another vdisk run ({why})"),
            )
            .with_path(&root)
        };
        // One run at a time on this host, proved by the kernel (released when a run dies).
        let tag = format!(
            "{}|{}|{}",
            std::env::var("AWS_ENDPOINT_URL").unwrap_or_default(),
            store.inner.bucket,
            store.inner.prefix
        );
        let lock_path = std::env::temp_dir().join(format!(
            ".vdisk-s3-{}-{:08x}.lock",
            store.inner.bucket,
            crc32fast::hash(tag.as_bytes())
        ));
        let local = RepoLock::acquire_file(&lock_path, &root).map_err(|e| {
            if e.kind() == ErrorKind::InUse {
                in_use("a backup or prune on this host is writing it".into())
            } else {
                e
            }
        })?;
        let token = format!("{:016x}", random_u64());
        let body = Self::body(&token);
        let version = match store.create_only(LEASE, &body)? {
            Some(v) => v,
            None => {
                // Someone's lease: take it over if its holder is gone.
                let (old, version) = match store.get_whole(LEASE, 64 << 10) {
                    Ok(x) => x,
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        return Err(in_use(
                            "its lease changed while it was read; try again".into(),
                        ))
                    }
                    Err(e) => return Err(e),
                };
                let (host, boot) = host_ids();
                let parsed: Option<LeaseBody> = serde_json::from_slice(&old).ok();
                let takeover = match &parsed {
                    // Here (we hold the kernel lock: its holder is gone), or here before a
                    // reboot (gone too).
                    Some(l) if l.host == host => {
                        let _ = &boot;
                        true
                    }
                    Some(l) => l.expires < unix_now(),
                    // Not a lease of ours: nobody holds it.
                    None => true,
                };
                if !takeover {
                    let l = parsed.as_ref();
                    return Err(in_use(format!(
                        "host {}, pid {}; its lease expires in {} s unless renewed",
                        l.map_or("?", |l| l.host.as_str()),
                        l.map_or(0, |l| l.pid),
                        l.map_or(0, |l| l.expires.saturating_sub(unix_now()))
                    )));
                }
                let i = &store.inner;
                let key = i.key(LEASE);
                let opts = PutOptions {
                    mode: PutMode::Update(version),
                    ..Default::default()
                };
                match i.block_on(i.s3.put_opts(&key, PutPayload::from(body), opts)) {
                    Ok(p) => UpdateVersion {
                        e_tag: p.e_tag,
                        version: p.version,
                    },
                    Err(object_store::Error::Precondition { .. }) => {
                        return Err(in_use("another run took its lease over first".into()))
                    }
                    Err(e) => return Err(i.err("take over the lease", LEASE, e)),
                }
            }
        };
        let state = Arc::new(Mutex::new(LeaseState {
            version,
            lost: false,
        }));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let renewer = {
            let store = store.clone();
            let state = Arc::clone(&state);
            std::thread::Builder::new()
                .name("vdisk-lease".into())
                .spawn(move || renew(store, state, rx, token))
                .map_err(|e| Error::io("cannot start the lease renewer", e))?
        };
        Ok(Lease {
            store,
            _local: local,
            state,
            stop: Some(tx),
            renewer: Some(renewer),
        })
    }
}

/// Renew the lease every [`LEASE_RENEW`] until told to stop or the lease is lost.
pub(super) fn renew(
    store: S3Store,
    state: Arc<Mutex<LeaseState>>,
    stop: std::sync::mpsc::Receiver<()>,
    token: String,
) {
    let i = &store.inner;
    let key = i.key(LEASE);
    let mut deadline = unix_now() + LEASE_TTL.as_secs();
    loop {
        match stop.recv_timeout(LEASE_RENEW) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let version = state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .version
            .clone();
        let opts = PutOptions {
            mode: PutMode::Update(version),
            ..Default::default()
        };
        let body = Lease::body(&token);
        let r = i.block_on(i.s3.put_opts(&key, PutPayload::from(body), opts));
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Ok(p) => {
                s.version = UpdateVersion {
                    e_tag: p.e_tag,
                    version: p.version,
                };
                deadline = unix_now() + LEASE_TTL.as_secs();
            }
            Err(object_store::Error::Precondition { .. }) => {
                s.lost = true;
                return;
            }
            Err(_) if unix_now() >= deadline => {
                s.lost = true;
                return;
            }
            Err(_) => {}
        }
    }
}

impl WriterLock for Lease {
    fn check(&self) -> Result<()> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let lost = || {
            Error::new(
                ErrorKind::InUse,
                "this run lost the repository's lease (another run took it over); nothing was changed by this run",
            )
            .with_path(self.store.path(LEASE))
        };
        if s.lost {
            return Err(lost());
        }
        let i = &self.store.inner;
        let key = i.key(LEASE);
        match i.block_on(retrying(|| i.s3.head(&key))) {
            Ok(m) if m.e_tag.is_some() && m.e_tag == s.version.e_tag => Ok(()),
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Err(lost()),
            Err(e) => Err(i.err("read", LEASE, e)),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        let lost = self.state.lock().map(|s| s.lost).unwrap_or(true);
        if !lost {
            let _ = super::Store::remove(&self.store, LEASE);
        }
    }
}
