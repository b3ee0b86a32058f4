use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The result type of every vdisk library call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, as a caller would want to match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An operating-system I/O error (open, read, write, map).
    Io,
    /// The bytes are not an image of the expected format (bad magic, unparsable descriptor).
    InvalidFormat,
    /// A valid image that uses a feature vdisk does not implement.
    Unsupported,
    /// The image is damaged: metadata that contradicts itself or points outside the file.
    Corrupt,
    /// A read or write outside the image's virtual size.
    OutOfBounds,
    /// A path inside a descriptor is absolute or leaves the descriptor's folder.
    PathRefused,
    /// A chain of delta links loops back on itself.
    ChainLoop,
    /// A chain of delta links is deeper than the limit.
    ChainTooDeep,
    /// A link's parentCID does not match its parent's CID.
    ParentMismatch,
    /// A file the image needs does not exist.
    NotFound,
    /// The caller asked for something that makes no sense (bad option, bad size).
    InvalidArgument,
    /// A safety rule refused the operation (an output that is an input, a write into a
    /// repository being read).
    Refused,
    /// The output already exists and the caller did not ask to replace it.
    AlreadyExists,
    /// The operation looks unsafe (a source that was not closed cleanly, another disk's
    /// repository, a bitmap of another size); callers may insist.
    Unsafe,
    /// Another run holds the resource (a repository being written).
    InUse,
    /// Writing to standard output failed because its reader went away (`| head`).
    BrokenPipe,
    /// The input holds several things the caller could mean (an OVA with several disks), and
    /// it must name one.
    Ambiguous,
}

/// One error type for the whole toolkit: a kind, a message, and where it happened.
///
/// Displayed as `PATH: MESSAGE (at offset N)`, which the CLI prints after `vdisk: error: `.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    path: Option<PathBuf>,
    offset: Option<u64>,
    source: Option<io::Error>,
}

impl Error {
    /// An error of `kind` with a message a user can act on.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            path: None,
            offset: None,
            source: None,
        }
    }

    /// Shorthand for [`ErrorKind::Corrupt`].
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }

    /// Shorthand for [`ErrorKind::InvalidFormat`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidFormat, message)
    }

    /// Shorthand for [`ErrorKind::Unsupported`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    /// An I/O error, with what was being done (`"reading"`, `"opening"`, …).
    pub fn io(what: impl Into<String>, err: io::Error) -> Self {
        let kind = match err.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            io::ErrorKind::BrokenPipe => ErrorKind::BrokenPipe,
            _ => ErrorKind::Io,
        };
        let what = what.into();
        let message = if what.is_empty() {
            err.to_string()
        } else {
            format!("{what}: {err}")
        };
        Error {
            kind,
            message,
            path: None,
            offset: None,
            source: Some(err),
        }
    }

    /// Attach the file this error is about, unless one is already attached (the innermost
    /// path is the most precise one: the extent file rather than the descriptor naming it).
    pub fn with_path(mut self, path: impl AsRef<Path>) -> Self {
        if self.path.is_none() {
            self.path = Some(path.as_ref().to_path_buf());
        }
        self
    }

    /// Attach the byte offset in the file where the problem was found, unless one is set.
    pub fn at(mut self, offset: u64) -> Self {
        if self.offset.is_none() {
            self.offset = Some(offset);
        }
        self
    }

    /// The matchable kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without path or offset.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The file the error is about, if known.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The byte offset in that file, if known.
    pub fn offset(&self) -> Option<u64> {
        self.offset
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = &self.path {
            write!(f, "{}: ", path.display())?;
        }
        // Messages come from file contents in places; keep the error one line.
        for ch in self.message.chars() {
            if ch.is_control() {
                f.write_str(" ")?;
            } else {
                write!(f, "{ch}")?;
            }
        }
        if let Some(offset) = self.offset {
            write!(f, " (at offset {offset})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Self {
        Error::io("", err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_path_message_and_offset_on_one_line() {
        let e = Error::corrupt("grain table\npast the end")
            .with_path("disk.vmdk")
            .at(4096);
        assert_eq!(
            e.to_string(),
            "disk.vmdk: grain table past the end (at offset 4096)"
        );
        assert_eq!(e.kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn innermost_path_wins() {
        let e = Error::corrupt("x")
            .with_path("extent.vmdk")
            .with_path("desc.vmdk");
        assert_eq!(e.path(), Some(Path::new("extent.vmdk")));
    }

    #[test]
    fn not_found_io_maps_to_not_found_kind() {
        let e = Error::io("opening", io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }
}
