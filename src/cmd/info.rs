//! `vdisk info`: format, sizes, header fields and the chain.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use vdisk::size::human;
use vdisk::vmdk::{Layer, LayerExtent};
use vdisk::{for_each_extent, Allocation, DiskImage, ErrorKind, Image, Result};

use super::{path_text, stdout_error, Ctx, Status};

/// Show format, size, allocation, header fields and the chain.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image.
    pub image: PathBuf,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

/// What `info --json` prints. Typed (not a `serde_json::Value` tree) so that an image with
/// hundreds of thousands of extents prints in a stream with little memory.
#[derive(Serialize)]
struct Info<'a> {
    #[serde(serialize_with = "lossy")]
    path: &'a Path,
    format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subformat: Option<&'a str>,
    virtual_size: u64,
    allocated: u64,
    disk_usage: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    grain_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unclean_shutdown: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cid: Option<Cid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_cid: Option<Cid>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    chain: Vec<LayerInfo<'a>>,
    /// For a disk of an OVA: the archive and its disks.
    #[serde(skip_serializing_if = "Option::is_none")]
    archive: Option<ArchiveInfo>,
}

/// An OVA archive: its members and disks, and the disk that was opened.
#[derive(Serialize)]
struct ArchiveInfo {
    format: &'static str,
    members: usize,
    #[serde(serialize_with = "lossy_opt")]
    opened: Option<PathBuf>,
    disks: Vec<ArchiveDisk>,
}

/// One disk of an archive: its name, its bytes in the archive, and what it holds.
#[derive(Serialize)]
struct ArchiveDisk {
    #[serde(serialize_with = "lossy")]
    name: PathBuf,
    size: u64,
    virtual_size: Option<u64>,
    subformat: Option<String>,
}

/// What `info --json` prints for an OVA holding several disks when none was named: the
/// archive alone.
#[derive(Serialize)]
struct ArchiveOnly<'a> {
    #[serde(serialize_with = "lossy")]
    path: &'a Path,
    format: &'static str,
    archive: ArchiveInfo,
}

fn archive_info(ova: &vdisk::ova::Ova, opened: Option<&Path>, ctx: &Ctx) -> ArchiveInfo {
    let disks = ova
        .disks()
        .map(|m| {
            // Each disk is opened to tell its size; one that cannot be is listed all the same.
            let img = vdisk::vmdk::VmdkImage::open_with(ova, &ova.member_path(m), &ctx.open.vmdk);
            let (virtual_size, subformat) = match &img {
                Ok(v) => (
                    Some(v.size()),
                    v.layers()[0].descriptor().create_type.clone(),
                ),
                Err(_) => (None, None),
            };
            ArchiveDisk {
                name: m.name.clone(),
                size: m.size,
                virtual_size,
                subformat,
            }
        })
        .collect();
    ArchiveInfo {
        format: "ova",
        members: ova.members().len(),
        opened: opened.map(Path::to_path_buf),
        disks,
    }
}

/// A CID, printed as 8 hex digits; `null` when the descriptor has none.
#[derive(Clone, Copy)]
struct Cid(Option<u32>);

impl Serialize for Cid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.0 {
            Some(c) => s.serialize_str(&format!("{c:08x}")),
            None => s.serialize_none(),
        }
    }
}

impl std::fmt::Display for Cid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(c) => write!(f, "{c:08x}"),
            None => f.write_str("-"),
        }
    }
}

/// Paths in JSON: text, whatever bytes the name holds (non-UTF-8 bytes are replaced).
fn lossy<S: serde::Serializer>(p: &Path, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&path_text(p))
}

fn lossy_opt<S: serde::Serializer>(
    p: &Option<impl AsRef<Path>>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_str(&path_text(p.as_ref())),
        None => s.serialize_none(),
    }
}

#[derive(Serialize)]
struct LayerInfo<'a> {
    #[serde(serialize_with = "lossy")]
    path: &'a Path,
    create_type: Option<&'a str>,
    cid: Cid,
    parent_cid: Cid,
    #[serde(serialize_with = "lossy_opt")]
    parent_hint: Option<&'a Path>,
    virtual_size: u64,
    disk_usage: u64,
    version: Option<u32>,
    flags: Option<String>,
    grain_size: Option<u64>,
    unclean_shutdown: bool,
    embedded_descriptor: bool,
    adapter_type: Option<&'a str>,
    extents: Vec<ExtentDoc>,
}

