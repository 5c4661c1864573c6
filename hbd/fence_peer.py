# SPDX-License-Identifier: GPL-2.0-or-later
"""replica-fence-peer / replica-unfence-peer: the `fence-peer` / `unfence-peer` handlers for a
replica resource in an hbd cluster (what crm-fence-peer.sh / crm-unfence-peer.sh are for
Pacemaker)::

    handlers { fence-peer "replica-fence-peer"; unfence-peer "replica-unfence-peer"; }

replicad runs it with DRBD's environment: DRBD_RESOURCE, DRBD_PEER (8.4) or DRBD_PEERS (9).
It asks the local hbd (its control socket in --run-dir, $HBD_RUN_DIR or /run/hbd), which knows
whether the peer node is dead and whether STONITH reset it, and else asks the peer's hbd to run
`replicactl outdate` there (hbd.disk_fencing). Exit codes, DRBD's fence-peer contract:
3 peer Inconsistent, 4 peer outdated, 5 peer unreachable/dead, 6 peer is Primary, 7 peer
fenced by STONITH; 1 when hbd cannot answer (replicad then counts the fencing as failed).
replica-unfence-peer exits 0 once hbd has forgotten the peer's fencing.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from hbd.ctl import DEFAULT_RUN_DIR, NotRunning, request

EXIT_FAILED = 1


def _args(prog: str, argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", default=os.environ.get("HBD_RUN_DIR", DEFAULT_RUN_DIR))
    p.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for hbd")
    p.add_argument("resource", nargs="?", default=os.environ.get("DRBD_RESOURCE", ""),
                   help="resource (default: $DRBD_RESOURCE)")
    return p.parse_args(argv)


def _peer() -> str:
    peers = os.environ.get("DRBD_PEER") or os.environ.get("DRBD_PEERS", "")
    return peers.split()[0] if peers.split() else ""


def _call(prog: str, cmd: str, argv: Sequence[str] | None) -> tuple[int, dict]:
    args = _args(prog, argv)
    peer = _peer()
    if not args.resource or not peer:
        print(f"{prog}: needs DRBD_RESOURCE and DRBD_PEER (run it as a replicad handler)",
              file=sys.stderr)
        return EXIT_FAILED, {}
    try:
        reply = request(args.run_dir, {"cmd": cmd, "node": peer, "resource": args.resource},
                        timeout_s=args.timeout)
    except (NotRunning, OSError) as e:
        print(f"{prog}: {args.resource}: {e}", file=sys.stderr)
        return EXIT_FAILED, {}
    if not reply.get("ok"):
        print(f"{prog}: {args.resource}: {reply.get('error')}", file=sys.stderr)
        return EXIT_FAILED, reply
    return 0, reply


def main(argv: Sequence[str] | None = None) -> int:
    rc, reply = _call("replica-fence-peer", "fence-peer", argv)
    if rc:
        return rc
    code = int(reply.get("code", EXIT_FAILED))
    print(f"replica-fence-peer: {os.environ.get('DRBD_RESOURCE', '')}: peer {_peer()}: "
          f"{reply.get('text', '')} (exit {code})")
    return code


def main_unfence(argv: Sequence[str] | None = None) -> int:
    return _call("replica-unfence-peer", "unfence-peer", argv)[0]


if __name__ == "__main__":
    sys.exit(main_unfence() if os.path.basename(sys.argv[0]).startswith("replica-unfence")
             else main())
