#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
# /init of the NBD test VM (busybox sh, PID 1). Owns the guest's lifecycle:
#
#   mount proc/sys/devtmpfs/tmpfs -> insmod (order from /lib/modules/load-order)
#   -> eth0 10.0.2.15/24, no default route (slirp: 10.0.2.2 is the host's 127.0.0.1)
#   -> timeout $GUEST_TIMEOUT_S sh /vmtest/test.sh -> "REPLICA-VM-RESULT: PASS|FAIL ..."
#   -> bounded sync -> poweroff -f (ACPI ends qemu)
#
# The per-run archive appended to the initramfs provides /vmtest/env (shell variables) and
# /vmtest/test.sh. Every line meant for the host starts with "REPLICA-VM-"; the host strips \r.
# PID 1 must never exit (that panics the kernel), so every path ends in poweroff.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run

uptime_s() { cut -d' ' -f1 /proc/uptime; }
echo "REPLICA-VM-INIT: $(uname -r) at $(uptime_s) s"

GUEST_TIMEOUT_S=60
set -a  # everything in /vmtest/env is exported to test.sh
[ -r /vmtest/env ] && . /vmtest/env
set +a

finish() {
    # A sync can block forever if the server died with dirty pages: bounded wait.
    sync &
    n=0
    while kill -0 $! 2>/dev/null && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
    echo "REPLICA-VM-POWEROFF: at $(uptime_s) s"
    poweroff -f
    sleep 5
    echo o > /proc/sysrq-trigger
}

while read -r ko params; do
    [ -n "$ko" ] || continue
    if ! insmod "/lib/modules/$ko" $params; then
        echo "REPLICA-VM-RESULT: FAIL insmod $ko"
        finish
    fi
done < /lib/modules/load-order

ip link set lo up
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
if ! ip addr add 10.0.2.15/24 dev eth0 || ! ip link set eth0 up; then
    echo "REPLICA-VM-RESULT: FAIL network: no eth0 (is the NIC virtio-net-pci?)"
    finish
fi
echo "REPLICA-VM-READY: at $(uptime_s) s"

if [ ! -r /vmtest/test.sh ]; then
    echo "REPLICA-VM-RESULT: FAIL no /vmtest/test.sh in the initramfs"
    finish
fi
timeout "$GUEST_TIMEOUT_S" sh /vmtest/test.sh
rc=$?
if [ $rc -eq 0 ]; then
    echo "REPLICA-VM-RESULT: PASS at $(uptime_s) s"
else
    echo "REPLICA-VM-RESULT: FAIL test.sh exit status $rc at $(uptime_s) s"
fi
finish
