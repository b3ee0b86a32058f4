//! examples/kvm-live-backup.sh against a live guest: a qemu-storage-daemon holds a qcow2 disk
//! that a writer keeps changing (4 KiB writes through a writable NBD export of the same node,
//! every 5 ms, from before the first backup to after the last), while the recipe takes points
//! by fleecing and dirty bitmaps. Each restored point must be the disk at its instant (a copy
//! of the fleecing export made right after the transaction, before the backup, while the
//! writer went on), the incrementals must read only the dirty blocks, and the bitmap the disk
//! kept across a restart of the guest must carry the next point.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

use crate::common::*;
use crate::nbdserver::have;

const MIB: u64 = 1 << 20;
/// The guest's disk.
const DISK_SIZE: u64 = 8 * MIB;
/// The writer writes into this many 64 KiB blocks, spread over the disk (one every 512 KiB):
/// an incremental can have no more than these to read.
const HOT_BLOCKS: u64 = 16;

/// The driver: sources the recipe, starts the guest and the writer, and takes points 1 to 3,
/// then restarts the guest and takes the next one from the bitmap the disk kept. For point
/// N it leaves in $WORK: instant-N.raw (the fleecing export, copied right after the
/// transaction), point-N.json (the backup's summary) and live-N.raw (the guest's disk after
/// the backup).
const DRIVER: &str = r#"
set -euo pipefail
# Into files: a process left behind must not hold the test's pipes open.
exec >"$WORK/driver.out" 2>"$WORK/driver.log"
source "$RECIPE"
GUEST_URI="nbd+unix:///guest?socket=$SOCK"
WRITER=
cleanup() {
    touch "$WORK/stop"
    [[ -z $WRITER ]] || kill "$WRITER" 2>/dev/null || true
    [[ -z ${QSD_PID:-} ]] || kill "$QSD_PID" 2>/dev/null || true
}
trap cleanup EXIT

# The guest's own writes: a writable export of disk0, written by qemu-io in batches of 16
# writes of 4 KiB, 5 ms apart, each at a random 4 KiB of one of the hot 64 KiB blocks, with a
# new byte pattern each; every batch done adds a line to $WORK/batches.
writer_start() {
    qmp '{"execute":"block-export-add","arguments":{"type":"nbd","id":"guest",
          "node-name":"disk0","name":"guest","writable":true}}' >/dev/null
    rm -f "$WORK/stop"
    (
        i=${1:-0}
        while [[ ! -e $WORK/stop ]]; do
            args=()
            for ((k = 0; k < 16; k++)); do
                i=$((i + 1))
                off=$(((RANDOM % 16) * 512 * 1024 + (RANDOM % 16) * 4096))
                args+=(-c "write -q -P $((i % 251 + 1)) $off 4k" -c "sleep 5")
            done
            out=$(qemu-io -f raw "${args[@]}" "$GUEST_URI" 2>&1)
            [[ $out != *failed* ]] || { echo "writer: $out" >&2; exit 1; }
            echo >>"$WORK/batches"
        done
    ) &
    WRITER=$!
}
writer_stop() {
    touch "$WORK/stop"
    wait "$WRITER"
    WRITER=
}
# more_writes: wait until two more batches are done, so that one whole batch of writes came
# after this call.
batches() { if [[ -e $WORK/batches ]]; then wc -l <"$WORK/batches"; else echo 0; fi; }
more_writes() {
    local want=$(($(batches) + 2))
    while (($(batches) < want)); do
        kill -0 "$WRITER" 2>/dev/null || { echo "the writer stopped" >&2; exit 1; }
        sleep 0.02
    done
}

# point N: one point while the writer writes: the guest changed since the last instant, and
# goes on changing between the copy of the instant and the backup's reads.
point() {
    local n=$1
    more_writes
    backup_begin "$n"
    qemu-img convert -f raw -O raw "$(backup_uri)" "$WORK/instant-$n.raw"
    more_writes
    backup_run "$n" --json >"$WORK/point-$n.json"
    qemu-img convert -f raw -O raw "$GUEST_URI" "$WORK/live-$n.raw"
    backup_end "$n"
    echo "point $n done" >&2
}

guest_start
[[ $LAST == 0 ]] || { echo "a new disk, yet LAST=$LAST" >&2; exit 1; }
writer_start
for n in 1 2 3; do point "$n"; done
writer_stop
guest_stop

# The guest again: the disk kept vdisk-3, and the numbering goes on.
guest_start
echo "$LAST" >"$WORK/last"
writer_start 1000
point $((LAST + 1))
writer_stop
guest_stop
"#;

fn json_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()))
}

