use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Caps the rate of bytes read, across threads (`--io-limit`).
///
/// Each caller asks for its bytes before reading them; the throttle books them on a shared
/// timeline and sleeps the caller until the booking falls due. With no rate it does nothing.
#[derive(Debug)]
pub struct Throttle {
    rate: Option<u64>,
    /// When the bytes booked so far may all have been read.
    next: Mutex<Option<Instant>>,
}

impl Throttle {
    /// A throttle of `rate` bytes per second; `None` for no limit.
    pub fn new(rate: Option<u64>) -> Self {
        Throttle {
            rate: rate.filter(|&r| r > 0),
            next: Mutex::new(None),
        }
    }

    /// Wait until `bytes` more may be read.
    pub fn take(&self, bytes: u64) {
        let Some(rate) = self.rate else { return };
        let cost = Duration::from_secs_f64(bytes as f64 / rate as f64);
        let due = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            // Unused time does not pile up into a burst: at most 100 ms of credit.
            let start = match *next {
                Some(t) if t + Duration::from_millis(100) > now => t,
                _ => now.checked_sub(Duration::from_millis(100)).unwrap_or(now),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_sleeps_and_limited_paces() {
        let t = Throttle::new(None);
        let start = Instant::now();
        t.take(u64::MAX);
        assert!(start.elapsed() < Duration::from_millis(50));

        let t = Throttle::new(Some(10 << 20));
        let start = Instant::now();
        for _ in 0..5 {
            t.take(1 << 20);
        }
        // 5 MiB at 10 MiB/s is 0.5 s, minus at most 100 ms of initial credit.
        assert!(
            start.elapsed() >= Duration::from_millis(380),
            "{:?}",
            start.elapsed()
        );
    }
}
