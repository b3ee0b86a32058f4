#!/usr/bin/env bash
# The other hypervisors' formats against qemu-img, on the same 2 GiB mixed disk, outputs on
# tmpfs, in one run: raw -> qcow2, raw -> zstd-compressed qcow2, qcow2 -> raw, VMDK -> VHDX,
# and an incremental backup of a qcow2 whose dirty bitmap marks 1% of the disk against a bare
# read of that 1%.
#
# The floor row: `cp --sparse=always` of the raw source to tmpfs, the cost of materialising the
# same data bytes in the page cache once (one in-kernel copy, nothing else). No converter that
# writes every data byte to tmpfs can beat it; a ratio goal above what it leaves is bounded by
# this machine, and the script says so.
#
# Environment:
#   WORK=DIR   scratch folder on tmpfs (default /dev/shm/vdisk-compare-formats)
#   RUNS=N     timed runs per tool and case (default 5)
#   REGEN=1    remake the inputs even if WORK holds them
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUNS=${RUNS:-5}
WORK=${WORK:-/dev/shm/vdisk-compare-formats}
REGEN=${REGEN:-0}
SIZE_MIB=2048
STAMP_VERSION="compare-formats.sh v1 ${SIZE_MIB}M"

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer (got '$RUNS')"
for tool in cargo qemu-img qemu-io cp awk; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
use_work_dir
build_vdisk

SRC="$WORK/src.raw"
QCOW="$WORK/src.qcow2"
VMDK="$WORK/src.vmdk"
if ! stamp_ok .inputs "$STAMP_VERSION"; then
    echo "== making a ${SIZE_MIB} MiB mixed disk and its qcow2 and VMDK copies in $WORK"
    make_mixed "$SRC" "$SIZE_MIB"
    qemu-img convert -f raw -O qcow2 "$SRC" "$QCOW"
    qemu-img convert -f raw -O vmdk "$SRC" "$VMDK"
    echo "$STAMP_VERSION" >"$WORK/.inputs"
fi
cat "$SRC" "$QCOW" "$VMDK" >/dev/null # warm

OUT="$WORK/out"
# case TOOL -> the command line of one conversion into $OUT.*
run_case() {
    local c=$1 tool=$2
    rm -f "$OUT".*
    case "$c/$tool" in
        r2q/vdisk) timed /dev/null 0 "$VDISK" -q convert "$SRC" "$OUT.qcow2" ;;
        r2q/qemu-img) timed /dev/null 0 qemu-img convert -f raw -O qcow2 "$SRC" "$OUT.qcow2" ;;
        r2z/vdisk) timed /dev/null 0 "$VDISK" -q convert "$SRC" "$OUT.qcow2" --compress ;;
        r2z/qemu-img) timed /dev/null 0 qemu-img convert -c -f raw -O qcow2 \
                          -o compression_type=zstd "$SRC" "$OUT.qcow2" ;;
        q2r/vdisk) timed /dev/null 0 "$VDISK" -q convert "$QCOW" "$OUT.raw" ;;
        q2r/qemu-img) timed /dev/null 0 qemu-img convert -f qcow2 -O raw "$QCOW" "$OUT.raw" ;;
        v2x/vdisk) timed /dev/null 0 "$VDISK" -q convert "$VMDK" "$OUT.vhdx" ;;
        v2x/qemu-img) timed /dev/null 0 qemu-img convert -f vmdk -O vhdx "$VMDK" "$OUT.vhdx" ;;
        */floor) timed /dev/null 0 cp --sparse=always "$SRC" "$OUT.raw" ;;
    esac
}

CASES=(r2q r2z q2r v2x)
declare -A LABEL=([r2q]="raw -> qcow2" [r2z]="raw -> qcow2, zstd" [q2r]="qcow2 -> raw"
    [v2x]="VMDK -> VHDX")
