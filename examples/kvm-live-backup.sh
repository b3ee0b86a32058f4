# Live backups of a running KVM guest's disk with vdisk, QEMU's dirty bitmaps and pull-mode
# fleecing, driven over QMP. Source this file in bash (it defines functions; guest_start sets
# LAST and QSD_PID); README.md ("Live KVM guests") walks through it, and tests/it/live.rs runs
# it while a writer keeps changing the disk, checking that each restored point is the disk as
# it was at that point's instant.
#
# The guest here is a qemu-storage-daemon holding the disk (QMP on its stdin and stdout, an
# NBD server on $SOCK); a QEMU VM takes the same QMP commands (through its QMP socket, or
# `virsh qemu-monitor-command DOMAIN "$json"` for a libvirt domain; libvirt's own pull-mode
# backup API is at the end of this file).
#
#   DISK  the guest's qcow2 disk        SOCK  the NBD server's Unix socket
#   REPO  the vdisk repository          WORK  a folder for the fleecing overlays
#   NAME  what the points are of in REPO, and the name of the export vdisk reads (default:
#         vm). Both must stay the same from one backup to the next: vdisk takes an export of
#         another name for another disk, and a backup of another NAME for another machine.
#
# A session:
#   guest_start                       # LAST: the last backup whose bitmap the disk kept
#   n=$((LAST + 1))
#   backup_begin $n && backup_run $n && backup_end $n   # again with n+1 for the next point
#   guest_stop

# qmp JSON: send one command to the guest; print its answer; fail on an error (events that
# arrive meanwhile are skipped).
qmp() {
    local line
    printf '%s\n' "$1" >&"${GUEST[1]}"
    while IFS= read -r line <&"${GUEST[0]}"; do
        line=${line%$'\r'} # QMP ends its lines with CR LF
        case $line in
            *'"event"'*) ;;
            *'"return"'*) printf '%s\n' "$line"; return 0 ;;
            *'"error"'*) printf 'qmp: %s: %s\n' "$1" "$line" >&2; return 1 ;;
        esac
    done
    return 1
}

# guest_start: the guest's disk (node "disk0"; the daemon's process is QSD_PID), an NBD
# server for the backups, and one persistent dirty bitmap from now on. A bitmap vdisk-K that the disk kept from the last run
# (saved by guest_stop) holds every change since backup K: the numbering goes on from there
# (LAST=K, the next backup is K+1, incremental by that bitmap). Otherwise (a new disk, or
# bitmaps that a crash left inconsistent, or several after a backup that never ended) they
# are dropped and vdisk-0 starts (LAST=0): the next backup, 1, reads every block and stores
# only those the NAME's newest point lacks.
guest_start() {
    local kept
    kept=$(qemu-img info "$DISK" | awk '
        /^ *flags:/ { bad = 0 }
        /: in-use$/ { bad = 1 }
        /^ *name: vdisk-[0-9]+$/ { sub(/.*vdisk-/, ""); print (bad ? "x" : "") $0 }')
    coproc GUEST {
        exec qemu-storage-daemon \
            --blockdev "driver=file,node-name=disk0-file,filename=$DISK" \
            --blockdev driver=qcow2,node-name=disk0,file=disk0-file \
            --nbd-server "addr.type=unix,addr.path=$SOCK" \
            --chardev stdio,id=qmp0 --monitor chardev=qmp0
    }
    QSD_PID=$GUEST_PID # bash unsets GUEST_PID as soon as the daemon has exited
    local greeting k
    IFS= read -r greeting <&"${GUEST[0]}"
    qmp '{"execute":"qmp_capabilities"}' >/dev/null
    if [[ $kept =~ ^[0-9]+$ ]]; then
        LAST=$kept
        return 0
    fi
    for k in $kept; do
        qmp '{"execute":"block-dirty-bitmap-remove",
              "arguments":{"node":"disk0","name":"vdisk-'"${k#x}"'"}}' >/dev/null
    done
    LAST=0
    qmp '{"execute":"block-dirty-bitmap-add",
          "arguments":{"node":"disk0","name":"vdisk-0","persistent":true}}' >/dev/null
}

# backup_begin N: the instant of backup N. One transaction starts bitmap vdisk-N, stops
# vdisk-(N-1) (it now holds exactly the changes since backup N-1) and starts a fleecing
# backup job (sync=none) into a temporary overlay: from then on, a guest write first copies
# the old data into the overlay, so the overlay (reading through to the disk) stays the
# disk at this instant. The overlay is exported read-only with vdisk-(N-1), under the same
# name every time, NAME: vdisk takes an export of another name for another disk (and would
# refuse it without --force).
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
          "node-name":"fleece-'"$n"'","name":"'"${NAME:-vm}"'","writable":false,
          "bitmaps":["vdisk-'"$prev"'"]}}' >/dev/null
}

