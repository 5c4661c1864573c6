#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
# Set up a fresh Debian 12 machine for replica-ha, idempotently, in two steps (the Makefile's
# lists say which packages; README "Two commands" explains them):
#   runtime  (`make deps`): the apt packages named (only those missing: no apt-get update
#            otherwise), a virtualenv with the project installed editable (this builds the C
#            extension) and setup.py's install_requires, the same as `make install` puts in place;
#   test     (`make test-deps`): the apt packages named, the pip packages in $PIP_PACKAGES
#            (pytest, hypothesis; ruff and mypy for `make lint`), libnbd's Python binding
#            (Debian's python3-libnbd) made importable from the venv, and the runtime directories
#            the original heartbeat daemon needs for the compatibility tests.
# usage: scripts/deps.sh runtime|test PYTHON VENV PACKAGE...
set -euo pipefail
mode=$1 python=$2 venv=$3
shift 3
case $mode in runtime|test) ;; *) echo "deps: usage: deps.sh runtime|test PYTHON VENV PACKAGE..." >&2; exit 2 ;; esac

missing=()
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "deps ($mode): installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Packages with a daemon (nginx, mariadb-server, heartbeat...) must not start it on this
    # machine: the demos and tests run their own, in namespaces. policy-rc.d (invoke-rc.d and
    # deb-systemd-invoke ask it) says no while apt runs, unless the machine has one already.
    policy=
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\n# replica-ha scripts/deps.sh: no service starts during this install\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [[ -n $policy ]]; then rm -f "$policy"; trap - EXIT; fi
fi

if [[ $mode == runtime ]]; then
    if [[ ! -x $venv/bin/python ]]; then
        echo "deps: creating $venv with $($python --version)"
        "$python" -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
    # cffi builds the extension (no build isolation); the rest comes from install_requires
    "$venv/bin/python" -m pip install -q cffi
    "$venv/bin/python" -m pip install -q --no-build-isolation -e .
    "$venv/bin/python" -c 'import replica._mirror' && echo "deps: C extension built"
    exit 0
fi

[[ -x $venv/bin/python ]] || { echo "deps: $venv does not exist: run 'make deps' first" >&2; exit 1; }
# shellcheck disable=SC2086  # a list of words on purpose
[[ -z ${PIP_PACKAGES:-} ]] || "$venv/bin/python" -m pip install -q $PIP_PACKAGES

# Debian's heartbeat keeps runtime directories under /run (tmpfiles.d): after a reboot without
# systemd they are gone, and the real-daemon tests copy them. Recreate them when missing.
if [[ -f /usr/lib/tmpfiles.d/heartbeat.conf && ! -d /run/heartbeat ]]; then
    systemd-tmpfiles --create /usr/lib/tmpfiles.d/heartbeat.conf 2>/dev/null || {
        install -d -m 0750 -o hacluster -g haclient /run/heartbeat /run/heartbeat/ccm \
            /run/heartbeat/crm /run/heartbeat/dopd /run/crm
    }
fi

# python3-libnbd installs for Debian's python3; the module is ABI-compatible with any CPython of
# the same minor version, so link it into the venv when the versions match.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
abi=$("$venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
for f in /usr/lib/python3/dist-packages/nbd.py /usr/lib/python3/dist-packages/libnbdmod.cpython-"$abi"-*.so; do
    [[ -e $f ]] && ln -sf "$f" "$site/"
done
"$venv/bin/python" -c 'import nbd' 2>/dev/null && echo "deps: libnbd Python binding importable" \
    || echo "deps: libnbd Python binding not importable from $venv (tests using it will skip)"
