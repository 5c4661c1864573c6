#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
# demo_failover.sh: the whole product, as the seed chapter sets it up, on one machine (root), with a
# toy database (`make demo ARGS=--tour`, act 4; `make demo` runs the same with nginx and MariaDB:
# demo_cluster.sh).
#
#   ha1 [eth0 10.0.17.1] --+                                  replicad r0 on both nodes,
#   ha2 [eth0 10.0.17.2] --+-- bridge -- client [10.0.17.100]  protocol C over eth0:7789
#
# haresources is the seed's line with ext4 and our service:
#   "ha1 10.0.17.26 datadisk::r0 Filesystem::/dev/drbd0::/data::ext4 kvstore"
#   10.0.17.26  the virtual IP (IPaddr, gratuitous ARP)
#   datadisk    promotes the replicated disk (replicactl primary): /dev/drbd0 appears
#   Filesystem  mounts ext4 from /dev/drbd0 on /data (after a failover the journal replays)
#   kvstore     a tiny database keeping each record as an fsynced file in /data (scripts/kvstore.py)
# The client stores records through the VIP; ha1 dies (cable pulled, every process killed); ha2
# takes over the VIP, the disk, the filesystem and the service and serves every acknowledged
# record; ha1 comes back, resyncs only what changed, and gets its service back (auto_failback on).
#
# Each node's hbd runs under `ip netns exec`, which gives it its own mount namespace: /data is
# mounted there only (as on a machine of its own), and goes away with hbd's process tree. The
# host keeps no mount; /data itself is created for the run and removed after it if it was not
# there before. /dev/drbd0 is one name on this one machine: runs of this script take turns.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=$REPO/.venv/bin/python
[ "$(id -u)" = 0 ] || { echo "demo_failover: needs root (network namespaces)" >&2; exit 77; }
if [ -z "${DEMO_FAILOVER_LOCKED:-}" ]; then   # one run at a time, and not with demo_cluster.sh:
    export DEMO_FAILOVER_LOCKED=1              # /dev/drbd0 (flock -o: the daemons we start do not
    mkdir -p /run/lock                         # inherit the lock's file descriptor)
    exec flock -o -w 600 /run/lock/replica-ha-drbd0.lock bash "$0" "$@"
fi
if [ -r /run/replica-ha-demo.env ] && ip netns list | grep -q "^$(. /run/replica-ha-demo.env; echo "$PFX")-"; then
    echo "demo_failover: a cluster kept with \`make demo ARGS=--keep\` holds /dev/drbd0: \`make demo ARGS=--down\` first" >&2
    exit 1
fi
PFX=hafo$$
WORK=$(mktemp -d /tmp/ha-demo.XXXXXX)
DISKS=$(mktemp -d /dev/shm/ha-demo.XXXXXX)
VIP=10.0.17.26
DEV=/dev/drbd0
MNT=/data
MADE_MNT=
declare -A HBD=()

cleanup() {
    set +e
    for n in "${!HBD[@]}"; do kill -9 "${HBD[$n]}" 2>/dev/null; wait "${HBD[$n]}" 2>/dev/null; done
    remove_lan     # kills every process left in our namespaces: their mounts go with them
    for n in ha1 ha2; do   # what a killed replicad left: loop device, FUSE mount, /dev links
        "$REPO/.venv/bin/replicactl" --config "$WORK/replica.conf" --node "$n" \
            --run-dir "$WORK/$n/replica" down --force r0 >/dev/null 2>&1
    done
    [ -n "$MADE_MNT" ] && rmdir "$MNT" 2>/dev/null
    if [ -n "${KEEP_DEMO:-}" ]; then echo "logs kept in $WORK"; rm -rf "$DISKS"; else rm -rf "$WORK" "$DISKS"; fi
}
trap cleanup EXIT INT TERM
. "$REPO/scripts/lib/demo_lan.sh"
if [ ! -e "$MNT" ]; then mkdir "$MNT"; MADE_MNT=1; fi

