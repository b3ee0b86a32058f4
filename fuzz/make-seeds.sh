#!/usr/bin/env bash
# Regenerate the seed corpora in fuzz/seeds/<target>/ from images that qemu-img and qemu-io
# make now (qemu is the independent reference writer). Needs qemu-img, qemu-io, dd, od, sed.
#
#   fuzz/make-seeds.sh            # rewrites fuzz/seeds/
#
# Every seed is small: headers are one sector, descriptors a few hundred bytes, stream slices a
# few sectors; whole images (open_and_read) use 1-4 MiB capacities so each file is 64-200 KiB.
# qemu writes random CIDs, so the bytes differ from run to run; the shapes do not.
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
out="$here/seeds"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

for t in sparse_header descriptor stream_markers open_and_read; do
    rm -rf "${out:?}/$t"
    mkdir -p "$out/$t"
done

mk() { # mk NAME SIZE [qemu-img create options...]
    local name=$1 size=$2
    shift 2
    qemu-img create -q -f vmdk "$@" "$name" "$size"
}
w() { # w IMAGE PATTERN OFFSET LENGTH
    qemu-io -f vmdk -c "write -P $2 $3 $4" "$1" >/dev/null
}
wz() { # wz IMAGE OFFSET LENGTH: write zeroes (zeroed grains when the image has them)
    qemu-io -f vmdk -c "write -z $2 $3" "$1" >/dev/null
}
u64() { # u64 FILE BYTE-OFFSET: little-endian u64 (the machine is little-endian)
    od -An -tu8 -j "$2" -N8 "$1" | tr -d ' '
}
head_sector() { # head_sector FILE SEED-NAME
    head -c 512 "$1" >"$out/sparse_header/$2"
}
embedded_descriptor() { # embedded_descriptor FILE SEED-NAME: text at descriptorOffset, NULs cut
    local off size
    off=$(u64 "$1" 28)
    size=$(u64 "$1" 36)
    dd if="$1" bs=512 skip="$off" count="$size" status=none | tr -d '\000' >"$out/descriptor/$2"
}
slice() { # slice FILE BYTE-OFFSET LENGTH DEST
    dd if="$1" bs=512 skip=$(($2 / 512)) count=$((($3 + 511) / 512)) status=none >"$4"
}
to_fuzz_name() { # rewrite every quoted extent/parent file name as "fuzz.vmdk" (the fuzz store's one file)
    sed -E 's/"[^"]*\.vmdk"/"fuzz.vmdk"/g' "$1"
}

# --- sparse images -------------------------------------------------------------------------
mk sparse.vmdk 1M -o subformat=monolithicSparse
cp sparse.vmdk sparse-empty.vmdk
w sparse.vmdk 0xab 0 64k
w sparse.vmdk 0xcd 960k 4k
mk sparse4m.vmdk 4M -o subformat=monolithicSparse,adapter_type=lsilogic
w sparse4m.vmdk 0x11 3m 64k
mk zeroed.vmdk 1M -o subformat=monolithicSparse,zeroed_grain=on
w zeroed.vmdk 0xab 0 64k
wz zeroed.vmdk 64k 64k
mk compat6.vmdk 1M -o compat6=on
mk hw.vmdk 2M -o hwversion=7,adapter_type=buslogic
mk stream-created.vmdk 1M -o subformat=streamOptimized
w stream-created.vmdk 0xab 0 64k
# A converted stream: several grains, one of them incompressible.
dd if=/dev/zero of=raw.img bs=1M count=2 status=none
printf '\xab%.0s' $(seq 1 4096) | dd of=raw.img conv=notrunc status=none
head -c 8192 /dev/urandom | dd of=raw.img bs=1k seek=1024 conv=notrunc status=none
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized raw.img stream-conv.vmdk
mk split.vmdk 3M -o subformat=twoGbMaxExtentSparse
w split.vmdk 0xab 0 64k
# A delta link over a base.
mk base.vmdk 1M
w base.vmdk 0x11 0 128k
qemu-img create -q -f vmdk -b base.vmdk -F vmdk link.vmdk
w link.vmdk 0x22 64k 4k

for f in sparse sparse4m zeroed compat6 hw stream-created stream-conv link; do
    head_sector $f.vmdk $f
    embedded_descriptor $f.vmdk $f
