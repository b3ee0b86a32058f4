//! NBD URIs (the NBD project's `doc/uri.md`), as printed by `vdisk serve` and understood by
//! qemu, libnbd and nbdkit clients, and parsed into an [`NbdUri`] for the client.

use std::ffi::OsString;
use std::fmt::{self, Write as _};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use vdisk_core::{Error, ErrorKind, Result};

use crate::proto::MAX_STRING;

/// The port IANA assigned to NBD, used when a `nbd://` URI names none.
pub const DEFAULT_PORT: u16 = 10809;

/// Where an NBD server listens and which export to read: a parsed `nbd://HOST[:PORT]/EXPORT`
/// or `nbd+unix:///EXPORT?socket=PATH`.
///
/// ```
/// use vdisk_nbd::{NbdTransport, NbdUri};
/// let u = NbdUri::parse("nbd+unix:///vda?socket=/run/backup.sock")?;
/// assert_eq!(u.export, "vda");
/// assert_eq!(u.transport, NbdTransport::Unix { socket: "/run/backup.sock".into() });
/// let t = NbdUri::parse("nbd://[::1]/disk%201")?;
/// assert_eq!(t.export, "disk 1");
/// assert_eq!(t.to_string(), "nbd://[::1]:10809/disk%201");
/// // The identity of a disk across backups leaves the (per-job) socket path out.
/// assert_eq!(u.identity(), "nbd+unix:///vda");
/// assert!(NbdUri::looks_like("NBD://host/x") && !NbdUri::looks_like("disk.raw"));
/// # Ok::<(), vdisk_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NbdUri {
    /// How to reach the server.
    pub transport: NbdTransport,
    /// The export's name (empty: the server's default export).
    pub export: String,
}

/// How an NBD server is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NbdTransport {
    /// TCP: a host name or address (an IPv6 address without brackets) and a port.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
    /// A Unix socket.
    Unix {
        /// The socket's path.
        socket: PathBuf,
    },
}

/// Percent-decode `s`; fails on a `%` not followed by two hex digits.
fn decode(s: &str, what: &str) -> Result<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(format!("{what} has a bad percent escape")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn bad(msg: String) -> Error {
    Error::new(ErrorKind::InvalidArgument, msg)
}

impl NbdUri {
    /// Whether `text` is meant as an NBD URI (its scheme is one of NBD's), whether or not it
    /// is a valid one: such text is never taken for a file name.
    pub fn looks_like(text: &str) -> bool {
        let Some((scheme, _)) = text.split_once("://") else {
            return false;
        };
        let s = scheme.to_ascii_lowercase();
        s == "nbd" || s == "nbds" || s.starts_with("nbd+") || s.starts_with("nbds+")
    }

    /// Parse `nbd://HOST[:PORT]/EXPORT` or `nbd+unix:///EXPORT?socket=PATH` (percent-encoded
    /// as RFC 3986 says). TLS (`nbds`, `tls-*` parameters), vsock and abstract sockets are
    /// refused: this client speaks plain NBD only.
    pub fn parse(text: &str) -> Result<NbdUri> {
        let with = |e: Error| e.with_path(text);
        Self::parse_inner(text).map_err(with)
    }

    fn parse_inner(text: &str) -> Result<NbdUri> {
        let (scheme, rest) = text.split_once("://").ok_or_else(|| {
            bad("is not an NBD URI (nbd://HOST/EXPORT or nbd+unix:///EXPORT?socket=PATH)".into())
        })?;
        let scheme = scheme.to_ascii_lowercase();
        let unix = match scheme.as_str() {
            "nbd" => false,
            "nbd+unix" => true,
            "nbds" | "nbds+unix" => {
                return Err(Error::unsupported(
                    "asks for TLS, which vdisk's NBD client does not speak; use a plain nbd:// or nbd+unix:// export",
                ))
            }
            other => {
                return Err(Error::unsupported(format!(
                    "uses the NBD transport \"{other}\", which vdisk does not speak (nbd:// or nbd+unix://)"
                )))
            }
        };
        let (rest, fragment) = rest.split_once('#').unwrap_or((rest, ""));
        if !fragment.is_empty() {
            return Err(bad("has a #fragment, which NBD URIs do not take".into()));
        }
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let export = String::from_utf8(decode(path, "the export name")?)
            .map_err(|_| bad("has an export name that is not UTF-8".into()))?;
        if export.len() > MAX_STRING || export.contains('\0') {
            return Err(bad(format!(
                "has an export name longer than {MAX_STRING} bytes or holding a NUL"
            )));
        }
        let mut socket: Option<PathBuf> = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "socket" if unix => {
                    let raw = decode(v, "the socket path")?;
                    if raw.is_empty() {
                        return Err(bad("has an empty socket path".into()));
                    }
                    if raw[0] == 0 {
                        return Err(Error::unsupported(
                            "names an abstract socket, which vdisk does not connect to",
                        ));
                    }
                    if raw.contains(&0) {
                        return Err(bad("has a socket path holding a NUL".into()));
                    }
                    socket = Some(PathBuf::from(OsString::from_vec(raw)));
                }
                k if k.starts_with("tls") => {
                    return Err(Error::unsupported(format!(
                        "sets {k}, but vdisk's NBD client does not speak TLS"
                    )))
                }
                k if k.starts_with("x-") => {}
                k => {
                    return Err(bad(format!(
                        "has the query parameter \"{k}\", which vdisk does not know{}",
                        if unix {
                            ""
                        } else {
                            " (socket= is for nbd+unix:// URIs)"
                        }
                    )))
                }
            }
        }
        let transport = if unix {
            if !authority.is_empty() {
                return Err(bad(
                    "names a host, but an nbd+unix:// URI takes none (nbd+unix:///EXPORT?socket=PATH)".into(),
                ));
            }
            NbdTransport::Unix {
                socket: socket.ok_or_else(|| {
                    bad("has no socket= parameter (nbd+unix:///EXPORT?socket=PATH)".into())
                })?,
            }
        } else {
            if authority.contains('@') {
                return Err(Error::unsupported(
                    "names a user, which only TLS authentication uses; vdisk does not speak TLS",
                ));
            }
            let (host, port) = split_host_port(authority)?;
            NbdTransport::Tcp { host, port }
        };
        Ok(NbdUri { transport, export })
    }

    /// What identifies the disk across backups: the URI without the socket path (a pull-mode
    /// backup job makes a new socket each time, often under a new name) and, for TCP, with
    /// its host and port.
    pub fn identity(&self) -> String {
        match &self.transport {
            NbdTransport::Unix { .. } => format!("nbd+unix:///{}", encode(self.export.as_bytes())),
            NbdTransport::Tcp { host, port } => tcp_uri(host, *port, &self.export),
        }
    }
}

