#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
# demo_failover.sh: the whole product, as the seed chapter sets it up, on one machine (root).
#
#   ha1 [eth0 10.0.17.1] --+                                  replicad r0 on both nodes,
#   ha2 [eth0 10.0.17.2] --+-- bridge -- client [10.0.17.100]  protocol C over eth0:7789
#
# haresources is the seed's line with our service:  "ha1 10.0.17.26 datadisk kvstore"
#   10.0.17.26  the virtual IP (IPaddr, gratuitous ARP)
#   datadisk    promotes the replicated disk (replicactl primary)
#   kvstore     a tiny database whose records live on the replicated disk (scripts/kvstore.py)
# The client stores records through the VIP; ha1 dies (cable pulled, every process killed); ha2
# takes over the VIP, the disk and the service and serves every acknowledged record; ha1 comes
# back, resyncs only what changed, and gets its service back (auto_failback on).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=$REPO/.venv/bin/python
[ "$(id -u)" = 0 ] || { echo "demo_failover: needs root (network namespaces)" >&2; exit 77; }
PFX=hafo$$
WORK=$(mktemp -d /tmp/ha-demo.XXXXXX)
DISKS=$(mktemp -d /dev/shm/ha-demo.XXXXXX)
VIP=10.0.17.26
declare -A HBD=()

cleanup() {
    set +e
    for n in "${!HBD[@]}"; do kill -9 "${HBD[$n]}" 2>/dev/null; wait "${HBD[$n]}" 2>/dev/null; done
    remove_lan
    if [ -n "${KEEP_DEMO:-}" ]; then echo "logs kept in $WORK"; rm -rf "$DISKS"; else rm -rf "$WORK" "$DISKS"; fi
}
trap cleanup EXIT INT TERM
. "$REPO/scripts/lib/demo_lan.sh"

ctl() { local n=$1; shift; inns "$n" "$REPO/.venv/bin/replicactl" --config "$WORK/replica.conf" --node "$n" \
            --run-dir "$WORK/$n/replica" "$@"; }
hbctl() { local n=$1; shift; "$PYTHON" -m hbd.ctl --run-dir "$WORK/$n/run" "$@"; }
client() { inns cli curl -s -m 2 "$@" || echo "(no answer)"; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: until COMMAND succeeds
    local limit=$1 what=$2 t0; shift 2; t0=$(date +%s.%N)
    until "$@" >/dev/null 2>&1; do
        if awk -v a="$t0" -v b="$(date +%s.%N)" -v l="$limit" 'BEGIN { exit !(b - a > l) }'; then
            echo "timed out after $limit s waiting for: $what"; return 1
        fi
        sleep 0.1
    done
    awk -v a="$t0" -v b="$(date +%s.%N)" -v w="$what" 'BEGIN { printf "%s: after %.1f s\n", w, b - a }'
}
served_by() { [[ $(client "http://$VIP/") == *"served by $1" ]]; }
state_is() { [ "$(ctl "$1" "$2" r0 2>/dev/null)" = "$3" ]; }   # state_is NODE cstate|dstate|role VALUE

say "network: ha1, ha2 and a client on one bridge (namespaces $PFX-*)"
make_lan

say "replication: resource r0, a 64 MiB disk per node (tmpfs), protocol C"
cat > "$WORK/replica.conf" <<EOF
resource r0 {
    protocol C;
    net { ping-int 1; ping-timeout 5; timeout 5; connect-int 2; cram-hmac-alg sha256; shared-secret "demo-secret"; }
    disk { resync-rate 100M; }
    on ha1 { disk $DISKS/ha1.img; meta-disk internal; address 10.0.17.1:7789; export unix:$WORK/ha1/r0.sock; }
    on ha2 { disk $DISKS/ha2.img; meta-disk internal; address 10.0.17.2:7789; export unix:$WORK/ha2/r0.sock; }
}
EOF
cat "$WORK/replica.conf"
for n in ha1 ha2; do
    mkdir -p "$WORK/$n"
    truncate -s 64M "$DISKS/$n.img"
    ctl "$n" create-md r0 >/dev/null
done
for n in ha1 ha2; do ctl "$n" up r0; done
wait_for 20 "connected" state_is ha1 cstate Connected
ctl ha1 new-current-uuid --clear-bitmap r0   # two blank disks: no initial sync needed
wait_for 10 "UpToDate on both" state_is ha1 dstate UpToDate/UpToDate
ctl ha1 status

say "heartbeat: the seed's ha.cf and authkeys (timing shortened), haresources \"ha1 $VIP datadisk kvstore\""
for n in ha1 ha2; do
    d=$WORK/$n; mkdir -p "$d/ha.d/resource.d" "$d/run"
    sed -e 's/^keepalive .*/keepalive 200ms/' -e 's/^deadtime .*/deadtime 2/' \
        "$REPO/examples/seed/ha.cf" > "$d/ha.d/ha.cf"
    printf 'initdead 4\nauto_failback on\n' >> "$d/ha.d/ha.cf"
    echo "ha1 $VIP datadisk kvstore" > "$d/ha.d/haresources"
    install -m 600 "$REPO/examples/seed/authkeys" "$d/ha.d/authkeys"
    cat > "$d/ha.d/resource.d/kvstore" <<EOF
