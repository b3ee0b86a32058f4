#!/usr/bin/env bash
# vdisk's NBD client against libnbd's tools, on a 2 GiB qcow2 disk (compare.sh's mixed
# generator: about 47% data) on tmpfs, exported read-only by `qemu-nbd -r -t -e 16 -f qcow2
# -B daily` on a Unix socket:
#
#   copy    `vdisk convert URI OUT/out.raw` against `nbdcopy URI OUT/out.raw` (libnbd's copier:
#           4 connections, 64 requests in flight; the ceiling). Goal: at most 1.1x.
#   cbt     an incremental `vdisk backup URI REPO --changed qemu:dirty-bitmap:daily` of the
#           export, whose bitmap marks 1% of the disk (every 100th 64 KiB block, written with
#           qemu-io after `qemu-img bitmap --add`), into a copy of a repository holding the
#           full point of the disk as it was before (the copy is made before each run, not
#           timed). nbdcopy has no extent filter, so the reference is what any tool must do:
#           list the dirty extents (`nbdinfo --map=qemu:dirty-bitmap:daily URI`) and read just
#           them (one `qemu-io -r -f raw URI` with an `aio_read` of every extent, all in flight,
#           then `aio_flush`: the read alone). Goal: at most 1.2x of listing plus reading (the
#           ratio to the read alone is printed too).
#   rss     peak RSS of a full `vdisk backup URI REPO` of the export into an empty repository
#           (/usr/bin/time -v's "Maximum resident set size"). Goal: at most 256 MiB. Its
#           time is printed against nbdcopy's.
#
# Environment:
#   WORK=DIR          scratch folder on tmpfs (default /dev/shm/vdisk-compare-nbd, about
#                     4 GiB at the peak); inputs kept and reused
#   RUNS=N            timed runs per command (default 5); tools alternate run by run
#   SIZE_MIB=N        the disk's size in MiB, a multiple of 32 (default 2048; smaller for a
#                     quick try of the script)
#   REGEN=1           remake the inputs
#   VDISK_BIN=PATH    measure this vdisk instead of building the repository's
#   CARGO_TARGET_DIR  honoured by the build, as usual
#
# Everything is warm (the qcow2 read once before timing) and outputs are deleted before each
# timed command. The checks (both copies equal the disk, the incremental read exactly the
# dirty bytes and restores to the disk) run once, before the timed runs. Exit status 1 if a
# check fails; an unmet goal is reported only.
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export LC_ALL=C

RUNS=${RUNS:-5}
WORK=${WORK:-/dev/shm/vdisk-compare-nbd}
REGEN=${REGEN:-0}
SIZE_MIB=${SIZE_MIB:-2048}
STAMP_VERSION="compare-nbd.sh v1 ${SIZE_MIB}M"

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer (got '$RUNS')"
for tool in cargo qemu-img qemu-io qemu-nbd nbdcopy nbdinfo perl awk; do
    command -v "$tool" >/dev/null ||
        die "$tool is not installed (qemu-*: qemu-utils; nbdcopy, nbdinfo: libnbd-bin)"
done
[[ -x /usr/bin/time ]] || die "/usr/bin/time is not installed (Debian's package time)"
use_work_dir

echo "== compare-nbd.sh: RUNS=$RUNS, WORK=$WORK, $(nproc) CPUs"
echo "== load at start: $(uptime)"
echo "== $(qemu-nbd --version | head -1); $(nbdcopy --version | head -1)"
build_vdisk
echo "== $VDISK"

SRC="$WORK/src.qcow2"   # the disk as it was at the full point
DISK="$WORK/disk.qcow2" # the same, with bitmap "daily" and 1% of the blocks written since
SOCK="$WORK/nbd.sock"
URI="nbd+unix:///?socket=$SOCK"
BASE="$WORK/repo.base" # the full point of SRC, read over NBD from the same URI
OUTF="$WORK/out.raw"
QNBD=
cleanup() {
    [[ -z $QNBD ]] || { kill "$QNBD" 2>/dev/null || true; wait "$QNBD" 2>/dev/null || true; }
    rm -rf "$OUTF" "$WORK/repo.t" "$WORK/repo.full" "$WORK/restored.raw"
}
trap cleanup EXIT

# serve IMAGE [ARGS...]: (re)start qemu-nbd on $SOCK.
serve() {
    local img=$1 t
    shift
    [[ -z $QNBD ]] || { kill "$QNBD"; wait "$QNBD" 2>/dev/null || true; }
    rm -f "$SOCK"
    qemu-nbd -r -t -e 16 -f qcow2 "$@" --socket="$SOCK" "$img" 2>"$WORK/qemu-nbd.err" &
    QNBD=$!
    for ((t = 0; t < 400; t++)); do [[ -S $SOCK ]] && return 0; sleep 0.05; done
    die "qemu-nbd did not start: $(cat "$WORK/qemu-nbd.err")"
}

