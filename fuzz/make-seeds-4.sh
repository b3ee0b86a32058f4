#!/usr/bin/env bash
# Seeds for the ova_members target (tar archives as OVAs are made: an .ovf first, then the
# disks) and the descriptors of the real-world issue for the descriptor target (no header
# line, CID= or createType= first, a byte-order mark, names in Windows code pages, raw-device
# descriptors as VirtualBox writes them).
#
#   fuzz/make-seeds-4.sh          # needs qemu-img, qemu-io, GNU tar
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ova="$here/seeds/ova_members"
desc="$here/seeds/descriptor"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
rm -rf "$ova" && mkdir -p "$ova" "$desc"
qemu-img create -q -f raw disk.raw 1M
qemu-io -f raw -c "write -P 0x41 0 64k" -c "write -P 0x42 512k 4k" disk.raw >/dev/null
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized disk.raw disk1.vmdk
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized disk.raw disk2.vmdk
qemu-img create -q -f vmdk -o subformat=monolithicFlat flat.vmdk 64k
printf '<?xml version="1.0"?>\n<Envelope><References><File ovf:href="disk1.vmdk"/></References></Envelope>\n' >app.ovf
tar --format=ustar -cf "$ova/one-disk" app.ovf disk1.vmdk
tar --format=ustar -cf "$ova/two-disks" app.ovf disk1.vmdk disk2.vmdk
tar --format=ustar -cf "$ova/descriptor-and-flat" app.ovf flat.vmdk flat-flat.vmdk
long=$(printf 'd%.0s' $(seq 1 120))
mkdir -p "$long" && cp disk1.vmdk "$long/disk-with-a-long-path.vmdk"
tar --format=gnu -cf "$ova/gnu-long-name" app.ovf "$long/disk-with-a-long-path.vmdk"
tar --format=pax -cf "$ova/pax-long-name" app.ovf "$long/disk-with-a-long-path.vmdk"
head -c 20000 "$ova/one-disk" >"$ova/cut"
tar --format=ustar -cf "$ova/no-disk" app.ovf

printf 'version=1\nCID=0badcafe\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 2048 FLAT "disk-flat.vmdk" 0\n' >"$desc/no-header"
printf 'CID=0badcafe\nversion=1\ncreateType="monolithicFlat"\nRW 2048 FLAT "disk-flat.vmdk" 0\n' >"$desc/cid-first"
printf '\xef\xbb\xbfcreateType="monolithicFlat"\r\nversion=1\r\nRW 2048 FLAT "disk-flat.vmdk" 0\r\n' >"$desc/bom-createtype-first-crlf"
printf '# Disk DescriptorFile\nversion=1\nencoding="windows-1251"\nCID=00000001\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n# Extent description\nRW 2048 FLAT "\xc4\xe8\xf1\xea-flat.vmdk" 0\n\nddb.comment = "\xc4\xe8\xf1\xea"\n' >"$desc/windows-1251"
printf '# Disk DescriptorFile\nversion=1\nencoding="Shift_JIS"\nCID=00000001\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n# Extent description\nRW 2048 FLAT "\x83\x66\x83\x42\x83\x58\x83\x4e-flat.vmdk" 0\n' >"$desc/shift-jis"
printf '# Disk DescriptorFile\nversion=1\nCID=5e3a1c2b\nparentCID=ffffffff\ncreateType="fullDevice"\n\n# Extent description\nRW 16384 FLAT "/dev/sdb" 0\n\n# The disk Data Base\n#DDB\n\nddb.virtualHWVersion = "4"\nddb.adapterType="ide"\n' >"$desc/full-device"
printf '# Disk DescriptorFile\nversion=1\nCID=5e3a1c2c\nparentCID=ffffffff\ncreateType="partitionedDevice"\n\n# Extent description\nRW 63 FLAT "part-pt.vmdk" 0\nRW 1985 ZERO \nRW 4096 FLAT "/dev/sdb" 2048\nRW 4096 ZERO \nRW 6144 FLAT "/dev/sdb3" 0\n' >"$desc/partitioned-device"
ls -l "$ova"
