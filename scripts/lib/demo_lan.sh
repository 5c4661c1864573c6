# SPDX-License-Identifier: GPL-2.0-or-later
# Sourced by the demo scripts: a small LAN of network namespaces on one machine.
#
#   $PFX-ha1 [eth0 10.0.17.1] --+
#   $PFX-ha2 [eth0 10.0.17.2] --+-- br0 in $PFX-sw -- $PFX-cli [eth0 10.0.17.100]
#
# The caller sets PFX (unique per run) before calling make_lan / remove_lan.

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
inns() { local n=$1; shift; ip netns exec "$PFX-$n" "$@"; }

make_lan() {
    local ns n a i=0
    for ns in ha1 ha2 cli sw; do ip netns add "$PFX-$ns"; ip -n "$PFX-$ns" link set lo up; done
    ip -n "$PFX-sw" link add br0 type bridge && ip -n "$PFX-sw" link set br0 up
    for n in ha1 ha2 cli; do
        case $n in ha1) a=10.0.17.1;; ha2) a=10.0.17.2;; cli) a=10.0.17.100;; esac
        ip -n "$PFX-sw" link add "p$i" type veth peer name eth0 netns "$PFX-$n"
        ip -n "$PFX-sw" link set "p$i" master br0 up
        ip -n "$PFX-$n" addr add "$a/24" dev eth0 && ip -n "$PFX-$n" link set eth0 up
        i=$((i + 1))
    done
}

# Every process left in our namespaces is one this demo started: kill them, delete the namespaces.
remove_lan() {
    local ns pid
    for ns in ha1 ha2 cli sw; do
        for pid in $(ip netns pids "$PFX-$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
        ip netns del "$PFX-$ns" 2>/dev/null
    done
    return 0
}
