#!/usr/bin/env bash
# Seeds for the VHD and VDI targets, made with qemu-img and qemu-io: small disks, so that
# the files stay small (qemu's VHD blocks are 2 MiB and its VDI blocks 1 MiB: a disk with
# data holds a whole block, so those seeds are cut, or are the VDI's single block). The
# VHD seeds vdisk writes (a dynamic and a differencing disk in 64 KiB blocks) are made by
# `cargo test -p vdisk-vhd --test corpus -- --ignored write_vdisk_seeds`.
#
#   fuzz/make-seeds-5.sh          # needs qemu-img, qemu-io
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
vhd="$here/seeds/vhd_open_and_read"
st="$here/seeds/vhd_structures"
vdi="$here/seeds/vdi_open_and_read"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
mkdir -p "$vhd" "$st" "$vdi"
rm -f "$vhd"/qemu-* "$st"/qemu-* "$vdi"/qemu-*
io() { qemu-io -f "$1" "${@:3}" "$2" >/dev/null; }

qemu-img create -q -f vpc dyn-empty.vhd 1M
cp dyn-empty.vhd "$vhd/qemu-dynamic-empty"
qemu-img create -q -f vpc -o subformat=fixed,force_size=on fixed-force.vhd 8K
io vpc fixed-force.vhd -c "write -P 0x41 0 4k"
cp fixed-force.vhd "$vhd/qemu-fixed-force-size"
qemu-img create -q -f vpc -o subformat=fixed fixed-chs.vhd 20K
io vpc fixed-chs.vhd -c "write -P 0x42 512 1k"
cp fixed-chs.vhd "$vhd/qemu-fixed-geometry"
qemu-img create -q -f vpc dyn.vhd 3M
io vpc dyn.vhd -c "write -P 0x43 0 4k" -c "write -P 0x44 2M 512"
head -c 16384 dyn.vhd >"$vhd/qemu-dynamic-data-cut"
head -c 512 dyn.vhd >"$st/qemu-footer-dynamic"
dd if=dyn.vhd of="$st/qemu-dynamic-header" bs=512 skip=1 count=2 status=none
tail -c 512 fixed-force.vhd >"$st/qemu-footer-fixed-force-size"
tail -c 512 fixed-chs.vhd >"$st/qemu-footer-fixed-geometry"

qemu-img create -q -f vdi vdi-empty.vdi 3M
cp vdi-empty.vdi "$vdi/qemu-dynamic-empty"
qemu-img create -q -f vdi -o static=on vdi-static.vdi 64K
cp vdi-static.vdi "$vdi/qemu-static"
qemu-img create -q -f vdi vdi-one.vdi 1M
io vdi vdi-one.vdi -c "write -P 0x45 4k 8k"
cp vdi-one.vdi "$vdi/qemu-dynamic-one-block"
qemu-img create -q -f vdi vdi-two.vdi 3M
io vdi vdi-two.vdi -c "write -P 0x46 2M 4k" -c "write -P 0x47 0 512"
head -c 8192 vdi-two.vdi >"$vdi/qemu-dynamic-cut"
ls -l "$vhd" "$st" "$vdi"
