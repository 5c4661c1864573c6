#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
# demo_hbd.sh: a virtual-IP failover between two hbd nodes in network namespaces (needs root).
#
#   ha1 [eth0 10.0.17.1] --+
#   ha2 [eth0 10.0.17.2] --+-- bridge (namespace "sw") -- client [eth0 10.0.17.100]
#
# Both nodes use the seed's ha.cf and authkeys (timing shortened: keepalive 200ms, deadtime 1 s)
# and a haresources line "ha1 10.0.17.26 httpd" where httpd is a tiny web server bound to the VIP
# that says which node served the page.  Steps: start both, fetch http://10.0.17.26/ from the
# client, kill -9 hbd on ha1 and take its link down, watch ha2 take over, bring ha1 back and
# watch the failback (auto_failback on).  Everything is removed on exit, even on Ctrl-C.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
[ "$(id -u)" = 0 ] || { echo "demo_hbd: needs root (network namespaces)" >&2; exit 77; }
PFX=hbdemo$$
WORK=$(mktemp -d /tmp/hbd-demo.XXXXXX)
VIP=10.0.17.26
declare -A PIDS=()

cleanup() {
    set +e
    for n in "${!PIDS[@]}"; do kill -9 "${PIDS[$n]}" 2>/dev/null; wait "${PIDS[$n]}" 2>/dev/null; done
    remove_lan
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
. "$REPO/scripts/lib/demo_lan.sh"


say "network: two nodes and a client on one bridge"
make_lan

for n in ha1 ha2; do
    d=$WORK/$n; mkdir -p "$d/ha.d/resource.d" "$d/run" "$d/www"
    sed -e 's/^keepalive .*/keepalive 200ms/' -e 's/^deadtime .*/deadtime 1/' \
        "$REPO/examples/seed/ha.cf" > "$d/ha.d/ha.cf"
    printf 'initdead 2\nauto_failback on\n' >> "$d/ha.d/ha.cf"
    echo "ha1 $VIP httpd" > "$d/ha.d/haresources"
    install -m 600 "$REPO/examples/seed/authkeys" "$d/ha.d/authkeys"
    echo "served by $n" > "$d/www/index.html"
    cat > "$d/ha.d/resource.d/httpd" <<EOF
#!/bin/sh
# LSB web server on the VIP (demo)
PID=$d/run/httpd.pid
case "\$1" in
  start) [ -e \$PID ] && kill -0 \$(cat \$PID) 2>/dev/null && exit 0
         cd $d/www && nohup $PYTHON -m http.server 80 --bind $VIP >/dev/null 2>&1 &
         echo \$! > \$PID; sleep 0.3; exit 0 ;;
  stop) [ -e \$PID ] && kill \$(cat \$PID) 2>/dev/null; rm -f \$PID; exit 0 ;;
  status) [ -e \$PID ] && kill -0 \$(cat \$PID) 2>/dev/null && { echo running; exit 0; }; echo stopped; exit 3 ;;
esac
exit 2
EOF
    chmod 755 "$d/ha.d/resource.d/httpd"
done

start_hbd() {
    local n=$1
    ip netns exec "$PFX-$n" env PYTHONPATH="$REPO" "$PYTHON" -m hbd -f --config-dir "$WORK/$n/ha.d" \
        --node "$n" --run-dir "$WORK/$n/run" >>"$WORK/$n/hbd.log" 2>&1 &
    PIDS[$n]=$!
}
hbctl() { local n=$1; shift; PYTHONPATH="$REPO" "$PYTHON" -m hbd.ctl --run-dir "$WORK/$n/run" "$@"; }
fetch() { inns cli curl -s -m 1 "http://$VIP/" || echo "(no answer)"; }
wait_stable() {  # wait_stable NODE RSCSTATUS: until hbctl rscstatus says so (10 s at most)
    for _ in $(seq 100); do [ "$(hbctl "$1" rscstatus)" = "$2" ] && return 0; sleep 0.1; done
    echo "$1 did not reach rscstatus $2"; return 1
}
wait_page() {  # wait_page TEXT SECONDS
    local t0 now; t0=$(date +%s.%N)
    while :; do
        [ "$(inns cli curl -s -m 0.5 "http://$VIP/" 2>/dev/null)" = "$1" ] && break
        now=$(date +%s.%N)
        if awk -v a="$t0" -v b="$now" -v l="$2" 'BEGIN { exit !(b - a > l) }'; then
            echo "timed out waiting for '$1'"; return 1
        fi
        sleep 0.05
    done
    awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "after %.2f s\n", b - a }'
}

say "starting hbd on ha1 and ha2 (hbd -f --node haN --config-dir .../ha.d)"
start_hbd ha1; start_hbd ha2
wait_page "served by ha1" 20
wait_stable ha1 local
hbctl ha1 status | head -8
echo "client: curl http://$VIP/ -> $(fetch)"

say "ha1 fails: kill -9 hbd and pull its cable"
kill -9 "${PIDS[ha1]}"; wait "${PIDS[ha1]}" 2>/dev/null || true; unset 'PIDS[ha1]'
ip -n "$PFX-ha1" link set eth0 down
wait_page "served by ha2" 10
wait_stable ha2 foreign
echo "client: curl http://$VIP/ -> $(fetch)"
hbctl ha2 status | sed -n '1,6p'

say "ha1 reboots and returns (auto_failback on: ha2 hands the group back)"
for pid in $(ip netns pids "$PFX-ha1"); do kill -9 "$pid" 2>/dev/null || true; done
ip -n "$PFX-ha1" addr del "$VIP/24" dev eth0 2>/dev/null || true
rm -f "$WORK/ha1/run/httpd.pid"
ip -n "$PFX-ha1" link set eth0 up
start_hbd ha1
wait_page "served by ha1" 20
wait_stable ha1 local
echo "client: curl http://$VIP/ -> $(fetch)"

say "planned maintenance: hbctl standby on ha1"
hbctl ha1 standby
wait_page "served by ha2" 10
wait_stable ha2 foreign
echo "client: curl http://$VIP/ -> $(fetch)"
say "and back: hbctl takeover on ha1"
hbctl ha1 takeover
wait_page "served by ha1" 10

say "journal of ha2 (JSON lines, $WORK/ha2/run/journal.jsonl)"
tail -n 6 "$WORK/ha2/run/journal.jsonl"

say "clean stop (SIGTERM): resources released, peer told with shutdone"
for n in ha1 ha2; do kill -TERM "${PIDS[$n]}"; done
for n in ha1 ha2; do wait "${PIDS[$n]}" 2>/dev/null || true; unset "PIDS[$n]"; done
echo "demo finished"
