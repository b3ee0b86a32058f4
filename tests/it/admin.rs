//! The administrator's experience, through the built binary: labelled progress bars (under a
//! pty, with `script`), one summary line per command that writes or checks, interrupts by a
//! real signal, hints, help, the man page, completions, and output formats that follow the
//! destination's name (checked with `qemu-img info`).

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// A sparse raw disk of `size` bytes holding pseudo-random data in `pieces` of `piece` bytes,
/// spread evenly at 64 KiB boundaries.
fn sparse_disk(path: &Path, size: u64, pieces: u64, piece: usize, seed: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let step = size / pieces / (64 << 10) * (64 << 10);
    for i in 0..pieces {
        f.write_all_at(&pattern(seed + i, piece), i * step).unwrap();
    }
}

/// Every line `script` captured, split at carriage returns and newlines, with terminal
/// control sequences (colours, cursor moves, line wipes) taken out.
fn screen_lines(raw: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in raw.split(['\r', '\n']) {
        let mut clean = String::new();
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                // CSI: ESC [ parameters final-byte.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for d in chars.by_ref() {
                        if ('@'..='~').contains(&d) {
                            break;
                        }
                    }
                }
                continue;
            }
            if !c.is_control() {
                clean.push(c);
            }
        }
        if !clean.trim().is_empty() {
            out.push(clean);
        }
    }
    out
}

/// Run `vdisk ARGS` in `dir` on a pseudo-terminal of 80 columns (`script`), returning
/// what the terminal showed and the exit code.
fn on_terminal(dir: &Path, args: &[&str]) -> (String, Option<i32>) {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let line = format!(
        "stty cols 80 rows 24; exec '{}' {}",
        vdisk_bin().display(),
        quoted.join(" ")
    );
    let out = Command::new("script")
        .args(["-qfec", &line, "/dev/null"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("script(1) runs");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code(),
    )
}

#[test]
fn the_progress_bar_is_labelled_counts_bytes_read_and_fits_80_columns() {
    if !have_tool("script") {
        eprintln!("skipped: script(1) is not installed");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    // 256 MiB of disk, 12 MiB of it data: the bar counts to the 12 MiB read.
    sparse_disk(&dir.join("web01.raw"), 256 << 20, 12, 1 << 20, 7);
    let (screen, code) = on_terminal(dir, &["--io-limit", "4M", "backup", "web01.raw", "repo"]);
    assert_eq!(code, Some(0), "{screen}");
    let lines = screen_lines(&screen);
    let bars: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("backup web01.raw"))
        .collect();
    assert!(!bars.is_empty(), "no labelled bar was drawn: {lines:#?}");
    for l in &bars {
        assert!(l.chars().count() <= 80, "wider than 80 columns: {l:?}");
    }
    // The label shows the limit, the total is the data to read, not the disk.
    assert!(bars.iter().all(|b| b.contains("≤4 MiB/s")), "{bars:#?}");
    let totals: Vec<f64> = bars
        .iter()
        .filter_map(|b| {
            // "DONE/TOTAL": the slash followed by a number (the label's "MiB/s" is not).
            b.match_indices('/').find_map(|(i, _)| {
                let (n, rest) = b[i + 1..].split_once(' ')?;
                rest.starts_with("MiB").then(|| n.parse().ok()).flatten()
            })
        })
        .collect();
    assert!(
        !totals.is_empty() && totals.iter().all(|&t| t == 12.0),
        "the total is not the 12 MiB read: {bars:#?}"
    );
    assert!(!bars.iter().any(|b| b.contains("256")), "{bars:#?}");
    // The rate is the paced rate of the reads (a little burst credit aside).
    let rates: Vec<f64> = bars
        .iter()
        .filter_map(|b| {
            let (before, _) = b.split_once(" MiB/s eta")?;
            before.rsplit(' ').next()?.parse().ok()
        })
        .collect();
    assert!(!rates.is_empty(), "no rate shown: {bars:#?}");
    assert!(
        rates.iter().all(|&r| r <= 6.0),
        "a rate above the 4 MiB/s limit: {rates:?} in {bars:#?}"
    );
    assert!(
        rates.iter().any(|&r| r >= 2.0),
        "the limit is not visibly the rate: {rates:?}"
    );
    // The bar is wiped and one summary line follows.
    let summaries: Vec<&String> = lines.iter().filter(|l| l.starts_with("vdisk: ")).collect();
    assert_eq!(summaries.len(), 1, "{lines:#?}");
    assert!(summaries[0].contains("as point 1"), "{summaries:?}");
}

#[test]
fn without_a_terminal_there_is_no_bar_only_the_summary() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    sparse_disk(&dir.join("d.raw"), 8 << 20, 4, 64 << 10, 1);
    let r = vdisk_in(dir, &["backup", "d.raw", "repo"]);
    r.expect_code(0, "backup");
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(!r.stderr.contains('\r'), "{:?}", r.stderr);
}

