#!/usr/bin/env bash
# Issue 21's figures: vdisk's layout-3 repository against restic and borgbackup on a template
# VM's disk, two days of its changes and a clone VM, all backed up into one repository per
# tool; then the hash-based incremental of an unchanged disk against the previous release
# (layout 2), the peak memory of every repository command, and a backup's peak memory against
# the index of a repository of 10^8 blocks (a synthetic one).
#
# The workload (made on tmpfs, without root and without mounting anything):
#   day0   a raw ext4 image (SIZE_MIB) made by `mke2fs -t ext4 -d DIR` from a copy of real
#          files of /usr/share and /usr/lib (FILL_PCT of the disk);
#   day1,  day0 changed in place by `debugfs -w`: 2% of the files get a new version (half
#   day2   replaced by another real file, half with a line appended), 1% are removed and as
#          many new files are added; day2 likewise from day1 (other files);
#   clone  a copy of day0 with 20 small files written (its own host keys, hostname...), the
#          first point of another NAME in the same repository.
# Each tool backs up one file, vm/tmpl.raw, holding day0, day1 and day2 in turn (a VM's disk
# changing in place), then vm/clone.raw; then restores the template's last point (day2).
# vdisk's incrementals are driven by a changed-block bitmap from `vdisk diff PREV NEW --bitmap`
# (standing in for the hypervisor's CBT, which is not timed); a hash-based incremental (no
# --changed) of day1 is timed too, into a copy of the repository holding day0.
#
# The bound on a full backup (measured in the same run, after the tools): zstd's own benchmark
# (`zstd -b3 -B64K`, one core) compressing the template's data blocks, each 64 KiB on its own,
# as vdisk does, without any I/O; on N cores that takes at least bytes / speed / N. The same
# benchmark with 2 MiB frames (-B2M) at levels 1, 2, 3 and 6 shows what frames of blocks
# would store.
#
# References: restic (`init --repository-version 2`, compression auto, its default),
# borg (`init -e none`, `create --compression zstd,3`), each with its default threads; the
# previous release's vdisk (BASELINE_BIN, layout 2: a folder per disk) for the unchanged disk.
#
# Environment:
#   WORK=DIR          scratch folder on tmpfs (default /dev/shm/vdisk-compare-repo)
#   RUNS=N            runs of the whole sequence; figures are medians (default 1)
#   REGEN=1           remake the disk states even if WORK holds them
#   SIZE_MIB=N        the template's disk (default 1024; the issue asks 2048)
#   FILL_PCT=N        how much of it the copied files fill (default 60)
#   UNCHANGED_MIB=N   the unchanged disk of the layout-2 row (default 2048, mixed data)
#   ENCRYPT=0         skip the second vdisk sequence into an encrypted repository
#   BASELINE_BIN=PATH the layout-2 vdisk (default /work/baseline/target/release/vdisk)
#   BIG_ENTRIES=N     synthetic index entries for the large-index row (default 10^8; 0: skip)
#   BIG_DIR=DIR       where that repository goes (default /var/tmp/vdisk-compare-repo-big,
#                     on disk: ~58 bytes an entry, 5.8 GB for 10^8); removed afterwards
#   VDISK_BIN=PATH    measure that vdisk instead of building it
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUNS=${RUNS:-1}
WORK=${WORK:-/dev/shm/vdisk-compare-repo}
REGEN=${REGEN:-0}
SIZE_MIB=${SIZE_MIB:-1024}
FILL_PCT=${FILL_PCT:-60}
UNCHANGED_MIB=${UNCHANGED_MIB:-2048}
ENCRYPT=${ENCRYPT:-1}
BASELINE_BIN=${BASELINE_BIN:-/work/baseline/target/release/vdisk}
BIG_ENTRIES=${BIG_ENTRIES:-100000000}
BIG_DIR=${BIG_DIR:-/var/tmp/vdisk-compare-repo-big}
STAMP_VERSION="compare-repo.sh v1 ${SIZE_MIB}M ${FILL_PCT}% ${UNCHANGED_MIB}M"

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer (got '$RUNS')"
for pkg in restic borg:borgbackup; do
    if ! command -v "${pkg%%:*}" >/dev/null; then
        echo "== ${pkg%%:*} is missing: installing it with apt-get (package ${pkg##*:})"
        apt-get install -y -q "${pkg##*:}" >/dev/null || die "could not install ${pkg##*:}"
    fi
