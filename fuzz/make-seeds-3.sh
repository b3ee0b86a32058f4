#!/usr/bin/env bash
# Seeds for the stream_reader target: whole streamOptimized images, small (a 1 MiB disk with a
# few compressible grains), in qemu-img's layout and in VMware's (as vdisk writes it), plus a
# cut one and one with an ovftool-style metadata marker of type 4.
#
#   fuzz/make-seeds-3.sh          # needs qemu-img, qemu-io and a built target/debug/vdisk
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
vdisk="$here/../target/debug/vdisk"
out="$here/seeds/stream_reader"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
rm -rf "$out" && mkdir -p "$out"
qemu-img create -q -f raw disk.raw 1M
qemu-io -f raw -c "write -P 0x41 0 64k" -c "write -P 0x42 512k 4k" disk.raw >/dev/null
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized disk.raw qemu.vmdk
cp qemu.vmdk "$out/qemu-layout"
"$vdisk" -q convert disk.raw vmware.vmdk -O vmdk --subformat streamOptimized
cp vmware.vmdk "$out/vmware-layout"
head -c "$(( $(stat -c %s vmware.vmdk) - 512 ))" vmware.vmdk >"$out/vmware-no-eos"
# A type-4 metadata marker of one sector (value 1, size 0, type 4) and its payload, put in
# front of the footer marker.
len=$(stat -c %s vmware.vmdk)
head -c "$((len - 1536))" vmware.vmdk >with-marker
printf '\001\000\000\000\000\000\000\000\000\000\000\000\004\000\000\000' >>with-marker
head -c 496 /dev/zero >>with-marker
head -c 512 /dev/zero >>with-marker
tail -c 1536 vmware.vmdk >>with-marker
cp with-marker "$out/vmware-type4-marker"
ls -l "$out"