#!/bin/sh
# LSB script for the demo database, bound to the VIP, its records on r0 (this node's export)
PID=$d/run/kvstore.pid
case "\$1" in
  start) [ -e \$PID ] && kill -0 \$(cat \$PID) 2>/dev/null && exit 0
         nohup $PYTHON $REPO/scripts/kvstore.py --bind $VIP --node $n \\
             --nbd-uri "nbd+unix:///r0?socket=$d/r0.sock" >>$d/kvstore.log 2>&1 &
         echo \$! > \$PID; sleep 0.5; kill -0 \$(cat \$PID) ;;
  stop) [ -e \$PID ] && kill \$(cat \$PID) 2>/dev/null; rm -f \$PID; exit 0 ;;
  status) [ -e \$PID ] && kill -0 \$(cat \$PID) 2>/dev/null && { echo running; exit 0; }; echo stopped; exit 3 ;;
esac
EOF
    chmod 755 "$d/ha.d/resource.d/kvstore"
done
echo "--- haresources"; cat "$WORK/ha1/ha.d/haresources"

start_hbd() {
    local n=$1
    ip netns exec "$PFX-$n" env REPLICA_CONFIG="$WORK/replica.conf" REPLICA_NODE="$n" \
        REPLICA_RUN_DIR="$WORK/$n/replica" REPLICACTL="$REPO/.venv/bin/replicactl" \
        "$PYTHON" -m hbd -f --config-dir "$WORK/$n/ha.d" --node "$n" --run-dir "$WORK/$n/run" \
        >>"$WORK/$n/hbd.log" 2>&1 &
    HBD[$n]=$!
}
start_hbd ha1; start_hbd ha2
wait_for 30 "ha1 serves the database on $VIP" served_by ha1
ctl ha1 status

say "the client stores 20 records through the VIP"
for i in $(seq 1 20); do client -X PUT --data "value-$i" "http://$VIP/key$i" >/dev/null; done
echo "client: GET / -> $(client "http://$VIP/")"
echo "client: GET /key7 -> $(client "http://$VIP/key7")"

say "ha1 dies: cable pulled, then every process on it killed (as a power cut would)"
ip -n "$PFX-ha1" link set eth0 down
for pid in $(ip netns pids "$PFX-ha1"); do kill -9 "$pid" 2>/dev/null || true; done
wait "${HBD[ha1]}" 2>/dev/null || true
unset 'HBD[ha1]'
wait_for 30 "ha2 serves the database" served_by ha2
echo "client: GET / -> $(client "http://$VIP/")"
missing=0
for i in $(seq 1 20); do [ "$(client "http://$VIP/key$i")" = "value-$i" ] || missing=$((missing + 1)); done
echo "records lost in the failover: $missing of 20"
ctl ha2 status
for i in $(seq 21 25); do client -X PUT --data "value-$i" "http://$VIP/key$i" >/dev/null; done
echo "client stored 5 more records on ha2: GET / -> $(client "http://$VIP/")"

say "ha1 comes back: replicad first (resync of what changed), then heartbeat (failback)"
ip -n "$PFX-ha1" addr del "$VIP/24" dev eth0 2>/dev/null || true
rm -f "$WORK/ha1/run/kvstore.pid"
ip -n "$PFX-ha1" link set eth0 up
ctl ha1 up r0
wait_for 30 "ha1 UpToDate again" state_is ha1 dstate UpToDate/UpToDate
grep -h "resync finished:" "$WORK/ha2/replica/replicad.log" | tail -1 | sed "s/^.*replicad\[[0-9]*\]: //" || true
start_hbd ha1
wait_for 40 "ha1 serves the database again" served_by ha1
echo "client: GET / -> $(client "http://$VIP/")"
echo "client: GET /key23 -> $(client "http://$VIP/key23")"
ctl ha1 status

say "clean stop: heartbeat releases the group, replicad goes down on both nodes"
for n in ha1 ha2; do kill -TERM "${HBD[$n]}"; done
for n in ha1 ha2; do wait "${HBD[$n]}" 2>/dev/null || true; unset "HBD[$n]"; done
for n in ha1 ha2; do ctl "$n" down r0; done
if cmp -s -n $((64 * 1024 * 1024 - 1024 * 1024)) "$DISKS/ha1.img" "$DISKS/ha2.img"; then
    echo "the two disks are identical"
else
    echo "the two disks differ"; exit 1
fi
[ "$missing" = 0 ] || exit 1
echo "demo finished"