blocks=$((SIZE_MIB * 16))
if ! stamp_ok .inputs "$STAMP_VERSION"; then
    echo "== making a ${SIZE_MIB} MiB mixed disk as qcow2, its full point, and a copy with 1% dirty"
    rm -rf "$SRC" "$DISK" "$BASE" "$WORK/.inputs"
    make_mixed "$WORK/src.raw" "$SIZE_MIB"
    qemu-img convert -f raw -O qcow2 "$WORK/src.raw" "$SRC"
    rm -f "$WORK/src.raw"
    serve "$SRC"
    "$VDISK" -q backup "$URI" "$BASE" --name vm
    kill "$QNBD"
    wait "$QNBD" 2>/dev/null || true
    QNBD=
    cp "$SRC" "$DISK"
    qemu-img bitmap --add "$DISK" daily
    # Every 100th 64 KiB block, written through qemu-io so that the bitmap records it.
    io=()
    for ((b = 0; b < blocks; b += 100)); do io+=(-c "write -q -P 0x77 $((b * 65536)) 64k"); done
    qemu-io -f qcow2 "${io[@]}" "$DISK" >/dev/null
    echo "$STAMP_VERSION" >"$WORK/.inputs"
else
    echo "== reusing the inputs in $WORK (REGEN=1 to remake them)"
fi
cat "$DISK" >/dev/null # warm
serve "$DISK" -B daily
echo "export: $URI ($(human "$(size_of "$DISK")") of qcow2, $(human $((SIZE_MIB << 20))) virtual)"

# The dirty extents, and the reference's reads of them.
nbdinfo --map=qemu:dirty-bitmap:daily "$URI" | awk '$3 == 1 { print $1, $2 }' >"$WORK/dirty.txt"
dirty=$(awk '{ s += $2 } END { printf "%.0f", s }' "$WORK/dirty.txt")
rd=()
while read -r off len; do rd+=(-c "aio_read -q $off $len"); done <"$WORK/dirty.txt"
rd+=(-c aio_flush)
echo "dirty: $(wc -l <"$WORK/dirty.txt") extents, $(human "$dirty")"

# --- checks, once ------------------------------------------------------------------------------
echo "== checks"
for tool in vdisk nbdcopy; do
    rm -f "$OUTF"
    case $tool in
        vdisk) "$VDISK" -q convert "$URI" "$OUTF" ;;
        nbdcopy) nbdcopy "$URI" "$OUTF" ;;
    esac
    qemu-img compare -q -f raw -F qcow2 "$OUTF" "$DISK" || check_fail "$tool's copy differs from the disk"
done
rm -f "$OUTF"
rm -rf "$WORK/repo.t" && cp -a "$BASE" "$WORK/repo.t"
read_bytes=$("$VDISK" -q backup "$URI" "$WORK/repo.t" --name vm --changed qemu:dirty-bitmap:daily \
    --json | sed -n 's/^ *"bytes_read": \([0-9]*\),*$/\1/p')
[[ $read_bytes == "$dirty" ]] || check_fail "the incremental read $read_bytes bytes, not the $dirty dirty ones"
"$VDISK" -q restore "$WORK/repo.t" "$WORK/restored.raw"
qemu-img compare -q -f raw -F qcow2 "$WORK/restored.raw" "$DISK" ||
    check_fail "the incremental point does not restore to the disk"
rm -rf "$WORK/restored.raw" "$WORK/repo.t"
qemu-io -r -f raw "${rd[@]}" "$URI" >"$WORK/qemu-io.out" 2>&1
grep -q failed "$WORK/qemu-io.out" && check_fail "qemu-io's reads failed: $(head -3 "$WORK/qemu-io.out")"
echo "copies equal the disk; the incremental read $(human "${read_bytes:-0}") (the dirty bytes) and restores to the disk"