done
for tool in cargo mke2fs debugfs e2fsck perl tar qemu-img qemu-io awk du zstd /usr/bin/time; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
use_work_dir
build_vdisk --example synthetic_index
SYNTH="$TARGET_DIR/release/examples/synthetic_index"
echo "== $(restic version | cut -d' ' -f1-2), $(borg --version), baseline $BASELINE_BIN"

# --- the disk states -----------------------------------------------------------------------------
S="$WORK/states"
# day_change IMG SEED DAY: change IMG in place with debugfs (see the header). $S/files lists the
# image's files that came from the copy (the candidates), $S/pool the real files not in it.
day_change() {
    local img=$1 seed=$2 day=$3 tmp="$WORK/tmp/day$3"
    rm -rf "$tmp" && mkdir -p "$tmp"
    perl -e '
        use strict;
        my ($seed, $day, $tmp, $list, $pool, $tree) = @ARGV;
        srand($seed);
        open(my $l, "<", $list) or die; chomp(my @files = <$l>); close $l;
        open(my $p, "<", $pool) or die; chomp(my @pool = <$p>); close $p;
        my (%used, %removed, @cmd);
        my $pick = sub { my $f; do { $f = $files[int(rand(@files))] } while $used{$f}; $used{$f} = 1; $f };
        my $take = sub { splice(@pool, int(rand(@pool)), 1) };
        my $n = @files;
        for my $k (1 .. int($n * 0.02)) {            # new versions
            my $f = $pick->();
            my $local = "$tmp/v$k";
            if ($k % 2) {                               # another real file
                $local = $take->();
            } else {                                    # a line appended
                system("cp", "$tree$f", $local) == 0 or die "cp $tree$f";
                open(my $o, ">>", $local) or die; print $o "# changed on day $day ($k)\n"; close $o;
            }
            push @cmd, "rm $f", "write $local $f";
        }
        for (1 .. int($n * 0.01)) { my $f = $pick->(); $removed{$f} = 1; push @cmd, "rm $f"; }
        push @cmd, "mkdir /srv" if $day == 1;
        push @cmd, "mkdir /srv/day$day";
        for my $k (1 .. int($n * 0.01)) {              # new files
            my $src = $take->(); (my $base = $src) =~ s{.*/}{};
            push @cmd, "write $src /srv/day$day/$k-$base";
        }
        open(my $c, ">", "$tmp/cmds") or die; print $c "$_\n" for @cmd; close $c;
        open(my $o, ">", $list) or die; print $o "$_\n" for grep { !$removed{$_} } @files; close $o;
        open(my $q, ">", $pool) or die; print $q "$_\n" for @pool; close $q;
    ' "$seed" "$day" "$tmp" "$S/files" "$S/pool" "$S/tree"
    debugfs -w -f "$tmp/cmds" "$img" >"$tmp/log" 2>&1 || die "debugfs failed on day $day (see $tmp/log)"
    if grep -v '^debugfs' "$tmp/log" | grep -qiE 'error|not found|no free|exists'; then
        grep -v '^debugfs' "$tmp/log" | grep -iE 'error|not found|no free|exists' | head -5 >&2
        die "debugfs reported errors on day $day (see $tmp/log)"
    fi
    e2fsck -fn "$img" >"$tmp/fsck" 2>&1 || die "e2fsck finds day $day's image damaged (see $tmp/fsck)"
}

