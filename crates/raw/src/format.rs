//! The raw format's driver: the fallback of detection (anything no other format claims is
//! raw), and a writer to files and devices.

use std::path::Path;

use vdisk_core::{Error, ErrorKind, ImageSink, Result};
use vdisk_io::{Bytes, CreateOptions, Format, Layer, OpenContext, ProbeBytes};

use crate::{RawImage, RawSink};

/// The raw format: the file is the disk.
#[derive(Debug, Clone, Copy, Default)]
pub struct Raw;

/// The raw format's driver.
pub static RAW: Raw = Raw;

impl Format for Raw {
    fn name(&self) -> &'static str {
        "raw"
    }

    fn extensions(&self) -> &'static [&'static str] {
        &["raw", "img", "bin", "iso"]
    }

    /// Raw is never probed: it is what a file no format claims is read as.
    fn probe(&self, _bytes: &ProbeBytes<'_>) -> bool {
        false
    }

    fn open(&self, bytes: Bytes, _cx: &OpenContext<'_>) -> Result<Box<dyn Layer>> {
        Ok(Box::new(RawImage::from_bytes(bytes)?))
    }

    fn writable(&self) -> bool {
        true
    }

    fn create(&self, dst: &Path, size: u64, opts: &CreateOptions) -> Result<Box<dyn ImageSink>> {
        if let Some(s) = &opts.subformat {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("a raw image has no subformat (\"{s}\")"),
            )
            .with_path(dst));
        }
        if opts.compress {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "a raw image cannot be compressed",
            )
            .with_path(dst));
        }
        Ok(Box::new(RawSink::create(dst, size, &opts.policy)?))
    }
}
