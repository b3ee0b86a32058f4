//! A bare multipart upload, for `benches/compare-s3.sh`: FILE to `s3://BUCKET/KEY` through
//! `object_store` with the part sizes and the bytes in flight of a repository on an object
//! store (16 MiB parts, 64 MiB in flight), and nothing else: no image, no hashing, no
//! metadata. Its time is what the server's multipart ingest allows a streamed point.
//!
//! ```sh
//! cargo run --release -p vdisk-chain --example s3_multipart_put -- FILE s3://BUCKET/KEY
//! ```
//!
//! Credentials and endpoint come from the `AWS_*` environment, as for vdisk.

use std::io::Read;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::multipart::MultipartStore;
use object_store::path::Path as Key;
use object_store::PutPayload;

const PART: usize = 16 << 20;
const IN_FLIGHT: usize = 4;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [file, url] = args.as_slice() else {
        eprintln!("usage: s3_multipart_put FILE s3://BUCKET/KEY");
        std::process::exit(2);
    };
    let Some((bucket, key)) = url.strip_prefix("s3://").and_then(|u| u.split_once('/')) else {
        eprintln!("s3_multipart_put: {url}: not s3://BUCKET/KEY");
        std::process::exit(2);
    };
    if let Err(e) = put(file, bucket, key) {
        eprintln!("s3_multipart_put: {e}");
        std::process::exit(1);
    }
}

fn put(file: &str, bucket: &str, key: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if std::env::var_os("AWS_REGION").is_none() {
        builder = builder.with_region("us-east-1");
    }
    let s3 = Arc::new(builder.build()?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    let key = Key::from(key);
    let id = rt.block_on(s3.create_multipart(&key))?;
    let mut f = std::fs::File::open(file)?;
    let mut tasks = Vec::new();
    let mut parts = Vec::new();
    for idx in 0.. {
        let mut buf = vec![0u8; PART];
        let mut n = 0;
        while n < PART {
            let got = f.read(&mut buf[n..])?;
            if got == 0 {
                break;
            }
            n += got;
        }
        if n == 0 && idx > 0 {
            break;
        }
        buf.truncate(n);
        let (s3, key, id) = (Arc::clone(&s3), key.clone(), id.clone());
        let payload = PutPayload::from(bytes::Bytes::from(buf));
        tasks.push(rt.spawn(async move { s3.put_part(&key, &id, idx, payload).await }));
        if tasks.len() >= IN_FLIGHT {
            parts.push(rt.block_on(tasks.remove(0))??);
        }
        if n < PART {
            break;
        }
    }
    for t in tasks {
        parts.push(rt.block_on(t)??);
    }
    rt.block_on(s3.complete_multipart(&key, &id, parts))?;
    Ok(())
}