if ! stamp_ok .inputs "$STAMP_VERSION"; then
    rm -rf "$S" "$WORK/tmp" && mkdir -p "$S/tree" "$WORK/tmp"
    budget=$((SIZE_MIB * FILL_PCT / 100 << 20))
    echo "== copying $(mib "$budget") of real files from /usr/share and /usr/lib"
    # Regular files with plain names of both trees, shuffled (the same way every time); the
    # first ones up to the budget go into the image, the next 20000 are the pool that new
    # versions and new files come from.
    find /usr/share /usr/lib -xdev -type f -readable -size -32M -printf '%s %p\n' 2>/dev/null \
        | grep -E '^[0-9]+ /[A-Za-z0-9._/+-]+$' | sort -k2 | shuf --random-source=<(yes) \
        | awk -v b="$budget" -v files="$S/in" -v pool="$S/pool" '
            used + $1 + 4096 <= b && !full { used += $1 + 4096; print $2 > files; next }
            { full = 1; if (p++ < 20000) print $2 > pool }'
    sort -o "$S/in" "$S/in"
    tar -cf - -T "$S/in" 2>/dev/null | tar -xf - -C "$S/tree" || die "could not copy the files"
    cp "$S/in" "$S/files"
    echo "== day 0: mke2fs -t ext4 -d ($(wc -l <"$S/files") files) -> $SIZE_MIB MiB"
    mke2fs -q -F -t ext4 -d "$S/tree" "$S/day0.raw" "${SIZE_MIB}M" >/dev/null
    cp --sparse=always "$S/day0.raw" "$S/day1.raw"
    echo "== day 1 and day 2: debugfs -w"
    day_change "$S/day1.raw" 1 1
    cp --sparse=always "$S/day1.raw" "$S/day2.raw"
    day_change "$S/day2.raw" 2 2
    echo "== the clone: day 0 with 20 small files of its own"
    cp --sparse=always "$S/day0.raw" "$S/clone.raw"
    mkdir -p "$WORK/tmp/clone"
    {
        echo "mkdir /etc"
        for ((k = 0; k < 20; k++)); do
            head -c $((2048 + k * 512)) /dev/urandom | base64 >"$WORK/tmp/clone/f$k"
            echo "write $WORK/tmp/clone/f$k /etc/clone-$k"
        done
    } >"$WORK/tmp/clone/cmds"
    debugfs -w -f "$WORK/tmp/clone/cmds" "$S/clone.raw" >/dev/null 2>&1
    e2fsck -fn "$S/clone.raw" >/dev/null 2>&1 || die "e2fsck finds the clone's image damaged"
    echo "== an unchanged $UNCHANGED_MIB MiB mixed disk (layout-2 row)"
    make_mixed "$S/unchanged.raw" "$UNCHANGED_MIB"
    rm -rf "$S/tree" "$WORK/tmp"
    echo "$STAMP_VERSION" >"$WORK/.inputs"
fi
for d in 0 1 2; do
    printf '   day%d: %s of data in %s\n' "$d" "$(gib "$(allocated "$S/day$d.raw")")" "$(gib "$(size_of "$S/day$d.raw")")"
done
"$VDISK" -q diff "$S/day0.raw" "$S/day1.raw" --json --force --bitmap "$WORK/d1.cbt" >"$WORK/d1.json" || true
"$VDISK" -q diff "$S/day1.raw" "$S/day2.raw" --json --force --bitmap "$WORK/d2.cbt" >"$WORK/d2.json" || true
"$VDISK" -q diff "$S/day0.raw" "$S/clone.raw" --json --force >"$WORK/dc.json" || true
changed() { perl -ne 'print "$1\n" if /"changed_bytes":\s*(\d+)/' "$1" | head -1; }
echo "   changed 64 KiB blocks: day0->1 $(human "$(changed "$WORK/d1.json")"), day1->2 $(human "$(changed "$WORK/d2.json")"), day0->clone $(human "$(changed "$WORK/dc.json")")"

