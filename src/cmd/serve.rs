//! `vdisk serve`: a read-only NBD export of an image or of a restore point (instant recovery).

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vdisk::nbd::{ExportConfig, Server};
use vdisk::{DiskImage, Error, ErrorKind, Result};

use super::{stdout_error, Ctx, Status};

/// Serve an image, or a repository's point, read-only over NBD
///
/// Runs until SIGINT or SIGTERM. A repository's point is checked block by block as it is
/// read, so a VM can boot from a backup at once (instant recovery).
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("endpoint").required(true).args(["socket", "listen"])))]
#[command(after_help = "Examples:
  vdisk serve --name web01 /backups --socket /run/web01.sock   # the newest point
  qemu-img convert -O qcow2 'nbd+unix:///?socket=/run/web01.sock' web01.qcow2
  vdisk serve --name web01 --point 3 /backups --listen 127.0.0.1:10809")]
pub struct Args {
    /// An image (a file, or an NBD export to re-export: nbd://HOST/EXPORT,
    /// nbd+unix:///EXPORT?socket=PATH), or a repository: a folder or s3://BUCKET/PREFIX
    /// (with --point, the newest point by default).
    pub source: PathBuf,
    /// The point of a repository to serve, by its number in its NAME.
    #[arg(long, value_name = "N")]
    pub point: Option<u64>,
    /// Listen on this Unix socket (created; removed at exit).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Listen on this TCP address only, e.g. 127.0.0.1:10809.
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// For a repository: the NAME whose point to serve (default: its only NAME). For an
    /// image: the export's name, as --export.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The export's name (clients ask for it; the default is the empty name).
    #[arg(long, value_name = "EXPORT")]
    pub export: Option<String>,
}

/// Bind the Unix socket at `path`, replacing a stale socket a killed server left (one nobody
/// answers on), never any other file.
fn bind_unix(path: &Path) -> Result<UnixListener> {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            // Refused, not AlreadyExists: serve has no --force, and never replaces such a file.
            return Err(Error::new(
                ErrorKind::Refused,
                "already exists and is not a socket; remove it or choose another --socket path",
            )
            .with_path(path));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(Error::new(
                ErrorKind::InUse,
                "another server is listening on this socket",
            )
            .with_path(path));
        }
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path).map_err(|e| Error::io("cannot listen on", e).with_path(path))
}

/// The image to serve: an image file or NBD export, or a disk of a point of a repository,
/// checked as it is read; and the export's name.
fn open_source(ctx: &Ctx, a: &Args) -> Result<(Arc<dyn DiskImage>, String)> {
    if vdisk::ImageLocation::from(&a.source).is_live() {
        if a.point.is_some() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "--point applies to a repository, and this is an NBD export",
            )
            .with_path(&a.source));
        }
        let export = a
            .export
            .clone()
            .or_else(|| a.name.clone())
            .unwrap_or_default();
        return Ok((Arc::new(vdisk::open_with(&a.source, &ctx.open)?), export));
    }
    let location = super::location(&a.source)?;
    let is_s3 = matches!(location, vdisk::chain::Location::S3 { .. });
    let export = a.export.clone().unwrap_or_default();
    if is_s3
        || a.source.join(vdisk::chain::layout2::META_FILE).is_file()
        || a.source.join("config").is_file()
    {
        let (img, ..) = super::restore::checked_disk(ctx, &a.source, a.name.as_deref(), a.point)?;
        return Ok((img, export));
    }
    if a.point.is_some() {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "--point applies to a repository, and this is not one",
        )
        .with_path(&a.source));
    }
    let export = a
        .export
        .clone()
        .or_else(|| a.name.clone())
        .unwrap_or_default();
    Ok((Arc::new(vdisk::open_with(&a.source, &ctx.open)?), export))
}

pub fn run(ctx: &Ctx, a: Args) -> Result<Status> {
    let (image, export) = open_source(ctx, &a)?;
    let server = Arc::new(Server::new(image, ExportConfig::new(export.clone()))?);
    let wake = vdisk::io::sys::interrupt_pipe()
        .map_err(|e| Error::io("cannot catch SIGINT and SIGTERM", e))?;
    let handle = server.shutdown_handle();
    let (uri, socket, serving) = if let Some(path) = &a.socket {
        let listener = bind_unix(path)?;
        // An absolute path in the URI, so that clients anywhere can use it.
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.clone());
        let uri = vdisk::nbd::unix_uri(&export, &abs);
        let s = Arc::clone(&server);
        let t = std::thread::spawn(move || s.serve_unix(listener));
        (uri, Some(path.clone()), t)
    } else {
        let addr = a.listen.as_deref().unwrap_or_default();
        let listener = TcpListener::bind(addr).map_err(|e| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("cannot listen on {addr}: {e}"),
            )
        })?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::io("cannot read the listening address", e))?;
        let host = addr
            .rsplit_once(':')
            .map_or(addr, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let uri = vdisk::nbd::tcp_uri(host, local.port(), &export);
        let s = Arc::clone(&server);
        let t = std::thread::spawn(move || s.serve_tcp(listener));
        (uri, None, t)
    };
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{uri}").map_err(stdout_error)?;
        out.flush().map_err(stdout_error)?;
    }
    if !ctx.quiet {
        eprintln!("vdisk: serving {} read-only at {uri}", a.source.display());
    }
    // Wait for a signal (or for the server to stop by itself).
    let waiter = std::thread::spawn(move || {
        use std::io::Read;
        let mut wake = wake;
        let mut b = [0u8; 1];
        let _ = wake.read(&mut b);
        handle.shutdown();
    });
    let served = serving
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    if let Some(path) = &socket {
        let _ = std::fs::remove_file(path);
    }
    drop(waiter);
    served?;
    Ok(0)
}