# --- copy --------------------------------------------------------------------------------------
echo
echo "== copy of the whole export to $OUTF: $RUNS runs per tool, alternating"
tools=(vdisk nbdcopy)
for ((i = 1; i <= RUNS; i++)); do
    for ((j = 0; j < ${#tools[@]}; j++)); do
        tool=${tools[$(((i - 1 + j) % ${#tools[@]}))]}
        rm -f "$OUTF"
        case $tool in
            vdisk) t=$(timed /dev/null 0 "$VDISK" -q convert "$URI" "$OUTF") ;;
            nbdcopy) t=$(timed /dev/null 0 nbdcopy "$URI" "$OUTF") ;;
        esac
        record "copy/$tool" "$t"
        printf '  run %d %-8s %7.3f s\n' "$i" "$tool" "$t"
    done
done
rm -f "$OUTF"
summarise copy/vdisk copy/nbdcopy

# --- cbt ---------------------------------------------------------------------------------------
echo
echo "== incremental backup of 1% dirty against listing and reading the dirty extents: $RUNS runs"
for ((i = 1; i <= RUNS; i++)); do
    rm -rf "$WORK/repo.t" && cp -a "$BASE" "$WORK/repo.t"
    t=$(timed /dev/null 0 "$VDISK" -q backup "$URI" "$WORK/repo.t" --name vm \
        --changed qemu:dirty-bitmap:daily)
    record cbt/vdisk "$t"
    m=$(timed /dev/null 0 nbdinfo --map=qemu:dirty-bitmap:daily "$URI")
    record cbt/map "$m"
    r=$(timed /dev/null 0 qemu-io -r -f raw "${rd[@]}" "$URI")
    record cbt/read "$r"
    record cbt/ref "$(awk -v a="$m" -v b="$r" 'BEGIN { printf "%.4f", a + b }')"
    printf '  run %d  backup %7.3f s  map %7.3f s  read %7.3f s\n' "$i" "$t" "$m" "$r"
done
rm -rf "$WORK/repo.t"
summarise cbt/vdisk cbt/map cbt/read cbt/ref

# --- rss ---------------------------------------------------------------------------------------
echo
echo "== full backup of the export into an empty repository: $RUNS runs, peak RSS"
for ((i = 1; i <= RUNS; i++)); do
    rm -rf "$WORK/repo.full"
    t0=$EPOCHREALTIME
    /usr/bin/time -v -o "$WORK/time.txt" "$VDISK" -q backup "$URI" "$WORK/repo.full" --name vm
    t1=$EPOCHREALTIME
    t=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')
    kib=$(sed -n 's/^[[:space:]]*Maximum resident set size (kbytes): //p' "$WORK/time.txt")
    record full/vdisk "$t"
    record full/rss "$((kib << 10))"
    printf '  run %d  %7.3f s  peak RSS %s\n' "$i" "$t" "$(mib $((kib << 10)))"
done
rm -rf "$WORK/repo.full"
summarise full/vdisk full/rss

# --- report ------------------------------------------------------------------------------------
echo
echo "Results: median of $RUNS runs (min-max), a ${SIZE_MIB} MiB qcow2 exported by qemu-nbd on a Unix"
echo "socket, everything on tmpfs, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo
header case "ratio (vdisk / reference)"
row "vdisk convert URI out.raw" copy/vdisk "$(ratio "${MED[copy/vdisk]}" "${MED[copy/nbdcopy]}") of nbdcopy" \
    "$(rate $((SIZE_MIB << 20)) "${MED[copy/vdisk]}")"
row "nbdcopy URI out.raw (ceiling)" copy/nbdcopy "" "$(rate $((SIZE_MIB << 20)) "${MED[copy/nbdcopy]}")"
row "vdisk backup --changed (1% dirty)" cbt/vdisk \
    "$(ratio "${MED[cbt/vdisk]}" "${MED[cbt/ref]}") of map+read," \
    "$(ratio "${MED[cbt/vdisk]}" "${MED[cbt/read]}") of the read alone"
row "reference: map + read" cbt/ref
row "  nbdinfo --map=qemu:dirty-bitmap:daily" cbt/map
row "  qemu-io aio_read of the dirty extents" cbt/read "$(human "$dirty") in $(wc -l <"$WORK/dirty.txt") extents"
row "vdisk backup, full, empty repository" full/vdisk \
    "$(ratio "${MED[full/vdisk]}" "${MED[copy/nbdcopy]}") of nbdcopy's copy"
printf '%-44s %9s %16s\n' "  peak RSS of the full backup" "$(mib "${MED[full/rss]}")" \
    "$(mib "${MIN[full/rss]}")-$(mib "${MAX[full/rss]}")"
echo
goal "vdisk convert from NBD: at most 1.1x nbdcopy" "$(ratio "${MED[copy/vdisk]}" "${MED[copy/nbdcopy]}")" \
    ge 1.1 "$(q "${MED[copy/vdisk]}" "${MED[copy/nbdcopy]}")"
goal "1% CBT backup from NBD: at most 1.2x listing and reading the dirty extents" \
    "$(ratio "${MED[cbt/vdisk]}" "${MED[cbt/ref]}")" ge 1.2 "$(q "${MED[cbt/vdisk]}" "${MED[cbt/ref]}")"
goal "1% CBT backup from NBD: at most 1.2x reading the dirty extents alone" \
    "$(ratio "${MED[cbt/vdisk]}" "${MED[cbt/read]}")" ge 1.2 "$(q "${MED[cbt/vdisk]}" "${MED[cbt/read]}")"
goal "full backup from NBD: peak RSS at most 256 MiB" "median $(mib "${MED[full/rss]}"), max $(mib "${MAX[full/rss]}")" \
    ge $((256 << 20)) "${MAX[full/rss]}"
exit "$FAIL"
