#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
# Two-node replication walkthrough: two network namespaces joined by a veth pair stand in for two
# servers. create-md, up, primary --force (initial sync with progress), write on the Primary,
# compare both disks, cut the link, write, heal, watch only the dirty part resync.
# Needs root (namespaces). Cleans up everything it created, even on failure or Ctrl-C.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$here/.venv/bin
pfx=rdemo$$
work=/dev/shm/$pfx
ns_a=$pfx-a ns_b=$pfx-b
veth_a=v${pfx#rdemo}a veth_b=v${pfx#rdemo}b
net=10.98.$(( $$ % 200 + 20 ))

if [[ $(id -u) -ne 0 ]]; then
    echo "demo_replication.sh: skipped: needs root for network namespaces" >&2
    exit 0
fi

cleanup() {
    for ns in "$ns_a" "$ns_b"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# ctl NODE ARGS...: replicactl inside the node's namespace (its replicad runs there too)
ctl() {
    local node=$1; shift
    local ns=$ns_a; [[ $node == beta ]] && ns=$ns_b
    printf '%s$ replicactl %s\n' "$node" "$*"
    ip netns exec "$ns" "$bin/replicactl" --config "$work/replica.conf" --node "$node" \
        --run-dir "$work/$node" "$@"
}
ctlq() {      # the same, without echoing the command (for captured output)
    local node=$1; shift
    local ns=$ns_a; [[ $node == beta ]] && ns=$ns_b
    ip netns exec "$ns" "$bin/replicactl" --config "$work/replica.conf" --node "$node" \
        --run-dir "$work/$node" "$@"
}
wait_for() {   # wait_for NODE TEXT: until `status` shows TEXT
    for _ in $(seq 300); do
        ctlq "$1" status r0 2>/dev/null | grep -q -- "$2" && return 0
        sleep 0.1
    done > /dev/null
    echo "timed out waiting for '$2' on $1" >&2; return 1
}

say "two 'servers': namespaces $ns_a (alpha, $net.1) and $ns_b (beta, $net.2), 64 MiB disks on tmpfs"
mkdir -p "$work/alpha" "$work/beta"
ip netns add "$ns_a"; ip netns add "$ns_b"
ip link add "$veth_a" netns "$ns_a" type veth peer name "$veth_b" netns "$ns_b"
ip -n "$ns_a" addr add "$net.1/24" dev "$veth_a"; ip -n "$ns_a" link set "$veth_a" up
ip -n "$ns_b" addr add "$net.2/24" dev "$veth_b"; ip -n "$ns_b" link set "$veth_b" up
truncate -s 64M "$work/alpha.img" "$work/beta.img"
cat > "$work/replica.conf" <<CONF
resource r0 {
    net {
        protocol C;
        cram-hmac-alg sha256;
        shared-secret "demo-secret";
        ping-int 3; ping-timeout 5; timeout 15; connect-int 2;
    }
    disk { resync-rate 40M; }
    on alpha {
        disk      $work/alpha.img;
        meta-disk internal;
        address   $net.1:7789;
        export    unix:$work/alpha/r0.sock;
    }
    on beta {
        disk      $work/beta.img;
        meta-disk internal;
        address   $net.2:7789;
        export    unix:$work/beta/r0.sock;
    }
}
CONF
cat "$work/replica.conf"

say "1. create-md on both nodes, then up (attach + connect)"
ctl alpha create-md r0
ctl beta create-md r0
ctl alpha up r0
ctl beta up r0
wait_for alpha "beta role:Secondary"
ctl alpha status r0
ctl alpha dstate r0

say "2. primary --force on alpha: the initial full sync starts (40 MiB/s)"
ctl alpha primary --force r0
for _ in 1 2 3; do sleep 0.4; ctl beta status r0; done
wait_for beta "peer-disk:UpToDate"
ctl alpha status r0
ctl beta status r0
ctl alpha role r0

say "3. write 16 MiB on the Primary through NBD (nbdcopy), compare the two backing disks"
head -c 16M /dev/urandom > "$work/data.bin"
uri=$(ctlq alpha nbd-uri r0)
echo "\$ nbdcopy data.bin $uri"
nbdcopy "$work/data.bin" "$uri"
size=$(ctlq alpha status --json r0 | "$bin/python" -c 'import json,sys; print(json.load(sys.stdin)[0]["size"])')
cmp -n "$size" "$work/alpha.img" "$work/beta.img" && echo "alpha.img and beta.img are identical ($size data bytes)"

say "4. cut the link, write 2 MiB on alpha, heal: only the dirty part resyncs"
ip -n "$ns_a" link set "$veth_a" down
echo "\$ ip link set $veth_a down"
head -c 2M /dev/urandom > "$work/more.bin"
nbdcopy "$work/more.bin" "$uri"      # blocks until alpha gives up on beta, then completes
wait_for alpha "connection:Connecting"
ctl alpha status r0
ctlq alpha status --json r0 | grep -E '"out_of_sync_bytes"'
ip -n "$ns_a" link set "$veth_a" up
echo "\$ ip link set $veth_a up"
wait_for beta "peer-disk:UpToDate"
wait_for alpha "peer-disk:UpToDate"
ctl alpha status r0
grep -E "by rule|resync finished:" "$work/alpha/replicad.log" | tail -2 | cut -d' ' -f3-
cmp -n "$size" "$work/alpha.img" "$work/beta.img" && echo "identical again"

say "5. down on both nodes"
ctl alpha down r0
ctl beta down r0