#[derive(Serialize)]
struct ExtentDoc {
    access: &'static str,
    sectors: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(serialize_with = "lossy_opt")]
    file: Option<PathBuf>,
    offset: u64,
}

impl From<&LayerExtent> for ExtentDoc {
    fn from(e: &LayerExtent) -> Self {
        ExtentDoc {
            access: e.line.access.as_str(),
            sectors: e.line.sectors,
            kind: e.line.kind.as_str(),
            file: e.path.clone(),
            offset: e.line.offset,
        }
    }
}

fn layer_info(l: &Layer) -> LayerInfo<'_> {
    let d = l.descriptor();
    let h = l.first_sparse().map(|s| *s.header());
    LayerInfo {
        path: l.path(),
        create_type: d.create_type.as_deref(),
        cid: Cid(d.cid),
        parent_cid: Cid(d.parent_cid),
        parent_hint: d.parent_hint.as_deref(),
        virtual_size: l.size(),
        disk_usage: l.disk_usage(),
        version: h.map(|h| h.version),
        flags: h.map(|h| format!("{:#x}", h.flags.0)),
        grain_size: h.map(|h| h.grain_bytes()).or_else(|| l.esx_grain_bytes()),
        unclean_shutdown: l.unclean_shutdown(),
        embedded_descriptor: l.embedded_descriptor(),
        adapter_type: d.ddb("ddb.adapterType"),
        extents: l.extents().iter().map(ExtentDoc::from).collect(),
    }
}

pub fn run(ctx: &Ctx, args: Args) -> Result<Status> {
    let path = args.image.as_path();
    let json_out = args.json;
    let img = match vdisk::open_with(path, &ctx.open) {
        Ok(img) => img,
        // An OVA of several disks and no --disk: list them.
        Err(e) if e.kind() == ErrorKind::Ambiguous => {
            let ova = vdisk::ova::Ova::open(path, ctx.open.read_ahead)?;
            return print_archive_only(path, archive_info(&ova, None, ctx), json_out);
        }
        Err(e) => return Err(e),
    };
    let mut allocated = 0u64;
    for_each_extent(&img, |e| {
        if e.allocation == Allocation::Data {
            allocated += e.length;
        }
        Ok(())
    })?;
    let mut info = Info {
        path,
        format: img.format_name(),
        subformat: None,
        virtual_size: img.size(),
        allocated,
        disk_usage: 0,
        grain_size: None,
        version: None,
        unclean_shutdown: None,
        cid: None,
        parent_cid: None,
        chain: Vec::new(),
        archive: None,
    };
    let vmdk = match &img {
        Image::Raw(_) => None,
        Image::Vmdk(v) => Some(v),
        Image::Ova(o) => {
            info.archive = Some(archive_info(o.ova(), Some(&o.disk().name), ctx));
            Some(o.vmdk())
        }
    };
    match (&img, vmdk) {
        (Image::Raw(r), _) => info.disk_usage = r.disk_usage(),
        (_, None) => {}
        (_, Some(v)) => {
            info.chain = v.layers().iter().map(layer_info).collect();
            let top = &info.chain[0];
            info.subformat = top.create_type;
            info.disk_usage = info.chain.iter().map(|l| l.disk_usage).sum();
            info.grain_size = top.grain_size;
            info.version = top.version;
            info.unclean_shutdown = Some(info.chain.iter().any(|l| l.unclean_shutdown));
            info.cid = Some(top.cid);
            info.parent_cid = Some(top.parent_cid);
        }
    }
    let out = std::io::stdout().lock();
    let mut out = std::io::BufWriter::new(out);
    let io = stdout_error;
    if json_out {
        serde_json::to_writer_pretty(&mut out, &info).map_err(|e| io(e.into()))?;
        writeln!(out).map_err(io)?;
    } else {
        print_text(&mut out, &info).map_err(io)?;
    }
    out.flush().map_err(io)?;
    Ok(0)
}