# --- measuring -----------------------------------------------------------------------------------
declare -A RSS
# measure KEY CMD...: wall time (EPOCHREALTIME) and peak RSS (/usr/bin/time %M, KiB) of CMD;
# its stdout goes to $WORK/out.KEY. Times and RSS are recorded under KEY.
measure() {
    local key=$1 t0 t1 t rc=0
    shift
    t0=$EPOCHREALTIME
    /usr/bin/time -f %M -o "$WORK/rss" "$@" >"$WORK/out.${key//\//_}" 2>"$WORK/last.err" || rc=$?
    t1=$EPOCHREALTIME
    if [[ $rc -ne 0 ]]; then
        echo "$BENCH_NAME: '$*' exited with $rc:" >&2
        tail -20 "$WORK/last.err" >&2
        exit 1
    fi
    t=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')
    record "$key" "$t"
    RSS[$key]="${RSS[$key]:-} $(tail -1 "$WORK/rss")"
    printf '   %-22s %8.3f s %8s MiB\n' "$key" "$t" \
        "$(awk -v k="$(tail -1 "$WORK/rss")" 'BEGIN { printf "%.0f", k / 1024 }')" >&2
}
medrss() { stats "${RSS[$1]}" | awk '{ printf "%.0f", $1 / 1024 }'; }  # median peak RSS, MiB
declare -A SIZE ADDED
recsize() { SIZE[$1]="${SIZE[$1]:-} $2"; }
medsize() { stats "${SIZE[$1]}" | awk '{ printf "%.0f", $1 }'; }
json_bytes() { perl -ne 'print "$1\n" if /"bytes_written":\s*(\d+)/' "$1" | head -1; }

VM="$WORK/vm"
R="$WORK/repos"
put_state() { cp --sparse=always "$S/$1.raw" "$VM/$2.raw"; }
export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR="$WORK/restic-cache"
export BORG_BASE_DIR="$WORK/borg-base" BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes

# vdisk_sequence TAG [INIT ARGS]: the whole sequence into $R/TAG.
vdisk_sequence() {
    local tag=$1 repo="$R/$1" d
    shift
    "$VDISK" -q init "$@" "$repo" >/dev/null
    put_state day0 tmpl
    measure "$tag/full" "$VDISK" -q backup --json --name tmpl "$VM/tmpl.raw" "$repo"
    recsize "$tag/first" "$(du -sb "$repo" | cut -f1)"
    ADDED[$tag/tmpl]="${ADDED[$tag/tmpl]:-} $(json_bytes "$WORK/out.${tag}_full")"
    rm -rf "$repo.h" && cp -a "$repo" "$repo.h"
    for d in 1 2; do
        put_state "day$d" tmpl
        measure "$tag/cbt$d" "$VDISK" -q backup --json --name tmpl --changed "$WORK/d$d.cbt" \
            "$VM/tmpl.raw" "$repo"
    done
    put_state day1 tmpl
    measure "$tag/hash1" "$VDISK" -q backup --json --name tmpl "$VM/tmpl.raw" "$repo.h"
    rm -rf "$repo.h"
    put_state clone clone
    measure "$tag/clone" "$VDISK" -q backup --json --name clone "$VM/clone.raw" "$repo"
    ADDED[$tag/clone]="${ADDED[$tag/clone]:-} $(json_bytes "$WORK/out.${tag}_clone")"
    recsize "$tag" "$(du -sb "$repo" | cut -f1)"
    rm -f "$WORK/restored.raw"
    measure "$tag/restore" "$VDISK" -q restore --name tmpl "$repo" "$WORK/restored.raw"
    cmp -s "$WORK/restored.raw" "$S/day2.raw" || check_fail "$tag: the restored day2 differs"
    rm -f "$WORK/restored.raw"
    measure "$tag/verify" "$VDISK" -q verify "$repo"
    rm -rf "$R/$tag.sync"
    measure "$tag/sync" "$VDISK" -q sync "$repo" "$R/$tag.sync"
    rm -rf "$R/$tag.sync"
    measure "$tag/prune" "$VDISK" -q prune --keep-last 1 "$repo"
}

