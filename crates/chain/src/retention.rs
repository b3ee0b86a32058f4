//! Which points a prune keeps, with restic's meanings: `--keep-last N` keeps the N newest
//! points; `--keep-daily N` the newest point of each of the N newest days that have points;
//! weekly (ISO weeks) and monthly alike. A point any rule keeps is kept. Days, weeks and
//! months are counted in UTC. Rules apply to each NAME on its own.

use crate::clock::{day, iso_week, month};
use crate::point::PointRecord;

/// A retention policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep the newest N points.
    pub last: u32,
    /// Keep the newest point of each of the newest N days with points.
    pub daily: u32,
    /// ... of each of the newest N ISO weeks.
    pub weekly: u32,
    /// ... of each of the newest N months.
    pub monthly: u32,
}

impl Retention {
    /// Whether no rule keeps anything (a prune refuses such a policy).
    pub fn is_empty(&self) -> bool {
        self.last == 0 && self.daily == 0 && self.weekly == 0 && self.monthly == 0
    }

    /// For points of one NAME, oldest first: whether each is kept.
    ///
    /// ```
    /// use vdisk_chain::Retention;
    /// # use vdisk_chain::{PointRecord, PointStats};
    /// # let p = |unix: u64| PointRecord { format: "vdisk-point".into(), version: 3, name: "a".into(), seq: 1,
    /// #     time: String::new(), unix, parent: None, block_size: 65536, host: String::new(), disks: vec![], stats: PointStats::default() };
    /// let day = 86_400;
    /// // Two points a day for three days.
    /// let points: Vec<PointRecord> = (0..6).map(|i| p(1_800_000_000 + i / 2 * day + i % 2 * 3600)).collect();
    /// let refs: Vec<&PointRecord> = points.iter().collect();
    /// let daily = Retention { daily: 2, ..Default::default() };
    /// assert_eq!(daily.keep(&refs), [false, false, false, true, false, true]);
    /// let last = Retention { last: 1, ..Default::default() };
    /// assert_eq!(last.keep(&refs), [false, false, false, false, false, true]);
    /// ```
    pub fn keep(&self, points: &[&PointRecord]) -> Vec<bool> {
        let mut keep = vec![false; points.len()];
        let rules: [(u32, &dyn Fn(u64) -> i64); 4] = [
            (self.last, &|_| 0),
            (self.daily, &day),
            (self.weekly, &|t| {
                let (y, w) = iso_week(t);
                y * 100 + i64::from(w)
            }),
            (self.monthly, &|t| {
                let (y, m) = month(t);
                y * 100 + i64::from(m)
            }),
        ];
        for (i, (n, bucket)) in rules.iter().enumerate() {
            let mut left = *n;
            let mut last: Option<i64> = None;
            for (k, p) in points.iter().enumerate().rev() {
                if left == 0 {
                    break;
                }
                // keep-last: every point is its own bucket.
                let b = if i == 0 { k as i64 } else { bucket(p.unix) };
                if last != Some(b) {
                    keep[k] = true;
                    left -= 1;
                    last = Some(b);
                }
            }
        }
        keep
    }
}
