#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
# `make install`: put replica-ha in place under PREFIX (staged under DESTDIR for packaging).
#   PREFIX/lib/replica-ha       a virtualenv with the package, its C extension and dependencies
#                               (Debian 12's python3 refuses pip installs into the system, PEP 668);
#                               hbd's resource scripts are in its share/replica-ha/resource.d
#   PREFIX/bin/replicad ...     links to the virtualenv's commands
#   UNITDIR/*.service           packaging/systemd with the paths filled in
#   SYSCONFDIR/replica/replica.conf   examples/replica.conf, unless one is there already
#   PREFIX/share/doc/replica-ha README and the example configurations (ha.d, replica.conf)
# With DESTDIR the virtualenv is built in DESTDIR and its scripts are rewritten to run from PREFIX
# (as dh-virtualenv does): copy the tree to / and it works.
# usage: scripts/install.sh PYTHON   (PREFIX, DESTDIR, UNITDIR, SYSCONFDIR from the environment)
set -euo pipefail
python=$1
: "${PREFIX:=/usr/local}" "${DESTDIR:=}" "${UNITDIR:=/lib/systemd/system}" "${SYSCONFDIR:=/etc}"
[[ $PREFIX == /* ]] || { echo "install: PREFIX must be an absolute path, not '$PREFIX'" >&2; exit 2; }
libdir=$PREFIX/lib/replica-ha bindir=$PREFIX/bin docdir=$PREFIX/share/doc/replica-ha
commands=(replicad replicactl hbd hbctl hbmon replica-fence-peer replica-unfence-peer
          replica-crm-fence-peer replica-crm-unfence-peer)
venv=$DESTDIR$libdir

[[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel cffi
# a regular (not editable) install: the package and its C extension are copied into the venv,
# with setup.py's install_requires, the runtime packages `make deps` installs too (none of the
# test tools: tests/unit/test_deps_lists.py)
"$venv/bin/python" -m pip install -q --no-build-isolation .
if [[ -n $DESTDIR ]]; then
    for f in "$venv"/bin/*; do
        [[ -f $f && ! -L $f ]] || continue
        if head -c 2 "$f" | grep -q '^#!'; then sed -i "1s|^#!$DESTDIR/|#!/|" "$f"; fi
        grep -qF "$DESTDIR" "$f" && sed -i "s|$DESTDIR$libdir|$libdir|g" "$f"
    done
fi

install -d "$DESTDIR$bindir"
for c in "${commands[@]}"; do
    [[ -x $venv/bin/$c ]] || { echo "install: $venv/bin/$c is missing" >&2; exit 1; }
    ln -sfn "$libdir/bin/$c" "$DESTDIR$bindir/$c"
done

install -d "$DESTDIR$UNITDIR"
for unit in packaging/systemd/*.service; do
    sed -e "s|@BINDIR@|$bindir|g" -e "s|@DOCDIR@|$docdir|g" "$unit" >"$DESTDIR$UNITDIR/${unit##*/}"
    chmod 644 "$DESTDIR$UNITDIR/${unit##*/}"
done

install -d -m 755 "$DESTDIR$SYSCONFDIR/replica"
if [[ -e $DESTDIR$SYSCONFDIR/replica/replica.conf ]]; then
    echo "install: $DESTDIR$SYSCONFDIR/replica/replica.conf exists: left as it is"
else
    install -m 644 examples/replica.conf "$DESTDIR$SYSCONFDIR/replica/replica.conf"
fi

install -d "$DESTDIR$docdir/examples/ha.d"
install -m 644 README.md "$DESTDIR$docdir/"
install -m 644 examples/replica.conf "$DESTDIR$docdir/examples/"
install -m 644 examples/seed/ha.cf examples/seed/haresources "$DESTDIR$docdir/examples/ha.d/"
install -m 600 examples/seed/authkeys "$DESTDIR$docdir/examples/ha.d/"
echo "install: replica-ha in $DESTDIR$libdir, commands in $DESTDIR$bindir, units in $DESTDIR$UNITDIR"
