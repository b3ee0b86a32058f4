#!/bin/sh
# Seeds for the VHDX fuzz targets, made with qemu-img/qemu-io and vdisk's writer.
# vhdx_open takes the compact form of a file (vdisk_vhdx::fuzzing::expand): its non-zero
# 4 KiB blocks, a few KiB for a multi-megabyte image. vhdx_structures takes two headers.
set -eu
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build -q --release -p vdisk-vhdx --example vhdx_seed
seed="$CARGO_TARGET_DIR/release/examples/vhdx_seed"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=fuzz/seeds/vhdx_open
mkdir -p "$out" fuzz/seeds/vhdx_structures

qemu-img create -q -f vhdx -o block_size=1M "$tmp/dynamic.vhdx" 8M
qemu-io -f vhdx -c "write -P 0x5a 0 4k" -c "write -P 0xa5 3M 4k" -c "write -z 5M 1M" "$tmp/dynamic.vhdx" >/dev/null
qemu-img create -q -f vhdx -o subformat=fixed,block_size=1M "$tmp/fixed.vhdx" 4M
qemu-io -f vhdx -c "write -P 0x33 1M 8k" "$tmp/fixed.vhdx" >/dev/null
qemu-img create -q -f vhdx -o block_size=256M "$tmp/big-blocks.vhdx" 300M
"$seed" delta "$tmp"
for f in dynamic fixed big-blocks base delta; do
    "$seed" compact "$tmp/$f.vhdx" "$out/$f"
done
"$seed" structures "$tmp/dynamic.vhdx" fuzz/seeds/vhdx_structures/headers
ls -l "$out" fuzz/seeds/vhdx_structures