/// `qemu-img compare -f raw -F raw A B`: true when identical, false when they differ.
fn same(dir: &Path, a: &str, b: &str) -> bool {
    let mut c = Command::new("qemu-img");
    c.args(["compare", "-f", "raw", "-F", "raw", a, b])
        .current_dir(dir);
    let r = run(c);
    match r.code {
        Some(0) => true,
        Some(1) => false,
        _ => panic!("qemu-img compare {a} {b}: {r:#?}"),
    }
}

#[test]
fn the_kvm_recipe_backs_up_a_disk_that_changes_throughout() {
    if !have("qemu-storage-daemon") {
        return;
    }
    require_qemu();
    let start = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // 6 MiB of data, the last 2 MiB a hole (the writer's hot blocks fall in both).
    qemu_img(dir, &["create", "-q", "-f", "qcow2", "d.qcow2", "8M"]);
    qemu_io(
        dir,
        "qcow2",
        "d.qcow2",
        &["write -q -P 0x11 0 3M", "write -q -P 0x22 3M 3M"],
    );

    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kvm-live-backup.sh");
    let bin = vdisk_bin();
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = Command::new("timeout");
    c.args(["-k", "5", "50", "bash", "-c", DRIVER])
        .current_dir(dir)
        .env("PATH", path)
        .env("RECIPE", &recipe)
        .env("DISK", dir.join("d.qcow2"))
        .env("SOCK", dir.join("nbd.sock"))
        .env("REPO", dir.join("repo"))
        .env("WORK", dir)
        .env("NAME", "vm");
    let r = run(c);
    let log = std::fs::read_to_string(dir.join("driver.log")).unwrap_or_default();
    assert_eq!(r.code, Some(0), "the driver failed: {r:#?}\n{log}");
    let driven = r.elapsed;
    let batches = std::fs::read_to_string(dir.join("batches"))
        .unwrap()
        .lines()
        .count();

    // The guest came back with the bitmap of point 3, and took point 4 from it.
    assert_eq!(
        std::fs::read_to_string(dir.join("last")).unwrap().trim(),
        "3"
    );
    let points = 4;

    let mut read = Vec::new();
    for n in 1..=points {
        let s = json_file(&dir.join(format!("point-{n}.json")));
        assert_eq!(s["name"], "vm", "{s}");
        assert_eq!(s["point"], n, "{s}");
        let bytes_read = s["bytes_read"].as_u64().unwrap();
        if n == 1 {
            assert_eq!(s["kind"], "full", "{s}");
            // Every allocated block: the 6 MiB written first, and what the writer put in the
            // hole by then.
            assert!((6 * MIB..=DISK_SIZE).contains(&bytes_read), "{s}");
        } else {
            // Only what vdisk-(N-1) marks: some of the hot blocks, far below the disk.
            assert_eq!(s["kind"], "incremental", "{s}");
            assert!(
                bytes_read > 0 && bytes_read <= HOT_BLOCKS * 64 * 1024,
                "point {n} read {bytes_read} bytes: {s}"
            );
        }
        read.push(bytes_read);

        // The point is the disk at its instant, which the writer left before the backup
        // read it.
        let instant = format!("instant-{n}.raw");
        let restored = format!("restored-{n}.raw");
        vdisk_in(
            dir,
            &[
                "restore",
                "--name",
                "vm",
                "--point",
                &n.to_string(),
                "repo",
                &restored,
            ],
        )
        .expect_code(0, "restore");
        assert!(
            same(dir, &restored, &instant),
            "point {n} is not the disk at its instant"
        );
        assert!(
            !same(dir, &instant, &format!("live-{n}.raw")),
            "the writer changed nothing during backup {n}"
        );
        if n > 1 {
            assert!(
                !same(dir, &format!("instant-{}.raw", n - 1), &instant),
                "the writer changed nothing between points {} and {n}",
                n - 1
            );
        }
    }

    vdisk_in(dir, &["verify", "repo"]).expect_code(0, "verify");
    let list: Value = serde_json::from_str(
        &vdisk_in(dir, &["list", "repo", "--json"])
            .expect_code(0, "list")
            .stdout,
    )
    .unwrap();
    assert_eq!(list["names"], serde_json::json!(["vm"]), "{list}");
    assert_eq!(list["points"].as_array().unwrap().len(), points as usize);

    // The guest's disk is sound, and kept the bitmap of the last point.
    let check = qemu_img(dir, &["check", "d.qcow2"]);
    assert!(check.contains("No errors"), "{check}");
    let info = qemu_img(dir, &["info", "d.qcow2"]);
    assert!(info.contains("name: vdisk-4"), "{info}");
    assert!(!info.contains("name: vdisk-3"), "{info}");

    eprintln!(
        "{points} points of an {} MiB disk under {batches} batches of 16 writes: read {read:?} \
         bytes; driver {:.1} s, all {:.1} s",
        DISK_SIZE / MIB,
        driven.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
}
