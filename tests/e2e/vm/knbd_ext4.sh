#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
# Guest side of the "our attach code against nbd.ko" test (runs as /vmtest/test.sh, busybox sh).
#
# /dev/vda is the read-only Python disk (pydisk.py), /dev/vdb the backing disk the host checks
# afterwards; our packages are in /src (per-run archive). This wrapper only mounts the Python
# disk and hands over to $GUEST_PROGRAM (/vmtest/*.py), which prints the REPLICA-VM- lines.
mkdir -p /pydisk
if ! mount -t ext4 -o ro /dev/vda /pydisk; then
    echo "REPLICA-VM-FAIL: mount -o ro /dev/vda /pydisk (the python disk)"
    exit 1
fi
export PYTHONHOME=/pydisk/py PYTHONPATH=/src:/pydisk/site PYTHONDONTWRITEBYTECODE=1
export LD_LIBRARY_PATH=/pydisk/libs:/src/libs:$LD_LIBRARY_PATH
/pydisk/py/bin/python3.11 "$GUEST_PROGRAM"
rc=$?
umount /pydisk 2>/dev/null
exit $rc
