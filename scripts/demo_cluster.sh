#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
# demo_cluster.sh: `make demo` — the seed's cluster, "ha1 VIP datadisk httpd mysql", with Debian's
# nginx and MariaDB on a replicated ext4, on this one machine (root), in about a minute.
#
#   ha1 [eth0 10.0.17.1] --+                                   replicad r0 on both nodes,
#   ha2 [eth0 10.0.17.2] --+-- bridge -- client [10.0.17.100]   protocol C over eth0:7789
#
#   haresources: ha1 10.0.17.26 datadisk::r0 Filesystem::/dev/drbd0::/data::ext4 nginx mariadb
#     10.0.17.26  the virtual IP (IPaddr, gratuitous ARP)
#     datadisk    promotes the replicated disk (replicactl primary): /dev/drbd0 appears
#     Filesystem  mounts ext4 from /dev/drbd0 on /data (after a failover the journal replays)
#     nginx       /data/www: a page naming the serving node, WebDAV PUT uploads in /data/www/uploads
#     mariadb     datadir /data/mysql, listening on the virtual IP
#   (examples/demo: the two resource scripts, nginx.conf, my.cnf, mon.cf, the mariadb monitor)
#
# A client commits rows (mariadb client, a new connection per row) and uploads files (curl PUT)
# without a pause, logging each acknowledgement; hbmon on both nodes watches nginx and MariaDB
# (restart twice, then hand the group over). ha1 is power-failed mid-stream: its link cut, every
# process in its namespace SIGKILLed. The demo prints the timeline from the daemons' own logs,
# checks on ha2 that every acknowledged row and file is there, brings ha1 back (resync, auto
# failback), checks again, and ends with a summary.
#
#   demo_cluster.sh            run it, clean up everything (also on Ctrl-C or an error)
#   demo_cluster.sh --keep     leave the cluster running and print how to poke at it
#   demo_cluster.sh --down     remove a cluster left by --keep
#
# Each node's hbd runs under `ip netns exec`, which gives it a mount namespace of its own: /data
# is mounted there only (as on a machine of its own) and goes away with the node's processes;
# hbmon joins that namespace (it restarts services that must see /data). /dev/drbd0 is one name
# on this machine: runs of this script and of demo_failover.sh take turns (a lock), and a cluster
# kept with --keep holds it until --down.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=$REPO/.venv/bin/python
STATE=/run/replica-ha-demo.env        # what --down needs to find a cluster kept with --keep
LOCK=/run/lock/replica-ha-drbd0.lock
usage() { echo "usage: $0 [--keep | --down]" >&2; exit 2; }
MODE=run KEEP=
case ${1:-} in
    "") ;;
    --keep) KEEP=1 ;;
    --down) MODE=down ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) usage ;;
esac
[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces, loop devices, mounts)" >&2; exit 77; }
missing=()
for c in nginx mariadbd mariadb mariadb-install-db mariadb-admin my_print_defaults curl mkfs.ext4 chattr \
         e2fsck nsenter findmnt perl; do
    command -v "$c" >/dev/null || missing+=("$c")
