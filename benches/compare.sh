#!/usr/bin/env bash
# Compare `vdisk convert -O raw` with `qemu-img convert -O raw` on a 2 GiB disk with realistic
# mixed content, stored as a monolithicSparse and as a streamOptimized VMDK.
#
# Environment:
#   WORK=DIR          scratch folder (default /tmp/vdisk-compare); nothing is written to the repo
#                     except cargo's build output
#   RUNS=N            timed runs per tool and image (default 5)
#   REGEN=1           remake the source and the images even if WORK already holds them
#   QEMU_FLUSH=0      skip the extra `qemu-img -t writeback` rows (see below)
#   CARGO_TARGET_DIR  honoured by the build, as usual
#
# Both tools run warm: the page cache is not dropped between runs, so the images are read from
# memory after the first run. The output of each run is deleted (and `sync` run) before the next.
#
# Durability differs between the tools: vdisk fsyncs its output before renaming it into place;
# `qemu-img convert` defaults to cache=unsafe and never flushes. The `qemu-img -t writeback`
# rows flush once at the end (fdatasync), which is the like-for-like comparison.
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # die, timing, generators, build

RUNS=${RUNS:-5}
WORK=${WORK:-/tmp/vdisk-compare}
QEMU_FLUSH=${QEMU_FLUSH:-1}
REGEN=${REGEN:-0}
SIZE_MIB=2048
REGION_MIB=32
STAMP_VERSION="compare.sh source v1 ${SIZE_MIB}M/${REGION_MIB}M"

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer (got '$RUNS')"
for tool in cargo qemu-img qemu-io dd cmp awk truncate; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done

use_work_dir

# --- build ------------------------------------------------------------------------------------
build_vdisk

# --- inputs -----------------------------------------------------------------------------------
SRC="$WORK/src.raw"
SPARSE="$WORK/sparse.vmdk"
STREAM="$WORK/stream.vmdk"
STAMP="$WORK/.inputs"

make_inputs() {
    echo "== making a ${SIZE_MIB} MiB source in $WORK"
    rm -f "$SRC" "$SPARSE" "$STREAM" "$STAMP"
    # 32 MiB regions cycling: random, hole, log-like text, hole, fill patterns (768 KiB of every
    # MiB: grains partly written), hole with a few 4 KiB blocks. About 47% of the disk is data.
    make_mixed "$SRC" "$SIZE_MIB"
    echo "== converting it to VMDKs with qemu-img (streamOptimized compresses on one thread)"
    qemu-img convert -f raw -O vmdk -o subformat=monolithicSparse "$SRC" "$SPARSE"
    qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$SRC" "$STREAM"
    echo "$STAMP_VERSION" >"$STAMP"
}

if [[ $REGEN == 1 || ! -f $STAMP || $(cat "$STAMP") != "$STAMP_VERSION" \
      || ! -f $SRC || ! -f $SPARSE || ! -f $STREAM ]]; then
    make_inputs
else
    echo "== reusing the inputs in $WORK (REGEN=1 to remake them)"
fi

echo
echo "source (raw)       $(mib "$(size_of "$SRC")") virtual, $(mib "$(allocated "$SRC")") allocated"
echo "monolithicSparse   $(mib "$(size_of "$SPARSE")") file"
echo "streamOptimized    $(mib "$(size_of "$STREAM")") file"

# --- timing -----------------------------------------------------------------------------------
OUT="$WORK/out.raw"

# run_tool TOOL IMG -> prints elapsed seconds; leaves the output at $OUT
run_tool() {
    local tool=$1 img=$2
    rm -f "$OUT"
    sync
    case $tool in
        vdisk) timed /dev/null 0 "$VDISK" -q convert "$img" "$OUT" -O raw ;;
        qemu-img) timed /dev/null 0 qemu-img convert -O raw "$img" "$OUT" ;;
        qemu-img-wb) timed /dev/null 0 qemu-img convert -t writeback -O raw "$img" "$OUT" ;;
    esac
}

