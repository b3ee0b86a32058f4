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

RUNS=${RUNS:-5}
WORK=${WORK:-/tmp/vdisk-compare}
QEMU_FLUSH=${QEMU_FLUSH:-1}
REGEN=${REGEN:-0}
SIZE_MIB=2048
REGION_MIB=32
STAMP_VERSION="compare.sh source v1 ${SIZE_MIB}M/${REGION_MIB}M"

die() { echo "compare.sh: $*" >&2; exit 1; }
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer (got '$RUNS')"
for tool in cargo qemu-img qemu-io dd cmp awk truncate; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
case "$(cd "$(dirname "$WORK")" 2>/dev/null && pwd)/$(basename "$WORK")/" in
    "$REPO"/*) die "WORK ($WORK) must be outside the repository" ;;
esac

# --- build ------------------------------------------------------------------------------------
echo "== building vdisk (release)"
(cd "$REPO" && cargo build --release --quiet --bin vdisk)
TARGET_DIR=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
VDISK="$TARGET_DIR/release/vdisk"
[[ -x $VDISK ]] || die "built binary not found at $VDISK"

# --- inputs -----------------------------------------------------------------------------------
mkdir -p "$WORK"
SRC="$WORK/src.raw"
SPARSE="$WORK/sparse.vmdk"
STREAM="$WORK/stream.vmdk"
STAMP="$WORK/.inputs"

make_inputs() {
    echo "== making a ${SIZE_MIB} MiB source in $WORK"
    rm -f "$SRC" "$SPARSE" "$STREAM" "$STAMP"
    local text="$WORK/text.tmp" regions=$((SIZE_MIB / REGION_MIB)) r off
    qemu-img create -q -f raw "$SRC" "${SIZE_MIB}M"
    # 64 MiB of log-like lines (compress about 4x), sliced into the text regions below.
    awk 'BEGIN {
        srand(42)
        split("/api/v1/items /api/v1/users /static/app.js /healthz /api/v2/orders /login", p, " ")
        split("200 200 200 404 500", s, " ")
        for (n = 0; n < 67108864; n += length(line)) {
            line = sprintf("2024-05-%02dT%02d:%02d:%02d.%03dZ host%02d nginx[%d]: GET %s/%d status=%s bytes=%d rt=%dms\n",
                1 + int(rand() * 28), int(rand() * 24), int(rand() * 60), int(rand() * 60),
                int(rand() * 1000), int(rand() * 16), 1000 + int(rand() * 9000),
                p[1 + int(rand() * 6)], int(rand() * 100000), s[1 + int(rand() * 5)],
                int(rand() * 1048576), int(rand() * 2000))
            printf "%s", line
        }
    }' >"$text"
    truncate -s $((64 << 20)) "$text"
    [[ $(stat -c %s "$text") -eq $((64 << 20)) ]] || die "text generator made too little"
    # 32 MiB regions, cycling (r % 6): 0 random, 1 hole, 2 text, 3 hole, 4 fill patterns
    # (768 KiB of every MiB: grains partly written), 5 hole with a few 4 KiB blocks.
    # About 47% of the disk holds data: 352 MiB random, 352 MiB text, ~265 MiB patterns.
    local io=()
    for ((r = 0; r < regions; r++)); do
        off=$((r * REGION_MIB))
        case $((r % 6)) in
            0) dd if=/dev/urandom of="$SRC" bs=1M count=$REGION_MIB seek=$off conv=notrunc status=none ;;
            2) dd if="$text" of="$SRC" bs=1M count=$REGION_MIB skip=$((r * 7 % 32)) seek=$off \
                   conv=notrunc status=none ;;
            4) for ((k = 0; k < REGION_MIB; k++)); do
                   io+=(-c "write -q -P $(((r * 31 + k) % 255 + 1)) $(((off + k) << 20)) 768k")
               done ;;
            5) for ((k = 0; k < REGION_MIB; k += 2)); do
                   io+=(-c "write -q -P 0x5a $((((off + k) << 20) + k * 12288)) 4k")
               done ;;
        esac
    done
    qemu-io -f raw "${io[@]}" "$SRC" >/dev/null
    rm -f "$text"
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

mib() { awk -v b="$1" 'BEGIN { printf "%.0f MiB", b / 1048576 }'; }
echo
echo "source (raw)       $(mib "$(stat -c %s "$SRC")") virtual, $(mib "$(du -B1 "$SRC" | cut -f1)") allocated"
echo "monolithicSparse   $(mib "$(stat -c %s "$SPARSE")") file"
echo "streamOptimized    $(mib "$(stat -c %s "$STREAM")") file"

# --- timing -----------------------------------------------------------------------------------
OUT="$WORK/out.raw"
now() { date +%s.%N; }

# run_tool TOOL IMG -> prints elapsed seconds; leaves the output at $OUT
run_tool() {
    local tool=$1 img=$2 t0 t1
    rm -f "$OUT"
    sync
    t0=$(now)
    case $tool in
        vdisk) "$VDISK" -q convert "$img" "$OUT" -O raw >/dev/null ;;
        qemu-img) qemu-img convert -O raw "$img" "$OUT" >/dev/null ;;
        qemu-img-wb) qemu-img convert -t writeback -O raw "$img" "$OUT" >/dev/null ;;
    esac
    t1=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}

# stats "t1 t2 ..." -> "median min max"
stats() {
    tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '
        { v[NR] = $1 }
        END {
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%.3f %.3f %.3f\n", m, v[1], v[NR]
        }'
}

TOOLS=(vdisk qemu-img)
if [[ $QEMU_FLUSH == 1 ]]; then TOOLS+=(qemu-img-wb); fi

declare -A TIMES MEDIAN MIN MAX CHECK
for img in "$SPARSE" "$STREAM"; do
    name=$(basename "$img" .vmdk)
    echo
    echo "== $name: $RUNS runs per tool, alternating, warm page cache"
    for tool in "${TOOLS[@]}"; do TIMES[$name/$tool]=""; done
    for ((i = 1; i <= RUNS; i++)); do
        # Rotate the order so no tool always runs first after the previous one's writeback.
        for ((j = 0; j < ${#TOOLS[@]}; j++)); do
            tool=${TOOLS[$(((i - 1 + j) % ${#TOOLS[@]}))]}
            t=$(run_tool "$tool" "$img")
            TIMES[$name/$tool]+="$t "
            printf '  run %d %-12s %7.3f s\n' "$i" "$tool" "$t"
            if [[ $i == "$RUNS" && $tool == vdisk ]]; then mv "$OUT" "$WORK/out-vdisk.raw"; fi
            if [[ $i == "$RUNS" && $tool == qemu-img ]]; then mv "$OUT" "$WORK/out-qemu.raw"; fi
        done
    done
    rm -f "$OUT"
    for tool in "${TOOLS[@]}"; do
        read -r MEDIAN[$name/$tool] MIN[$name/$tool] MAX[$name/$tool] <<<"$(stats "${TIMES[$name/$tool]}")"
    done
    if cmp -s "$WORK/out-vdisk.raw" "$WORK/out-qemu.raw"; then
        CHECK[$name]="identical"
    else
        CHECK[$name]="DIFFERENT"
    fi
    CHECK[$name]+=" (vdisk $(mib "$(du -B1 "$WORK/out-vdisk.raw" | cut -f1)") allocated,"
    CHECK[$name]+=" qemu-img $(mib "$(du -B1 "$WORK/out-qemu.raw" | cut -f1)") allocated)"
    rm -f "$WORK/out-vdisk.raw" "$WORK/out-qemu.raw"
done

# --- report -----------------------------------------------------------------------------------
ratio() { awk -v q="$1" -v v="$2" 'BEGIN { printf "%.2fx", q / v }'; }
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
    v=${MEDIAN[$name/vdisk]}
    for tool in "${TOOLS[@]}"; do
        m=${MEDIAN[$name/$tool]}
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
goal() {
    awk -v q="$1" -v v="$2" -v want="$3" 'BEGIN { exit !(q / v >= want) }' && echo met || echo "NOT met"
}
echo "goal monolithicSparse: vdisk at least as fast as qemu-img:   $(goal "${MEDIAN[sparse/qemu-img]}" "${MEDIAN[sparse/vdisk]}" 1)"
echo "goal streamOptimized:  vdisk at least 1.5x faster than qemu-img: $(goal "${MEDIAN[stream/qemu-img]}" "${MEDIAN[stream/vdisk]}" 1.5)"
exit $fail
