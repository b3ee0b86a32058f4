use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Caps the rate of bytes read, across threads (`--io-limit`).
///
/// Each caller asks for its bytes before reading them; the throttle books them on a shared
/// timeline and sleeps the caller until the booking falls due. With no rate it does nothing.
/// Callers read in pieces of at most [`Throttle::quantum`] bytes, so that no second of a run
/// reads much more than the rate (a 4 MiB read booked at once would burst).
///
/// ```
/// use std::time::{Duration, Instant};
/// use vdisk_core::Throttle;
///
/// let limit = Throttle::new(Some(1 << 20)); // 1 MiB/s
/// assert_eq!(limit.quantum(), 16 << 10); // 1/64 of a second's worth
/// let start = Instant::now();
/// let mut pieces = Vec::new();
/// limit.paced(256 << 10, |offset, len| {
///     pieces.push((offset, len)); // read `len` bytes at `offset` here
///     Ok::<(), ()>(())
/// })
/// .unwrap();
/// assert_eq!(pieces.len(), 16);
/// assert_eq!(pieces[15], (240 << 10, 16 << 10));
/// // A quarter of a second's worth, less the small burst credit.
/// assert!(start.elapsed() >= Duration::from_millis(200), "{:?}", start.elapsed());
///
/// // Without a rate, nothing waits.
/// let unlimited = Throttle::new(None);
/// let start = Instant::now();
/// unlimited.take(1 << 40);
/// assert!(start.elapsed() < Duration::from_millis(100));
/// ```
#[derive(Debug)]
pub struct Throttle {
    rate: Option<u64>,
    /// When the bytes booked so far may all have been read.
    next: Mutex<Option<Instant>>,
}

/// Unused time that may be spent in a burst: small, so that any one-second window stays
/// within a few percent of the rate.
const CREDIT: Duration = Duration::from_millis(20);

impl Throttle {
    /// A throttle of `rate` bytes per second; `None` for no limit.
    pub fn new(rate: Option<u64>) -> Self {
        Throttle {
            rate: rate.filter(|&r| r > 0),
            next: Mutex::new(None),
        }
    }

    /// The rate, if limited.
    pub fn rate(&self) -> Option<u64> {
        self.rate
    }

    /// The largest piece to ask for at once: 1/64 of a second's worth (at least 4 KiB), or
    /// unlimited without a rate.
    pub fn quantum(&self) -> u64 {
        match self.rate {
            Some(r) => (r / 64).max(4096),
            None => u64::MAX,
        }
    }

    /// Wait until `bytes` more may be read.
    pub fn take(&self, bytes: u64) {
        let Some(rate) = self.rate else { return };
        let cost = Duration::from_secs_f64(bytes as f64 / rate as f64);
        let due = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let start = match *next {
                Some(t) if t + CREDIT > now => t,
                _ => now.checked_sub(CREDIT).unwrap_or(now),
            };
            let due = start + cost;
            *next = Some(due);
            due
        };
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    }

    /// Run `f(offset, len)` over `len` bytes in pieces of at most [`Throttle::quantum`],
    /// taking each piece from the throttle first.
    pub fn paced<E>(
        &self,
        len: u64,
        mut f: impl FnMut(u64, u64) -> Result<(), E>,
    ) -> Result<(), E> {
        let q = self.quantum();
        let mut off = 0;
        while off < len {
            let n = (len - off).min(q);
            self.take(n);
            f(off, n)?;
            off += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn unlimited_never_sleeps() {
        let t = Throttle::new(None);
        let start = Instant::now();
        t.take(u64::MAX);
        assert!(start.elapsed() < Duration::from_millis(50));
        assert_eq!(t.quantum(), u64::MAX);
    }

    /// Two threads reading as fast as the throttle lets them for 3.5 s: every one-second
    /// window holds at most 10 % more than the rate, and the run as a whole gets the rate.
    #[test]
    fn any_second_stays_within_ten_percent_of_the_rate() {
        let rate = 8u64 << 20;
        let t = Arc::new(Throttle::new(Some(rate)));
        let start = Instant::now();
        let log = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (t, log) = (Arc::clone(&t), Arc::clone(&log));
                std::thread::spawn(move || {
                    while start.elapsed() < Duration::from_millis(3500) {
                        let n = t.quantum();
                        t.take(n);
                        log.lock().unwrap().push((start.elapsed(), n));
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        let mut log = log.lock().unwrap().clone();
        log.sort();
        let total: u64 = log.iter().map(|e| e.1).sum();
        let secs = log.last().unwrap().0.as_secs_f64();
        assert!(
            total as f64 >= rate as f64 * secs * 0.9,
            "{total} bytes in {secs} s"
        );
        for (i, &(t0, _)) in log.iter().enumerate() {
            let in_window: u64 = log[i..]
                .iter()
                .take_while(|e| e.0 < t0 + Duration::from_secs(1))
                .map(|e| e.1)
                .sum();
            assert!(
                in_window as f64 <= rate as f64 * 1.1,
                "{in_window} bytes in the second from {t0:?}"
            );
        }
    }
}
