#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
# make demo [ARGS=...]: replica-ha on this one machine (root), cleaning up after itself.
#
#   (no argument)  the seed's cluster with a real web server and database (demo_cluster.sh):
#                  nginx and MariaDB on replicated ext4 under hbd and hbmon, a client committing
#                  rows and uploading files, a power failure of ha1, the timeline, every
#                  acknowledged row and file checked, resync, failback, a summary (about a minute)
#   --keep         the same, leaving the cluster running with instructions to poke at it
#   --down         remove a cluster left by --keep
#   --tour         the building blocks one by one:
#                  1. a standalone resource on a scratch file: up, write/read through NBD clients
#                     we did not write (qemu-io, nbdcopy), status, down;
#                  2. two-node replication in network namespaces (demo_replication.sh);
#                  3. a virtual-IP failover between two hbd nodes (demo_hbd.sh);
#                  4. the whole product with a toy database of fsynced files, and resource-level
#                     fencing through heartbeat when the replication link breaks (demo_failover.sh).
case ${1:-} in
    --tour) ;;
    -h|--help) sed -n '3,/^case/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) exec bash "$(dirname "$0")/demo_cluster.sh" "$@" ;;
esac
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
