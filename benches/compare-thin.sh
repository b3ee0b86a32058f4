#!/usr/bin/env bash
# Costs that follow the data, not the disk: the same 1 GiB of data (16 pieces of 64 MiB) as a
# dense 1 GiB raw disk, a 1 TiB thin one and a 15 TiB thin one (sparse files), and for each:
# hash, diff, full backup, 1% hash-based incremental, verify, restore, prune, convert — the
# median wall time, the peak RSS, and the repository's bytes and files per point. Then the
# page-cache growth of a backup of a cold 4 GiB disk (default, and with --keep-cache).
#
# Usage: bash benches/compare-thin.sh
#
# Environment:
#   WORK=DIR   scratch folder on a file system that takes 15 TiB sparse files (ext4, xfs; not
#              tmpfs): the sources (default /work/vdisk-thin). Repositories and outputs go to
#              SHM (default /dev/shm/vdisk-thin), so disk writeback does not decide the times.
#   RUNS=N     timed runs per command (default 5)
#   BIG=0      skip the 15 TiB disk
#
# The sources stay warm in the page cache except in the cold-backup row (the source evicted
# with posix_fadvise(DONTNEED) first).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export LC_ALL=C

RUNS=${RUNS:-5}
WORK=${WORK:-/work/vdisk-thin}
SHM=${SHM:-/dev/shm/vdisk-thin}
BIG=${BIG:-1}
use_work_dir
mkdir -p "$SHM"
for tool in cargo python3 awk fincore; do command -v "$tool" >/dev/null || die "$tool is not installed"; done

build_vdisk
V="$VDISK"