done
head_sector split-s001.vmdk split-s001
# Two whole metadata areas (header, descriptor, both directories, tables), so the header's
# file-length checks pass and the fuzzer starts from headers that validate.
head -c 65536 sparse-empty.vmdk >"$out/sparse_header/sparse-overhead"
head -c 65536 stream-created.vmdk >"$out/sparse_header/stream-overhead"

# --- separate descriptors ------------------------------------------------------------------
mk flat.vmdk 1M -o subformat=monolithicFlat
mk splitflat.vmdk 5G -o subformat=twoGbMaxExtentFlat
mk splitsparse.vmdk 5G -o subformat=twoGbMaxExtentSparse
for f in flat split splitflat splitsparse; do
    cp $f.vmdk "$out/descriptor/$f-descriptor"
done
printf '# Disk DescriptorFile\r\nversion=1\r\nCID=fffffffe\r\nparentCID=ffffffff\r\ncreateType="vmfs"\r\n\r\nRW 100 FLAT "my disk-f001.vmdk" 7\r\nRDONLY 200 VMFS "b.vmdk"\r\nNOACCESS 300 ZERO\r\nRW 400 SPARSE "c.vmdk"\r\nRW 10 VMFSSPARSE "d.vmdk"\r\nRW 10 SESPARSE "e.vmdk"\r\nRW 10 VMFSRDM "f.vmdk"\r\nRW 10 VMFSRAW "g.vmdk"\r\nddb.adapterType = "lsilogic"\r\n' \
    >"$out/descriptor/every-type-crlf"

# --- stream markers ------------------------------------------------------------------------
# qemu puts the first grain at 64 KiB: a grain marker with its deflate data.
slice stream-created.vmdk 65536 1024 "$out/stream_markers/grain"
# The converted stream from its first grain to the end: grain markers, the incompressible
# grain's long marker, and the end-of-stream sector.
sz=$(stat -c %s stream-conv.vmdk)
dd if=stream-conv.vmdk bs=512 skip=128 status=none | head -c $((sz - 65536)) >stream-tail
head -c 16384 stream-tail >"$out/stream_markers/grains-head"
tail -c 4096 stream-tail >"$out/stream_markers/tail"
# The metadata markers of the VMware layout (GT, GD, footer, end of stream), one sector each,
# as the stream parser reads them.
meta() { # meta VALUE TYPE: one metadata marker sector
    printf "$(printf '%016x' "$1" | sed -E 's/(..)(..)(..)(..)(..)(..)(..)(..)/\\x\8\\x\7\\x\6\\x\5\\x\4\\x\3\\x\2\\x\1/')"
    printf '\0\0\0\0'
    printf "$(printf '%08x' "$2" | sed -E 's/(..)(..)(..)(..)/\\x\4\\x\3\\x\2\\x\1/')"
    head -c 496 /dev/zero
}
{ meta 4 1; meta 1 2; meta 1 3; head -c 512 sparse-empty.vmdk; meta 0 0; } >"$out/stream_markers/meta"

# --- whole images --------------------------------------------------------------------------
for f in sparse-empty sparse zeroed stream-created stream-conv compat6; do
    cp $f.vmdk "$out/open_and_read/$f"
done
# A link whose parent hint names the image itself (same-length rename keeps the offsets):
# the chain loop check.
sed 's/base\.vmdk/fuzz\.vmdk/g' link.vmdk >"$out/open_and_read/link-self"
# A written sparse image cut inside its grain: the rest of the grain reads as zero.
head -c $((65536 + 4096)) sparse.vmdk >"$out/open_and_read/sparse-cut"
# Descriptors that the one-file store can open: extents naming the file itself, and ZERO.
to_fuzz_name flat.vmdk >"$out/open_and_read/flat-self"
to_fuzz_name splitflat.vmdk >"$out/open_and_read/splitflat-self"
to_fuzz_name split.vmdk >"$out/open_and_read/splitsparse-self"
printf '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\nRW 2048 ZERO\nNOACCESS 16 FLAT "fuzz.vmdk" 0\nRDONLY 8 FLAT "fuzz.vmdk" 1\n' \
    >"$out/open_and_read/zero-and-flat"

echo "seeds written to $out:"
for t in sparse_header descriptor stream_markers open_and_read; do
    printf '  %-15s %3d files %8d bytes\n' "$t" "$(ls "$out/$t" | wc -l)" "$(cat "$out/$t"/* | wc -c)"
done
