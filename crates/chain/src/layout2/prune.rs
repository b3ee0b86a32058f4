//! Pruning: the oldest points folded into the base (a synthetic full), without changing what
//! any kept point restores to.

use std::path::Path;

use vdisk_core::{copy_into, CopyOptions, Error, ErrorKind, Result};
use vdisk_io::{CreateOptions, LinkId, OutputPolicy};

use crate::layout2::checksums::file_checks;
use crate::layout2::meta::PointKind;
use crate::layout2::point_format;
use crate::layout2::repo::Repository;

/// What `prune` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneSummary {
    /// Points folded into the new base.
    pub folded: usize,
    /// Bytes of files removed.
    pub bytes_freed: u64,
}

impl Repository {
    /// Bytes `prune` reads to keep `keep` points: the disk of the point that becomes the new
    /// base (the total a progress bar counts up to).
    pub fn prune_bytes(&self, keep: usize) -> u64 {
        let points = self.points();
        match points.len().checked_sub(keep) {
            Some(fold) if fold > 0 && keep > 0 => points[fold].size,
            _ => 0,
        }
    }

    /// Fold the oldest points into the base (a synthetic full) so that `keep` remain. Kept
    /// points keep their numbers and restore to what they did before. The new base is copied
    /// from the old chain with every grain checked against its hash: a damaged point is never
    /// folded into a new full.
    ///
    /// ```
    /// use vdisk_chain::layout2::{PointKind, Repository};
    /// use vdisk_core::{CopyOptions, DiskImage};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # // Two points of a 256 KiB disk: all 1s, then all 2s.
    /// # vdisk_chain::layout2::doc_example_repository(dir.path());
    /// let mut repo = Repository::open_writable(dir.path())?;
    /// let summary = repo.prune(1, &CopyOptions::default())?;
    /// assert_eq!(summary.folded, 1);
    /// // Point 2 keeps its number, becomes a full, and restores to what it did.
    /// assert_eq!(repo.points().len(), 1);
    /// assert_eq!((repo.points()[0].point, repo.points()[0].kind), (2, PointKind::Full));
    /// let point = repo.checked_point(Some(2))?;
    /// let mut disk = vec![0u8; 256 << 10];
    /// point.read_at(&mut disk, 0)?;
    /// assert!(disk.iter().all(|&b| b == 2));
    /// # Ok::<(), vdisk_core::Error>(())
    /// ```
    pub fn prune(&mut self, keep: usize, opts: &CopyOptions<'_>) -> Result<PruneSummary> {
        self.writable()?;
        if keep == 0 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "a repository keeps at least one point",
            ));
        }
        let nothing = PruneSummary {
            folded: 0,
            bytes_freed: 0,
        };
        let Some(meta) = self.meta.clone() else {
            return Ok(nothing);
        };
        if meta.points.len() <= keep {
            return Ok(nothing);
        }
        let fold = meta.points.len() - keep;
        let base = meta.points[fold].clone();
        let generation = meta.generation;
        let before = self.usage();

        // The synthetic full: the base point's whole disk, with the base's CID so the link
        // above it stays valid.
        let full_name = format!("point-{:06}.g{generation}.vmdk", base.point);
        let img = self.checked_point(Some(base.point))?;
        let copts = CreateOptions {
            policy: OutputPolicy::replacing(),
            link_id: Some(LinkId {
                kind: "vmdk-cid",
                value: format!("{:08x}", base.cid),
            }),
            ..Default::default()
        };
        let out = self.store.image_output(&full_name, &copts.policy)?;
        let sink = vdisk_image::create_in(out, point_format()?, base.size, &copts)?;
        copy_into(&img, sink, opts)?;
        drop(img);
        let stored_name = format!("point-{:06}.g{generation}.stored", base.point);
        let (_, stored, files) = self.record_point(&full_name, &stored_name)?;
        let mut new_base = base.clone();
        new_base.image = full_name.clone();
        new_base.kind = PointKind::Full;
        new_base.parent = None;
        new_base.stored = stored_name;
        new_base.changed_bytes = stored.changed_bytes();
        new_base.files = files;

        // Every kept point above the base gets a new descriptor naming its parent's new name
        // (the base is now the synthetic full). Their data files stay as they are; the old
        // descriptors stay valid until the metadata switch, so a run killed before it leaves
        // every old point whole.
        let mut parent_name = full_name.clone();
        let mut points = vec![new_base];
        for child in meta.points.iter().skip(fold + 1) {
            let old_path = self.path(&child.image);
            let old = self.store.read(&child.image, 16 << 20)?;
            let rebased = point_format()?
                .rebase(&old, Path::new(&parent_name))
                .map_err(|e| e.with_path(&old_path))?;
            let name = format!("point-{:06}.g{generation}.vmdk", child.point);
            self.store.put(&name, &rebased)?;
            let mut c = child.clone();
            c.files.retain(|f| f.name != child.image);
            c.files
                .insert(0, file_checks(&*self.store, &name)?.remove(0));
            c.image = name.clone();
            parent_name = name;
            points.push(c);
        }
        let mut next = meta.clone();
        next.points = points;
        next.generation = generation + 1;
        self.commit(next)?;
        let after = self.usage();
        Ok(PruneSummary {
            folded: fold,
            bytes_freed: before.saturating_sub(after),
        })
    }
}
