# SPDX-License-Identifier: GPL-2.0-or-later
# Sourced by the demo scripts: a small LAN of network namespaces on one machine, built and removed
# by the one lab (scripts/lab.py, `python -m scripts.lab`) that the tests use too.
#
#   $PFX-ha1 [eth0 10.0.17.1] --+
#   $PFX-ha2 [eth0 10.0.17.2] --+-- br0 in $PFX-sw -- $PFX-cli [eth0 10.0.17.100]
#
# The caller sets REPO and PFX (unique per run) before calling make_lan / remove_lan, and PYTHON
# if it is not the project's venv.

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
inns() { local n=$1; shift; ip netns exec "$PFX-$n" "$@"; }

_lab() { PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-$REPO/.venv/bin/python}" -m scripts.lab "$@"; }

make_lan() { _lab up "$PFX" ha1=10.0.17.1/24 ha2=10.0.17.2/24 cli=10.0.17.100/24; }

# Every process left in our namespaces is one this demo started: kill them, delete the namespaces.
remove_lan() { _lab down "$PFX" || true; }