/// Run `vdisk ARGS` in `dir` and return its stderr lines, checking the exit code.
fn stderr_lines(dir: &Path, args: &[&str], code: i32) -> Vec<String> {
    let r = vdisk_in(dir, args);
    r.expect_code(code, &args.join(" "));
    r.stderr.lines().map(str::to_string).collect()
}

#[test]
fn every_command_that_writes_or_checks_prints_one_summary_line() {
    require_qemu();
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    sparse_disk(&dir.join("d.raw"), 8 << 20, 4, 64 << 10, 1);
    std::fs::copy(dir.join("d.raw"), dir.join("e.raw")).unwrap();
    std::fs::File::options()
        .write(true)
        .open(dir.join("e.raw"))
        .unwrap()
        .write_all_at(&[0x5a; 4096], 1 << 20)
        .unwrap();
    std::fs::write(
        dir.join("areas.json"),
        r#"{"changedArea": [{"start": 1048576, "length": 65536}]}"#,
    )
    .unwrap();
    qemu_img(dir, &["create", "-q", "-f", "qcow2", "base.qcow2", "8M"]);
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    let size = (8u64 << 20).to_string();
    let cases: Vec<(Vec<&str>, i32, &[&str])> = vec![
        (
            vec!["backup", "d.raw", "repo"],
            0,
            &["d.raw", "repo", "point 1"],
        ),
        (
            vec!["backup", "e.raw", "repo", "--name", "d", "--force"],
            0,
            &["point 2"],
        ),
        (
            vec!["restore", "--point", "1", "repo", "r.vmdk"],
            0,
            &["point 1", "r.vmdk", "vmdk"],
        ),
        (
            vec!["convert", "d.raw", "c.qcow2"],
            0,
            &["d.raw", "c.qcow2"],
        ),
        (vec!["merge", "top.qcow2", "-o", "m.raw"], 0, &["m.raw"]),
        (
            vec!["hash", "d.raw", "-o", "d.manifest"],
            0,
            &["d.manifest"],
        ),
        (
            vec!["diff", "d.raw", "e.raw", "--bitmap", "c.bitmap"],
            1,
            &["c.bitmap", "1 of"],
        ),
        (
            vec![
                "bitmap",
                "import",
                "areas.json",
                "--size",
                &size,
                "-o",
                "i.bitmap",
            ],
            0,
            &["i.bitmap"],
        ),
        (
            vec!["merge", "c.bitmap", "i.bitmap", "-o", "u.bitmap"],
            0,
            &["u.bitmap"],
        ),
        (vec!["verify", "repo"], 0, &["sound"]),
        (vec!["check", "c.qcow2"], 0, &["c.qcow2", "clean"]),
        (vec!["sync", "repo", "copy"], 0, &["copy"]),
        (
            vec!["prune", "repo", "--keep-last", "1"],
            0,
            &["repo", "1 kept"],
        ),
    ];
    for (args, code, words) in &cases {
        let lines = stderr_lines(dir, args, *code);
        assert_eq!(lines.len(), 1, "{args:?}: {lines:#?}");
        assert!(lines[0].starts_with("vdisk: "), "{args:?}: {lines:?}");
        for w in *words {
            assert!(
                lines[0].contains(w),
                "{args:?}: {w:?} not in {:?}",
                lines[0]
            );
        }
    }
    // -q: nothing at all; --json: the summary still goes to stderr, the JSON to stdout.
    let r = vdisk_in(dir, &["-q", "restore", "repo", "q.raw"]);
    r.expect_code(0, "restore -q");
    assert_eq!(r.stderr, "");
    let r = vdisk_in(dir, &["restore", "--json", "repo", "j.raw"]);
    r.expect_code(0, "restore --json");
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["destination"], "j.raw");
}

