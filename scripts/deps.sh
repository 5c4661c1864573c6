#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
# Set up a fresh Debian 12 machine for replica-ha, idempotently:
#   1. the apt packages named on the command line (only those missing: no apt-get update otherwise),
#   2. a virtualenv with the project installed editable (this builds the C extension) and the
#      test-time tools (pytest, hypothesis; ruff and mypy for `make lint`),
#   3. libnbd's Python binding (Debian's python3-libnbd) made importable from the venv.
# usage: scripts/deps.sh PYTHON VENV PACKAGE...
set -euo pipefail
python=$1 venv=$2
shift 2

missing=()
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "deps: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's heartbeat keeps runtime directories under /run (tmpfiles.d): after a reboot without
# systemd they are gone, and the real-daemon tests copy them. Recreate them when missing.
if [[ -f /usr/lib/tmpfiles.d/heartbeat.conf && ! -d /run/heartbeat ]]; then
    systemd-tmpfiles --create /usr/lib/tmpfiles.d/heartbeat.conf 2>/dev/null || {
        install -d -m 0750 -o hacluster -g haclient /run/heartbeat /run/heartbeat/ccm \
            /run/heartbeat/crm /run/heartbeat/dopd /run/crm
    }
fi

if [[ ! -x $venv/bin/python ]]; then
    echo "deps: creating $venv with $($python --version)"
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
# Linters pinned: a new release with new rules must not turn a clean tree red by itself.
"$venv/bin/python" -m pip install -q cffi pytest pytest-timeout hypothesis cryptography pyroute2 rich prometheus-client ruff==0.17.6 mypy==2.4.1
"$venv/bin/python" -m pip install -q --no-build-isolation -e .

# python3-libnbd installs for Debian's python3; the module is ABI-compatible with any CPython of
# the same minor version, so link it into the venv when the versions match.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
abi=$("$venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
for f in /usr/lib/python3/dist-packages/nbd.py /usr/lib/python3/dist-packages/libnbdmod.cpython-"$abi"-*.so; do
    [[ -e $f ]] && ln -sf "$f" "$site/"
done
"$venv/bin/python" -c 'import nbd' 2>/dev/null && echo "deps: libnbd Python binding importable" \
    || echo "deps: libnbd Python binding not importable from $venv (tests using it will skip)"
"$venv/bin/python" -c 'import replica._mirror' && echo "deps: C extension built"