for ((run = 1; run <= RUNS; run++)); do
    echo
    echo "== run $run of $RUNS"
    rm -rf "$R" "$VM" "$WORK/restic-cache" "$WORK/borg-base" "$WORK/restored"
    mkdir -p "$R" "$VM" "$WORK/borg-base"
    echo "-- vdisk (unencrypted)" >&2
    vdisk_sequence vdisk
    if [[ $ENCRYPT == 1 ]]; then
        echo "-- vdisk (encrypted: init --encrypt, VDISK_PASSWORD)" >&2
        export VDISK_PASSWORD=bench
        vdisk_sequence vdisk-enc --encrypt
        unset VDISK_PASSWORD
    fi
    rm -rf "$R"/vdisk*

    echo "-- restic" >&2
    restic -q init --repository-version 2 --repo "$R/restic" >/dev/null
    for d in 0 1 2; do
        put_state "day$d" tmpl
        measure "restic/day$d" restic -q backup --repo "$R/restic" "$VM/tmpl.raw"
        if [[ $d == 0 ]]; then recsize restic/first "$(du -sb "$R/restic" | cut -f1)"; fi
    done
    put_state clone clone
    measure restic/clone restic -q backup --repo "$R/restic" "$VM/clone.raw"
    recsize restic "$(du -sb "$R/restic" | cut -f1)"
    measure restic/restore restic -q restore latest --path "$VM/tmpl.raw" --repo "$R/restic" \
        --target "$WORK/restored"
    cmp -s "$WORK/restored$VM/tmpl.raw" "$S/day2.raw" || check_fail "restic: the restored day2 differs"
    rm -rf "$R/restic" "$WORK/restored" "$WORK/restic-cache"

    echo "-- borg" >&2
    borg init -e none "$R/borg"
    for d in 0 1 2; do
        put_state "day$d" tmpl
        measure "borg/day$d" bash -c 'cd "$1" && borg create --compression zstd,3 "$2::day$3" tmpl.raw' \
            _ "$VM" "$R/borg" "$d"
        if [[ $d == 0 ]]; then recsize borg/first "$(du -sb "$R/borg" | cut -f1)"; fi
    done
    put_state clone clone
    measure borg/clone bash -c 'cd "$1" && borg create --compression zstd,3 "$2::clone" clone.raw' \
        _ "$VM" "$R/borg"
    recsize borg "$(du -sb "$R/borg" | cut -f1)"
    mkdir -p "$WORK/restored"
    measure borg/restore bash -c 'cd "$1" && borg extract --sparse "$2::day2"' _ "$WORK/restored" "$R/borg"
    cmp -s "$WORK/restored/tmpl.raw" "$S/day2.raw" || check_fail "borg: the restored day2 differs"
    rm -rf "$R/borg" "$WORK/restored" "$WORK/borg-base"
done

# --- the unchanged disk: layout 3 against the previous release's layout 2 -------------------------
echo
echo "== hash-based incremental of an unchanged $UNCHANGED_MIB MiB disk: now against $BASELINE_BIN"
[[ -x $BASELINE_BIN ]] || die "BASELINE_BIN=$BASELINE_BIN is not an executable"
rm -rf "$R" && mkdir -p "$R"
"$VDISK" -q backup "$S/unchanged.raw" "$R/l3"
"$BASELINE_BIN" -q backup "$S/unchanged.raw" "$R/l2"
for ((i = 1; i <= RUNS; i++)); do
    measure unch/now "$VDISK" -q backup "$S/unchanged.raw" "$R/l3"
    measure unch/base "$BASELINE_BIN" -q backup "$S/unchanged.raw" "$R/l2"
done
rm -rf "$R"

