//! The qcow2 format's driver.

use std::path::Path;

use vdisk_core::{ImageSink, Result};
use vdisk_io::{
    Bytes, CreateOptions, DeltaParent, Format, ImageOutput, Layer, OpenContext, ProbeBytes,
};

use crate::{probe, Qcow2Image, Qcow2Sink};

/// The qcow2 format: QEMU's copy-on-write image.
#[derive(Debug, Clone, Copy, Default)]
pub struct Qcow2;

/// The qcow2 format's driver.
pub static QCOW2: Qcow2 = Qcow2;

impl Format for Qcow2 {
    fn name(&self) -> &'static str {
        "qcow2"
    }

    fn extensions(&self) -> &'static [&'static str] {
        &["qcow2"]
    }

    fn probe(&self, bytes: &ProbeBytes<'_>) -> bool {
        probe(bytes.head)
    }

    fn open(&self, bytes: Bytes, cx: &OpenContext<'_>) -> Result<Box<dyn Layer>> {
        Ok(Box::new(Qcow2Image::from_bytes(bytes, cx)?))
    }

    fn writable(&self) -> bool {
        true
    }

    /// A sparse version 3 image: 64 KiB clusters unless `opts.cluster_size` says otherwise;
    /// zstd-compressed clusters with `opts.compress`.
    fn create(&self, dst: &Path, size: u64, opts: &CreateOptions) -> Result<Box<dyn ImageSink>> {
        Ok(Box::new(Qcow2Sink::create(dst, size, opts, None)?))
    }

    /// An overlay on `parent`: its name and format are written as the backing file; every
    /// block given is stored (all-zero ones as zero clusters, which mask the parent).
    fn create_delta(
        &self,
        dst: &Path,
        parent: &DeltaParent<'_>,
        size: u64,
        opts: &CreateOptions,
    ) -> Result<Box<dyn ImageSink>> {
        Ok(Box::new(Qcow2Sink::create(
            dst,
            size,
            opts,
            Some((parent.name, parent.format)),
        )?))
    }

    /// As [`Format::create`], into a repository's output (written front to back but for
    /// the header).
    fn create_in(
        &self,
        out: Box<dyn ImageOutput>,
        size: u64,
        opts: &CreateOptions,
    ) -> Result<Box<dyn ImageSink>> {
        Ok(Box::new(Qcow2Sink::create_in(out, size, opts, None)?))
    }

    /// As [`Format::create_delta`], into a repository's output.
    fn create_delta_in(
        &self,
        out: Box<dyn ImageOutput>,
        parent: &DeltaParent<'_>,
        size: u64,
        opts: &CreateOptions,
    ) -> Result<Box<dyn ImageSink>> {
        Ok(Box::new(Qcow2Sink::create_in(
            out,
            size,
            opts,
            Some((parent.name, parent.format)),
        )?))
    }
}
