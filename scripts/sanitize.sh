#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
# make sanitize: the C data path built with AddressSanitizer + UndefinedBehaviorSanitizer, under
# the tests that drive it hardest (clients vanishing with answers owed, connection churn against
# a live replicad pair, the NBD loop and peer link unit tests (plain and over TLS), the FUSE file
# under ext4).
#
# The tree is copied to build/sanitize with the sanitized replica/_mirror*.so beside the sources;
# PYTHONPATH puts that copy first, so the replicad/replicactl the tests start load it too. The
# interpreter is not built with ASan, so its runtime is preloaded; leak checking is off (CPython
# keeps its arenas to the end) and stack-use-after-return detection is on (the bug class of
# issue 9). Any report aborts the process, which fails the test.
# usage: scripts/sanitize.sh VENV [PYTEST ARGS...]
set -euo pipefail
venv=$(realpath "$1")
shift
cd "$(dirname "$0")/.."
out=build/sanitize
rm -rf "$out"
mkdir -p "$out"
git ls-files -z --cached --others --exclude-standard | grep -zv '^build/' | xargs -0 cp --parents -t "$out"
REPLICA_SANITIZE=address,undefined "$venv/bin/python" csrc/build_mirror.py "$out" >"$out/build.log" 2>&1 ||
    { cat "$out/build.log"; exit 1; }
rm -f "$out"/replica/_mirror.c "$out"/replica/_mirror.o
cd "$out"
export PYTHONPATH=$PWD
export LD_PRELOAD=$(gcc -print-file-name=libasan.so)
export ASAN_OPTIONS=detect_leaks=0:detect_stack_use_after_return=1:abort_on_error=1:halt_on_error=1:log_path=$PWD/report
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$PWD/report
"$venv/bin/python" -c 'import replica._mirror as m, sys; sys.exit(0 if m.__file__.startswith(sys.argv[1]) else f"sanitize: loaded {m.__file__}, not the sanitized build")' "$PWD"
# Reports go to files (pytest captures file descriptor 2, and daemons log elsewhere): any file
# is a failure, whatever the tests said.
rc=0
"$venv/bin/python" -m pytest -p no:cacheprovider -p no:faulthandler \
    tests/unit/test_mirror_churn.py tests/unit/test_mirror_engine.py tests/unit/test_mirror_peer.py \
    tests/unit/test_mirror_io_error.py tests/unit/test_mirror_stall.py tests/unit/test_mirror_verify.py \
    tests/unit/test_tls_session.py tests/unit/test_tls_peer_link.py \
    tests/integration/test_nbd_churn.py \
    tests/integration/test_fuse_device.py \
    "$@" || rc=$?
if compgen -G "report.*" >/dev/null; then
    echo "sanitize: sanitizer reports in $PWD:"
    cat report.*
    exit 1
fi
exit $rc