# --- a backup against the index of 10^8 blocks ---------------------------------------------------
if [[ $BIG_ENTRIES -gt 0 ]]; then
    echo
    echo "== a backup's peak RSS with $BIG_ENTRIES synthetic index entries ($BIG_DIR)"
    case "$BIG_DIR/" in "$REPO_DIR"/*) die "BIG_DIR must be outside the repository" ;; esac
    need=$((BIG_ENTRIES * 60 + (1 << 30)))
    mkdir -p "$(dirname "$BIG_DIR")"
    free=$(($(df -B1 --output=avail "$(dirname "$BIG_DIR")" | tail -1)))
    [[ $free -ge $need ]] || die "$BIG_DIR needs $(gib "$need") free, $(gib "$free") are"
    rm -rf "$BIG_DIR"
    "$VDISK" -q init "$BIG_DIR" >/dev/null
    t=$(timed "$WORK/synth.out" 0 "$SYNTH" "$BIG_DIR" "$BIG_ENTRIES")
    echo "   $(cat "$WORK/synth.out"), $(gib "$(du -sb "$BIG_DIR/index" | cut -f1)"), written in ${t} s"
    put_state day0 tmpl
    measure big/full "$VDISK" -q backup --json --name tmpl "$VM/tmpl.raw" "$BIG_DIR"
    put_state day1 tmpl
    measure big/hash1 "$VDISK" -q backup --json --name tmpl "$VM/tmpl.raw" "$BIG_DIR"
    put_state day2 tmpl
    measure big/cbt2 "$VDISK" -q backup --json --name tmpl --changed "$WORK/d2.cbt" "$VM/tmpl.raw" "$BIG_DIR"
    [[ ${KEEP_BIG:-0} == 1 ]] || rm -rf "$BIG_DIR"
fi
rm -rf "$VM"

# --- the compression bound ------------------------------------------------------------------------
echo
echo "== zstd's benchmark on the template's data blocks (the bound on a full backup; frames)"
# The template's non-zero 64 KiB blocks, one after another: what a full backup compresses.
perl -e 'open(my $i, "<", $ARGV[0]) or die; open(my $o, ">", $ARGV[1]) or die;
    my $z = "\0" x 65536; while (read($i, my $b, 65536)) { print $o $b if $b ne $z }' \
    "$S/day0.raw" "$WORK/blocks.bin"
# zbench LEVEL CHUNK -> "compressed_bytes MB_per_s" (zstd -b, one core, 3 s a level).
zbench() {
    zstd -q -b"$1" -i3 -B"$2" "$WORK/blocks.bin" 2>&1 \
        | perl -ne '$r = "$1 $2" if /^-?\d+\s+(\d+) \([\d.]+\)\s+([\d.]+) MB\/s/; END { print "$r\n" }'
}
read -r Z64 ZSPEED <<<"$(zbench 3 64K)"
[[ -n $ZSPEED ]] || die "could not read zstd -b's result"
BLOCK_BYTES=$(size_of "$WORK/blocks.bin")
ZBOUND=$(awk -v b="$BLOCK_BYTES" -v s="$ZSPEED" -v n="$(nproc)" 'BEGIN { printf "%.3f", b / (s * 1e6) / n }')
FRAMES=""
for lvl in 1 2 3 6; do
    read -r zb zs <<<"$(zbench "$lvl" 2M)"
    FRAMES+="level $lvl: $(human "$zb") at $zs MB/s; "
done
rm -f "$WORK/blocks.bin"
echo "   $(human "$BLOCK_BYTES") of blocks -> $(human "$Z64") at $ZSPEED MB/s a core: at least $ZBOUND s on $(nproc) cores"

# --- report --------------------------------------------------------------------------------------
keys=(vdisk/full vdisk/cbt1 vdisk/cbt2 vdisk/hash1 vdisk/clone vdisk/restore vdisk/verify
    vdisk/sync vdisk/prune restic/day0 restic/day1 restic/day2 restic/clone restic/restore
    borg/day0 borg/day1 borg/day2 borg/clone borg/restore unch/now unch/base)
[[ $ENCRYPT == 1 ]] && keys+=(vdisk-enc/full vdisk-enc/cbt1 vdisk-enc/cbt2 vdisk-enc/hash1
    vdisk-enc/clone vdisk-enc/restore vdisk-enc/verify vdisk-enc/sync vdisk-enc/prune)
[[ $BIG_ENTRIES -gt 0 ]] && keys+=(big/full big/hash1 big/cbt2)
summarise "${keys[@]}"
m() { echo "${MED[$1]}"; }
sum2() { awk -v a="$1" -v b="$2" 'BEGIN { print a + b }'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }
minof() { awk -v a="$1" -v b="$2" 'BEGIN { print (a < b) ? a : b }'; }

echo
echo "Results: median of $RUNS run(s), $(date -u +%Y-%m-%d), $(nproc) CPUs (shared, noisy), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "template disk $SIZE_MIB MiB ext4 ($FILL_PCT% real files), two days of change, a clone; outputs on tmpfs"
echo
printf '%-44s %12s %12s %12s  %s\n' "" vdisk restic borg "vdisk / best other (goal)"
printf '%-44s %12s %12s %12s  %s\n' "$(printf '%.0s-' {1..44})" ------------ ------------ ------------ ------------------------
vs=$(medsize vdisk) rs=$(medsize restic) bs=$(medsize borg) best=$(minof "$(medsize restic)" "$(medsize borg)")
printf '%-44s %12s %12s %12s  %s\n' "repository after 4 points (du -sb)" "$(human "$vs")" "$(human "$rs")" \
    "$(human "$bs")" "$(ratio "$vs" "$best") (<= 0.65)"
printf '%-44s %12s %12s %12s  %s\n' "  of which the first point" "$(human "$(medsize vdisk/first)")" \
    "$(human "$(medsize restic/first)")" "$(human "$(medsize borg/first)")" \
    "$(ratio "$(medsize vdisk/first)" "$(minof "$(medsize restic/first)" "$(medsize borg/first)")")"
printf '%-44s %11.2fs %11.2fs %11.2fs  %s\n' "full backup (day0)" "$(m vdisk/full)" "$(m restic/day0)" \
    "$(m borg/day0)" "$(ratio "$(m vdisk/full)" "$(m restic/day0)") of restic (<= 0.2)"
vi=$(sum2 "$(m vdisk/cbt1)" "$(m vdisk/cbt2)") ri=$(sum2 "$(m restic/day1)" "$(m restic/day2)")
bi=$(sum2 "$(m borg/day1)" "$(m borg/day2)")
printf '%-44s %11.2fs %11.2fs %11.2fs  %s\n' "incrementals day1+day2 (vdisk: CBT)" "$vi" "$ri" "$bi" \
    "$(ratio "$vi" "$ri") of restic (<= 0.15)"
printf '%-44s %11.2fs %12s %12s  %s\n' "  vdisk hash-based incremental (day1)" "$(m vdisk/hash1)" "" "" \
    "$(ratio "$(m vdisk/hash1)" "$(m restic/day1)") of restic's day1"
printf '%-44s %11.2fs %11.2fs %11.2fs\n' "clone's first point" "$(m vdisk/clone)" "$(m restic/clone)" "$(m borg/clone)"
printf '%-44s %11.2fs %11.2fs %11.2fs  %s\n' "restore of day2" "$(m vdisk/restore)" "$(m restic/restore)" \
    "$(m borg/restore)" "$(ratio "$(m vdisk/restore)" "$(m restic/restore)") of restic (<= 0.5)"
printf '%-44s %12s %12s %12s\n' "peak RSS: full backup, restore (MiB)" "$(medrss vdisk/full), $(medrss vdisk/restore)" \
    "$(medrss restic/day0), $(medrss restic/restore)" "$(medrss borg/day0), $(medrss borg/restore)"
echo
ta=$(stats "${ADDED[vdisk/tmpl]}" | cut -d' ' -f1) ca=$(stats "${ADDED[vdisk/clone]}" | cut -d' ' -f1)
echo "vdisk: bytes_written by the template's first point $(human "$ta"), by the clone's first point $(human "$ca"): $(awk -v a="$ca" -v b="$ta" 'BEGIN { printf "%.4fx", a / b }')"
echo "bound on a full backup: zstd -b3 -B64K compresses the $(human "$BLOCK_BYTES") of blocks at $ZSPEED MB/s a core:" \
    "$ZBOUND s on $(nproc) cores without I/O, hashing or writing, $(ratio "$ZBOUND" "$(m restic/day0)") of restic's full backup"
echo "the same blocks in 2 MiB zstd frames (not what vdisk stores; per 64 KiB block $(human "$Z64")): $FRAMES"
echo "vdisk: hash-based incremental of the unchanged $UNCHANGED_MIB MiB disk: $(printf %.3f "$(m unch/now)") s, previous release (layout 2) $(printf %.3f "$(m unch/base)") s: $(ratio "$(m unch/now)" "$(m unch/base)")"
echo
printf '%-10s' "peak RSS"
for c in full cbt1 hash1 clone restore verify sync prune; do printf '%9s' "$c"; done
echo "  (MiB)"
for tag in vdisk vdisk-enc; do
    [[ $tag == vdisk || $ENCRYPT == 1 ]] || continue
    printf '%-10s' "$tag"
    for c in full cbt1 hash1 clone restore verify sync prune; do printf '%9s' "$(medrss "$tag/$c")"; done
    echo
done
if [[ $ENCRYPT == 1 ]]; then
    printf '%-10s' "enc times"
    for c in full cbt1 hash1 clone restore verify sync prune; do printf '%8.2fs' "$(m "vdisk-enc/$c")"; done
    echo
    printf '%-10s' "vs plain"
    for c in full cbt1 hash1 clone restore verify sync prune; do printf '%9s' "$(ratio "$(m "vdisk-enc/$c")" "$(m "vdisk/$c")")"; done
    echo
fi
if [[ $BIG_ENTRIES -gt 0 ]]; then
    echo "backups into a repository whose index holds $BIG_ENTRIES more entries: full $(printf %.2f "$(m big/full)") s, $(medrss big/full) MiB;" \
        "hash-based day1 $(printf %.2f "$(m big/hash1)") s, $(medrss big/hash1) MiB; CBT day2 $(printf %.2f "$(m big/cbt2)") s, $(medrss big/cbt2) MiB"
fi
echo
goal "repository: at most 0.65x the smaller of restic's and borg's" "$(ratio "$vs" "$best")" le "$(q "$vs" "$best")" 0.65
goal "clone's first point: at most 0.2x the template's" \
    "$(awk -v a="$ca" -v b="$ta" 'BEGIN { printf "%.4fx", a / b }')" le "$(q "$ca" "$ta")" 0.2
goal "full backup: at most 0.2x restic's time" "$(ratio "$(m vdisk/full)" "$(m restic/day0)"); zstd level 3 alone: $(ratio "$ZBOUND" "$(m restic/day0)")" \
    le "$(q "$(m vdisk/full)" "$(m restic/day0)")" 0.2
goal "CBT incrementals: at most 0.15x restic's" "$(ratio "$vi" "$ri")" le "$(q "$vi" "$ri")" 0.15
goal "restore: at most 0.5x restic's" "$(ratio "$(m vdisk/restore)" "$(m restic/restore)")" \
    le "$(q "$(m vdisk/restore)" "$(m restic/restore)")" 0.5
goal "unchanged disk, hash-based: at most 1.3x the previous release" \
    "$(ratio "$(m unch/now)" "$(m unch/base)")" le "$(q "$(m unch/now)" "$(m unch/base)")" 1.3
worst=0
for c in full cbt1 cbt2 hash1 clone restore verify sync prune; do
    r=$(medrss "vdisk/$c")
    [[ $r -gt $worst ]] && worst=$r
done
[[ $BIG_ENTRIES -gt 0 && $(medrss big/full) -gt $worst ]] && worst=$(medrss big/full)
goal "peak RSS of every command: at most 256 MiB" "largest $worst MiB" le "$worst" 256
exit "$FAIL"