ctl() { local n=$1; shift; inns "$n" env HBD_RUN_DIR="$WORK/$n/run" "$REPO/.venv/bin/replicactl" \
            --config "$WORK/replica.conf" --node "$n" --run-dir "$WORK/$n/replica" "$@"; }
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
kernel_dev() {  # the kernel device behind NODE's $DEV (status --json "device"), or nothing
    ctl "$1" status --json 2>/dev/null | "$PYTHON" -c \
        'import json, sys; d = (json.load(sys.stdin) or [{}])[0].get("device") or {}; print(d.get("kernel") or "")'
}
mounted_in() {  # what hbd on NODE sees mounted on $MNT (its own mount namespace)
    nsenter -t "${HBD[$1]}" -m findmnt -n -o SOURCE,TARGET,FSTYPE "$MNT" || echo "(nothing on $MNT)"
}
ext4_mount_log() {  # the kernel's lines about mounting ext4 on DEVICE since uptime T0
    local dev=${1#/dev/} t0=$2
    [ -n "$dev" ] || return 0
    dmesg 2>/dev/null | awk -v t="$t0" '{ s = substr($0, 2, index($0, "]") - 2) + 0 } s >= t' \
        | grep -E "EXT4-fs \($dev\): (recovery complete|mounted filesystem)" \
        | sed 's/^\[[^]]*\] /    kernel: /' | tail -2 || true
}

say "network: ha1, ha2 and a client on one bridge (namespaces $PFX-*)"
make_lan

say "replication: resource r0, a 64 MiB disk per node (tmpfs), protocol C, block device $DEV, fencing resource-only"
cat > "$WORK/replica.conf" <<CONF
resource r0 {
    protocol C;
    device-kind auto;   # kernel NBD where the kernel has it, else a FUSE file on a loop device
    net { ping-int 1; ping-timeout 5; timeout 5; connect-int 2; cram-hmac-alg sha256; shared-secret "demo-secret"; }
    disk { resync-rate 100M; fencing resource-only; }
    handlers { fence-peer "$REPO/.venv/bin/replica-fence-peer"; unfence-peer "$REPO/.venv/bin/replica-unfence-peer"; }
    on ha1 { device $DEV; disk $DISKS/ha1.img; meta-disk internal; address 10.0.17.1:7789; export unix:$WORK/ha1/r0.sock; }
    on ha2 { device $DEV; disk $DISKS/ha2.img; meta-disk internal; address 10.0.17.2:7789; export unix:$WORK/ha2/r0.sock; }
}
CONF
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

say "the filesystem, made once, on the first Primary: ext4 on $DEV"
ctl ha1 primary r0
echo "$DEV -> $(readlink "$DEV")"
inns ha1 mkfs.ext4 -q -F -L data -b 4096 -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$DEV"
echo "mkfs.ext4: $(inns ha1 blkid -p -o export "$DEV" | grep -E '^(LABEL|TYPE)=' | tr '\n' ' ')"
ctl ha1 status
ctl ha1 secondary r0
[ -e "$DEV" ] || echo "ha1 is Secondary again: $DEV is gone until a node is Primary"

say "heartbeat: the seed's ha.cf and authkeys (timing shortened), haresources with the filesystem"
for n in ha1 ha2; do
    d=$WORK/$n; mkdir -p "$d/ha.d/resource.d" "$d/run"
    sed -e 's/^keepalive .*/keepalive 200ms/' -e 's/^deadtime .*/deadtime 2/' \
        "$REPO/examples/seed/ha.cf" > "$d/ha.d/ha.cf"
    printf 'initdead 4\nauto_failback on\n' >> "$d/ha.d/ha.cf"
    echo "ha1 $VIP datadisk::r0 Filesystem::$DEV::$MNT::ext4 kvstore" > "$d/ha.d/haresources"
    install -m 600 "$REPO/examples/seed/authkeys" "$d/ha.d/authkeys"
    cat > "$d/ha.d/resource.d/kvstore" <<SCRIPT
#!/bin/sh
# LSB script for the demo database, bound to the VIP, its records in $MNT/records (ext4 on r0)
PID=$d/run/kvstore.pid
case "\$1" in
  start) [ -e \$PID ] && kill -0 \$(cat \$PID) 2>/dev/null && exit 0
         nohup $PYTHON $REPO/scripts/kvstore.py --bind $VIP --node $n \\
             --data-dir $MNT/records >>$d/kvstore.log 2>&1 &
         echo \$! > \$PID; sleep 0.5; kill -0 \$(cat \$PID) ;;
  stop) if [ -e \$PID ] && kill \$(cat \$PID) 2>/dev/null; then
            while kill -0 \$(cat \$PID) 2>/dev/null; do sleep 0.1; done
        fi
        rm -f \$PID; exit 0 ;;
  status) [ -e \$PID ] && kill -0 \$(cat \$PID) 2>/dev/null && { echo running; exit 0; }; echo stopped; exit 3 ;;
esac
SCRIPT
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
echo "ha1's hbd sees: $(mounted_in ha1)"
ctl ha1 status

say "the client stores 20 records through the VIP (each an fsynced file on ext4, then \"stored\")"
for i in $(seq 1 20); do client -X PUT --data "value-$i" "http://$VIP/key$i" >/dev/null; done
echo "client: GET / -> $(client "http://$VIP/")"
echo "client: GET /key7 -> $(client "http://$VIP/key7")"