/// Start `vdisk ARGS` in `dir`, send `sig` once it has run for `after`, and return its exit
/// code and stderr.
fn interrupt(
    dir: &Path,
    args: &[&str],
    sig: libc::c_int,
    after: Duration,
) -> (Option<i32>, String) {
    let mut child = Command::new(vdisk_bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    assert!(
        child.try_wait().unwrap().is_none(),
        "{args:?} ended before it could be interrupted"
    );
    send_signal(child.id(), sig);
    let start = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(start.elapsed() < Duration::from_secs(20), "slow to stop");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_interrupt_says_what_is_unchanged_and_exits_130() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    sparse_disk(&dir.join("d.raw"), 64 << 20, 32, 1 << 20, 3);
    vdisk_in(dir, &["backup", "d.raw", "repo"]).expect_code(0, "first backup");
    // New data everywhere, read at 4 MiB/s: the incremental takes ~8 s.
    sparse_disk(&dir.join("d.raw"), 64 << 20, 32, 1 << 20, 99);
    let before = file_tree(&dir.join("repo"));
    let (code, err) = interrupt(
        dir,
        &["--io-limit", "4M", "backup", "d.raw", "repo"],
        libc::SIGINT,
        Duration::from_millis(1500),
    );
    assert_eq!(code, Some(130), "{err}");
    assert_eq!(
        err.trim_end(),
        "vdisk: interrupted; repository repo is unchanged"
    );
    assert_eq!(
        file_tree(&dir.join("repo")),
        before,
        "the repository changed"
    );
    vdisk_in(dir, &["verify", "repo"]).expect_code(0, "verify after");

    // An existing output replaced with --force stays whole when the restore is stopped.
    vdisk_in(dir, &["restore", "repo", "out.raw"]).expect_code(0, "restore");
    let old = std::fs::read(dir.join("out.raw")).unwrap();
    vdisk_in(dir, &["backup", "d.raw", "repo"]).expect_code(0, "second backup");
    let (code, err) = interrupt(
        dir,
        &["--io-limit", "4M", "restore", "--force", "repo", "out.raw"],
        libc::SIGTERM,
        Duration::from_millis(1500),
    );
    assert_eq!(code, Some(130), "{err}");
    assert!(
        err.ends_with("vdisk: interrupted; out.raw is unchanged\n"),
        "{err:?}"
    );
    assert!(std::fs::read(dir.join("out.raw")).unwrap() == old);

    // A new output is not created, and nothing is left beside it.
    let (code, err) = interrupt(
        dir,
        &["--io-limit", "4M", "convert", "d.raw", "new.vmdk"],
        libc::SIGINT,
        Duration::from_millis(1500),
    );
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("new.vmdk is unchanged (not created)"), "{err}");
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n != "new.vmdk" && !n.contains("vdisk-partial")),
        "{names:?}"
    );
}

#[test]
fn hints_name_the_right_command_and_only_valid_values() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    sparse_disk(&dir.join("d.raw"), 4 << 20, 2, 64 << 10, 5);
    sparse_disk(&dir.join("other.raw"), 4 << 20, 2, 64 << 10, 6);

    // A mistyped flag points at the command's own help, which works.
    let r = vdisk_in(dir, &["backup", "--chnaged", "x", "d.raw", "repo"]);
    r.expect_code(2, "typo");
    assert!(r.stderr.contains("'--changed'"), "{}", r.stderr);
    assert!(
        r.stderr.trim_end().ends_with("(see vdisk backup --help)"),
        "{}",
        r.stderr
    );
    vdisk_in(dir, &["backup", "--help"]).expect_code(0, "the hinted help");
    let r = vdisk_in(dir, &["bitmap", "import", "--sise", "1M"]);
    assert!(
        r.stderr.contains("(see vdisk bitmap import --help)"),
        "{}",
        r.stderr
    );

    // -O lists the formats vdisk writes: not ova, not vdi (read only).
    let r = vdisk_in(dir, &["convert", "-O", "qcow3", "d.raw", "x"]);
    r.expect_code(2, "-O qcow3");
    let listed = r.stderr.split("possible values: ").nth(1).unwrap_or("");
    let listed: Vec<&str> = listed
        .split(';')
        .next()
        .unwrap()
        .split(", ")
        .map(str::trim)
        .collect();
    assert_eq!(
        listed,
        ["vmdk", "qcow2", "vhdx", "vhd", "raw"],
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("(see vdisk convert --help)"),
        "{}",
        r.stderr
    );
    // -f takes what vdisk reads, ova included.
    let r = vdisk_in(dir, &["-f", "qed", "info", "d.raw"]);
    assert!(r.stderr.contains("vdi, raw, ova"), "{}", r.stderr);

    // Swapped arguments.
    vdisk_in(dir, &["backup", "d.raw", "repo"]).expect_code(0, "backup");
    let r = vdisk_in(dir, &["backup", "repo", "d.raw"]);
    r.expect_code(2, "swapped backup");
    assert!(r.stderr.contains("REPO comes last"), "{}", r.stderr);
    let r = vdisk_in(dir, &["restore", "out.raw", "repo"]);
    r.expect_code(2, "swapped restore");
    assert!(r.stderr.contains("REPO comes first"), "{}", r.stderr);

    // The identity refusal says what is wrong and what to do, once.
    let r = vdisk_in(dir, &["backup", "--name", "d", "other.raw", "repo"]);
    r.expect_code(2, "another disk");
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert_eq!(r.stderr.matches("--force").count(), 1, "{}", r.stderr);
    assert!(!r.stderr.contains("insist"), "{}", r.stderr);
}