TOOLS=(vdisk qemu-img)
if [[ $QEMU_FLUSH == 1 ]]; then TOOLS+=(qemu-img-wb); fi

declare -A CHECK
for img in "$SPARSE" "$STREAM"; do
    name=$(basename "$img" .vmdk)
    echo
    echo "== $name: $RUNS runs per tool, alternating, warm page cache"
    cat "$img" >/dev/null # warm: the first timed run must not pay for reading the disk
    for ((i = 1; i <= RUNS; i++)); do
        # Rotate the order so no tool always runs first after the previous one's writeback.
        for ((j = 0; j < ${#TOOLS[@]}; j++)); do
            tool=${TOOLS[$(((i - 1 + j) % ${#TOOLS[@]}))]}
            t=$(run_tool "$tool" "$img")
            record "$name/$tool" "$t"
            printf '  run %d %-12s %7.3f s\n' "$i" "$tool" "$t"
            if [[ $i == "$RUNS" && $tool == vdisk ]]; then mv "$OUT" "$WORK/out-vdisk.raw"; fi
            if [[ $i == "$RUNS" && $tool == qemu-img ]]; then mv "$OUT" "$WORK/out-qemu.raw"; fi
        done
    done
    rm -f "$OUT"
    summarise "${TOOLS[@]/#/$name/}"
    if cmp -s "$WORK/out-vdisk.raw" "$WORK/out-qemu.raw"; then
        CHECK[$name]="identical"
    else
        CHECK[$name]="DIFFERENT"
    fi
    CHECK[$name]+=" (vdisk $(mib "$(allocated "$WORK/out-vdisk.raw")") allocated,"
    CHECK[$name]+=" qemu-img $(mib "$(allocated "$WORK/out-qemu.raw")") allocated)"
    rm -f "$WORK/out-vdisk.raw" "$WORK/out-qemu.raw"
done

# --- report -----------------------------------------------------------------------------------
echo
echo "Results: median wall time of $RUNS runs (min-max), warm cache, $(nproc) CPUs;"
echo "ratio = tool / vdisk (above 1: vdisk is faster)"
echo
printf '%-18s %-12s %9s %17s %9s\n' image tool median "min-max" ratio
printf '%-18s %-12s %9s %17s %9s\n' ------------------ ------------ --------- ----------------- ---------
fail=0
for img in "$SPARSE" "$STREAM"; do
    name=$(basename "$img" .vmdk)
    case $name in sparse) label=monolithicSparse ;; *) label=streamOptimized ;; esac
    v=${MED[$name/vdisk]}
    for tool in "${TOOLS[@]}"; do
        m=${MED[$name/$tool]}
        r=$([[ $tool == vdisk ]] && echo "" || ratio "$m" "$v")
        printf '%-18s %-12s %8.3fs %8.3f-%7.3fs %9s\n' "$label" "$tool" "$m" \
            "${MIN[$name/$tool]}" "${MAX[$name/$tool]}" "$r"
    done
    [[ ${CHECK[$name]} == identical* ]] || fail=1
done
echo
echo "qemu-img     = qemu-img convert -O raw (default cache=unsafe: no flush)"
[[ $QEMU_FLUSH != 1 ]] || echo "qemu-img-wb  = qemu-img convert -t writeback -O raw (fdatasync at the end, like vdisk's fsync)"
echo
for name in sparse stream; do
    echo "output check ($name): ${CHECK[$name]}"
done
echo
for name in sparse stream; do
    case $name in sparse) label=monolithicSparse want=1 ;; *) label=streamOptimized want=1.5 ;; esac
    goal "$label -> raw: vdisk at least ${want}x as fast as qemu-img" \
        "$(ratio "${MED[$name/qemu-img]}" "${MED[$name/vdisk]}")" \
        ge "$(q "${MED[$name/qemu-img]}" "${MED[$name/vdisk]}")" "$want"
done
exit $fail
