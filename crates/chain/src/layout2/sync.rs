//! Copying a repository's points to another location (a folder or an object store, either
//! way): only the files the destination lacks move, what arrives is checked against the
//! hashes kept at backup time, and the destination's metadata switches last, so a sync killed
//! at any instant leaves the destination as it was.

use std::collections::{HashMap, HashSet};

use vdisk_core::{Error, ErrorKind, Result};

use crate::layout2::meta::{FileCheck, RepoMeta, RestorePoint};
use crate::layout2::repo::{repo_err, Repository};
use crate::layout2::verify::VerifyOptions;

/// What a sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncSummary {
    /// Points the destination holds now (the source's).
    pub points: usize,
    /// Points whose files were copied (and checked).
    pub points_copied: usize,
    /// Files copied.
    pub files_copied: usize,
    /// Bytes copied.
    pub bytes_copied: u64,
    /// Points the destination held that the source no longer does (folded by a prune).
    pub points_removed: usize,
}

/// A file a point refers to, and what is known of it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Known<'a> {
    /// A point's image file, with its checksums.
    Checked(&'a FileCheck),
    /// A manifest or bitmap: known by name (their names never change meaning: a prune
    /// writes new names) and checked by the point's verify.
    Plain,
}

fn files_of(p: &RestorePoint) -> Vec<(&str, Known<'_>)> {
    let mut v: Vec<(&str, Known<'_>)> = p
        .files
        .iter()
        .map(|f| (f.name.as_str(), Known::Checked(f)))
        .collect();
    v.push((p.hashes.as_str(), Known::Plain));
    v.push((p.stored.as_str(), Known::Plain));
    v
}

/// Bytes copied at a time.
const COPY_CHUNK: usize = 8 << 20;

impl Repository {
    /// Make this repository (opened writable) hold `src`'s points: copy the files it lacks,
    /// check every copied point against its hashes, then switch its metadata to `src`'s
    /// (points `src` no longer has, folded by a prune, are removed).
    ///
    /// The destination must be empty, or a copy of `src` (the same disk, and the points both
    /// hold made by the same backups); points it has that are newer than all of `src`'s are
    /// never dropped.
    ///
    /// ```
    /// use vdisk_chain::layout2::{Repository, VerifyOptions};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # vdisk_chain::layout2::doc_example_repository(&dir.path().join("a"));
    /// let src = Repository::open(dir.path().join("a"))?;
    /// let mut dst = Repository::open_or_create(dir.path().join("b"))?;
    /// let s = dst.sync_from(&src, &VerifyOptions::default())?;
    /// assert_eq!((s.points, s.points_copied), (2, 2));
    /// // Nothing left to move the second time.
    /// let again = dst.sync_from(&src, &VerifyOptions::default())?;
    /// assert_eq!((again.files_copied, again.bytes_copied), (0, 0));
    /// # Ok::<(), vdisk_core::Error>(())
    /// ```
    pub fn sync_from(&mut self, src: &Repository, opts: &VerifyOptions<'_>) -> Result<SyncSummary> {
        self.writable()?;
        let want = src
            .meta
            .clone()
            .ok_or_else(|| repo_err(&src.dir, ErrorKind::NotFound, "repository has no points"))?;
        let have = self.meta.clone();
        if let Some(have) = &have {
            check_compatible(self, src, have, &want)?;
        }
        // What the destination's current metadata refers to, and what it says of it.
        let mut referenced: HashMap<&str, Known<'_>> = HashMap::new();
        if let Some(have) = &have {
            for p in &have.points {
                referenced.extend(files_of(p));
            }
        }
        let present: HashMap<String, u64> = self
            .store
            .list()?
            .into_iter()
            .map(|f| (f.name, f.len))
            .collect();
        let mut summary = SyncSummary {
            points: want.points.len(),
            ..Default::default()
        };
        for p in &want.points {
            let mut copied_here = false;
            for (name, known) in files_of(p) {
                let same = match (referenced.get(name), &known) {
                    (Some(Known::Checked(a)), Known::Checked(b)) => a == b,
                    (Some(Known::Plain), Known::Plain) => true,
                    _ => false,
                };
                if same && present.contains_key(name) {
                    continue;
                }
                if referenced.contains_key(name) {
                    // Never replace a file the destination's points use.
                    return Err(repo_err(
                        &self.dir,
                        ErrorKind::Refused,
                        format!(
                            "holds another {name} than {} (not a copy of it); sync into an empty location",
                            src.dir.display()
                        ),
                    ));
                }
                summary.bytes_copied += copy_file(src, self, name, opts.progress)?;
                summary.files_copied += 1;
                copied_here = true;
            }
            if copied_here {
                // Check what arrived, from the destination, before anything refers to it.
                let problems = self.verify_point(p, &want, opts);
                if let Some(first) = problems.first() {
                    return Err(repo_err(
                        &self.dir,
                        ErrorKind::Corrupt,
                        format!(
                            "point {} did not arrive whole ({first}); nothing was changed",
                            p.point
                        ),
                    ));
                }
                summary.points_copied += 1;
            }
        }
        let kept: HashSet<u64> = want.points.iter().map(|p| p.point).collect();
        summary.points_removed = have.as_ref().map_or(0, |h| {
            h.points.iter().filter(|p| !kept.contains(&p.point)).count()
        });
        let unchanged = have.as_ref() == Some(&want);
        if !unchanged {
            self.commit(want)?;
        }
        Ok(summary)
    }
}

/// Refuse a destination that is not a copy of `src` (another disk, other backups), or that
/// holds points newer than all of `src`'s.
fn check_compatible(
    dst: &Repository,
    src: &Repository,
    have: &RepoMeta,
    want: &RepoMeta,
) -> Result<()> {
    let refuse = |why: String| {
        Err(Error::new(
            ErrorKind::Refused,
            format!(
                "{why}; it is not a copy of {} (sync into an empty location)",
                src.dir.display()
            ),
        )
        .with_path(&dst.dir))
    };
    if have.disk.source != want.disk.source {
        return refuse(format!(
            "backs up {}, not {}",
            have.disk.source, want.disk.source
        ));
    }
    let newest = want.points.last().map_or(0, |p| p.point);
    for p in &have.points {
        match want.point(p.point) {
            // A prune rewrites a point's image, never its CID, time or hashes.
            Some(q) if q.cid == p.cid && q.created == p.created && q.hashes == p.hashes => {}
            Some(_) => return refuse(format!("its point {} was made by another backup", p.point)),
            None if p.point > newest => {
                return refuse(format!(
                    "it holds point {}, newer than any point of the source",
                    p.point
                ))
            }
            None => {}
        }
    }
    Ok(())
}

/// Copy `name` from `src` to `dst`, a piece at a time; returns its length.
fn copy_file(
    src: &Repository,
    dst: &Repository,
    name: &str,
    progress: Option<&dyn vdisk_core::Progress>,
) -> Result<u64> {
    let from = src.store.load(&src.path(name))?;
    let len = from.len();
    let mut out = dst.store.create_stream(name)?;
    let mut buf = vec![0u8; COPY_CHUNK.min(len as usize)];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        from.read_at(&mut buf[..n], at)?;
        out.writer()
            .write_all(&buf[..n])
            .map_err(|e| Error::io("cannot write", e).with_path(dst.path(name)))?;
        at += n as u64;
        if let Some(pr) = progress {
            pr.read(n as u64);
        }
    }
    let written = out.finish()?;
    if written != len {
        return Err(
            Error::new(ErrorKind::Io, format!("copied {written} of {len} bytes"))
                .with_path(dst.path(name)),
        );
    }
    Ok(len)
}
