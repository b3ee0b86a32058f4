//! What is served: the image, its name and description, and the sizes announced to clients.

use std::sync::Arc;

use vdisk_core::{DiskImage, Error, ErrorKind, Result};

use crate::proto::*;

/// Largest read (and write payload) a client may ask for: the spec's default maximum, which
/// every client honours without negotiation. Longer reads are refused, never buffered.
pub const MAX_PAYLOAD: u32 = 32 << 20;

/// Preferred block size announced in `NBD_INFO_BLOCK_SIZE`.
pub const PREFERRED_BLOCK: u32 = 4096;

/// Minimum block size announced in `NBD_INFO_BLOCK_SIZE`: reads may start and end anywhere.
pub const MIN_BLOCK: u32 = 1;

/// The name and description of the export.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportConfig {
    /// The export name clients ask for (`nbd+unix:///NAME?socket=…`). Clients asking for the
    /// empty name (the default export) get this export too.
    pub name: String,
    /// Text for a human, sent as `NBD_INFO_DESCRIPTION` and in `NBD_OPT_LIST` answers.
    pub description: Option<String>,
}

impl ExportConfig {
    /// An export called `name`, without a description.
    pub fn new(name: impl Into<String>) -> Self {
        ExportConfig {
            name: name.into(),
            description: None,
        }
    }

    /// The same export with a description.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Check the strings against the protocol's rules: at most 4096 bytes, no NUL.
    pub fn validate(&self) -> Result<()> {
        let check = |what: &str, s: &str| {
            if s.len() > MAX_STRING {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "NBD export {what} is {} bytes long; the protocol allows {MAX_STRING}",
                        s.len()
                    ),
                ));
            }
            if s.contains('\0') {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("NBD export {what} contains a NUL character"),
                ));
            }
            Ok(())
        };
        check("name", &self.name)?;
        if let Some(d) = &self.description {
            check("description", d)?;
        }
        Ok(())
    }
}

/// An image with its export settings, shared by every connection.
pub(crate) struct Export {
    pub image: Arc<dyn DiskImage>,
    pub config: ExportConfig,
    /// The image's size, read once: every request is checked against this.
    pub size: u64,
}

impl Export {
    pub fn new(image: Arc<dyn DiskImage>, config: ExportConfig) -> Self {
        let size = image.size();
        Export {
            image,
            config,
            size,
        }
    }

    /// Whether a client asking for `name` gets this export: its own name, or the empty
    /// name of the default export.
    pub fn answers_to(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.config.name.as_bytes()
    }

    /// Transmission flags for a session; `NBD_FLAG_SEND_DF` only with structured replies,
    /// as the spec requires.
    pub fn transmission_flags(&self, structured: bool) -> u16 {
        let mut f = FLAG_HAS_FLAGS | FLAG_READ_ONLY | FLAG_CAN_MULTI_CONN;
        if structured {
            f |= FLAG_SEND_DF;
        }
        f
    }
}
