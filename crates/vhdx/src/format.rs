//! The VHDX format's driver.

use std::path::Path;

use vdisk_core::{Error, ErrorKind, ImageSink, Result};
use vdisk_io::{
    Bytes, CreateOptions, DeltaParent, Format, ImageOutput, Layer, OpenContext, ProbeBytes,
};

use crate::header::FILE_SIGNATURE;
use crate::image::VhdxImage;
use crate::write::{VhdxSink, WriteOptions};

/// The VHDX format (Hyper-V's virtual hard disk v2).
#[derive(Debug, Clone, Copy, Default)]
pub struct Vhdx;

/// The VHDX format's driver.
pub static VHDX: Vhdx = Vhdx;

impl Format for Vhdx {
    fn name(&self) -> &'static str {
        "vhdx"
    }

    fn extensions(&self) -> &'static [&'static str] {
        &["vhdx"]
    }

    fn probe(&self, bytes: &ProbeBytes<'_>) -> bool {
        bytes.head.starts_with(FILE_SIGNATURE)
    }

    fn open(&self, bytes: Bytes, _cx: &OpenContext<'_>) -> Result<Box<dyn Layer>> {
        Ok(Box::new(VhdxImage::open(bytes)?))
    }

    fn subformats(&self) -> &'static [&'static str] {
        &["dynamic", "fixed"]
    }

    fn writable(&self) -> bool {
        true
    }

    fn create(&self, dst: &Path, size: u64, opts: &CreateOptions) -> Result<Box<dyn ImageSink>> {
        let w = WriteOptions::from_create(opts).map_err(|e| e.with_path(dst))?;
        Ok(Box::new(VhdxSink::create(dst, size, &w, &opts.policy)?))
    }

    /// Not offered: a VHDX's region table (at 192 KiB) must say where the BAT is, and the BAT
    /// which blocks exist, before the blocks are written; an output written front to back
    /// cannot know either.
    fn create_in(
        &self,
        out: Box<dyn ImageOutput>,
        _size: u64,
        _opts: &CreateOptions,
    ) -> Result<Box<dyn ImageSink>> {
        Err(Error::new(
            ErrorKind::Unsupported,
            "a VHDX image cannot be written front to back (its BAT is written after its blocks)",
        )
        .with_path(out.dst()))
    }

    fn create_delta(
        &self,
        dst: &Path,
        parent: &DeltaParent<'_>,
        size: u64,
        opts: &CreateOptions,
    ) -> Result<Box<dyn ImageSink>> {
        if parent.format != "vhdx" {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "a VHDX differencing disk needs a VHDX parent, not {} (\"{}\")",
                    parent.format,
                    parent.name.display()
                ),
            )
            .with_path(dst));
        }
        if opts
            .subformat
            .as_deref()
            .is_some_and(|s| s != "differencing")
        {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "a VHDX delta is a differencing disk: no other subformat applies",
            )
            .with_path(dst));
        }
        let link = parent
            .layer
            .link_id()
            .filter(|l| l.kind == crate::image::LINK_KIND)
            .and_then(|l| crate::guid::Guid::parse(&l.value))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "the parent \"{}\" offers no VHDX DataWriteGuid to link to",
                        parent.name.display()
                    ),
                )
                .with_path(dst)
            })?;
        let mut w = WriteOptions::from_create(&CreateOptions {
            subformat: None,
            ..opts.clone()
        })
        .map_err(|e| e.with_path(dst))?;
        // A child's logical sector size must be its parent's.
        if let Some(ss) = parent
            .layer
            .info()
            .fields
            .get("logical_sector_size")
            .and_then(|v| v.as_u64())
        {
            w.sector_size = ss as u32;
        }
        w.parent = Some(crate::write::ParentLink {
            linkage: link,
            relative_path: parent.name.to_string_lossy().into_owned(),
        });
        Ok(Box::new(VhdxSink::create(dst, size, &w, &opts.policy)?))
    }
}
