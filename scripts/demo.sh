#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
# make demo: what replica-ha does today, end to end, on this one machine, cleaning up after itself.
#   1. a standalone resource on a scratch file: up, write/read through NBD clients we did not
#      write (qemu-io, nbdcopy), status, down;
#   2. two-node replication in network namespaces (demo_replication.sh);
#   3. a virtual-IP failover between two hbd nodes (demo_hbd.sh);
#   4. the whole product: heartbeat moving the VIP, the replicated disk (/dev/drbd0), its ext4
#      filesystem and a database of fsynced files from a dead node to the survivor and back,
#      no acknowledged record lost, e2fsck clean (demo_failover.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$here/.venv/bin
work=$(mktemp -d /tmp/replica-demo.XXXXXX)
ctl=("$bin/replicactl" --config "$work/replica.conf" --node demo --run-dir "$work/run")
cleanup() { "${ctl[@]}" down r0 >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

say "1. a standalone resource on a 64 MiB scratch file"
truncate -s 64M "$work/disk.img"
cat > "$work/replica.conf" <<CONF
resource r0 {
    on demo {
        disk      $work/disk.img;
        meta-disk internal;
        export    unix:$work/r0.sock;
    }
}
CONF
cat "$work/replica.conf"
run "${ctl[@]}" up r0
uri=$("${ctl[@]}" nbd-uri r0)
run "${ctl[@]}" nbd-uri r0

say "write a pattern with qemu-io, read it back and verify it"
run qemu-io -f raw -c "write -P 0xa5 0 4M" -c "read -P 0xa5 0 4M" "$uri"

say "copy 16 MiB of random data in with nbdcopy, back out, compare"
head -c 16M /dev/urandom > "$work/random.bin"
run nbdcopy "$work/random.bin" "$uri"
run nbdcopy "$uri" "$work/back.img"
run cmp -n 16777216 "$work/random.bin" "$work/back.img" && echo "identical: 16 MiB round trip through replicad"

say "status"
run "${ctl[@]}" status
run nbdinfo "$uri"

say "down"
run "${ctl[@]}" down r0

for act in "$here"/scripts/demo_replication.sh "$here"/scripts/demo_hbd.sh "$here"/scripts/demo_failover.sh; do
    if [[ -x $act ]]; then
        say "next: $(basename "$act")"
        bash "$act"
    fi
done
say "demo finished"
