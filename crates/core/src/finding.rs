//! Findings of a metadata check (`vdisk check`): what is wrong, how badly, and in which file.

use std::fmt;
use std::path::PathBuf;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    /// The image is damaged: some of it reads wrong, or not at all.
    Error,
    /// Odd but harmless (leaked space, a redundant copy that disagrees but is not used).
    Warning,
}

/// One thing a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How bad it is.
    pub severity: Severity,
    /// The file it is in.
    pub file: PathBuf,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

impl Finding {
    /// An error in `file`.
    pub fn error(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Finding {
            severity: Severity::Error,
            file: file.into(),
            message: message.into(),
        }
    }

    /// A warning about `file`.
    pub fn warning(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Finding {
            severity: Severity::Warning,
            file: file.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}