fn split_host_port(authority: &str) -> Result<(String, u16)> {
    let port_of = |p: &str| -> Result<u16> {
        if p.is_empty() {
            return Ok(DEFAULT_PORT);
        }
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(bad(format!(
                "has the port \"{p}\", not a number from 1 to 65535"
            ))),
        }
    };
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("has an IPv6 address without its closing ]".into()))?;
        let port = match after {
            "" => DEFAULT_PORT,
            a => port_of(
                a.strip_prefix(':')
                    .ok_or_else(|| bad("has text after its IPv6 address".into()))?,
            )?,
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), port_of(p)?),
            None => (authority.to_string(), DEFAULT_PORT),
        }
    };
    let host = String::from_utf8(decode(&host, "the host")?)
        .map_err(|_| bad("has a host name that is not UTF-8".into()))?;
    if host.is_empty() {
        return Err(bad("names no host (nbd://HOST[:PORT]/EXPORT)".into()));
    }
    Ok((host, port))
}

impl fmt::Display for NbdUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.transport {
            NbdTransport::Unix { socket } => f.write_str(&unix_uri(&self.export, socket)),
            NbdTransport::Tcp { host, port } => f.write_str(&tcp_uri(host, *port, &self.export)),
        }
    }
}

impl std::str::FromStr for NbdUri {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        NbdUri::parse(s)
    }
}

/// Percent-encode `bytes`, keeping RFC 3986 unreserved characters and `/`.
fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            s.push(b as char);
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    s
}

/// The URI of `export` on a Unix socket: `nbd+unix:///EXPORT?socket=PATH`.
///
/// The path is used as given (a relative path is relative to the client's working folder).
///
/// ```
/// use std::path::Path;
/// assert_eq!(
///     vdisk_nbd::unix_uri("disk", Path::new("/run/vdisk.sock")),
///     "nbd+unix:///disk?socket=/run/vdisk.sock"
/// );
/// ```
pub fn unix_uri(export: &str, socket: &Path) -> String {
    format!(
        "nbd+unix:///{}?socket={}",
        encode(export.as_bytes()),
        encode(socket.as_os_str().as_bytes())
    )
}

