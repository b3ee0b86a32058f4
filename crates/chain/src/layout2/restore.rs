//! Reading a point back: every grain handed out is checked against the hash kept at backup
//! time, so damaged or replaced files give an error naming the point and the offset, never
//! other bytes.

use std::cell::RefCell;
use std::path::PathBuf;

use vdisk_core::{
    check_range, coalesce, copy_into, Advice, Allocation, CopyOptions, CopyStats, DiskImage, Error,
    ErrorKind, Extent, FileId, ImageSink, Result,
};
use vdisk_diff::block_hash;

use crate::layout2::hashes::{open_manifest, PointManifest};
use vdisk_image::Image;

use crate::layout2::repo::Repository;
use crate::layout2::GRAIN;

/// A restore point as a disk image that checks what it hands out: every grain read is hashed
/// and compared with the point's manifest, and ranges the chain reads as zero are compared
/// with it too. Its size is the source's exact size (a VMDK counts in whole sectors).
///
/// Restore and `serve` read points through it.
#[derive(Debug)]
pub struct CheckedPoint {
    image: Image,
    manifest: PointManifest,
    size: u64,
    point: u64,
    dir: PathBuf,
}

impl Repository {
    /// Point `n` (the newest when `None`) as a [`CheckedPoint`].
    ///
    /// ```
    /// use vdisk_core::DiskImage;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # // Two points of a 256 KiB disk: all 1s, then all 2s.
    /// # vdisk_chain::layout2::doc_example_repository(dir.path());
    /// let repo = vdisk_chain::layout2::Repository::open(dir.path())?;
    /// for (n, fill) in [(1, 1u8), (2, 2)] {
    ///     let point = repo.checked_point(Some(n))?;
    ///     let mut disk = vec![0u8; point.size() as usize];
    ///     point.read_at(&mut disk, 0)?; // every grain checked against its hash
    ///     assert!(disk.iter().all(|&b| b == fill));
    /// }
    /// assert_eq!(repo.checked_point(None)?.point(), 2);
    /// assert!(repo.checked_point(Some(3)).is_err());
    /// # Ok::<(), vdisk_core::Error>(())
    /// ```
    pub fn checked_point(&self, n: Option<u64>) -> Result<CheckedPoint> {
        let p = self.point(n)?;
        let image = self.open_point(p)?;
        let manifest = open_manifest(&*self.store, &p.hashes)?;
        let m = &manifest;
        let damaged = |what: String| {
            Error::new(
                ErrorKind::Corrupt,
                format!("point {}: {what} (damaged repository)", p.point),
            )
            .with_path(&self.dir)
        };
        if m.granularity() != GRAIN || m.size() != p.size {
            return Err(damaged(format!(
                "{} describes a disk of {} bytes in blocks of {}, the point is {} bytes in grains of {GRAIN}",
                p.hashes,
                m.size(),
                m.granularity(),
                p.size
            )));
        }
        if image.size() < p.size {
            return Err(damaged(format!(
                "its image is {} bytes, smaller than the {} bytes backed up",
                image.size(),
                p.size
            )));
        }
        Ok(CheckedPoint {
            image,
            manifest,
            size: p.size,
            point: p.point,
            dir: self.dir.clone(),
        })
    }

    /// Copy point `n` (the newest when `None`) into `sink`, checking every grain.
    ///
    /// ```
    /// use vdisk_core::CopyOptions;
    /// use vdisk_io::CreateOptions;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # vdisk_chain::layout2::doc_example_repository(&dir.path().join("repo"));
    /// let repo = vdisk_chain::layout2::Repository::open(dir.path().join("repo"))?;
    /// let dst = dir.path().join("point1.raw");
    /// let size = repo.point(Some(1))?.size;
    /// let raw = vdisk_image::registry::require("raw")?;
    /// let sink = vdisk_image::create(&dst, raw, size, &CreateOptions::default())?;
    /// let stats = repo.restore_into(Some(1), sink, &CopyOptions::default())?;
    /// assert_eq!(stats.size, 256 << 10);
    /// assert_eq!(std::fs::read(&dst).unwrap(), vec![1u8; 256 << 10]);
    /// # Ok::<(), vdisk_core::Error>(())
    /// ```
    pub fn restore_into(
        &self,
        n: Option<u64>,
        sink: Box<dyn ImageSink + '_>,
        opts: &CopyOptions<'_>,
    ) -> Result<CopyStats> {
        let img = self.checked_point(n)?;
        copy_into(&img, sink, opts)
    }
}

impl CheckedPoint {
    /// The point's number.
    pub fn point(&self) -> u64 {
        self.point
    }

    /// The point's image, unchecked.
    pub fn image(&self) -> &Image {
        &self.image
    }

    fn grain_end(&self, b: u64) -> u64 {
        ((b + 1) * GRAIN).min(self.size)
    }

    fn mismatch(&self, b: u64) -> Error {
        Error::new(
            ErrorKind::Corrupt,
            format!(
                "point {}: the grain at bytes {}..{} does not match the hash kept at backup time (a point file was damaged or replaced); refusing to return other data",
                self.point,
                b * GRAIN,
                self.grain_end(b)
            ),
        )
        .with_path(&self.dir)
        .at(b * GRAIN)
    }