# make_disk PATH SIZE SEED: 16 pieces of 64 MiB of random data spread evenly; SEED varies
# the bytes, CHANGED=1 changes 1% of the 64 KiB blocks of each piece.
make_disk() {
    python3 - "$1" "$2" "$3" "${CHANGED:-0}" <<'EOF'
import os, random, sys
path, size, seed, changed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
piece = 64 << 20
with open(path, "wb") as f:
    f.truncate(size)
    for i in range(16):
        at = i * (size // 16) // piece * piece
        r = random.Random(seed * 100 + i)
        f.seek(at)
        f.write(r.randbytes(piece))
        if changed:
            for b in range(0, piece, 100 * 65536):
                f.seek(at + b + 17)
                f.write(os.urandom(64))
EOF
}

# measured OUT CMD... -> "seconds peak_rss_bytes" of one run (the child's own rusage)
measured() {
    python3 - "$@" <<'EOF'
import os, sys, time
args = sys.argv[1:]
t = time.monotonic()
pid = os.posix_spawn(args[0], args, os.environ, file_actions=[
    (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
    (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0)])
_, status, ru = os.wait4(pid, 0)
code = os.waitstatus_to_exitcode(status)
if code not in (0, 1):
    sys.exit(f"{args}: exit {code}")
print(f"{time.monotonic() - t:.4f} {ru.ru_maxrss * 1024}")
EOF
}

declare -A RSS REPO_BYTES REPO_FILES
# row NAME CMD...: RUNS runs (the output folders cleaned by the caller's PREP), median time
row() {
    local name=$1
    shift
    local times="" peak=0 out t r
    for ((i = 0; i < RUNS; i++)); do
        [[ -n ${PREP:-} ]] && eval "$PREP"
        out=$(measured "$@")
        t=${out% *}
        r=${out#* }
        times+="$t "
        ((r > peak)) && peak=$r
    done
    local st
    read -r -a st <<<"$(stats "$times")"
    MED["$name"]=${st[0]}
    MIN["$name"]=${st[1]}
    MAX["$name"]=${st[2]}
    RSS["$name"]=$peak
}

sizes=("dense:$((1 << 30))" "1TiB:$((1 << 40))")
[[ $BIG == 1 ]] && sizes+=("15TiB:$((15 << 40))")
for entry in "${sizes[@]}"; do
    name=${entry%%:*}
    size=${entry#*:}
    [[ -f $WORK/$name.raw && $(size_of "$WORK/$name.raw") == "$size" ]] || make_disk "$WORK/$name.raw" "$size" 1
    [[ -f $WORK/$name-new.raw && $(size_of "$WORK/$name-new.raw") == "$size" ]] || CHANGED=1 make_disk "$WORK/$name-new.raw" "$size" 1
    # Warm: read the data (not the holes) into the page cache; runs keep what was cached.
    "$V" -q --keep-cache hash "$WORK/$name.raw" -o "$SHM/warm" --force
    "$V" -q --keep-cache hash "$WORK/$name-new.raw" -o "$SHM/warm" --force
    R="$SHM/repo-$name"
    PREP="rm -f $SHM/m-$name" row "$name/hash" "$V" -q hash "$WORK/$name.raw" -o "$SHM/m-$name"
    PREP="" row "$name/diff" "$V" -q diff "$WORK/$name.raw" "$WORK/$name-new.raw"
    PREP="rm -rf $R" row "$name/backup full" "$V" -q backup "$WORK/$name.raw" "$R"
    PREP="rm -rf $R; $V -q backup $WORK/$name.raw $R" row "$name/backup 1% incremental" \
        "$V" -q backup "$WORK/$name-new.raw" "$R" --force
    # The two-point repository of the last incremental run.
    read -r bytes files <<<"$(du -sb "$R" | cut -f1) $(find "$R" -type f | wc -l)"
    REPO_BYTES[$name]=$bytes
    REPO_FILES[$name]=$files
    PREP="" row "$name/verify" "$V" -q verify "$R"
    PREP="rm -f $SHM/r-$name.raw" row "$name/restore" "$V" -q restore "$R" "$SHM/r-$name.raw" --point 1
    PREP="rm -f $SHM/c-$name.vmdk" row "$name/convert" "$V" -q convert "$WORK/$name-new.raw" "$SHM/c-$name.vmdk" -O vmdk
    PREP="rm -rf $R; $V -q backup $WORK/$name.raw $R; $V -q backup $WORK/$name-new.raw $R --force" \
        row "$name/prune" "$V" -q prune "$R" --keep 1
    rm -rf "$R" "$SHM"/r-"$name".raw "$SHM"/c-"$name"*.vmdk "$SHM/m-$name"
done 2>&1

echo
echo "== costs: median wall time of $RUNS runs, peak RSS; 1 GiB of data in each disk"
printf '%-26s %12s %12s %12s %10s %10s %10s\n' command dense 1TiB 15TiB "RSS dense" "RSS 1TiB" "RSS 15TiB"
for cmd in hash diff "backup full" "backup 1% incremental" verify restore convert prune; do
    printf '%-26s' "$cmd"
    for n in dense 1TiB 15TiB; do printf ' %11ss' "${MED[$n/$cmd]:--}"; done
    for n in dense 1TiB 15TiB; do
        r=${RSS[$n/$cmd]:-}
        if [[ -n $r ]]; then printf ' %10s' "$(mib "$r")"; else printf ' %10s' -; fi
    done
    echo
done
echo
echo "== repository after a full point and a 1% incremental: bytes and files"
for n in dense 1TiB 15TiB; do
    [[ -n ${REPO_BYTES[$n]:-} ]] && printf '%-6s %14s in %4s files\n' "$n" "$(human "${REPO_BYTES[$n]}")" "${REPO_FILES[$n]}"
done

# Page-cache growth of a cold 4 GiB backup.
COLD="$WORK/cold.raw"
[[ -f $COLD && $(size_of "$COLD") == $((4 << 30)) ]] || head -c $((4 << 30)) /dev/urandom >"$COLD"
evict() { python3 -c "import os,sys; fd=os.open(sys.argv[1],os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED)" "$1"; }
cached() { awk '/^Cached:/{printf "%.0f\n", $2 * 1024}' /proc/meminfo; }
# Bytes of FILE in the page cache (mincore, through util-linux's fincore).
resident() { fincore --bytes --noheadings --output RES "$1" | awk '{ print $1 + 0 }'; }
echo
echo "== page cache growth of a backup of a cold 4 GiB disk (the point it writes is 4 GiB)"
for mode in default --keep-cache; do
    rm -rf "$SHM/cold-repo"
    sync
    evict "$COLD"
    before=$(cached)
    flag=()
    [[ $mode == --keep-cache ]] && flag=(--keep-cache)
    "$V" -q "${flag[@]}" backup "$COLD" "$SHM/cold-repo"
    after=$(cached)
    # The repository is on tmpfs, which counts as cache: what the run wrote is subtracted.
    wrote=$(du -sb "$SHM/cold-repo" | cut -f1)
    # The host's cache is shared and near full: its total moves with other tenants and
    # eviction, so the source's own residency (mincore) is the figure; the total is context.
    printf '%-12s source resident after the backup %s of 4 GiB; the host cache grew %s, the point written (tmpfs, cached by nature) is %s\n' \
        "$mode" "$(human "$(resident "$COLD")")" "$(human $((after - before)))" "$(human "$wrote")"
done
rm -rf "$SHM/cold-repo"
echo
echo "== load at end: $(uptime)"
