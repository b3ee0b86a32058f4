//! The VMDK format's driver: what the registry probes, opens and creates VMDKs with.

use std::path::{Path, PathBuf};

use vdisk_core::{Error, ErrorKind, ImageSink, Result};
use vdisk_io::{
    Bytes, CreateOptions, DeltaParent, Format, ImageOutput, Layer, OpenContext, ProbeBytes,
};

use crate::descriptor::CID_LINK;
use crate::descriptor::{looks_like_descriptor, Descriptor};
use crate::layer::{is_sesparse, VmdkLayer};
use crate::writer::{self, Adapter, Layout, LinkSink, ParentLink, Subformat, WriteOptions};

/// The VMDK format: descriptors, hosted sparse and flat extents, streamOptimized, ESXi
/// snapshots (SEsparse, COWD), and delta links.
#[derive(Debug, Clone, Copy, Default)]
pub struct Vmdk;

/// The VMDK format's driver.
pub static VMDK: Vmdk = Vmdk;

/// Whether `head` (the first bytes of a file) looks like a VMDK: a sparse header magic, the
/// older COWD magic, an SEsparse constant header, or a text descriptor. (An ESX snapshot's
/// data file is recognised so that it is refused with a useful message, not read as a raw
/// disk.)
pub fn probe(head: &[u8]) -> bool {
    head.starts_with(b"KDMV")
        || head.starts_with(b"COWD")
        || is_sesparse(head)
        || looks_like_descriptor(head)
}

/// The write options of `opts`.
fn write_options(opts: &CreateOptions) -> Result<WriteOptions> {
    let adapter = match &opts.adapter {
        Some(a) => a.parse::<Adapter>()?,
        None => Adapter::default(),
    };
    let cid = match &opts.link_id {
        Some(l) if l.kind == CID_LINK => Some(u32::from_str_radix(&l.value, 16).map_err(|_| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("\"{}\" is not a CID", l.value),
            )
        })?),
        Some(l) => {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("a VMDK's identity is a CID, not a {}", l.kind),
            ))
        }
        None => None,
    };
    Ok(WriteOptions {
        policy: opts.policy.clone(),
        adapter,
        cid,
    })
}

/// The parent link of a delta on `parent`: its CID and the name to record.
fn parent_link(parent: &DeltaParent<'_>) -> Result<ParentLink> {
    let cid = parent
        .layer
        .link_id()
        .filter(|l| l.kind == CID_LINK)
        .and_then(|l| u32::from_str_radix(&l.value, 16).ok())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "the parent of a VMDK link must be a VMDK with a CID, not a {} image (qemu-img refuses other parents too)",
                    parent.format
                ),
            )
            .with_path(parent.layer.path())
        })?;
    Ok(ParentLink {
        cid,
        hint: parent.name.to_path_buf(),
    })
}

impl Format for Vmdk {
    fn name(&self) -> &'static str {
        "vmdk"
    }

    fn extensions(&self) -> &'static [&'static str] {
        &["vmdk"]
    }

    fn probe(&self, bytes: &ProbeBytes<'_>) -> bool {
        probe(bytes.head)
    }

    fn open(&self, bytes: Bytes, cx: &OpenContext<'_>) -> Result<Box<dyn Layer>> {
        Ok(Box::new(VmdkLayer::from_bytes(bytes, cx)?))
    }

    fn parts(&self, main: &[u8]) -> Vec<PathBuf> {
        // A sparse extent's embedded descriptor names the file itself.
        if main.starts_with(b"KDMV") || main.starts_with(b"COWD") {
            return Vec::new();
        }
        let Ok(d) = Descriptor::parse(main) else {
            return Vec::new();
        };
        d.extents
            .iter()
            .filter_map(|e| e.file.as_deref())
            .flat_map(|f| d.name_candidates(f))
            .collect()
    }

    fn subformats(&self) -> &'static [&'static str] {
        &[
            "monolithicSparse",
            "monolithicFlat",
            "twoGbMaxExtentSparse",
            "twoGbMaxExtentFlat",
            "streamOptimized",
        ]
    }

    fn writable(&self) -> bool {
        true
    }

    fn create(&self, dst: &Path, size: u64, opts: &CreateOptions) -> Result<Box<dyn ImageSink>> {
        let sub = match &opts.subformat {
            Some(s) => s.parse::<Subformat>().map_err(|e| e.with_path(dst))?,
            None => Subformat::MonolithicSparse,
        };
        if opts.compress && sub != Subformat::StreamOptimized {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "a VMDK's grains are compressed only in the streamOptimized subformat",
            )
            .with_path(dst));
        }
        writer::create(dst, size, sub, &write_options(opts)?)
    }

    /// Into a store's files, the clustered layout (extents cut along the data, tables only
    /// where grains are), whatever the subformat asked.
    fn create_in(
        &self,
        out: Box<dyn ImageOutput>,
        size: u64,
        opts: &CreateOptions,
    ) -> Result<Box<dyn ImageSink>> {
        writer::create_clustered(out, size, &write_options(opts)?)
    }

    fn create_delta(
        &self,
        dst: &Path,
        parent: &DeltaParent<'_>,
        size: u64,
        opts: &CreateOptions,
    ) -> Result<Box<dyn ImageSink>> {
        let layout = match &opts.subformat {
            None => Layout::Monolithic,
            Some(s) => s
                .parse::<Subformat>()
                .ok()
                .and_then(Layout::of)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidArgument,
                        "a delta link is monolithicSparse or twoGbMaxExtentSparse",
                    )
                    .with_path(dst)
                })?,
        };
        let link = parent_link(parent)?;
        Ok(Box::new(LinkSink::create(
            dst,
            link,
            size,
            layout,
            &write_options(opts)?,
        )?))
    }

    fn create_delta_in(
        &self,
        out: Box<dyn ImageOutput>,
        parent: &DeltaParent<'_>,
        size: u64,
        opts: &CreateOptions,
    ) -> Result<Box<dyn ImageSink>> {
        let link = parent_link(parent)?;
        Ok(Box::new(LinkSink::create_in(
            out,
            link,
            size,
            &write_options(opts)?,
        )?))
    }

    fn rebase(&self, main: &[u8], parent: &Path) -> Result<Vec<u8>> {
        if !looks_like_descriptor(main) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "only a VMDK whose descriptor is a file of its own can name a new parent",
            ));
        }
        let mut d = Descriptor::parse(main)?;
        d.parent_hint = Some(parent.to_path_buf());
        Ok(d.render().into_bytes())
    }
}