/// The URI of `export` over TCP: `nbd://HOST:PORT/EXPORT`, with an IPv6 literal host in
/// brackets.
///
/// `host` should be a name or address clients can reach: for a server listening on
/// `0.0.0.0` or `::`, pass the machine's name (or `localhost`) instead.
///
/// ```
/// assert_eq!(vdisk_nbd::tcp_uri("127.0.0.1", 10809, "disk"), "nbd://127.0.0.1:10809/disk");
/// assert_eq!(vdisk_nbd::tcp_uri("::1", 10809, ""), "nbd://[::1]:10809/");
/// ```
pub fn tcp_uri(host: &str, port: u16, export: &str) -> String {
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    format!("nbd://{host}:{port}/{}", encode(export.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_are_percent_encoded() {
        assert_eq!(
            unix_uri("my disk", Path::new("/tmp/a&b=c.sock")),
            "nbd+unix:///my%20disk?socket=/tmp/a%26b%3Dc.sock"
        );
        assert_eq!(unix_uri("", Path::new("s")), "nbd+unix:///?socket=s");
        assert_eq!(tcp_uri("[fe80::1]", 1, "é"), "nbd://[fe80::1]:1/%C3%A9");
        assert_eq!(tcp_uri("host", 2, "/x"), "nbd://host:2//x");
    }

    #[test]
    fn uris_parse_as_the_nbd_uri_spec_says() {
        let p = |s: &str| NbdUri::parse(s).unwrap();
        let tcp = |host: &str, port| NbdTransport::Tcp {
            host: host.into(),
            port,
        };
        assert_eq!(p("nbd://example.com/disk").export, "disk");
        assert_eq!(
            p("nbd://example.com/disk").transport,
            tcp("example.com", 10809)
        );
        assert_eq!(p("nbd://example.com").export, "");
        assert_eq!(p("nbd://example.com/").export, "");
        assert_eq!(p("nbd://example.com//disk").export, "/disk");
        assert_eq!(p("nbd://example.com/hello%20world").export, "hello world");
        assert_eq!(p("nbd://10.0.0.1:999/x").transport, tcp("10.0.0.1", 999));
        assert_eq!(p("nbd://[fe80::1]:7/x").transport, tcp("fe80::1", 7));
        assert_eq!(p("NBD://h/x?x-foo=1").export, "x");
        let u = p("nbd+unix:///vda?socket=/tmp/a%26b.sock");
        assert_eq!(
            u.transport,
            NbdTransport::Unix {
                socket: "/tmp/a&b.sock".into()
            }
        );
        assert_eq!(p("nbd+unix://?socket=s").export, "");
        // Round trips through Display.
        for s in [
            "nbd://h:1/a%20b",
            "nbd+unix:///x?socket=/run/s.sock",
            "nbd://[::1]:10809/",
        ] {
            assert_eq!(p(s).to_string(), s);
        }
    }

    #[test]
    fn bad_and_unsupported_uris_are_refused_with_the_uri_named() {
        for (s, kind) in [
            ("nbds://h/x", ErrorKind::Unsupported),
            ("nbds+unix:///x?socket=s", ErrorKind::Unsupported),
            ("nbd+vsock://2/x", ErrorKind::Unsupported),
            ("nbd://h/x?tls-type=psk", ErrorKind::Unsupported),
            ("nbd://user@h/x", ErrorKind::Unsupported),
            ("nbd+unix:///x?socket=%00abs", ErrorKind::Unsupported),
            ("nbd+unix:///x", ErrorKind::InvalidArgument),
            ("nbd+unix://host/x?socket=s", ErrorKind::InvalidArgument),
            ("nbd://h/x?socket=s", ErrorKind::InvalidArgument),
            ("nbd://h:0/x", ErrorKind::InvalidArgument),
            ("nbd://h:99999/x", ErrorKind::InvalidArgument),
            ("nbd://h:p/x", ErrorKind::InvalidArgument),
            ("nbd://[::1/x", ErrorKind::InvalidArgument),
            ("nbd:///x", ErrorKind::InvalidArgument),
            ("nbd://h/%zz", ErrorKind::InvalidArgument),
            ("nbd://h/%ff", ErrorKind::InvalidArgument),
            ("nbd://h/x#frag", ErrorKind::InvalidArgument),
        ] {
            let e = NbdUri::parse(s).unwrap_err();
            assert_eq!(e.kind(), kind, "{s}: {e}");
            assert!(e.to_string().starts_with(s), "{e}");
        }
        let long = format!("nbd://h/{}", "a".repeat(5000));
        assert!(NbdUri::parse(&long).is_err());
    }

    #[test]
    fn identity_leaves_the_socket_out() {
        let a = NbdUri::parse("nbd+unix:///vda?socket=/run/a.sock").unwrap();
        let b = NbdUri::parse("nbd+unix:///vda?socket=/run/b.sock").unwrap();
        assert_eq!(a.identity(), b.identity());
        assert_eq!(
            NbdUri::parse("nbd://h/x").unwrap().identity(),
            "nbd://h:10809/x"
        );
    }
}