declare -A GOAL=([r2q]=2 [r2z]=2 [q2r]=1.5 [v2x]=2)
TOOLS=(vdisk qemu-img floor)
for c in "${CASES[@]}"; do
    echo
    echo "== ${LABEL[$c]}: $RUNS runs per tool, alternating"
    for ((i = 1; i <= RUNS; i++)); do
        for ((j = 0; j < ${#TOOLS[@]}; j++)); do
            tool=${TOOLS[$(((i - 1 + j) % ${#TOOLS[@]}))]}
            t=$(run_case "$c" "$tool")
            record "$c/$tool" "$t"
            printf '  run %d %-9s %7.3f s\n' "$i" "$tool" "$t"
        done
    done
    # What vdisk wrote is what qemu-img reads as the source.
    run_case "$c" vdisk >/dev/null
    case $c in
        q2r) cmp -s "$OUT.raw" "$SRC" || check_fail "$c: output differs from the source" ;;
        *) qemu-img compare -q -F raw "$OUT".* "$SRC" || check_fail "$c: qemu-img compare" ;;
    esac
    rm -f "$OUT".*
    summarise "$c/vdisk" "$c/qemu-img" "$c/floor"
done

# --- the incremental backup by a qcow2 dirty bitmap ---------------------------------------------
echo
echo "== incremental backup of a qcow2 whose dirty bitmap marks 1% of the disk"
BIMG="$WORK/bm.qcow2"
REPO="$WORK/repo"
rm -rf "$REPO" "$BIMG"
cp "$QCOW" "$BIMG"
"$VDISK" -q backup "$BIMG" "$REPO"
qemu-img bitmap --add "$BIMG" daily
# 1% of the 64 KiB blocks, written through qemu-io so that the bitmap records them.
blocks=$((SIZE_MIB * 16))
perl -e 'srand(7); my %p; $p{int(rand($ARGV[0]))}=1 while keys(%p) < $ARGV[0]/100;
          print "$_\n" for sort { $a <=> $b } keys %p' "$blocks" >"$WORK/dirty.txt"
io=() rd=()
while read -r b; do
    io+=(-c "write -q -P 0x77 $((b * 65536)) 64k")
    rd+=(-c "read -q $((b * 65536)) 64k")
done <"$WORK/dirty.txt"
qemu-io -f qcow2 "${io[@]}" "$BIMG" >/dev/null
for ((i = 1; i <= RUNS; i++)); do
    rm -rf "$REPO.t" && cp -a "$REPO" "$REPO.t"
    t=$(timed /dev/null 0 "$VDISK" -q backup "$BIMG" "$REPO.t" --changed qemu:dirty-bitmap:daily)
    record cbt/vdisk "$t"
    # The reference: reading just the dirty blocks (one qemu-io process reads them all; a dd
    # per block would measure process starts).
    t=$(timed /dev/null 0 qemu-io -f qcow2 -r "${rd[@]}" "$BIMG")
    record cbt/read "$t"
    printf '  run %d  backup %7.3f s  read %7.3f s\n' "$i" "${TIMES[cbt/vdisk]##* }" "$t"
done
summarise cbt/vdisk cbt/read

# --- report ------------------------------------------------------------------------------------
echo
echo "Results: median of $RUNS runs (min-max), outputs on tmpfs, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "ratio = qemu-img / vdisk (above 1: vdisk is faster); floor = cp --sparse=always of the source"
echo
header case "qemu-img/vdisk, floor/vdisk, goal"
for c in "${CASES[@]}"; do
    v=${MED[$c/vdisk]} q=${MED[$c/qemu-img]} f=${MED[$c/floor]}
    row "${LABEL[$c]} vdisk" "$c/vdisk" "$(ratio "$q" "$v") vs qemu-img" "$(ratio "$f" "$v") vs floor"
    row "${LABEL[$c]} qemu-img" "$c/qemu-img"
    row "${LABEL[$c]} floor" "$c/floor"
done
row "1% CBT backup (dirty bitmap)" cbt/vdisk "$(ratio "${MED[cbt/vdisk]}" "${MED[cbt/read]}") of the read"
row "read of the dirty 1% (qemu-io)" cbt/read
echo
for c in "${CASES[@]}"; do
    v=${MED[$c/vdisk]} q=${MED[$c/qemu-img]} f=${MED[$c/floor]}
    goal "${LABEL[$c]}: ${GOAL[$c]}x faster than qemu-img" "$(ratio "$q" "$v")" \
        ge "$(q "$q" "$v")" "${GOAL[$c]}"
    # The best any converter can do here is the floor: qemu-img / floor is the most vdisk
    # could be ahead.
    echo "         bound: qemu-img takes $(ratio "$q" "$f") of the floor, so at most that is reachable"
done
goal "1% CBT backup: at most 1.2x reading the dirty 1%" \
    "$(ratio "${MED[cbt/vdisk]}" "${MED[cbt/read]}")" ge 1.2 "$(q "${MED[cbt/vdisk]}" "${MED[cbt/read]}")"
rm -rf "$REPO" "$REPO.t" "$BIMG"
exit "$FAIL"
