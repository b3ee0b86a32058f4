//! The README's examples, run as they are written.
//!
//! Every ```sh block of README.md runs, in order, in one bash (`set -euo pipefail`) in an
//! empty folder, with the built `vdisk` first on PATH and HOME in that folder. The only
//! changes made to the text, each needed to run it here and none to what vdisk is asked:
//! - the first block (the two commands that open the README) is run by
//!   `the_first_command_of_the_readme_runs` (its first line with the built binary for `cargo run
//!   -q --`; its second line is this very test suite);
//! - `examples/kvm-live-backup.sh` is named by its path in the source tree;
//! - in the object-store block, the `export AWS_...` lines are replaced by this run's SeaweedFS
//!   server (its endpoint and test credentials), and the bucket `vdisk-backups` by the test
//!   server's bucket and a fresh prefix;
//! - blocks whose tools are missing are left out with a printed note: the live KVM block needs
//!   `qemu-storage-daemon`, the object-store block SeaweedFS (`VDISK_REQUIRE_S3=1` makes its
//!   absence a failure, as in CI).
//!
//! ```console blocks need root, libvirt or a VM, and are not run.

use std::path::Path;
use std::process::Command;

use crate::common::*;
use crate::s3server::{s3, s3_env, BUCKET, SECRET};

/// The README's text.
fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// The ```sh blocks of `text`, each with the heading it sits under.
fn sh_blocks(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut heading = String::new();
    let mut block: Option<String> = None;
    for line in text.lines() {
        match &mut block {
            Some(b) if line.trim_end() == "```" => {
                out.push((heading.clone(), std::mem::take(b)));
                block = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None if line.trim_end() == "```sh" => block = Some(String::new()),
            None if line.starts_with('#') => heading = line.trim_start_matches('#').trim().into(),
            None => {}
        }
    }
    assert!(block.is_none(), "README.md has an unclosed ```sh block");
    out
}

fn have(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_first_command_of_the_readme_runs() {
    let blocks = sh_blocks(&readme());
    let (_, first) = &blocks[0];
    let mut lines = first.lines();
    let run_line = lines.next().unwrap();
    assert!(run_line.starts_with("cargo run -q -- "), "{run_line}");
    assert_eq!(lines.next(), Some("cargo test --workspace"));
    let bin = vdisk_bin();
    let line = run_line.replace("cargo run -q --", &bin.display().to_string());
    let r = run({
        let mut c = Command::new("bash");
        c.args(["-euo", "pipefail", "-c", &line])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        c
    });
    assert_eq!(r.code, Some(0), "{r:#?}");
    assert!(r.stdout.contains("format"), "{}", r.stdout);
}

#[test]
fn every_sh_example_of_the_readme_runs_verbatim() {
    require_qemu();
    let text = readme();
    let blocks = sh_blocks(&text);
    assert!(blocks.len() >= 10, "{} blocks", blocks.len());
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin_dir = vdisk_bin().parent().unwrap().to_path_buf();
    let server = s3();
    let mut script = String::from("set -euo pipefail\n");
    let mut s3_env_vars = Vec::new();
    let mut ran = Vec::new();
    for (heading, block) in blocks.iter().skip(1) {
        let mut block = block.replace(
            "examples/kvm-live-backup.sh",
            &root
                .join("examples/kvm-live-backup.sh")
                .display()
                .to_string(),
        );
        if block.contains("kvm-live-backup.sh") && !have("qemu-storage-daemon") {
            eprintln!("SKIPPED README block under \"{heading}\": no qemu-storage-daemon");
            continue;
        }
        if block.contains("s3://") {
            let Some(server) = server else {
                eprintln!("SKIPPED README block under \"{heading}\": no SeaweedFS");
                continue;
            };
            let prefix = format!("s3://{BUCKET}/readme-{}/", std::process::id());
            block = block
                .lines()
                .filter(|l| !l.starts_with("export AWS_"))
                .map(|l| l.replace("s3://vdisk-backups/", &prefix) + "\n")
                .collect();
            s3_env_vars = s3_env(server.port, SECRET);
        }
        ran.push(heading.clone());
        script.push_str(&format!("echo '### {heading}' >&2\n"));
        script.push_str(&block);
    }
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env_remove("VDISK_PASSWORD");
    for (k, v) in &s3_env_vars {
        cmd.env(k, v);
    }
    let r = run(cmd);
    assert_eq!(r.code, Some(0), "the README's examples failed: {r:#?}");
    let err = &r.stderr;
    // What the text says happened did: the incremental of the quick start stored one block,
    // the VMware and Hyper-V incrementals read only the areas listed, the clone added almost
    // nothing, the manual page and completions were written.
    let line = |needle: &str| -> String {
        err.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in {err}"))
            .to_string()
    };
    let has = |needle: &str, what: &str| {
        let l = line(needle);
        assert!(l.contains(what), "{l}");
    };
    has("as point 2 of web01", "(incremental;");
    has("as point 2 of app01", "read 192.00 KiB");
    has("as point 2 of db01", "read 1.00 MiB");
    has("as point 1 of web02", "stored 0 B");
    has("would remove", "dry run of prune on backups");
    assert!(
        r.stdout.contains("web01") && r.stdout.contains("db02"),
        "{}",
        r.stdout
    );
    let man = dir.path().join(".local/share/man/man1/vdisk.1");
    assert!(std::fs::read_to_string(man).unwrap().contains(".TH"));
    assert!(ran.iter().any(|h| h == "Quick start"), "{ran:?}");
}
