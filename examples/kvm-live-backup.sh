# Live backups of a running KVM guest's disk with vdisk, QEMU's dirty bitmaps and pull-mode
# fleecing, driven over QMP. Source this file in bash; README.md ("Live backups of KVM
# guests") walks through it, and tests/it/live.rs runs it while a writer keeps changing the
# disk.
#
# The guest here is a qemu-storage-daemon holding the disk (QMP on its stdin and stdout, an
# NBD server on $SOCK); a QEMU VM takes the same QMP commands (through its QMP socket, or
# `virsh qemu-monitor-command DOMAIN "$json"` for a libvirt domain).
#
#   DISK  the guest's qcow2 disk        SOCK  the NBD server's Unix socket
#   REPO  the vdisk repository          WORK  a folder for the fleecing overlays

# qmp JSON: send one command to the guest; print its answer; fail on an error (events that
# arrive meanwhile are skipped).
qmp() {
    local line
    printf '%s\n' "$1" >&"${GUEST[1]}"
    while IFS= read -r line <&"${GUEST[0]}"; do
        case $line in
            *'"return"'*) printf '%s\n' "$line"; return 0 ;;
            *'"error"'*) printf 'qmp: %s: %s\n' "$1" "$line" >&2; return 1 ;;
        esac
    done
    return 1
}

# guest_start: the guest's disk (node "disk0"), an NBD server for the backups, and one
# persistent dirty bitmap from now on ("vdisk-0": the changes since the guest started).
guest_start() {
    coproc GUEST {
        qemu-storage-daemon \
            --blockdev "driver=file,node-name=disk0-file,filename=$DISK" \
            --blockdev driver=qcow2,node-name=disk0,file=disk0-file \
            --nbd-server "addr.type=unix,addr.path=$SOCK" \
            --chardev stdio,id=qmp0 --monitor chardev=qmp0
    }
    local greeting
    IFS= read -r greeting <&"${GUEST[0]}"
    qmp '{"execute":"qmp_capabilities"}' >/dev/null
    qmp '{"execute":"block-dirty-bitmap-add",
          "arguments":{"node":"disk0","name":"vdisk-0","persistent":true}}' >/dev/null
}

# backup_begin N: the instant of backup N. One transaction starts bitmap vdisk-N, stops
# vdisk-(N-1) (it now holds exactly the changes since backup N-1) and starts a fleecing
# backup job (sync=none) into a temporary overlay: from then on, a guest write first copies
# the old data into the overlay, so the overlay (reading through to the disk) stays the
# disk at this instant. The overlay is exported read-only as "backup-N", with vdisk-(N-1).
backup_begin() {
    local n=$1 prev=$(($1 - 1)) size
    size=$(qemu-img info --force-share "$DISK" | sed -n 's/^virtual size: .*(\([0-9]*\) bytes)$/\1/p')
    qemu-img create -q -f qcow2 "$WORK/fleece-$n.qcow2" "$size"
    qmp '{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"fleece-'"$n"'",
          "file":{"driver":"file","filename":"'"$WORK/fleece-$n.qcow2"'"},"backing":"disk0"}}' >/dev/null
    qmp '{"execute":"transaction","arguments":{"actions":[
          {"type":"block-dirty-bitmap-add",
           "data":{"node":"disk0","name":"vdisk-'"$n"'","persistent":true}},
          {"type":"block-dirty-bitmap-disable","data":{"node":"disk0","name":"vdisk-'"$prev"'"}},
          {"type":"blockdev-backup","data":{"job-id":"fleece-'"$n"'","device":"disk0",
           "target":"fleece-'"$n"'","sync":"none"}}]}}' >/dev/null
    qmp '{"execute":"block-export-add","arguments":{"type":"nbd","id":"backup-'"$n"'",
          "node-name":"fleece-'"$n"'","name":"backup-'"$n"'","writable":false,
          "bitmaps":["vdisk-'"$prev"'"]}}' >/dev/null
}

# backup_uri N: where vdisk reads backup N.
backup_uri() {
    printf 'nbd+unix:///backup-%s?socket=%s\n' "$1" "$SOCK"
}

# backup_run N: the point itself: a full one the first time, then only the blocks
# vdisk-(N-1) marks (blocks QEMU marked dirty but reads as zero are recorded, not read).
backup_run() {
    if [[ -e $REPO ]]; then
        vdisk backup "$(backup_uri "$1")" "$REPO" --changed "qemu:dirty-bitmap:vdisk-$(($1 - 1))"
    else
        vdisk backup "$(backup_uri "$1")" "$REPO"
    fi
}

# backup_end N: remove the export, the fleecing job and its overlay; drop vdisk-(N-1) once
# the point is stored (after a failed backup, merge it into vdisk-N with
# block-dirty-bitmap-merge instead, so that the next backup still sees its changes).
backup_end() {
    local n=$1 prev=$(($1 - 1))
    qmp '{"execute":"block-export-del","arguments":{"id":"backup-'"$n"'"}}' >/dev/null
    qmp '{"execute":"block-job-cancel","arguments":{"device":"fleece-'"$n"'"}}' >/dev/null
    until [[ $(qmp '{"execute":"query-block-jobs"}') == '{"return": []}' &&
             $(qmp '{"execute":"query-block-exports"}') != *'"backup-'"$n"'"'* ]]; do
        sleep 0.05
    done
    qmp '{"execute":"blockdev-del","arguments":{"node-name":"fleece-'"$n"'"}}' >/dev/null
    qmp '{"execute":"block-dirty-bitmap-remove","arguments":{"node":"disk0","name":"vdisk-'"$prev"'"}}' >/dev/null
    rm -f "$WORK/fleece-$n.qcow2"
}

# guest_stop: shut the guest down (its persistent bitmap is saved in the qcow2 file).
guest_stop() {
    qmp '{"execute":"quit"}' >/dev/null || true
    wait "$GUEST_PID" 2>/dev/null || true
}
