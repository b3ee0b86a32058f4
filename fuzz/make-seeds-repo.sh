#!/usr/bin/env bash
# Regenerate the seeds of the layout-3 repository targets from real repositories the CLI
# writes (`vdisk init`, `init --encrypt`, `backup`), objects copied as they are:
#
#   fuzz/seeds/repo_config/       config of an unencrypted and of an encrypted repository
#   fuzz/seeds/repo_key/          keys/ID of the encrypted one
#   fuzz/seeds/repo_pack/         packs (data/XX/ID)               } byte 0 in front: 0 for an
#   fuzz/seeds/repo_index_table/  index tables (index/ID)          } unencrypted repository's
#   fuzz/seeds/repo_point/        points (points/TAG-N)            } object, 1 an encrypted's
#   fuzz/seeds/repo_index_chunk/  chunks of a disk's index, as `fuzzing::index_chunk` takes
#                                 them: byte 0 leaf (0) or node (1), u16 LE item count, then
#                                 the chunk's decoded bytes. Taken from the unencrypted
#                                 repository: each point's root chunk and the chunks below it,
#                                 found in its packs (header and blobs are plaintext there,
#                                 each followed by its 16-byte MAC; zstd blobs inflated).
#
#   fuzz/make-seeds-repo.sh       # builds the CLI (cargo build --release), rewrites them
#
# Needs cargo, qemu-img, qemu-io, python3 and zstd. Disks: 2 MiB with a few patterned
# writes, backed up twice (an incremental), and a thin 65 MiB disk with one block at 64 MiB
# (its index: an all-zero leaf, a leaf of 1 block, a node of 2). Keys, ids and times are
# random, so the bytes differ from run to run; the shapes do not. The fuzzing harness re-signs
# unencrypted objects with its own fixed key (`fuzzing::remac`), so these reach the parsers;
# an encrypted repository's objects are sealed with a key the harness does not have and stop
# at the seal.
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
out="$here/seeds"
(cd "$here/.." && cargo build -q --release --bin vdisk)
vdisk="$here/../target/release/vdisk"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export VDISK_PASSWORD=x VDISK_KDF_MEMORY_KIB=8192

targets="repo_config repo_key repo_pack repo_index_table repo_point repo_index_chunk"
for t in $targets; do
    rm -rf "${out:?}/$t"
    mkdir -p "$out/$t"
done

qemu-img create -q -f raw small.img 2M
qemu-io -f raw -c 'write -P 0x11 0 64k' -c 'write -P 0x5a 1M 192k' small.img >/dev/null
qemu-img create -q -f raw thin.img 65M
qemu-io -f raw -c 'write -P 0x33 64M 64k' thin.img >/dev/null

"$vdisk" -q init plain
"$vdisk" -q backup --name small small.img plain
qemu-io -f raw -c 'write -P 0x77 512k 128k' small.img >/dev/null
"$vdisk" -q backup --name small small.img plain
"$vdisk" -q backup --name thin thin.img plain
"$vdisk" -q init --encrypt enc
"$vdisk" -q backup --name small small.img enc

with() { # with BYTE FILE OUT: OUT is BYTE then FILE
    { printf "\\x$1"; cat "$2"; } >"$3"
}
n=0
for f in plain/data/*/*; do n=$((n + 1)); with 00 "$f" "$out/repo_pack/plain-$n"; done
for f in enc/data/*/*; do with 01 "$f" "$out/repo_pack/encrypted"; break; done
n=0
for f in plain/index/*; do n=$((n + 1)); with 00 "$f" "$out/repo_index_table/plain-$n"; done
for f in enc/index/*; do with 01 "$f" "$out/repo_index_table/encrypted"; break; done
n=0
for f in plain/points/*; do n=$((n + 1)); with 00 "$f" "$out/repo_point/plain-$n"; done
for f in enc/points/*; do with 01 "$f" "$out/repo_point/encrypted"; break; done
cp plain/config "$out/repo_config/plain"
cp enc/config "$out/repo_config/encrypted"
for f in enc/keys/*; do cp "$f" "$out/repo_key/encrypted"; done

python3 - plain "$out/repo_index_chunk" <<'PY'
import glob, json, os, struct, subprocess, sys
repo, out = sys.argv[1], sys.argv[2]
MAC = 16
blobs = {}
for p in glob.glob(os.path.join(repo, "data", "*", "*")):
    b = open(p, "rb").read()
    assert b[-8:] == b"VDPACK03"
    n = struct.unpack("<I", b[-12:-8])[0]
    h = b[len(b) - 12 - n:len(b) - 12 - MAC]
    (count,) = struct.unpack("<I", h[:4])
    for i in range(count):
        e = h[4 + i * 40:4 + (i + 1) * 40]
        bid, off, ln = e[:32], *struct.unpack("<II", e[32:])
        plain = b[off:off + ln - MAC]
        body = plain[1:]
        if plain[0] == 1:
            body = subprocess.run(["zstd", "-d", "-c", "-q"], input=body,
                                  capture_output=True, check=True).stdout
        blobs[bid] = body
seen = set()
def walk(bid):
    if bid == bytes(32) or bid in seen:
        return
    seen.add(bid)
    c = blobs[bid]
    if c[:1] == b"L":
        kind, n = 0, (len(c) - 1) // 48
        name = f"leaf-{n}"
    else:
        assert c[:1] == b"N"
        kind, n = 1, (len(c) - 1) // 32
        name = f"node-{n}"
        for i in range(n):
            walk(c[1 + 32 * i:33 + 32 * i])
    k = 0
    while os.path.exists(os.path.join(out, f"{name}-{k}")):
        k += 1
    open(os.path.join(out, f"{name}-{k}"), "wb").write(bytes([kind]) + struct.pack("<H", n) + c)
for p in sorted(glob.glob(os.path.join(repo, "points", "*"))):
    point = json.loads(open(p, "rb").read()[:-MAC])
    for d in point["disks"]:
        walk(bytes.fromhex(d["root"]))
PY
for t in $targets; do
    echo "$t: $(ls "$out/$t" | wc -l) seeds, $(du -sk "$out/$t" | cut -f1) KiB"
done
