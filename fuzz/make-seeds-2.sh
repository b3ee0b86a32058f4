#!/usr/bin/env bash
# Regenerate the seeds of the targets whose inputs vdisk itself writes, from the CLI now:
#
#   fuzz/seeds/manifest_decode/  hash manifests (`vdisk hash`) of small raw images
#   fuzz/seeds/repo_meta/        vdisk-repo.json of backup repositories (`vdisk backup`, `prune`)
#
#   fuzz/make-seeds-2.sh         # builds the CLI (cargo build), rewrites those two folders
#
# Needs cargo, dd, head, truncate. Every seed is small (manifests at most 32 KiB, metadata
# about 1-2 KiB). Repository metadata holds creation times, CIDs and the source's temporary
# path, so the bytes differ from run to run; the shapes do not. The seeds of bitmap_decode,
# extents_json and write_roundtrip are hand-made and kept as they are.
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
out="$here/seeds"
(cd "$here/.." && cargo build -q --bin vdisk)
vdisk="$here/../target/debug/vdisk"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

for t in manifest_decode repo_meta; do
    rm -rf "${out:?}/$t"
    mkdir -p "$out/$t"
done

poke() { # poke FILE BYTE-OFFSET TEXT: overwrite bytes in place
    printf '%s' "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# --- manifests -----------------------------------------------------------------------------
man() { # man IMAGE GRANULARITY SEED-NAME
    "$vdisk" -q hash "$1" -o "$out/manifest_decode/$3" --granularity "$2"
}
head -c 65536 /dev/urandom >random-64k.img
man random-64k.img 512 random-64k-at-512
man random-64k.img 4K random-64k-at-4k
truncate -s 1M sparse-1m.img
poke sparse-1m.img 4096 data
poke sparse-1m.img 700000 more
man sparse-1m.img 512 sparse-1m-at-512
man sparse-1m.img 4K sparse-1m-at-4k
man sparse-1m.img 64K sparse-1m-at-64k
# Sizes that are not a multiple of the granularity: a partial last block.
head -c 200000 /dev/urandom >odd-200000.img
man odd-200000.img 4K odd-200000-at-4k
man odd-200000.img 64K odd-200000-at-64k
head -c 1000 /dev/urandom >odd-1000.img
man odd-1000.img 512 odd-1000-at-512
man odd-1000.img 4K odd-1000-at-4k
# An empty disk: a header, no hashes, the crc.
truncate -s 0 empty.img
man empty.img 4K empty-at-4k

# --- repository metadata -------------------------------------------------------------------
meta() { # meta REPO SEED-NAME
    cp "$1/vdisk-repo.json" "$out/repo_meta/$2"
}
truncate -s 1M src.img
poke src.img 70000 hello
"$vdisk" -q backup src.img repo
meta repo one-full-point
poke src.img 500000 x
"$vdisk" -q backup src.img repo
poke src.img 10 y
poke src.img 1048000 z
"$vdisk" -q backup src.img repo
meta repo three-points
"$vdisk" -q prune repo --keep 1
meta repo pruned-keep-1
# A fourth point on the pruned repository: numbering goes on, the generation has moved.
poke src.img 300000 w
"$vdisk" -q backup src.img repo
meta repo pruned-then-one-more

echo "seeds written to $out:"
for t in manifest_decode repo_meta; do
    printf '  %-15s %3d files %8d bytes\n' "$t" "$(ls "$out/$t" | wc -l)" "$(cat "$out/$t"/* | wc -c)"
done
