//! Pruning: the points a retention policy does not keep are removed (each NAME on its own;
//! the newest point of a NAME is always kept), then garbage is collected.

use vdisk_core::{Error, ErrorKind, Result};

use crate::gc::GcSummary;
use crate::locks::Registration;
use crate::repository::Repository;
use crate::retention::Retention;

/// Options of a prune.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Which points to keep.
    pub retention: Retention,
    /// Only the points of this NAME (all NAMEs when `None`).
    pub name: Option<String>,
    /// Say what would be removed, remove nothing.
    pub dry_run: bool,
}

/// What a prune did (or would do).
#[derive(Debug, Clone, Default)]
pub struct PruneSummary {
    /// Points kept: (NAME, number).
    pub kept: Vec<(String, u64)>,
    /// Points removed (or that would be): (NAME, number).
    pub removed: Vec<(String, u64)>,
    /// What garbage collection did.
    pub gc: GcSummary,
}

impl Repository {
    /// Remove the points `opts.retention` does not keep, then collect garbage.
    ///
    /// ```
    /// use vdisk_chain::{BackupOptions, DiskSource, InitOptions, PruneOptions, Repository, Retention, Source};
    /// use vdisk_core::MemImage;
    /// # let dir = tempfile::tempdir().unwrap();
    /// let repo = Repository::init(dir.path().join("repo"), &InitOptions::default())?;
    /// for fill in 1..=3u8 {
    ///     let img = MemImage::new(vec![fill; 1 << 20]);
    ///     let src = DiskSource { image: &img, source: Source { identity: "/a".into(), unclean: false }, label: "a".into() };
    ///     repo.backup("vm", &[src], &BackupOptions::default())?;
    /// }
    /// let opts = PruneOptions { retention: Retention { last: 1, ..Default::default() }, ..Default::default() };
    /// let s = repo.prune(&opts)?;
    /// assert_eq!(s.removed, [("vm".to_string(), 1), ("vm".to_string(), 2)]);
    /// assert_eq!(repo.points()?.points.len(), 1);
    /// # Ok::<(), vdisk_core::Error>(())
    /// ```
    pub fn prune(&self, opts: &PruneOptions) -> Result<PruneSummary> {
        if opts.retention.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "a prune needs a policy: --keep-last, --keep-daily, --keep-weekly or --keep-monthly, at least 1",
            ));
        }
        let reg = Registration::register(self, "prune", None)?;
        let list = self.points()?;
        let mut sum = PruneSummary::default();
        let names: Vec<String> = list.names().iter().map(|s| s.to_string()).collect();
        if let Some(n) = &opts.name {
            if !names.contains(n) {
                return Err(crate::repository::err_at(
                    self.location(),
                    ErrorKind::NotFound,
                    format!("has no points of \"{n}\" (names: {})", names.join(", ")),
                ));
            }
        }
        let mut doomed = Vec::new();
        for name in &names {
            let points = list.of(name);
            if opts.name.as_ref().is_some_and(|n| n != name) {
                sum.kept
                    .extend(points.iter().map(|p| (name.clone(), p.record.seq)));
                continue;
            }
            let records: Vec<&crate::point::PointRecord> =
                points.iter().map(|p| &p.record).collect();
            let mut keep = opts.retention.keep(&records);
            // The newest point of a NAME always stays: numbers go on from it.
            if let Some(last) = keep.last_mut() {
                *last = true;
            }
            for (p, k) in points.iter().zip(keep) {
                if k {
                    sum.kept.push((name.clone(), p.record.seq));
                } else {
                    sum.removed.push((name.clone(), p.record.seq));
                    doomed.push(p.key.clone());
                }
            }
        }
        // Garbage is what the kept points do not need. The removed points' objects go last:
        // a prune that fails or is killed before leaves them all, and what it condemned for
        // them is found live again (and kept) by the next prune.
        let doomed_set: std::collections::HashSet<String> = doomed.iter().cloned().collect();
        sum.gc = self.collect_garbage(&reg, opts.dry_run, &doomed_set)?;
        if !opts.dry_run {
            for key in &doomed {
                self.store().delete(key)?;
            }
        }
        Ok(sum)
    }
}
