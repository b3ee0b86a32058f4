#!/usr/bin/env bash
# Serving over NBD: `vdisk serve` vs `qemu-nbd -r`, read by `qemu-img convert`, and block status
# of a 1 TiB mostly-empty restore point answered whole.
#
#   read    a 3-link 2 GiB VMDK chain made by qemu-img and qemu-io (a base with 1 GiB of random
#           data in 32 MiB regions, two links each rewriting about 10% of the disk in scattered
#           runs of 64 KiB to 1 MiB) served by `vdisk serve` and by `qemu-nbd -r -t`; each
#           round times `qemu-img convert -f raw -O raw URI OUT/out.raw` through each server
#           (and, for reference, `qemu-img convert` of the chain read directly)
#   status  a 1 TiB sparse raw disk with 8 MiB of data in four places, backed up with
#           `vdisk backup` and its point served; each round times `nbdinfo --map URI` (and
#           `qemu-img map --output=json URI`): block status of the whole disk. For
#           comparison, the same disk as a qemu-made monolithicSparse VMDK (every grain table
#           written), served by `vdisk serve` and by `qemu-nbd -r`, mapped by nbdinfo
#
# Usage: bash benches/compare-serve.sh [read|status|all]...   (default: all)
#
# Environment:
#   WORK=DIR          inputs (default /tmp/vdisk-compare-serve, about 1.6 GiB); kept and reused
#   OUT=DIR           outputs (default /dev/shm: tmpfs, so the disk's write speed is not timed)
#   RUNS=N            timed runs per command (default 5); servers alternate run by run
#   REGEN=1           remake the inputs
#   CARGO_TARGET_DIR  honoured by the build, as usual
#
# Everything runs warm (inputs read once before timing). Outputs are deleted and `sync` runs
# before each timed command. Both servers run for the whole section, started before the first
# round. The output check (each server's copy equals the chain converted directly, cmp) runs
# once, before the timed runs. Exit status 1 if a check fails; an unmet goal is reported only.
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export LC_ALL=C

RUNS=${RUNS:-5}
WORK=${WORK:-/tmp/vdisk-compare-serve}
OUT=${OUT:-/dev/shm}
REGEN=${REGEN:-0}

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer (got '$RUNS')"
SECTIONS=()
for a in "$@"; do
    case $a in
        read|status) SECTIONS+=("$a") ;;
        all) SECTIONS+=(read status) ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown section '$a' (read, status or all)" ;;
    esac
