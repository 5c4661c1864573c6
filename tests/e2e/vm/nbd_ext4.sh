#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
# Guest side of the real-kernel NBD test (runs as /vmtest/test.sh under /init, busybox sh).
#
# The kernel's nbd.ko, driven by Debian's nbd-client, attaches the host's NBD export:
#   an unknown export name is refused -> connect -> mkfs.ext4 (TRIMs the device) -> mount
#   -> fsync pattern: DATA_FILES files of DATA_KIB KiB random data, dd conv=fsync each
#   -> flush pattern: SYNC_FILES small files, a whole-system sync after each (FLUSH-heavy)
#   -> md5 of every file -> umount -> e2fsck -fn (clean) -> nbd-client -d
#   -> reconnect -> mount ro -> md5sum -c (data read back through a fresh connection)
#   -> umount -> nbd-client -d
# Lines for the host: "REPLICA-VM-SIZE: BYTES", "REPLICA-VM-MD5: MD5  RELPATH",
# "REPLICA-VM-STEP: NAME at SECONDS s", "REPLICA-VM-FAIL: WHAT". Exit status 0 = every step passed.
# Env from /vmtest/env: NBD_HOST NBD_PORT NBD_EXPORT DATA_FILES DATA_KIB SYNC_FILES.

DEV=/dev/nbd0
MNT=/mnt

step() { echo "REPLICA-VM-STEP: $1 at $(cut -d' ' -f1 /proc/uptime) s"; }
fail() {
    echo "REPLICA-VM-FAIL: $*"
    dmesg | tail -n 15 | sed 's/^/REPLICA-VM-DMESG: /'
    umount "$MNT" 2>/dev/null
    nbd-client -d "$DEV" >/dev/null 2>&1
    exit 1
}

connect() {
    nbd-client "$NBD_HOST" "$NBD_PORT" "$DEV" -N "$NBD_EXPORT" || fail "nbd-client $NBD_HOST $NBD_PORT $DEV -N $NBD_EXPORT"
    nbd-client -c "$DEV" >/dev/null || fail "nbd-client -c $DEV: not connected after connect"
}

disconnect() {
    nbd-client -d "$DEV" || fail "nbd-client -d $DEV"
    n=0
    while nbd-client -c "$DEV" >/dev/null 2>&1; do
        [ $n -lt 50 ] || fail "nbd-client -c $DEV: still connected 5 s after nbd-client -d"
        sleep 0.1; n=$((n + 1))
    done
}

step unknown-export
if nbd-client "$NBD_HOST" "$NBD_PORT" "$DEV" -N "$NBD_EXPORT-nosuch"; then
    fail "nbd-client -N $NBD_EXPORT-nosuch: the server accepted an unknown export name"
fi
nbd-client -c "$DEV" >/dev/null 2>&1 && fail "nbd-client -c $DEV: connected to an unknown export"

step connect
connect
sectors=$(cat /sys/block/nbd0/size)
echo "REPLICA-VM-SIZE: $((sectors * 512))"

step mkfs
mkfs.ext4 -q -F "$DEV" || fail "mkfs.ext4 $DEV"
mount -t ext4 "$DEV" "$MNT" || fail "mount $DEV"

step fsync-writes
mkdir "$MNT/fsync" || fail "mkdir fsync"
i=0
while [ $i -lt "$DATA_FILES" ]; do
    dd if=/dev/urandom of="$MNT/fsync/data$i" bs=64k count=$((DATA_KIB / 64)) conv=fsync 2>/dev/null \
        || fail "dd conv=fsync fsync/data$i"
    i=$((i + 1))
done

step flush-writes
mkdir "$MNT/flush" || fail "mkdir flush"
i=0
while [ $i -lt "$SYNC_FILES" ]; do
    # odd sizes, so partial blocks and tails are covered too
    head -c $((1000 + i * 777)) /dev/urandom > "$MNT/flush/small$i" || fail "write flush/small$i"
    sync || fail "sync after flush/small$i"
    i=$((i + 1))
done

step checksum
(cd "$MNT" && find fsync flush -type f | sort | xargs md5sum) > /tmp/md5s || fail "md5sum"
sed 's/^/REPLICA-VM-MD5: /' /tmp/md5s

step umount
umount "$MNT" || fail "umount $MNT"
step e2fsck
e2fsck -fn "$DEV" || fail "e2fsck -fn $DEV: exit status $?"
step disconnect
disconnect

step reconnect
connect
mount -t ext4 -o ro "$DEV" "$MNT" || fail "mount -o ro after reconnect"
(cd "$MNT" && md5sum -c /tmp/md5s >/dev/null) || fail "md5sum -c after reconnect: data differs"
umount "$MNT" || fail "umount after reconnect"
disconnect
step done
