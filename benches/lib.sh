# Shell helpers shared by benches/compare.sh and benches/compare-more.sh: number formatting,
# timing with medians, goal lines, the test-disk generators and the release build.
# Source it after setting WORK (a folder outside the repository) and, for stamp_ok, REGEN.
# It defines FAIL=0 (check_fail sets it to 1) and the associative arrays TIMES MED MIN MAX.

BENCH_NAME=${BENCH_NAME:-${0##*/}}
die() { echo "$BENCH_NAME: $*" >&2; exit 1; }
[[ -n ${EPOCHREALTIME:-} ]] || die "needs bash 5 or later (EPOCHREALTIME)"
BLOCK=${BLOCK:-65536}
# The repository this folder belongs to.
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# use_work_dir: make $WORK (an absolute path from now on) and refuse one inside the repository.
use_work_dir() {
    mkdir -p "$WORK"
    WORK=$(cd "$WORK" && pwd)
    case "$WORK/" in "$REPO_DIR"/*) die "WORK ($WORK) must be outside the repository" ;; esac
}

GIB=$((1 << 30))
mib() { awk -v b="$1" 'BEGIN { printf "%.0f MiB", b / 1048576 }'; }
gib() { awk -v b="$1" 'BEGIN { if (b >= 1073741824) printf "%.2f GiB", b / 1073741824; else printf "%.1f MiB", b / 1048576 }'; }
# human BYTES -> "148.7 KiB", "12.0 MiB", "1.50 GiB"
human() {
    awk -v b="$1" 'BEGIN {
        if (b >= 1073741824) printf "%.2f GiB", b / 1073741824
        else if (b >= 1048576) printf "%.1f MiB", b / 1048576
        else printf "%.1f KiB", b / 1024 }'
}
allocated() { du -B1 "$1" | cut -f1; }
size_of() { stat -c %s "$1"; }
# rate BYTES SECONDS -> "12.3 GB/s" (decimal GB)
rate() { awk -v b="$1" -v t="$2" 'BEGIN { printf "%.2f GB/s", b / t / 1e9 }'; }
# ratio A B -> "A/B" as "1.23x"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
# ge A B -> true when A >= B
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }
# goal TEXT DETAIL CMD...: "PASS" or "NOT MET" as CMD succeeds or fails
goal() {
    local text=$1 detail=$2 verdict="NOT MET"
    shift 2
    if "$@"; then verdict=PASS; fi
    printf '%-8s %s (%s)\n' "$verdict" "$text" "$detail"
}
# q A B -> A / B
q() { awk -v a="$1" -v b="$2" 'BEGIN { print a / b }'; }

FAIL=0
check_fail() { echo "CHECK FAILED: $*"; FAIL=1; }

# timed OUT OKCODES CMD... -> prints the wall time in seconds. CMD's stdout goes to OUT, its
# stderr to $WORK/last.err; an exit status outside OKCODES (e.g. "0 1") stops the script.
timed() {
    local out=$1 ok=$2 t0 t1 rc=0
    shift 2
    t0=$EPOCHREALTIME
    "$@" >"$out" 2>"$WORK/last.err" || rc=$?
    t1=$EPOCHREALTIME
    if [[ " $ok " != *" $rc "* ]]; then
        echo "$BENCH_NAME: '$*' exited with $rc (expected $ok):" >&2
        cat "$WORK/last.err" >&2
        return 1
    fi
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f\n", b - a }'
}

# stats "t1 t2 ..." -> "median min max"
stats() {
    tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '
        { v[NR] = $1 }
        END {
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%.4f %.4f %.4f\n", m, v[1], v[NR]
        }'
}

declare -A TIMES MED MIN MAX
record() { TIMES[$1]+="$2 "; }
summarise() { # summarise KEY...
    local k
    for k in "$@"; do read -r "MED[$k]" "MIN[$k]" "MAX[$k]" <<<"$(stats "${TIMES[$k]}")"; done
}
# row LABEL KEY [EXTRA...]: "label  median  min-max  extra..."
row() {
    local label=$1 k=$2
    shift 2
    printf '%-44s %8.3fs %7.3f-%7.3fs' "$label" "${MED[$k]}" "${MIN[$k]}" "${MAX[$k]}"
    [[ $# -eq 0 ]] || printf '  %s' "$@"
    printf '\n'
}
header() {
    printf '%-44s %9s %16s  %s\n' "$1" median "min-max" "$2"
    printf '%-44s %9s %16s  %s\n' "$(printf '%.0s-' {1..44})" --------- ---------------- \
        "$(printf '%.0s-' {1..40})"
}

# flip_blocks FILE BLOCKS COUNT SEED: XOR one byte (at a random place) in each of COUNT distinct
# 64 KiB blocks out of BLOCKS; prints the changed block numbers, sorted.
flip_blocks() {
    perl -e '
        use strict;
        my ($file, $blocks, $count, $seed, $bs) = @ARGV;
        srand($seed);
        my %pick;
        $pick{int(rand($blocks))} = 1 while keys(%pick) < $count;
        open(my $fh, "+<:raw", $file) or die "$file: $!";
        for my $b (sort { $a <=> $b } keys %pick) {
            my $off = $b * $bs + int(rand($bs));
            seek($fh, $off, 0) or die; read($fh, my $c, 1) == 1 or die "short read";
            seek($fh, $off, 0) or die; print $fh chr(ord($c) ^ 0xff) or die;
            print "$b\n";
        }
        close($fh) or die "$file: $!";
    ' "$1" "$2" "$3" "$4" "$BLOCK"
}

# make_mixed FILE SIZE_MIB: compare.sh's generator. 32 MiB regions cycling (r % 6): 0 random,
# 1 hole, 2 log-like text (compresses ~4x), 3 hole, 4 byte patterns on 768 KiB of every MiB,
# 5 hole with a 4 KiB block every 2 MiB. About 47% of the disk holds data.
make_mixed() {
    local out=$1 size_mib=$2 region=32 text="$WORK/text.tmp" r off k io=()
    rm -f "$out"
    qemu-img create -q -f raw "$out" "${size_mib}M"
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
    for ((r = 0; r < size_mib / region; r++)); do
        off=$((r * region))
        case $((r % 6)) in
            0) dd if=/dev/urandom of="$out" bs=1M count=$region seek=$off conv=notrunc status=none ;;
            2) dd if="$text" of="$out" bs=1M count=$region skip=$((r * 7 % 32)) seek=$off \
                   conv=notrunc status=none ;;
            4) for ((k = 0; k < region; k++)); do
                   io+=(-c "write -q -P $(((r * 31 + k) % 255 + 1)) $(((off + k) << 20)) 768k")
               done ;;
            5) for ((k = 0; k < region; k += 2)); do
                   io+=(-c "write -q -P 0x5a $((((off + k) << 20) + k * 12288)) 4k")
               done ;;
        esac
    done
    qemu-io -f raw "${io[@]}" "$out" >/dev/null
    rm -f "$text"
}

# random_file FILE BYTES: incompressible data (AES-CTR keystream when openssl is there: ~3x
# faster than /dev/urandom).
random_file() {
    local out=$1 bytes=$2 key iv
    if command -v openssl >/dev/null; then
        key=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
        iv=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
        { openssl enc -aes-128-ctr -K "$key" -iv "$iv" -nosalt </dev/zero 2>/dev/null || true; } \
            | head -c "$bytes" >"$out"
    else
        head -c "$bytes" /dev/urandom >"$out"
    fi
    [[ $(size_of "$out") -eq $bytes ]] || die "could not make $bytes random bytes in $out"
}

stamp_ok() { [[ $REGEN != 1 && -f $WORK/$1 && $(cat "$WORK/$1") == "$2" ]]; }

# build_vdisk [CARGO ARGS...]: build the release vdisk (and whatever else is asked for) from the
# repository; sets TARGET_DIR (honours CARGO_TARGET_DIR) and VDISK. With VDISK_BIN=PATH set,
# that binary is measured instead (an older build, for a before/after comparison on the same
# files); what else is asked for is still built from the repository.
build_vdisk() {
    if [[ -n ${VDISK_BIN:-} ]]; then
        [[ -x $VDISK_BIN ]] || die "VDISK_BIN=$VDISK_BIN is not an executable"
        if [[ $# -gt 0 ]]; then
            (cd "$REPO_DIR" && cargo build --release --quiet "$@")
        fi
        VDISK=$VDISK_BIN
        TARGET_DIR=$(cd "$REPO_DIR" && cargo metadata --format-version 1 --no-deps \
            | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
        echo "== measuring $VDISK (VDISK_BIN)"
        return
    fi
    echo "== building vdisk (release)"
    (cd "$REPO_DIR" && cargo build --release --quiet --bin vdisk "$@")
    TARGET_DIR=$(cd "$REPO_DIR" && cargo metadata --format-version 1 --no-deps \
        | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    VDISK="$TARGET_DIR/release/vdisk"
    [[ -x $VDISK ]] || die "built binary not found at $VDISK"
}