done
if [ "$MODE" = run ] && ((${#missing[@]})); then
    echo "demo: missing ${missing[*]}: \`make demo\` installs them (make test-deps; Debian: nginx mariadb-server)" >&2
    exit 77
fi
T_START=$(date +%s.%N)
VIP=10.0.17.26
DEV=/dev/drbd0
MNT=/data
PFX= WORK= DISKS= MADE_MNT= CLEANED= CLIENT=
declare -A HBD=() HBMON=()

. "$REPO/scripts/lib/demo_lan.sh"

cleanup() {   # idempotent; everything this demo made, found by name (also from --down)
    [ -n "$CLEANED" ] && return 0
    CLEANED=1
    set +e
    [ -n "$PFX" ] || return 0
    remove_lan     # kills every process left in our namespaces: hbd, hbmon, nginx, mariadbd, replicad,
                   # the client; their mount namespaces, and /data in them, go with them
    for n in ha1 ha2; do   # what a killed replicad left: loop device, FUSE mount, /dev links
        "$REPO/.venv/bin/replicactl" --config "$WORK/replica.conf" --node "$n" \
            --run-dir "$WORK/$n/replica" down --force r0 >/dev/null 2>&1
    done
    wait 2>/dev/null
    [ -n "$MADE_MNT" ] && rmdir "$MNT" 2>/dev/null
    rm -rf "$DISKS"
    if [ -n "${KEEP_DEMO_LOGS:-}" ]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
    rm -f "$STATE"
}

# One run at a time (/dev/drbd0): the lock is fd 9 of this shell, so that Ctrl-C reaches this
# script itself (under flock(1), flock would die at once and leave the cleanup to run behind the
# prompt). Whatever may outlive the script (with --keep) is started with fd 9 closed: `9>&-`.
if [ "$MODE" = run ]; then
    mkdir -p "$(dirname "$LOCK")"
    exec 9>"$LOCK"
    flock -w 600 9 || { echo "demo: another demo run holds $LOCK" >&2; exit 1; }
fi
if [ "$MODE" = down ]; then
    [ -r "$STATE" ] || { echo "demo: no cluster kept with --keep ($STATE does not exist)"; exit 0; }
    . "$STATE"
    echo "demo: removing the cluster kept with --keep (namespaces $PFX-*, $WORK)"
    cleanup
    echo "demo: removed"
    exit 0
fi
if [ -r "$STATE" ]; then
    kept=$(. "$STATE"; echo "$PFX")
    if ip netns list | grep -q "^$kept-"; then
        echo "demo: a cluster kept with --keep is running (namespaces $kept-*): \`make demo ARGS=--down\` first" >&2
        exit 1
    fi
    rm -f "$STATE"     # left by a machine that rebooted: nothing of it remains
fi

PFX=dm$$
WORK=$(mktemp -d /tmp/dm-demo.XXXXXX)
DISKS=$(mktemp -d /dev/shm/dm-demo.XXXXXX)
chmod 755 "$WORK"      # mysql and www-data reach their run directories under it
trap cleanup EXIT
trap 'echo; echo "demo: interrupted: cleaning up"; cleanup; exit 130' INT TERM
if [ ! -e "$MNT" ]; then mkdir "$MNT"; MADE_MNT=1; fi

ctl() { local n=$1; shift; inns "$n" env HBD_RUN_DIR="$WORK/$n/run" "$REPO/.venv/bin/replicactl" \
            --config "$WORK/replica.conf" --node "$n" --run-dir "$WORK/$n/replica" "$@" 9>&-; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: until COMMAND succeeds
    local limit=$1 what=$2 t0; shift 2; t0=$(now)
    until "$@" >/dev/null 2>&1; do
        if awk -v a="$t0" -v b="$(now)" -v l="$limit" 'BEGIN { exit !(b - a > l) }'; then
            echo "timed out after $limit s waiting for: $what" >&2; return 1
        fi
        sleep 0.1
    done
    echo "$what: after $(elapsed "$t0") s"
}
sql() { inns cli env MYSQL_PWD=demo mariadb --no-defaults --connect-timeout=1 -h "$VIP" -u demo -N -B "$@" demo; }
page() { inns cli curl -s -m 2 "http://$VIP/" || echo "(no answer)"; }
served_by() {   # NODE serves both: the page says so and the database is that node's
    [[ $(page) == *"served by $1"* ]] && [ "$(sql -e 'SELECT @@report_host' 2>/dev/null)" = "$1" ]
}
state_is() { [ "$(ctl "$1" "$2" r0 2>/dev/null)" = "$3" ]; }   # state_is NODE cstate|dstate|role VALUE
kernel_dev() {  # the kernel device behind NODE's $DEV (status --json "device"), or nothing
    ctl "$1" status --json 2>/dev/null | "$PYTHON" -c \
        'import json, sys; d = (json.load(sys.stdin) or [{}])[0].get("device") or {}; print(d.get("kernel") or "")' \
        | sed 's#^/dev/##'
}
alive() { local st; st=$(sed -n 's/^.*) \(.\).*/\1/p' "/proc/$1/stat" 2>/dev/null); [ -n "$st" ] && [ "$st" != Z ]; }
stop_pids() {   # stop_pids SECONDS PID...: SIGTERM, wait until they are gone (hbd releases its group)
    local limit=$1 i=0 p; shift
    kill -TERM "$@" 2>/dev/null || true
    for p in "$@"; do
        while alive "$p"; do
            i=$((i + 1)); [ $i -le $((limit * 10)) ] || { echo "pid $p still running after $limit s" >&2; return 1; }
            sleep 0.1
        done
    done
}
mounted_in() {  # what NODE's hbd sees mounted on $MNT (its own mount namespace)
    nsenter -t "${HBD[$1]}" -m findmnt -n -o SOURCE,TARGET,FSTYPE "$MNT" || echo "(nothing on $MNT)"
}
client_counts() {   # "R rows committed, F files uploaded, X failed attempts" so far
    "$PYTHON" - "$WORK/client" <<'PY'
import json, sys
n = {"rows": [0, 0], "files": [0, 0]}
for k in n:
    for line in open(f"{sys.argv[1]}/{k}.jsonl"):
        try:
            n[k][0 if json.loads(line)["ok"] else 1] += 1
        except ValueError:
            pass
print(f"{n['rows'][0]} rows committed, {n['files'][0]} files uploaded, {n['rows'][1] + n['files'][1]} failed attempts")
PY
}
report() { "$PYTHON" "$REPO/scripts/lib/demo_report.py" "$@" --work "$WORK"; }
verify_on() {   # verify_on NODE: every acknowledgement so far is on NODE (the database it serves, its /data)
    local n=$1 cut; cut=$(now)
    sql -e "SELECT @@report_host; SELECT id, SHA2(payload, 256), node FROM ledger" > "$WORK/$n-rows.tsv" || true
    nsenter -t "${HBD[$n]}" -m sh -c "cd $MNT/www/uploads && find . -maxdepth 1 -name '*.bin' -exec sha256sum {} +" \
        > "$WORK/$n-files.txt" || true
    report verify --node "$n" --until "$cut" || true   # judged at the end, after the summary
}

say "network: ha1, ha2 and a client on one bridge (namespaces $PFX-*)"
make_lan

say "replication: r0, a 256 MiB disk per node (tmpfs), protocol C, block device $DEV, fencing resource-only"
cat > "$WORK/replica.conf" <<CONF
resource r0 {
    protocol C;
    device-kind auto;   # kernel NBD where the kernel has it, else a FUSE file on a loop device
    net { ping-int 1; ping-timeout 5; timeout 5; connect-int 2; cram-hmac-alg sha256; shared-secret "demo-secret"; }
    # c-min-rate: the client writes on through the resync, and DRBD's throttle would hold the
    # resync to its default 250 KiB/s while the application is busy (minutes for ha1's 64 MiB)
    disk { resync-rate 200M; c-min-rate 50M; fencing resource-only; }
    handlers { fence-peer "$REPO/.venv/bin/replica-fence-peer"; unfence-peer "$REPO/.venv/bin/replica-unfence-peer"; }
    on ha1 { device $DEV; disk $DISKS/ha1.img; meta-disk internal; address 10.0.17.1:7789; export unix:$WORK/ha1/r0.sock; }
    on ha2 { device $DEV; disk $DISKS/ha2.img; meta-disk internal; address 10.0.17.2:7789; export unix:$WORK/ha2/r0.sock; }
}
CONF
cat "$WORK/replica.conf"
for n in ha1 ha2; do
    mkdir -p "$WORK/$n/run"
    truncate -s 256M "$DISKS/$n.img"
    ctl "$n" create-md r0 >/dev/null
done
for n in ha1 ha2; do ctl "$n" up r0; done
wait_for 20 "connected" state_is ha1 cstate Connected
ctl ha1 new-current-uuid --clear-bitmap r0 >/dev/null   # two blank disks: no initial sync needed
wait_for 10 "UpToDate on both" state_is ha1 dstate UpToDate/UpToDate

say "heartbeat and hbmon: the seed's ha.cf and authkeys (timing shortened), its haresources line with real services"
for n in ha1 ha2; do
    d=$WORK/$n
    mkdir -p "$d/ha.d/resource.d" "$d/ha.d/mon.d" "$d/mon" "$d/run/mysqld"
    chown mysql:mysql "$d/run/mysqld"
    sed -e 's/^keepalive .*/keepalive 200ms/' -e 's/^deadtime .*/deadtime 2/' \
        "$REPO/examples/seed/ha.cf" > "$d/ha.d/ha.cf"
    printf 'initdead 4\nauto_failback on\n' >> "$d/ha.d/ha.cf"
    echo "ha1 $VIP datadisk::r0 Filesystem::$DEV::$MNT::ext4 nginx mariadb" > "$d/ha.d/haresources"
    install -m 600 "$REPO/examples/seed/authkeys" "$d/ha.d/authkeys"
    install -m 755 "$REPO"/examples/demo/resource.d/* "$d/ha.d/resource.d/"
    install -m 755 "$REPO"/examples/demo/mon.d/* "$d/ha.d/mon.d/"
    for f in nginx.conf my.cnf mon.cf; do
        sed -e "s#@NODE@#$n#g" -e "s#@VIP@#$VIP#g" -e "s#@RUN@#$d/run#g" -e "s#@HA_DIR@#$d/ha.d#g" \
            "$REPO/examples/demo/$f" > "$d/ha.d/$f"
    done
    mv "$d/ha.d/mon.cf" "$d/mon/mon.cf"
done
echo "--- haresources"; cat "$WORK/ha1/ha.d/haresources"
echo "--- resource scripts (ha.d/resource.d): $(ls "$WORK/ha1/ha.d/resource.d" | tr '\n' ' ')"
echo "--- hbmon (mon.cf): $(grep -E '^ *(service|monitor|restart) ' "$WORK/ha1/mon/mon.cf" | sed 's/^ *//' | paste -sd';' | sed 's/;/; /g')"

say "the data, made once on the first Primary: ext4 on $DEV, the web root, the MariaDB datadir"
ctl ha1 primary r0
inns ha1 mkfs.ext4 -q -F -L data -b 4096 -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$DEV"
t=$(now)
# one command, one private mount namespace: mount, fill, unmount
inns ha1 env D="$WORK/ha1" MNT="$MNT" DEV="$DEV" EX="$REPO/examples/demo" bash -euo pipefail -c '
    mount "$DEV" "$MNT"; trap "umount $MNT" EXIT
    mkdir "$MNT/www"
    chattr +S "$MNT/www"     # synchronous updates: files and directories made below inherit it
    mkdir "$MNT/www/uploads" "$MNT/www/.tmp"
    chown www-data:www-data "$MNT/www/uploads" "$MNT/www/.tmp"
    install -m 644 "$EX/index.html" "$MNT/www/index.html"
    install -d -o mysql -g mysql -m 750 "$MNT/mysql"
    mariadb-install-db --defaults-file="$D/ha.d/my.cnf" --skip-test-db \
        --auth-root-authentication-method=socket >"$D/run/mysqld/install.log" 2>&1 \
        || { tail -5 "$D/run/mysqld/install.log"; exit 1; }
    mariadbd --defaults-file="$D/ha.d/my.cnf" --bootstrap --skip-networking <"$EX/setup.sql" \
        >>"$D/run/mysqld/install.log" 2>&1 || { tail -5 "$D/run/mysqld/install.log"; exit 1; }
    echo "/data: $(ls "$MNT" | tr "\n" " ")($(df -h --output=used "$MNT" | tail -1 | tr -d " ") used); www: chattr $(lsattr -d "$MNT/www" | cut -d" " -f1)"
'
echo "mariadb-install-db and the demo database (table ledger): $(elapsed "$t") s"
ctl ha1 secondary r0

start_node() {   # hbd in the node's namespace, hbmon in hbd's mount namespace
    local n=$1 d=$WORK/$1
    ip netns exec "$PFX-$n" env REPLICA_CONFIG="$WORK/replica.conf" REPLICA_NODE="$n" \
        REPLICA_RUN_DIR="$d/replica" REPLICACTL="$REPO/.venv/bin/replicactl" \
        "$PYTHON" -m hbd -f --config-dir "$d/ha.d" --node "$n" --run-dir "$d/run" >>"$d/hbd.log" 2>&1 9>&- &
    HBD[$n]=$!
    disown   # not a job of this shell: no "Killed" from bash at the power failure
    sleep 0.2   # its mount namespace exists once `ip netns exec` has exec'd hbd
    nsenter -t "${HBD[$n]}" -m -n env HBD_CONFIG_DIR="$d/ha.d" HBD_RUN_DIR="$d/run" \
        "$PYTHON" -m hbmon -f --config-dir "$d/mon" --node "$n" --run-dir "$d/run" \
        --ha-dir "$d/ha.d" --hbd-run-dir "$d/run" >>"$d/hbmon.log" 2>&1 9>&- &
    HBMON[$n]=$!
    disown
}
say "start: hbd and hbmon on both nodes; ha1 takes the group"
start_node ha1; start_node ha2
wait_for 60 "ha1 serves the page and the database on $VIP" served_by ha1
echo "ha1's hbd sees: $(mounted_in ha1)"
echo "client: GET / -> $(page | grep -o '<h1>.*</h1>' | sed 's/<[^>]*>//g')"

say "the client commits rows and uploads files through $VIP, without a pause"
ip netns exec "$PFX-cli" "$PYTHON" "$REPO/scripts/lib/demo_client.py" --vip "$VIP" --out "$WORK/client" \
    >"$WORK/client.log" 2>&1 9>&- &
CLIENT=$!    # the client itself (ip netns exec execs it): SIGTERM lets it finish the operations under way
disown
T_CLIENT=$(now)
sleep 6
echo "client, after $(elapsed "$T_CLIENT") s: $(client_counts)"

say "power failure of ha1: its link cut, every process in its namespace SIGKILLed"
T0=$(now)
echo "replica-ha demo: power failure of ha1" > /dev/kmsg    # the kernel's timeline starts here
ip -n "$PFX-ha1" link set eth0 down
killed=0
for _ in 1 2 3 4 5; do    # a process forked meanwhile is in the next round
    pids=$(ip netns pids "$PFX-ha1")
    [ -n "$pids" ] || break
    for pid in $pids; do kill -9 "$pid" 2>/dev/null && killed=$((killed + 1)); done
    sleep 0.05
done
echo "SIGKILLed $killed processes in $PFX-ha1 (hbd, hbmon, replicad, nginx, mariadbd...)"
unset 'HBD[ha1]' 'HBMON[ha1]'
wait_for 60 "ha2 serves the page and the database" served_by ha2
sleep 3    # the client goes on, now on ha2

say "timeline (seconds from the power failure; from hbd's journal, replicad's log, the kernel, mariadbd, the client)"
dmesg > "$WORK/dmesg.txt" 2>/dev/null || true
report timeline --dead ha1 --survivor ha2 --t0 "$T0" --kernel-dev "$(kernel_dev ha2)"
echo "ha2's hbd sees: $(mounted_in ha2)"
ctl ha2 status

say "on ha2: every acknowledged row and file is there (the client goes on meanwhile)"
verify_on ha2

say "ha1 comes back: a reboot's clean slate, replicad resyncs, heartbeat fails back (auto_failback on)"
ctl ha1 down --force r0 >/dev/null          # what its dead replicad left: loop device, FUSE mount
ip -n "$PFX-ha1" addr del "$VIP/24" dev eth0 2>/dev/null || true
rm -rf "$WORK/ha1/run/nginx" "$WORK/ha1/run/mysqld"/*.pid "$WORK/ha1/run/mysqld"/*.sock
ip -n "$PFX-ha1" link set eth0 up
ctl ha1 up r0
wait_for 60 "ha1 UpToDate again (resync from ha2)" state_is ha1 dstate UpToDate/UpToDate
ctl ha2 status --json > "$WORK/resync.json"
"$PYTHON" - "$WORK/resync.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))[0].get("last_resync") or {}
b, s = r.get("bytes", 0), r.get("seconds", 0)
print(f"resync ha2 -> ha1: {b} bytes ({b / 2**20:.1f} MiB) in {s:.2f} s (ha2's replicactl status --json: last_resync):"
      " what ha2 wrote meanwhile and what ha1's activity log says it may have written alone")
PY
start_node ha1
wait_for 60 "ha1 serves the page and the database again" served_by ha1
echo "ha1's hbd sees: $(mounted_in ha1); ha2's: $(mounted_in ha2)"
sleep 3    # the client goes on, back on ha1

say "the client stops; on ha1: every acknowledged row and file is there"
stop_pids 20 "$CLIENT"; CLIENT=
T_STOP=$(now)
echo "client, after $(elapsed "$T_CLIENT") s: $(client_counts)"
verify_on ha1
iso() { date -u -d "@$1" +%Y-%m-%dT%H:%M:%S.%N+00:00; }
# both nodes' journals, hbd's and hbmon's, merged (ha1's first-hand records win for its groups)
"$REPO/.venv/bin/hbctl" --run-dir "$WORK/ha2/run" availability --hbmon-run-dir "$WORK/ha2/run" \
    --journal "$WORK/ha1/run/journal.jsonl" --journal "$WORK/ha1/run/hbmon.jsonl" \
    --since "$(iso "$T_CLIENT")" --until "$(iso "$T_STOP")" --json > "$WORK/availability.json"

extra=()
if [ -z "$KEEP" ]; then
    say "clean stop: heartbeat releases the group (mariadb, nginx, umount, Secondary), replicad goes down"
    stop_pids 120 "${HBMON[ha1]}" "${HBD[ha1]}" "${HBMON[ha2]}" "${HBD[ha2]}"
    for n in ha1 ha2; do ctl "$n" down r0; done
    if cmp -s -n $((255 * 1024 * 1024)) "$DISKS/ha1.img" "$DISKS/ha2.img"; then
        extra+=(--line "disks=ha1 and ha2 identical after the clean stop")
    else
        extra+=(--line "disks=ha1 and ha2 DIFFER after the clean stop")
    fi
    if e2fsck -fn "$DISKS/ha1.img" >"$WORK/e2fsck.log" 2>&1; then
        extra+=(--line "e2fsck -fn=clean ($(tail -1 "$WORK/e2fsck.log" | sed 's/^[^:]*: //'))")
    else
        extra+=(--line "e2fsck -fn=ERRORS"); cat "$WORK/e2fsck.log"
    fi
fi

say "summary"
report summary --total-s "$(elapsed "$T_START")" "${extra[@]}"

if [ -n "$KEEP" ]; then
    cat > "$STATE" <<EOF
PFX=$PFX
WORK=$WORK
DISKS=$DISKS
MADE_MNT=$MADE_MNT
EOF
    trap - EXIT INT TERM
    c="ip netns exec $PFX-cli"
    cat <<EOF

The cluster keeps running (ha1 serves; logs and configs in $WORK):
  $c curl -s http://$VIP/
  $c curl -s -T /etc/os-release http://$VIP/uploads/os-release
  $c env MYSQL_PWD=demo mariadb -h $VIP -u demo demo -e 'SELECT node, COUNT(*) FROM ledger GROUP BY node'
  ip netns exec $PFX-ha1 $REPO/.venv/bin/replicactl --config $WORK/replica.conf --node ha1 --run-dir $WORK/ha1/replica status
  $REPO/.venv/bin/hbctl --run-dir $WORK/ha1/run status
  $REPO/.venv/bin/hbctl --run-dir $WORK/ha1/run standby      # hand the group to ha2 (then: takeover)
  kill \$(cat $WORK/ha1/run/nginx/nginx.pid)   # hbmon restarts it (see $WORK/ha1/hbmon.log)
  ip netns exec $PFX-ha1 bash     # a shell on ha1 (nsenter -t \$(cat $WORK/ha1/run/nginx/nginx.pid) -m sees its /data)
Tear it down: make demo ARGS=--down   (or: bash $REPO/scripts/demo_cluster.sh --down)
EOF
    exit 0
fi
ok=1
for n in ha2 ha1; do
    "$PYTHON" -c 'import json, sys; v = json.load(open(sys.argv[1])); sys.exit(v["rows"]["lost"] or v["files"]["lost"])' \
        "$WORK/report-verify-$n.json" || ok=
done
[ -n "$ok" ] || { echo "demo: acknowledged writes were lost" >&2; exit 1; }
echo "demo finished"
