#!/usr/bin/env bash
# Reading an ESXi snapshot: `vdisk convert` vs `qemu-img convert -O raw` of a 2 GiB SEsparse
# link over a 2 GiB flat base (createType "vmfs"), outputs on tmpfs.
#
# No tool on the machine writes SEsparse, so examples/make_esx.rs makes the inputs with
# vdisk's test-only writer (the layout qemu reads; tests/it/esx.rs holds such images to
# qemu-img). The link is a snapshot after some hours of guest writes: in each MiB of the
# disk, with probability 0.30 one run of 64 KiB to 1 MiB of new data, with probability 0.05
# a 64 KiB run of zero or unmapped grains, otherwise nothing (the base shows through); the
# grains area holds the runs in a shuffled (write-time) order. About 16% of the disk comes
# from the link, the rest from the base.
#
# Usage: bash benches/compare-esx.sh
#
# Environment:
#   WORK=DIR          inputs (default /tmp/vdisk-compare-esx, about 2.4 GiB); kept and reused
#   OUT=DIR           outputs (default /dev/shm: tmpfs, so the disk's write speed is not timed)
#   SIZE_MIB=N        disk size (default 2048)
#   RUNS=N            timed runs per tool (default 5); tools alternate run by run
#   REGEN=1           remake the inputs
#   CARGO_TARGET_DIR  honoured by the build, as usual
#
# Everything runs warm (inputs read once before timing). Outputs are deleted and `sync` runs
# before each timed command. The output check (vdisk's output equals qemu-img's, cmp) runs once,
# before the timed runs. Exit status 1 if it fails; an unmet goal is reported only.
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export LC_ALL=C

RUNS=${RUNS:-5}
WORK=${WORK:-/tmp/vdisk-compare-esx}
OUT=${OUT:-/dev/shm}
SIZE_MIB=${SIZE_MIB:-2048}
REGEN=${REGEN:-0}

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer (got '$RUNS')"
[[ $SIZE_MIB =~ ^[1-9][0-9]*$ ]] || die "SIZE_MIB must be a positive integer (got '$SIZE_MIB')"
[[ ${1:-} != -h && ${1:-} != --help ]] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0; }
for tool in cargo qemu-img cmp awk sync; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
use_work_dir
mkdir -p "$OUT"

echo "== compare-esx.sh: RUNS=$RUNS, WORK=$WORK, OUT=$OUT, $(nproc) CPUs"
echo "== load at start: $(uptime)"
build_vdisk --example make_esx
MAKE_ESX="$TARGET_DIR/release/examples/make_esx"
[[ -x $MAKE_ESX ]] || die "built binary not found at $MAKE_ESX"
echo "== $VDISK"

version="make_esx bench v1 ${SIZE_MIB}M"
if ! stamp_ok .inputs "$version" || [[ ! -f $WORK/link.vmdk ]]; then
    echo "== making a ${SIZE_MIB} MiB flat base and an SEsparse link over it"
    rm -f "$WORK"/base* "$WORK"/link* "$WORK/.inputs"
    "$MAKE_ESX" bench "$WORK" "$SIZE_MIB"
    echo "$version" >"$WORK/.inputs"
else
    echo "== reusing the inputs in $WORK (REGEN=1 to remake them)"
fi
size=$((SIZE_MIB << 20))
echo "base-flat.vmdk: $(human "$(size_of "$WORK/base-flat.vmdk")");" \
     "link-sesparse.vmdk: $(human "$(size_of "$WORK/link-sesparse.vmdk")")"
cat "$WORK"/base-flat.vmdk "$WORK"/link-sesparse.vmdk >/dev/null # warm

V_OUT="$OUT/vdisk-esx-vdisk.raw"
Q_OUT="$OUT/vdisk-esx-qemu.raw"
cleanup() { rm -f "$V_OUT" "$Q_OUT"; }
trap cleanup EXIT

echo "== output check: vdisk's output equals qemu-img's"
rm -f "$V_OUT" "$Q_OUT"
(cd "$WORK" && "$VDISK" -q convert link.vmdk "$V_OUT" -O raw)
(cd "$WORK" && qemu-img convert -O raw link.vmdk "$Q_OUT")
if cmp -s "$V_OUT" "$Q_OUT"; then
    CHECK="identical (cmp)"
else
    CHECK="DIFFERENT: $(cmp "$V_OUT" "$Q_OUT" 2>&1 | head -1)"
    check_fail "vdisk's output differs from qemu-img's"
fi
# vdisk map's text columns: start length data zero depth.
link_bytes=$("$VDISK" map "$WORK/link.vmdk" | awk '$3 == "true" && $5 == 0 { s += $2 } END { print s + 0 }')

tools=(vdisk qemu-img)
for ((i = 1; i <= RUNS; i++)); do
    for ((j = 0; j < ${#tools[@]}; j++)); do
        tool=${tools[$(((i - 1 + j) % ${#tools[@]}))]}
        rm -f "$V_OUT" "$Q_OUT"
        sync
        case $tool in
            vdisk) t=$(cd "$WORK" && timed /dev/null 0 "$VDISK" -q convert link.vmdk "$V_OUT" -O raw) ;;
            qemu-img) t=$(cd "$WORK" && timed /dev/null 0 qemu-img convert -O raw link.vmdk "$Q_OUT") ;;
        esac
        record "$tool" "$t"
        printf '  run %d %-9s %8.3f s\n' "$i" "$tool" "$t"
    done
done
summarise "${tools[@]}"

echo
echo "== results: median wall time of $RUNS runs (min-max), warm cache, outputs in $OUT;"
echo "   ratio = qemu-img / vdisk (above 1: vdisk is faster)"
echo
header "tool" "ratio   rate (virtual bytes)"
row "vdisk convert link.vmdk OUT -O raw" vdisk "      " "$(rate "$size" "${MED[vdisk]}")"
row "qemu-img convert -O raw link.vmdk OUT" qemu-img "$(printf '%6s' "$(ratio "${MED[qemu-img]}" "${MED[vdisk]}")")" \
    "$(rate "$size" "${MED[qemu-img]}")"
echo
echo "disk: $(human "$size"), of which $(human "$link_bytes") of data read from the link (vdisk map, depth 0)"
echo "output check: $CHECK"
echo
goal "SEsparse link over a flat base: vdisk at least 1.5x faster than qemu-img" \
    "$(ratio "${MED[qemu-img]}" "${MED[vdisk]}")" ge "$(q "${MED[qemu-img]}" "${MED[vdisk]}")" 1.5
exit "$FAIL"