fn print_archive_only(path: &Path, archive: ArchiveInfo, json_out: bool) -> Result<Status> {
    let out = std::io::stdout().lock();
    let mut out = std::io::BufWriter::new(out);
    let io = stdout_error;
    if json_out {
        let doc = ArchiveOnly {
            path,
            format: "ova",
            archive,
        };
        serde_json::to_writer_pretty(&mut out, &doc).map_err(|e| io(e.into()))?;
        writeln!(out).map_err(io)?;
    } else {
        writeln!(out, "image: {}", path.display()).map_err(io)?;
        writeln!(
            out,
            "format: ova ({} disks: pick one with --disk NAME)",
            archive.disks.len()
        )
        .map_err(io)?;
        print_archive(&mut out, &archive).map_err(io)?;
    }
    out.flush().map_err(io)?;
    Ok(0)
}

fn print_archive(out: &mut impl Write, a: &ArchiveInfo) -> std::io::Result<()> {
    writeln!(
        out,
        "archive: {} member(s), {} disk(s)",
        a.members,
        a.disks.len()
    )?;
    for d in &a.disks {
        let mark = if a.opened.as_deref() == Some(d.name.as_path()) {
            " (opened)"
        } else {
            ""
        };
        let what = match (d.virtual_size, &d.subformat) {
            (Some(v), Some(sub)) => format!("{sub}, virtual size {}", human(v)),
            (Some(v), None) => format!("virtual size {}", human(v)),
            _ => "cannot be opened".to_string(),
        };
        writeln!(
            out,
            "  {}: {} in the archive, {what}{mark}",
            d.name.display(),
            human(d.size)
        )?;
    }
    Ok(())
}

fn print_text(out: &mut impl Write, i: &Info<'_>) -> std::io::Result<()> {
    let bytes = |n: u64| format!("{} ({n} bytes)", human(n));
    writeln!(out, "image: {}", i.path.display())?;
    match i.subformat {
        Some(sub) => writeln!(out, "format: {} ({sub})", i.format)?,
        None => writeln!(out, "format: {}", i.format)?,
    }
    writeln!(out, "virtual size: {}", bytes(i.virtual_size))?;
    writeln!(out, "allocated: {}", bytes(i.allocated))?;
    writeln!(out, "disk usage: {}", bytes(i.disk_usage))?;
    if let Some(a) = &i.archive {
        print_archive(out, a)?;
    }
    if i.chain.is_empty() {
        return Ok(());
    }
    if let Some(g) = i.grain_size {
        writeln!(out, "grain size: {}", human(g))?;
    }
    let opt = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
    writeln!(out, "header version: {}", opt(i.version))?;
    let yes = if i.unclean_shutdown == Some(true) {
        "yes"
    } else {
        "no"
    };
    writeln!(out, "unclean shutdown: {yes}")?;
    writeln!(out, "CID: {}", i.cid.unwrap_or(Cid(None)))?;
    writeln!(out, "parent CID: {}", i.parent_cid.unwrap_or(Cid(None)))?;
    writeln!(out, "chain: {} file(s)", i.chain.len())?;
    for (n, l) in i.chain.iter().enumerate() {
        writeln!(
            out,
            "  [{n}] {} ({}, CID {}, parent CID {}, version {}, {})",
            l.path.display(),
            l.create_type.unwrap_or("-"),
            l.cid,
            l.parent_cid,
            opt(l.version),
            human(l.virtual_size),
        )?;
        if let Some(hint) = l.parent_hint {
            writeln!(out, "      parent: {}", hint.display())?;
        }
        if l.unclean_shutdown {
            writeln!(out, "      uncleanShutdown is set")?;
        }
        for e in &l.extents {
            let file = e
                .file
                .as_ref()
                .map(|f| format!(" \"{}\"", f.display()))
                .unwrap_or_default();
            let off = if e.offset == 0 {
                String::new()
            } else {
                format!(" {}", e.offset)
            };
            writeln!(
                out,
                "      {} {} {}{file}{off}",
                e.access, e.sectors, e.kind
            )?;
        }
    }
    Ok(())
}