# backup_uri: where vdisk reads the backup under way.
backup_uri() {
    printf 'nbd+unix:///%s?socket=%s\n' "${NAME:-vm}" "$SOCK"
}

# backup_run N [ARGS...]: the point itself, as the next point of NAME, ARGS added to the
# vdisk command (e.g. --json). Backup 1 reads every allocated block (vdisk stores only what
# the NAME's newest point lacks, or all of it for a new NAME); later ones read only the blocks
# vdisk-(N-1) marks (blocks QEMU marked dirty but reads as zero are recorded, not read).
backup_run() {
    local n=$1 changed=()
    shift
    ((n > 1)) && changed=(--changed "qemu:dirty-bitmap:vdisk-$((n - 1))")
    vdisk backup "$(backup_uri)" "$REPO" --name "${NAME:-vm}" "${changed[@]}" "$@"
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
    wait "$QSD_PID" 2>/dev/null || true
    QSD_PID=
}

# The same with libvirt's pull-mode backup API (libvirt 7.2 or later): libvirt takes the
# checkpoints (its bitmaps), the fleecing and the NBD export, and vdisk reads the export.
# Not tested here: this machine has no libvirt (tests/it/live.rs runs only the QMP recipe
# above). One backup of disk vda of DOMAIN, the checkpoint of the previous one being
# vdisk-1 (the first backup has no <incremental> element, and no --changed):
#
#   cat >backup.xml <<'XML'
#   <domainbackup mode='pull'>
#     <incremental>vdisk-1</incremental>
#     <server transport='unix' socket='/run/vdisk/DOMAIN.sock'/>
#     <disks>
#       <disk name='vda' backup='yes' type='file'>
#         <scratch file='/var/lib/libvirt/images/DOMAIN-vda.scratch'/>
#       </disk>
#     </disks>
#   </domainbackup>
#   XML
#   cat >checkpoint.xml <<'XML'
#   <domaincheckpoint>
#     <name>vdisk-2</name>
#     <disks><disk name='vda' checkpoint='bitmap'/></disks>
#   </domaincheckpoint>
#   XML
#   virsh backup-begin DOMAIN backup.xml checkpoint.xml
#   # The export is named after the disk (vda); the changes since checkpoint vdisk-1 are its
#   # bitmap backup-vda (libvirt's name for the incremental bitmap of disk vda).
#   vdisk backup 'nbd+unix:///vda?socket=/run/vdisk/DOMAIN.sock' /backups --name DOMAIN \
#       --changed qemu:dirty-bitmap:backup-vda
#   virsh domjobabort DOMAIN              # ends the pull-mode job: export and scratch go
#   virsh checkpoint-delete DOMAIN vdisk-1   # once the point is stored; vdisk-2 stays
#
# If the backup fails, keep checkpoint vdisk-1 and delete vdisk-2 instead
# (`virsh checkpoint-delete DOMAIN vdisk-2`, which merges its bitmap into vdisk-1's), so that
# the next backup is again incremental from vdisk-1.