#[test]
fn help_puts_global_options_apart_and_shows_examples() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    for cmd in ["backup", "restore", "convert", "diff", "serve", "sync"] {
        let r = vdisk_in(dir, &[cmd, "--help"]);
        r.expect_code(0, cmd);
        let help = &r.stdout;
        let global = help
            .find("Global options:")
            .unwrap_or_else(|| panic!("{help}"));
        let own = help.find("\nOptions:").unwrap_or_else(|| panic!("{help}"));
        // The command's own options come first, then the global ones, apart.
        assert!(own < global, "{help}");
        assert!(!help[own..global].contains("--io-limit"), "{help}");
        assert!(help[global..].contains("--io-limit"), "{help}");
        let examples = help
            .split("Examples:\n")
            .nth(1)
            .unwrap_or_else(|| panic!("{help}"));
        let lines: Vec<&str> = examples.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(lines.len() >= 2, "{cmd}: {examples}");
        assert!(
            lines
                .iter()
                .all(|l| l.trim_start().starts_with("vdisk ")
                    || l.trim_start().starts_with("qemu-img ")),
            "{cmd}: {examples}"
        );
    }
}

#[test]
fn manpage_is_roff_with_every_command() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let r = vdisk_in(dir, &["manpage"]);
    r.expect_code(0, "manpage");
    let page = &r.stdout;
    assert!(page.contains("\n.TH vdisk 1 "), "{page}");
    for cmd in [
        "backup", "restore", "convert", "diff", "serve", "sync", "verify", "prune",
    ] {
        assert!(page.contains(&format!(".SS \"vdisk {cmd}\"")), "{cmd}");
    }
    assert!(page.contains(".SS \"vdisk bitmap import\""));
    assert!(page.contains(".SH \"EXIT STATUS\""));
    // groff, where installed, reads it without a warning.
    if have_tool("groff") {
        std::fs::write(dir.join("vdisk.1"), page).unwrap();
        let out = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z", "vdisk.1"])
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    }
}

#[test]
fn completions_offer_the_values_of_formats_and_subformats() {
    let t = tempfile::tempdir().unwrap();
    let r = vdisk_in(t.path(), &["completions", "bash"]);
    r.expect_code(0, "completions");
    let script = &r.stdout;
    // bash completion lists an option's values in the case for that option.
    let values_after = |opt: &str| -> String {
        let at = script
            .find(&format!("{opt})"))
            .unwrap_or_else(|| panic!("no case for {opt}"));
        script[at..].lines().take(3).collect::<Vec<_>>().join(" ")
    };
    let o = values_after("-O");
    for f in ["vmdk", "qcow2", "vhdx", "vhd", "raw"] {
        assert!(o.contains(f), "{o}");
    }
    assert!(!o.contains("ova"), "{o}");
    let f = values_after("--format");
    assert!(f.contains("ova") && f.contains("vdi"), "{f}");
    let s = values_after("--subformat");
    assert!(s.contains("streamOptimized") && s.contains("fixed"), "{s}");
}

