//! `--io-limit`: no second reads more than the limit, for every command.

use super::*;

/// Sync every file under `dir` and drop its pages from the page cache, so that the next
/// read of it goes to the disk (and shows in /proc/PID/io).
fn evict_page_cache(dir: &Path) {
    use std::os::fd::AsRawFd;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            evict_page_cache(&e.path());
        } else if t.is_file() {
            let f = std::fs::File::open(e.path()).unwrap();
            f.sync_all().unwrap();
            // SAFETY: posix_fadvise only drops the cached pages of our descriptor's file.
            let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            assert_eq!(r, 0);
        }
    }
}

/// Run `vdisk ARGS` in `dir`, sampling the bytes it has read from the disk (`read_bytes` of
/// /proc/PID/io) every ~50 ms. Returns its exit code, stderr, and (seconds, bytes) samples.
fn sample_reads(dir: &Path, args: &[&str]) -> (Option<i32>, String, Vec<(f64, u64)>) {
    use std::io::Read;
    let mut child = Command::new(vdisk_bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let io = format!("/proc/{}/io", child.id());
    let start = Instant::now();
    // Nothing was read before the process started.
    let mut samples = vec![(0.0, 0)];
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&io) {
            let t = start.elapsed().as_secs_f64();
            if let Some(n) = text
                .lines()
                .find_map(|l| l.strip_prefix("read_bytes: "))
                .and_then(|n| n.trim().parse::<u64>().ok())
            {
                samples.push((t, n));
            }
        }
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), err, samples)
}

/// Bytes read by time `t`, interpolated between samples.
fn read_at_time(samples: &[(f64, u64)], t: f64) -> f64 {
    let i = samples.partition_point(|s| s.0 <= t);
    if i == 0 {
        return samples[0].1 as f64;
    }
    if i == samples.len() {
        return samples[i - 1].1 as f64;
    }
    let (t0, b0) = samples[i - 1];
    let (t1, b1) = samples[i];
    b0 as f64 + (b1 as f64 - b0 as f64) * (t - t0) / (t1 - t0)
}

/// The share of `rate` read in each one-second window that ends by the last read, by
/// the window's start: all of them (`from_start`: a burst as the command opens its files
/// counts too), or those from the first byte read on (before it, the process was starting).
fn second_windows(
    what: &str,
    samples: &[(f64, u64)],
    rate: u64,
    from_start: bool,
) -> Vec<(f64, f64)> {
    let first = samples
        .iter()
        .position(|s| s.1 > 0)
        .unwrap_or_else(|| panic!("{what}: nothing read from the disk"));
    // The end of the paced reading: a few small reads may follow much later (folder blocks
    // when the output is linked into place after a long sync), and are not part of it.
    let total = samples.last().unwrap().1;
    let end = samples
        .iter()
        .find(|s| s.1 + (256 << 10) >= total)
        .unwrap()
        .0;
    let from = if from_start { 0 } else { first };
    let windows: Vec<(f64, f64)> = samples[from..]
        .iter()
        .filter(|s| s.0 + 1.0 <= end)
        .map(|&(t, b)| (t, (read_at_time(samples, t + 1.0) - b as f64) / rate as f64))
        .collect();
    assert!(
        windows.len() >= 10,
        "{what}: read for {:.2} s only ({total} bytes)",
        end - samples[first].0
    );
    windows
}

/// "Real reads (as /proc/PID/io counts them) stay within ±10% of the limit in every second
/// for every command". The commands run one after another (their reads would add up), each
/// on files evicted from the page cache, on a real disk (the build's temporary folder).
///
/// No second may read more than 1.1 times the limit, in any run (from the process's start:
/// a burst while opening files counts). Less than 0.9 times is also what a stalled disk or a
/// starved process on a busy machine shows (the throttle never makes up lost time beyond a
/// 20 ms credit, so that no second bursts), so a command whose slowest second falls short
/// runs again from the same state, three times in all; one of them must hold every second.
/// What falls short by design (bytes counted twice, reads too slow for the pace) falls short
/// every time.
#[test]
fn io_limit_holds_every_second_for_every_command() {
    let _serial = serial();
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path();
    let rate = 8u64 << 20;
    let img = pattern(1201, 24 * MIB);
    std::fs::write(dir.join("img.raw"), &img).unwrap();
    let mut new = img.clone();
    new[10 * MIB..11 * MIB].copy_from_slice(&pattern(1202, MIB));
    std::fs::write(dir.join("new.raw"), &new).unwrap();
    ok(dir, &["hash", "img.raw", "-o", "img.hashes"]);

    let commands: Vec<(Vec<&str>, i32)> = vec![
        (vec!["hash", "img.raw", "-o", "out.hashes"], 0),
        (vec!["diff", "img.raw", "new.raw"], 1),
        (vec!["diff", "img.hashes", "new.raw"], 1),
        (vec!["convert", "img.raw", "out.raw"], 0),
        (vec!["backup", "disk.raw", "repo"], 0),
        (vec!["backup", "disk.raw", "repo"], 0),
        (vec!["verify", "repo"], 0),
        (vec!["restore", "repo", "restored.raw"], 0),
    ];
    // Each attempt starts from the same state: no outputs yet, the repository as the
    // command finds it (none for the full backup, one point for the incremental).
    let prepare = |i: usize| {
        for f in ["out.hashes", "out.raw", "restored.raw"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        match i {
            4 => {
                let _ = std::fs::remove_dir_all(dir.join("repo"));
                std::fs::copy(dir.join("img.raw"), dir.join("disk.raw")).unwrap();
            }
            5 => {
                copy_folder(&dir.join("repo-1"), &dir.join("repo"));
                std::fs::copy(dir.join("new.raw"), dir.join("disk.raw")).unwrap();
            }
            _ => {}
        }
    };
    let mut report = Vec::new();
    for (i, (args, code)) in commands.iter().enumerate() {
        let what = args.join(" ");
        for attempt in 1..=3 {
            prepare(i);
            evict_page_cache(dir);
            let mut full = vec!["--io-limit", "8M"];
            full.extend(args);
            let (got, err, samples) = sample_reads(dir, &full);
            assert_eq!(got, Some(*code), "{what}: {err}");
            let all = second_windows(&what, &samples, rate, true);
            if let Some((t, share)) = all.iter().find(|w| w.1 > 1.1) {
                panic!("{what}: the second from {t:.2} s read {share:.3} x the limit");
            }
            let windows = second_windows(&what, &samples, rate, false);
            let low = windows.iter().map(|w| w.1).fold(f64::MAX, f64::min);
            let high = all.iter().map(|w| w.1).fold(f64::MIN, f64::max);
            if low >= 0.9 {
                report.push(format!("{what}: {low:.3}..{high:.3}"));
                break;
            }
            let (t, _) = windows.iter().find(|w| w.1 == low).unwrap();
            assert!(
                attempt < 3,
                "{what}: three runs in a row had a second under 0.9 x the limit (the last: {low:.3} from {t:.2} s)"
            );
            eprintln!("{what} (run {attempt}): the second from {t:.2} s read {low:.3} x the limit");
        }
        if i == 4 {
            copy_folder(&dir.join("repo"), &dir.join("repo-1"));
        }
    }
    assert_same_bytes(&dir.join("new.raw"), &dir.join("restored.raw"));
    eprintln!("one-second windows / limit: {}", report.join("; "));

    for limit in ["0", "1", "1000", "1K"] {
        one_line_error(
            &vdisk_in(dir, &["--io-limit", limit, "hash", "img.raw", "-o", "x"]),
            "--io-limit",
        );
    }
}