done
[[ ${#SECTIONS[@]} -gt 0 ]] || SECTIONS=(read status)
want() { [[ " ${SECTIONS[*]} " == *" $1 "* ]]; }

need=(cargo qemu-img qemu-io cmp awk perl sync)
want read && need+=(qemu-nbd)
want status && need+=(nbdinfo)
for tool in "${need[@]}"; do
    command -v "$tool" >/dev/null || die "$tool is not installed (qemu-nbd: qemu-utils; nbdinfo: libnbd-bin)"
done
use_work_dir
mkdir -p "$OUT"

echo "== compare-serve.sh: sections ${SECTIONS[*]}, RUNS=$RUNS, WORK=$WORK, OUT=$OUT, $(nproc) CPUs"
echo "== load at start: $(uptime)"
build_vdisk
echo "== $VDISK"

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -f "$OUT"/vdisk-serve-*.raw
}
trap cleanup EXIT

# start_vdisk_serve LOG ARGS...: start `vdisk serve ARGS` in the background; sets URI to the line
# it prints once it accepts connections.
start_vdisk_serve() {
    local log=$1 t
    shift
    rm -f "$log"
    "$VDISK" -q serve "$@" >"$log" 2>"$log.err" &
    PIDS+=($!)
    for ((t = 0; t < 600; t++)); do
        [[ -s $log ]] && break
        kill -0 "${PIDS[-1]}" 2>/dev/null || die "vdisk serve $* failed: $(cat "$log.err")"
        sleep 0.05
    done
    URI=$(head -n 1 "$log")
    [[ -n $URI ]] || die "vdisk serve $* printed no URI"
}

# --- read: a 3-link VMDK chain through vdisk serve and qemu-nbd ---------------------------------
section_read() {
    local size=$((2 * GIB)) version="serve bench v1" i j r tool t
    if ! stamp_ok .chain "$version" || [[ ! -f $WORK/l2.vmdk ]]; then
        echo "== making a 2 GiB three-link VMDK chain (qemu-img, qemu-io)"
        rm -f "$WORK"/base.* "$WORK"/l1.vmdk "$WORK"/l2.vmdk "$WORK/.chain"
        # The base: 1 GiB of random data, every other 32 MiB region of the disk.
        random_file "$WORK/rnd.tmp" $((1 << 30))
        qemu-img create -q -f raw "$WORK/base.raw" 2G
        for ((r = 0; r < 64; r += 2)); do
            dd if="$WORK/rnd.tmp" of="$WORK/base.raw" bs=1M count=32 skip=$((r / 2 * 32)) \
                seek=$((r * 32)) conv=notrunc status=none
        done
        rm -f "$WORK/rnd.tmp"
        qemu-img convert -f raw -O vmdk "$WORK/base.raw" "$WORK/base.vmdk"
        rm -f "$WORK/base.raw"
        # Two links, each about 10% of the disk in runs of 64 KiB to 1 MiB at random places.
        for link in l1 l2; do
            local parent=base.vmdk seed=1
            [[ $link == l2 ]] && parent=l1.vmdk seed=2
            (cd "$WORK" && qemu-img create -q -f vmdk -b "$parent" -F vmdk "$link.vmdk")
            mapfile -t io < <(perl -e '
                srand($ARGV[0]); my ($total, $goal) = (0, 0.10 * 2 * 1024 * 1024 * 1024);
                while ($total < $goal) {
                    my $len = 65536 * (1 + int(rand(16)));
                    my $off = 65536 * int(rand(32768 - 16));
                    printf "-c\nwrite -q -P %d %d %d\n", 1 + int(rand(255)), $off, $len;
                    $total += $len;
                }' "$seed")
            qemu-io -f vmdk "${io[@]}" "$WORK/$link.vmdk" >/dev/null
        done
        echo "$version" >"$WORK/.chain"
    else
        echo "== reusing the chain in $WORK (REGEN=1 to remake it)"
    fi
    echo "base.vmdk: $(human "$(size_of "$WORK/base.vmdk")"), l1.vmdk: $(human "$(size_of "$WORK/l1.vmdk")")," \
         "l2.vmdk: $(human "$(size_of "$WORK/l2.vmdk")")"
    cat "$WORK"/base.vmdk "$WORK"/l1.vmdk "$WORK"/l2.vmdk >/dev/null # warm

    local ref="$OUT/vdisk-serve-ref.raw" out="$OUT/vdisk-serve-out.raw"
    local qsock="$WORK/qemu-nbd.sock" quri
    start_vdisk_serve "$WORK/serve.uri" "$WORK/l2.vmdk" --socket "$WORK/vdisk.sock" --name disk
    local vuri=$URI
    rm -f "$qsock"
    qemu-nbd -r -t -f vmdk -k "$qsock" -x disk "$WORK/l2.vmdk" 2>"$WORK/qemu-nbd.err" &
    PIDS+=($!)
    for ((t = 0; t < 600; t++)); do [[ -S $qsock ]] && break; sleep 0.05; done
    [[ -S $qsock ]] || die "qemu-nbd did not start: $(cat "$WORK/qemu-nbd.err")"
    quri="nbd+unix:///disk?socket=$qsock"
    echo "vdisk serve: $vuri"
    echo "qemu-nbd:    $quri"

    echo "== output check: both servers' copies equal the chain converted directly"
    rm -f "$ref" "$out"
    qemu-img convert -f vmdk -O raw "$WORK/l2.vmdk" "$ref"
    local check="identical (cmp)"
    for u in "$vuri" "$quri"; do
        rm -f "$out"
        qemu-img convert -f raw -O raw "$u" "$out"
        if ! cmp -s "$ref" "$out"; then
            check="DIFFERENT through $u: $(cmp "$ref" "$out" 2>&1 | head -1)"
            check_fail "the copy through $u differs from the chain"
        fi
    done
    rm -f "$ref" "$out"

    tools=(vdisk qemu-nbd direct)
    for ((i = 1; i <= RUNS; i++)); do
        for ((j = 0; j < ${#tools[@]}; j++)); do
            tool=${tools[$(((i - 1 + j) % ${#tools[@]}))]}
            rm -f "$out"
            sync
            case $tool in
                vdisk) t=$(timed /dev/null 0 qemu-img convert -f raw -O raw "$vuri" "$out") ;;
                qemu-nbd) t=$(timed /dev/null 0 qemu-img convert -f raw -O raw "$quri" "$out") ;;
                direct) t=$(timed /dev/null 0 qemu-img convert -f vmdk -O raw "$WORK/l2.vmdk" "$out") ;;
            esac
            record "$tool" "$t"
            printf '  run %d %-9s %8.3f s\n' "$i" "$tool" "$t"
        done
    done
    rm -f "$out"
    summarise "${tools[@]}"
    echo
    echo "== read: median wall time of $RUNS runs (min-max), warm cache, output on $OUT;"
    echo "   ratio = qemu-nbd / vdisk serve (above 1: vdisk serve is faster)"
    echo
    header "qemu-img convert -f raw -O raw URI OUT through" "ratio   rate (virtual bytes)"
    row "vdisk serve l2.vmdk" vdisk "      " "$(rate "$size" "${MED[vdisk]}")"
    row "qemu-nbd -r -t -f vmdk l2.vmdk" qemu-nbd \
        "$(printf '%6s' "$(ratio "${MED[qemu-nbd]}" "${MED[vdisk]}")")" "$(rate "$size" "${MED[qemu-nbd]}")"
    row "(no server: qemu-img convert -f vmdk l2.vmdk)" direct \
        "$(printf '%6s' "$(ratio "${MED[direct]}" "${MED[vdisk]}")")" "$(rate "$size" "${MED[direct]}")"
    echo
    echo "output check: $check"
    goal "qemu-img convert through vdisk serve at least 1.25x faster than through qemu-nbd -r" \
        "$(ratio "${MED[qemu-nbd]}" "${MED[vdisk]}")" ge "$(q "${MED[qemu-nbd]}" "${MED[vdisk]}")" 1.25
    echo
}

# --- status: block status of a 1 TiB mostly-empty point -----------------------------------------
# map_check NAME URI: nbdinfo --map of URI must show the 8 MiB of data and cover the 1 TiB.
map_check() {
    local data
    nbdinfo --map "$2" >"$WORK/$1.map"
    data=$(awk '$4 == "data" { d += $2 } { s += $2 } END { printf "%.0f %.0f", d, s }' "$WORK/$1.map")
    if [[ $data != "8388608 1099511627776" ]]; then
        check_fail "nbdinfo --map of $1: data, size = $data (want 8388608 1099511627776)"
        cat "$WORK/$1.map"
    fi
    echo "nbdinfo --map of $1: $(wc -l <"$WORK/$1.map") extents, (data bytes, disk bytes) = ($data)"
}

section_status() {
    local version="serve bench status v1" i j tool t uri vuri quri qsock="$WORK/big-qemu-nbd.sock"
    if ! stamp_ok .big "$version" || [[ ! -f $WORK/big-repo/vdisk-repo.json ]]; then
        echo "== making a 1 TiB sparse disk with 8 MiB of data, backing it up, and a qemu-made VMDK of it"
        rm -rf "$WORK/big.raw" "$WORK/big-repo" "$WORK/big.vmdk" "$WORK/.big"
        truncate -s 1T "$WORK/big.raw"
        # 4 MiB at the start, 1 MiB at 300 GiB, 2 MiB at 700 GiB, 1 MiB at the end.
        random_file "$WORK/rnd.tmp" $((8 << 20))
        dd if="$WORK/rnd.tmp" of="$WORK/big.raw" bs=1M count=4 conv=notrunc status=none
        dd if="$WORK/rnd.tmp" of="$WORK/big.raw" bs=1M count=1 skip=4 seek=$((300 << 10)) conv=notrunc status=none
        dd if="$WORK/rnd.tmp" of="$WORK/big.raw" bs=1M count=2 skip=5 seek=$((700 << 10)) conv=notrunc status=none
        dd if="$WORK/rnd.tmp" of="$WORK/big.raw" bs=1M count=1 skip=7 seek=$(((1 << 20) - 1)) conv=notrunc status=none
        rm -f "$WORK/rnd.tmp"
        t=$(timed /dev/null 0 "$VDISK" -q backup "$WORK/big.raw" "$WORK/big-repo")
        echo "vdisk backup of the 1 TiB disk: $t s"
        # qemu-img writes every grain table of a sparse VMDK up front (64 MiB of them here,
        # and their redundant copy), so a map of it looks at 16 M grain entries.
        qemu-img convert -f raw -O vmdk "$WORK/big.raw" "$WORK/big.vmdk"
        echo "$version" >"$WORK/.big"
    else
        echo "== reusing the 1 TiB point and VMDK in $WORK (REGEN=1 to remake them)"
    fi
    echo "repository: $(human "$(du -sb "$WORK/big-repo" | cut -f1)") in $(ls "$WORK/big-repo" | wc -l) files;" \
         "big.vmdk: $(human "$(size_of "$WORK/big.vmdk")")"
    start_vdisk_serve "$WORK/big.uri" "$WORK/big-repo" --socket "$WORK/big.sock" --name point
    uri=$URI
    start_vdisk_serve "$WORK/bigv.uri" "$WORK/big.vmdk" --socket "$WORK/bigv.sock" --name vmdk
    vuri=$URI
    rm -f "$qsock"
    qemu-nbd -r -t -f vmdk -k "$qsock" -x vmdk "$WORK/big.vmdk" 2>"$WORK/qemu-nbd.err" &
    PIDS+=($!)
    for ((t = 0; t < 600; t++)); do [[ -S $qsock ]] && break; sleep 0.05; done
    [[ -S $qsock ]] || die "qemu-nbd did not start: $(cat "$WORK/qemu-nbd.err")"
    quri="nbd+unix:///vmdk?socket=$qsock"
    echo "vdisk serve (point): $uri"
    echo "vdisk serve (VMDK):  $vuri"
    echo "qemu-nbd (VMDK):     $quri"
    map_check point "$uri"
    map_check vmdk "$vuri"
    map_check vmdk-qemu-nbd "$quri"

    tools=(point point-qemu-img vmdk vmdk-qemu-nbd)
    for ((i = 1; i <= RUNS; i++)); do
        for ((j = 0; j < ${#tools[@]}; j++)); do
            tool=${tools[$(((i - 1 + j) % ${#tools[@]}))]}
            case $tool in
                point) t=$(timed /dev/null 0 nbdinfo --map "$uri") ;;
                point-qemu-img) t=$(timed /dev/null 0 qemu-img map --output=json -f raw "$uri") ;;
                vmdk) t=$(timed /dev/null 0 nbdinfo --map "$vuri") ;;
                vmdk-qemu-nbd) t=$(timed /dev/null 0 nbdinfo --map "$quri") ;;
            esac
            record "$tool" "$t"
            printf '  run %d %-14s %8.3f s\n' "$i" "$tool" "$t"
        done
    done
    summarise "${tools[@]}"
    echo
    echo "== status: median wall time of $RUNS runs (min-max), block status of a whole 1 TiB disk"
    echo
    header "command" ""
    row "nbdinfo --map, vdisk serve REPO (the point)" point
    row "qemu-img map --output=json, the same" point-qemu-img
    row "nbdinfo --map, vdisk serve big.vmdk" vmdk
    row "nbdinfo --map, qemu-nbd -r big.vmdk" vmdk-qemu-nbd
    echo
    goal "block status of a 1 TiB mostly-empty point answered whole in under 1 s (nbdinfo --map)" \
        "${MED[point]} s" awk -v t="${MED[point]}" 'BEGIN { exit !(t < 1) }'
    echo
}

want read && section_read
want status && section_status
echo "== load at end: $(uptime)"
exit "$FAIL"