#[test]
fn restore_merge_and_delta_outputs_follow_the_destination_name() {
    require_qemu();
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    sparse_disk(&dir.join("d.raw"), 4 << 20, 4, 64 << 10, 9);
    vdisk_in(dir, &["backup", "d.raw", "repo"]).expect_code(0, "backup");
    let format_of = |f: &str| {
        let v: serde_json::Value =
            serde_json::from_str(&qemu_img(dir, &["info", "--output=json", f])).unwrap();
        v["format"].as_str().unwrap().to_string()
    };
    for (name, qemu) in [
        ("r.vmdk", "vmdk"),
        ("r.qcow2", "qcow2"),
        ("r.vhdx", "vhdx"),
        ("r.vhd", "vpc"),
        ("r.img", "raw"),
    ] {
        vdisk_in(dir, &["restore", "repo", name]).expect_code(0, name);
        assert_eq!(format_of(name), qemu, "{name}");
        qemu_img(dir, &["compare", "-q", "d.raw", name]);
    }
    // merge: the name decides over the chain's own format.
    qemu_img(
        dir,
        &["convert", "-q", "-O", "qcow2", "d.raw", "base.qcow2"],
    );
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    vdisk_in(dir, &["merge", "top.qcow2", "-o", "m.vhdx"]).expect_code(0, "merge");
    assert_eq!(format_of("m.vhdx"), "vhdx");
    // diff --delta: a VMDK link on a VMDK, by its name.
    qemu_img(dir, &["convert", "-q", "-O", "vmdk", "d.raw", "old.vmdk"]);
    sparse_disk(&dir.join("new.raw"), 4 << 20, 4, 64 << 10, 10);
    vdisk_in(
        dir,
        &["diff", "old.vmdk", "new.raw", "--delta", "delta.vmdk"],
    )
    .expect_code(1, "diff");
    assert_eq!(format_of("delta.vmdk"), "vmdk");
    qemu_img(dir, &["compare", "-q", "new.raw", "delta.vmdk"]);
    // An -O that contradicts the name is refused before anything is written.
    let r = vdisk_in(dir, &["restore", "-O", "qcow2", "repo", "x.vmdk"]);
    r.expect_code(2, "contradiction");
    assert!(!dir.join("x.vmdk").exists());
}

#[test]
fn a_delta_outside_its_parents_folder_warns_that_reading_needs_allow_outside_paths() {
    require_qemu();
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    std::fs::create_dir(dir.join("base")).unwrap();
    std::fs::create_dir(dir.join("deltas")).unwrap();
    sparse_disk(&dir.join("base/old.raw"), 4 << 20, 2, 64 << 10, 1);
    qemu_img(
        dir,
        &[
            "convert",
            "-q",
            "-O",
            "qcow2",
            "base/old.raw",
            "base/old.qcow2",
        ],
    );
    sparse_disk(&dir.join("new.raw"), 4 << 20, 2, 64 << 10, 2);
    // Inside: named relatively, no warning.
    let r = vdisk_in(
        dir,
        &[
            "diff",
            "base/old.qcow2",
            "new.raw",
            "--delta",
            "base/d.qcow2",
        ],
    );
    r.expect_code(1, "inside");
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
    let v: serde_json::Value =
        serde_json::from_str(&qemu_img(dir, &["info", "--output=json", "base/d.qcow2"])).unwrap();
    assert_eq!(v["backing-filename"], "old.qcow2");
    // Outside: an absolute name, and a warning now rather than a refusal at the first read.
    let r = vdisk_in(
        dir,
        &[
            "diff",
            "base/old.qcow2",
            "new.raw",
            "--delta",
            "deltas/d.qcow2",
        ],
    );
    r.expect_code(1, "outside");
    let warning: Vec<&str> = r.stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warning.len(), 1, "{}", r.stderr);
    assert!(warning[0].contains("--allow-outside-paths"), "{}", r.stderr);
    let r = vdisk_in(dir, &["info", "deltas/d.qcow2"]);
    r.expect_code(2, "refused without the flag");
    assert!(r.stderr.contains("--allow-outside-paths"), "{}", r.stderr);
    vdisk_in(
        dir,
        &["--allow-outside-paths", "diff", "new.raw", "deltas/d.qcow2"],
    )
    .expect_code(0, "reads as new with the flag");
}