    /// Check grain `b`, whose bytes are `data`.
    fn check(&self, b: u64, data: &[u8]) -> Result<()> {
        if self.manifest.hash(b)? == Some(block_hash(data)) {
            Ok(())
        } else {
            Err(self.mismatch(b))
        }
    }

    /// Whether the manifest says grain `b` is all zero.
    fn zero_in_manifest(&self, b: u64) -> Result<bool> {
        let len = self.grain_end(b) - b * GRAIN;
        Ok(self.manifest.hash(b)? == Some(self.manifest.zero_hash(len)))
    }
}

impl DiskImage for CheckedPoint {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.size, offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset + buf.len() as u64;
        let first = offset / GRAIN;
        let last = (end - 1) / GRAIN;
        if offset.is_multiple_of(GRAIN) && (end.is_multiple_of(GRAIN) || end == self.size) {
            // Whole grains (what a copy asks for: the allocation map is in whole grains).
            self.image.read_at(buf, offset)?;
            for b in first..=last {
                let s = (b * GRAIN - offset) as usize;
                let e = (self.grain_end(b) - offset) as usize;
                self.check(b, &buf[s..e])?;
            }
            return Ok(());
        }
        // Parts of grains: each grain is read whole, checked, and the part copied.
        thread_local! {
            static GRAIN_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        GRAIN_BUF.with(|g| {
            let mut g = g.borrow_mut();
            for b in first..=last {
                let gs = b * GRAIN;
                let ge = self.grain_end(b);
                g.resize((ge - gs) as usize, 0);
                self.image.read_at(&mut g[..], gs)?;
                self.check(b, &g[..])?;
                let s = gs.max(offset);
                let e = ge.min(end);
                buf[(s - offset) as usize..(e - offset) as usize]
                    .copy_from_slice(&g[(s - gs) as usize..(e - gs) as usize]);
            }
            Ok(())
        })
    }

    /// The chain's map in whole grains: a grain holding data anywhere is data (so that copies
    /// read, and check, whole grains), and a grain the chain reads as zero whose hash says it
    /// held data is data too (reading it then fails the check).
    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        check_range(self.size, offset, length)?;
        let mut out = Vec::new();
        if length == 0 {
            return Ok(out);
        }
        let end = offset + length;
        let qs = offset / GRAIN * GRAIN;
        let qe = end.div_ceil(GRAIN).saturating_mul(GRAIN).min(self.size);
        let inner = self.image.allocation(qs, qe - qs)?;
        let wb = self.manifest.window_blocks();
        let mut i = 0;
        let mut b = qs / GRAIN;
        let end_grain = qe.div_ceil(GRAIN);
        while b < end_grain {
            // A window the manifest says is all zero, where the chain stores no data, needs
            // no look at its grains: the map is the chain's (work follows the data).
            let w = b / wb;
            let window_end = ((w + 1) * wb).min(end_grain);
            let ws = b * GRAIN;
            let we = (window_end * GRAIN).min(self.size);
            while i < inner.len() && inner[i].end() <= ws {
                i += 1;
            }
            let data_here = inner[i..]
                .iter()
                .take_while(|e| e.start < we)
                .any(|e| e.allocation == Allocation::Data);
            if !data_here && self.manifest.window_is_zero(w) {
                for e in inner[i..].iter().take_while(|e| e.start < we) {
                    let s = e.start.max(ws).max(offset);
                    let t = e.end().min(we).min(end);
                    if t > s {
                        coalesce(
                            &mut out,
                            Extent {
                                start: s,
                                length: t - s,
                                allocation: e.allocation,
                                depth: e.depth,
                            },
                        );
                    }
                }
                b = window_end;
                continue;
            }
            let gs = b * GRAIN;
            let ge = self.grain_end(b);
            let mut alloc = Allocation::Unallocated;
            let mut depth = 0;
            let mut j = i;
            while j < inner.len() && inner[j].start < ge {
                let e = &inner[j];
                if depth == 0 {
                    depth = e.depth;
                }
                match e.allocation {
                    Allocation::Data => {
                        alloc = Allocation::Data;
                        depth = e.depth;
                        break;
                    }
                    Allocation::Zero => alloc = Allocation::Zero,
                    Allocation::Unallocated => {}
                }
                j += 1;
            }
            if alloc != Allocation::Data && !self.zero_in_manifest(b)? {
                alloc = Allocation::Data;
            }
            coalesce(
                &mut out,
                Extent {
                    start: gs.max(offset),
                    length: ge.min(end) - gs.max(offset),
                    allocation: alloc,
                    depth,
                },
            );
            b += 1;
        }
        Ok(out)
    }

    fn format_name(&self) -> &'static str {
        self.image.format_name()
    }

    fn advise(&self, offset: u64, len: u64, advice: Advice) {
        self.image.advise(offset, len, advice)
    }

    fn files(&self) -> Vec<FileId> {
        let mut f = self.image.files();
        f.extend(self.manifest.bytes().id());
        f
    }
}
