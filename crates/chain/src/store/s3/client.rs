//! The client: object_store's S3 client on a private tokio runtime, retries of transient
//! failures, and one-line errors without secrets.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::multipart::MultipartStore;
use object_store::path::Path as Key;
use object_store::ObjectStore;
use tokio::runtime::Runtime;
use vdisk_core::{Error, ErrorKind, Result};

use super::read::BlockCache;
use super::upload::PartBuffers;

/// Whether an error is worth another try: server errors, time-outs and broken connections,
/// not answers about the request itself (not found, exists, denied, bad request).
pub(super) fn transient(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    match e {
        E::Generic { .. } | E::JoinError { .. } => {
            let t = e.to_string();
            !(t.contains("status code: 4") && !t.contains("code: 408") && !t.contains("code: 429"))
        }
        _ => false,
    }
}

/// Run `op` until it succeeds, fails for good, or has failed transiently 5 times (on top of
/// the client's own retries of server errors), backing off between tries.
pub(super) async fn retrying<T, F, Fut>(mut op: F) -> std::result::Result<T, object_store::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, object_store::Error>>,
{
    let mut delay = Duration::from_millis(200);
    let mut attempt = 0;
    loop {
        match op().await {
            Err(e) if attempt < 5 && transient(&e) => {
                attempt += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(4));
            }
            r => return r,
        }
    }
}

/// What a repository on an object store needs of it: objects (conditional puts, ranged
/// gets, listing) and multipart uploads. S3 clients have both, and so does `object_store`'s
/// in-memory store, which the unit tests use.
pub(crate) trait Backend: ObjectStore + MultipartStore {}

impl<T: ObjectStore + MultipartStore> Backend for T {}

/// An S3 client for `bucket` with the credentials, region and endpoint of the environment
/// (`AWS_*`), with finite timeouts and retries; and the values never to show in a message.
pub(super) fn from_environment(
    bucket: &str,
    root: &std::path::Path,
) -> Result<(Arc<dyn Backend>, Vec<String>)> {
    use object_store::aws::AmazonS3Builder;
    use object_store::{BackoffConfig, ClientOptions, RetryConfig};
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let has_keys = env("AWS_ACCESS_KEY_ID").is_some() && env("AWS_SECRET_ACCESS_KEY").is_some();
    let other = env("AWS_WEB_IDENTITY_TOKEN_FILE").is_some()
        || env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
        || env("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some();
    if !has_keys && !other {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for a server other than AWS S3)",
        )
        .with_path(root));
    }
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(4),
            base: 2.0,
        },
        max_retries: 6,
        retry_timeout: Duration::from_secs(60),
    };
    let client = ClientOptions::new()
        .with_timeout(Duration::from_secs(60))
        .with_connect_timeout(Duration::from_secs(5));
    // Client options first: the environment's (AWS_ALLOW_HTTP…) go on top of them.
    let mut builder = AmazonS3Builder::new()
        .with_client_options(client)
        .with_retry(retry);
    for (k, v) in std::env::vars() {
        if k.starts_with("AWS_") {
            if let Ok(key) = k.to_ascii_lowercase().parse() {
                builder = builder.with_config(key, v);
            }
        }
    }
    let mut builder = builder.with_bucket_name(bucket);
    if env("AWS_REGION").is_none() && env("AWS_DEFAULT_REGION").is_none() {
        builder = builder.with_region("us-east-1");
    }
    let s3 = builder.build().map_err(|e| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "cannot set up the S3 client: {}",
                e.to_string().split('\n').next().unwrap_or("")
            ),
        )
        .with_path(root)
    })?;
    let secrets = ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]
        .iter()
        .filter_map(|k| env(k))
        .collect();
    Ok((Arc::new(s3), secrets))
}

/// The client, its runtime and what every handle shares.
#[derive(Debug)]
pub(super) struct Inner {
    pub(super) rt: Runtime,
    pub(super) s3: Arc<dyn Backend>,
    pub(super) bucket: String,
    pub(super) prefix: String,
    pub(super) root: PathBuf,
    /// Values never to show in a message.
    pub(super) secrets: Vec<String>,
    /// Number of the metadata object loaded (0: none, or the plain `vdisk-repo.json`).
    pub(super) meta_seq: Mutex<u64>,
    pub(super) cache: BlockCache,
    pub(super) next_file: AtomicU64,
    /// Buffers of parts that have been sent, for the next parts.
    pub(super) part_buffers: Arc<PartBuffers>,
}

impl Inner {
    /// The shared state of a store on `backend`, with a private runtime for its client.
    pub(super) fn new(
        backend: Arc<dyn Backend>,
        bucket: &str,
        prefix: &str,
        root: PathBuf,
        secrets: Vec<String>,
    ) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .thread_name("vdisk-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::io("cannot start the S3 client's threads", e))?;
        Ok(Inner {
            rt,
            s3: backend,
            bucket: bucket.into(),
            prefix: prefix.into(),
            root,
            secrets,
            meta_seq: Mutex::new(0),
            cache: BlockCache::default(),
            next_file: AtomicU64::new(1),
            part_buffers: Arc::default(),
        })
    }

    pub(super) fn key(&self, name: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(name)
        } else {
            Key::from(format!("{}/{name}", self.prefix))
        }
    }

    pub(super) fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// A one-line error about `name`, without secrets or response bodies.
    pub(super) fn err(&self, what: &str, name: &str, e: object_store::Error) -> Error {
        use object_store::Error as E;
        let path = if name.is_empty() {
            self.root.clone()
        } else {
            self.root.join(name)
        };
        let text = e.to_string();
        let (kind, msg) = match &e {
            E::NotFound { .. } if text.contains("NoSuchBucket") => (
                ErrorKind::NotFound,
                format!(
                    "no such bucket \"{}\" (vdisk never creates buckets: create it first)",
                    self.bucket
                ),
            ),
            E::NotFound { .. } => (ErrorKind::NotFound, format!("cannot {what}: not found")),
            E::AlreadyExists { .. } => (ErrorKind::AlreadyExists, format!("cannot {what}: exists")),
            E::Precondition { .. } => (
                ErrorKind::InUse,
                format!("cannot {what}: changed by another writer"),
            ),
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                (ErrorKind::Refused, denied())
            }
            _ if text.contains("NoSuchBucket") => (
                ErrorKind::NotFound,
                format!(
                    "no such bucket \"{}\" (vdisk never creates buckets: create it first)",
                    self.bucket
                ),
            ),
            _ if text.contains("status code: 403")
                || text.contains("SignatureDoesNotMatch")
                || text.contains("InvalidAccessKeyId")
                || text.contains("AccessDenied") =>
            {
                (ErrorKind::Refused, denied())
            }
            _ => (
                ErrorKind::Io,
                format!("cannot {what}: {}", self.clean(&text)),
            ),
        };
        Error::new(kind, msg).with_path(path)
    }

    /// An error text fit for one line: no XML body, no secret, not too long.
    pub(super) fn clean(&self, text: &str) -> String {
        let mut t = text.split("<?xml").next().unwrap_or("").to_string();
        for s in &self.secrets {
            if !s.is_empty() {
                t = t.replace(s.as_str(), "[secret]");
            }
        }
        let t: String = t.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut out: String = t.chars().take(300).collect();
        if t.chars().count() > 300 {
            out.push('…');
        }
        out
    }
}

pub(super) fn denied() -> String {
    "access denied: the store refused the credentials (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and that they may use this bucket)".into()
}
