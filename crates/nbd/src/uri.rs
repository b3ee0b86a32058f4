//! NBD URIs (the NBD project's `doc/uri.md`), as printed by `vdisk serve` and understood by
//! qemu, libnbd and nbdkit clients.

use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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
}
