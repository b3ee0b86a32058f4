#!/usr/bin/env bash
# Seeds for the qcow2_open_and_read target: small qcow2 images made by qemu-img and qemu-io
# (512-byte or 4 KiB clusters, so each is a few KiB) in every layout vdisk reads: versions 2
# and 3, zero clusters, zlib and zstd compression, extended L2 entries, a backing file, an
# internal snapshot, dirty bitmaps, a 1-bit refcount width, an external data file (named
# data.raw, which the target provides).
#
#   fuzz/make-seeds-qcow2.sh          # needs qemu-img, qemu-io
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="$here/seeds/qcow2_open_and_read"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
rm -rf "$out" && mkdir -p "$out"
io() { qemu-io -c "write -P 0x41 0 2k" -c "write -P 0x42 9k 3k" -c "write -z 20k 2k" "$@" >/dev/null; }
qemu-img create -q -f qcow2 -o cluster_size=512 v3 32k && io v3
qemu-img create -q -f qcow2 -o cluster_size=512,compat=0.10 v2 32k && io v2
qemu-img create -q -f raw src.raw 32k && io -f raw src.raw
qemu-img convert -c -O qcow2 -o cluster_size=512 src.raw zlib
qemu-img convert -c -O qcow2 -o cluster_size=512,compression_type=zstd src.raw zstd
qemu-img create -q -f qcow2 -o cluster_size=16k,extended_l2=on xl2 64k && io xl2
qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=1 rc1 32k && io rc1
qemu-img create -q -f qcow2 -o cluster_size=512 base.qcow2 16k
qemu-img create -q -f qcow2 -o cluster_size=512 -b base.qcow2 -F qcow2 overlay 32k && io overlay
qemu-img create -q -f qcow2 -o cluster_size=512 snap 32k && io snap
qemu-img snapshot -c first snap && qemu-io -c "write -P 0x43 1k 1k" snap >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=512 bitmaps 32k
qemu-img bitmap --add -g 512 bitmaps b0 && qemu-img bitmap --add --disable bitmaps b1 && io bitmaps
qemu-img create -q -f qcow2 -o cluster_size=512,data_file=data.raw extdata 32k && io extdata
cp v3 v2 zlib zstd xl2 rc1 overlay snap bitmaps extdata "$out/"
ls -l "$out"