say "the replication link breaks while both nodes live: ha1 fences ha2 through heartbeat"
ctl ha2 disconnect r0       # ha2 drops the link (as a broken replication network would)
wait_for 15 "ha1's fence-peer handler outdated ha2" state_is ha2 dstate Outdated/DUnknown
grep -h "fence-peer helper returned" "$WORK/ha1/replica/replicad.log" | tail -1 | sed "s/^.*replicad\[[0-9]*\]: /ha1: /"
grep -h "asked to outdate" "$WORK/ha2/hbd.log" | tail -1 | sed "s/^.*INFO: /ha2's hbd: /"
ctl ha2 connect r0
wait_for 30 "ha2 UpToDate again (resync)" state_is ha1 dstate UpToDate/UpToDate
wait_for 10 "unfence-peer ran on ha1" grep -q "unfence-peer r0 on ha2" "$WORK/ha1/hbd.log"
grep -h "unfence-peer r0 on ha2" "$WORK/ha1/hbd.log" | tail -1 | sed "s/^.*INFO: /ha1's hbd: /"

say "ha1 dies: cable pulled, then every process on it killed (as a power cut would)"
ip -n "$PFX-ha1" link set eth0 down
t_death=$(awk '{ print $1 }' /proc/uptime)
for pid in $(ip netns pids "$PFX-ha1"); do kill -9 "$pid" 2>/dev/null || true; done
wait "${HBD[ha1]}" 2>/dev/null || true
unset 'HBD[ha1]'
wait_for 30 "ha2 serves the database" served_by ha2
"$PYTHON" - "$WORK/ha2/run/journal.jsonl" "$WORK/ha2/replica/replicad.log" <<'PY'
import datetime, json, re, sys
dead = [json.loads(l) for l in open(sys.argv[1]) if '"dead"' in l]
dead = [r for r in dead if r.get("event") == "node" and r.get("state") == "dead"][-1]
t_dead = datetime.datetime.fromisoformat(dead["ts"]).astimezone().replace(tzinfo=None)
lines = [l for l in open(sys.argv[2]) if "role Secondary -> Primary" in l]
stamp = re.match(r"(\S+ \S+) ", lines[-1]).group(1)
t_primary = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")
print(f"ha2 Primary {(t_primary - t_dead).total_seconds():.3f} s after hbd declared ha1 dead")
PY
grep -h "cluster manager: peer ha1 is dead" "$WORK/ha2/replica/replicad.log" | tail -1 | sed "s/^.*replicad\[[0-9]*\]: /ha2: /"
echo "ha2's hbd sees: $(mounted_in ha2)"
ext4_mount_log "$(kernel_dev ha2)" "$t_death"   # the journal replayed on mount
echo "client: GET / -> $(client "http://$VIP/")"
missing=0
for i in $(seq 1 20); do [ "$(client "http://$VIP/key$i")" = "value-$i" ] || missing=$((missing + 1)); done
echo "records lost in the failover: $missing of 20"
ctl ha2 status
for i in $(seq 21 25); do client -X PUT --data "value-$i" "http://$VIP/key$i" >/dev/null; done
echo "client stored 5 more records on ha2: GET / -> $(client "http://$VIP/")"

say "ha1 comes back: what its dead replicad left is released, replicad resyncs, heartbeat fails back"
ctl ha1 down --force r0
ip -n "$PFX-ha1" addr del "$VIP/24" dev eth0 2>/dev/null || true
rm -f "$WORK/ha1/run/kvstore.pid"
ip -n "$PFX-ha1" link set eth0 up
ctl ha1 up r0
wait_for 30 "ha1 UpToDate again" state_is ha1 dstate UpToDate/UpToDate
grep -h "resync finished:" "$WORK/ha2/replica/replicad.log" | tail -1 | sed "s/^.*replicad\[[0-9]*\]: //" || true
start_hbd ha1
wait_for 40 "ha1 serves the database again" served_by ha1
echo "ha1's hbd sees: $(mounted_in ha1); ha2's: $(mounted_in ha2)"
echo "client: GET / -> $(client "http://$VIP/")"
echo "client: GET /key23 -> $(client "http://$VIP/key23")"
ctl ha1 status

say "clean stop: heartbeat releases the group (umount, Secondary), replicad goes down on both nodes"
for n in ha1 ha2; do kill -TERM "${HBD[$n]}"; done
for n in ha1 ha2; do wait "${HBD[$n]}" 2>/dev/null || true; unset "HBD[$n]"; done
for n in ha1 ha2; do ctl "$n" down r0; done
if cmp -s -n $((64 * 1024 * 1024 - 1024 * 1024)) "$DISKS/ha1.img" "$DISKS/ha2.img"; then
    echo "the two disks are identical"
else
    echo "the two disks differ"; exit 1
fi
if e2fsck -fn "$DISKS/ha1.img" >"$WORK/e2fsck.log" 2>&1; then
    echo "e2fsck -fn on ha1's disk: clean ($(tail -1 "$WORK/e2fsck.log" | sed 's/^[^:]*: //'))"
else
    echo "e2fsck -fn on ha1's disk: errors"; cat "$WORK/e2fsck.log"; exit 1
fi
[ "$missing" = 0 ] || exit 1
echo "demo finished"
