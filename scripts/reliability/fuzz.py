# SPDX-License-Identifier: GPL-2.0-or-later
"""Part 5, bad input: a fast mutational fuzzer over every decoder and parser that takes input
from outside (the network, a client, a config file).

    parent (run_fuzz)                           one worker process per shard
    ----------------                            ------------------------------------------
    shards: TARGET x N inputs, 2 at a time  --> python -m scripts.reliability.fuzz TARGET N SEED DIR
    watchdog: no progress line for 60 s         seeds -> mutate -> target(input)
      -> kill -9, the input in DIR/TARGET.*       allowed error: counted; anything else: a crash,
         .current is the crash ("hang")           saved as DIR/crash-TARGET-K.bin + .txt
    a worker killed by a signal (SIGSEGV in C)   progress {"done": k} every second,
      -> crash, its .current input saved          {"done": N, "crashes": c, ...} at the end

Mutations (AFL's havoc stage, reduced): bit flips, random and "interesting" bytes, deletions,
insertions of random bytes or of the target's dictionary words, duplicated ranges, truncation,
splices of two corpus entries, big-endian length-field edits (1, 2, 4, 8 bytes set to 0, 1,
max, max-1, 2^31, the input's own length +-1...) and, for text, number edits. Inputs a target
accepts join the corpus (up to 400), so the fuzzer walks past the first checks.

A crash is any exception that is not one of the target's documented error types (ConfigError
for the config parsers, RemoteProtocolError for the codecs: BadPacket is one), an input that
takes over 5 s (SIGALRM), or the worker dying (a C fault in the NBD transmission parser).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAX_INPUT = 4096
HANG_S = 5.0


class Hang(BaseException):
    """An input took longer than HANG_S (BaseException: no target's `except` may swallow it)."""


@dataclass
class Target:
    name: str
    seeds: list[bytes]
    run: Callable[[bytes], bool]          # True if the input was accepted (no error)
    allowed: tuple[type[BaseException], ...]
    words: list[bytes] = field(default_factory=list)
    text: bool = False


# --- targets --------------------------------------------------------------------------------

def _nbd_handshake() -> Target:
    from replica.errors import RemoteProtocolError
    from replica.protocol.nbd import NEED_DATA, ExportInfo, NbdServerConnection, NbdServerState
    exports = {"disk": ExportInfo("disk", 1 << 30, 0x6D, description="fuzz disk"),
               "": ExportInfo("", 512, 0x03)}
    magic = b"IHAVEOPT"

    def opt(o: int, data: bytes = b"") -> bytes:
        return magic + struct.pack(">II", o, len(data)) + data

    def info(name: bytes, reqs=()) -> bytes:
        return (struct.pack(">I", len(name)) + name + struct.pack(">H", len(reqs))
                + b"".join(struct.pack(">H", r) for r in reqs))
    flags = struct.pack(">I", 3)
    seeds = [flags + opt(7, info(b"disk", (0, 1, 2, 3))),                  # GO
             flags + opt(3) + opt(6, info(b"disk")) + opt(7, info(b"")),    # LIST INFO GO
             flags + opt(8) + opt(10, struct.pack(">I", 4) + b"disk" + struct.pack(">I", 1)
                                  + struct.pack(">I", 14) + b"base:allocation")
             + opt(7, info(b"disk", (3,))),                               # STRUCTURED, SET_META
             flags + opt(1, b"disk"),                                      # EXPORT_NAME
             struct.pack(">I", 1) + opt(1, b""),
             flags + opt(5) + opt(2),                                      # STARTTLS, ABORT
             flags + opt(9, struct.pack(">I", 4) + b"disk" + struct.pack(">I", 0))]

    def run(data: bytes) -> bool:
        conn = NbdServerConnection(exports, default_export="disk", max_option_length=4096)
        conn.data_to_send()
        cut = len(data) // 2
        for chunk in (data[:cut], data[cut:], b""):
            if conn.state in (NbdServerState.CLOSED, NbdServerState.ERROR,
                              NbdServerState.TRANSMISSION):
                break
            conn.receive_data(chunk)
            for _ in range(10000):
                if conn.next_event() is NEED_DATA or conn.state is not NbdServerState.OPTIONS:
                    break
            else:
                raise AssertionError("nbd handshake: next_event did not settle in 10000 events")
            conn.data_to_send()
        return True
    return Target("nbd-handshake", seeds, run, (RemoteProtocolError,),
                  [magic, struct.pack(">I", 7), struct.pack(">I", 0x80000001)])


def _nbd_transmission(scratch: str) -> Target:
    """The C transmission loop of a real engine (replica.mirror.Engine.serve_nbd), fed over a
    socketpair. It reports how the connection ended; it must never fault or hang."""
    from replica.mirror import END_REASONS, Engine
    size = 16 * 4096
    tmp = tempfile.NamedTemporaryFile(prefix="engine-", dir=scratch)
    os.ftruncate(tmp.fileno(), size)
    engine = Engine(tmp.fileno(), size)
    req = struct.Struct(">IHHQQI")
    magic = 0x25609513

    def r(cmd: int, off: int = 0, length: int = 0, payload: bytes = b"", flags: int = 0,
          cookie: int = 1) -> bytes:
        return req.pack(magic, flags, cmd, cookie, off, length) + payload
    seeds = [r(1, 0, 4096, b"\xab" * 4096, 1) + r(0, 0, 4096, cookie=2) + r(3, cookie=3) + r(2),
             r(1, 8192, 16, b"x" * 16) + r(4, 4096, 4096) + r(6, 0, 8192, flags=2) + r(0, 8192, 16),
             r(0, size - 512, 512) + r(5, 0, 4096) + r(7, 0, 4096),
             r(1, 100, 3, b"abc", 1, 7) + r(3, 0, 0, flags=1) + r(2)]
    allowed_ends = set(END_REASONS)

    def run(data: bytes) -> bool:
        client, server = socket.socketpair()
        try:
            for s, opt in ((client, 33), (server, 32)):   # SO_RCVBUFFORCE, SO_SNDBUFFORCE
                s.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
            client.sendall(data)
            client.shutdown(socket.SHUT_WR)
            result = engine.serve_nbd(server.fileno())
            if result.end not in allowed_ends:
                raise AssertionError(f"nbd transmission: unknown end code {result.end}")
            return result.clean
        finally:
            client.close()
            server.close()
    return Target("nbd-transmission", seeds, run, (), [struct.pack(">I", magic),
                                                        struct.pack(">I", 0x668E33EF)])


def _repl_peer() -> Target:
    """The replication peer protocol: the frame decoder with HELLO/UUIDS/control decoding of
    each frame, and the handshake state machine fed a real peer's transcript."""
    from replica.auth import hmac_digest
    from replica.bitmap import Bitmap
    from replica.errors import RemoteProtocolError
    from replica.protocol import repl_wire as wire
    from replica.protocol.repl import (
        NEED_DATA,
        Frame,
        HelloInfo,
        ReplDecoder,
        ReplHandshake,
        decode_hello,
        decode_uuids,
        encode_frame,
    )
    from replica.protocol.repl_control import decode_control
    from replica.protocol.repl_wire import ReplPacket
    from replica.states import DiskState, Role
    from replica.uuids import GenerationUuids
    disk = 8 << 20

    def hs(name: str, uuids, initiator: bool, role=Role.Secondary) -> ReplHandshake:
        bm = Bitmap(disk)
        bm.set_range(0, 40960)
        return ReplHandshake(HelloInfo(name, disk, uuids, role, DiskState.UpToDate),
                             secret=b"s3cret", alg="sha1", mac=hmac_digest,
                             challenge=random.Random(name).randbytes(32), is_initiator=initiator,
                             bitmap_source=bm.encode)
    a = hs("alpha", GenerationUuids(0x30, 0x20), True, Role.Primary)
    b = hs("beta", GenerationUuids(0x20), False)
    transcript = bytearray()
    for _ in range(8):
        out_b = b.data_to_send()
        transcript += out_b
        a.receive_data(out_b)
        b.receive_data(a.data_to_send())
        for h in (a, b):
            while h.next_event() is not NEED_DATA:
                pass
    from replica.protocol.repl_control import (
        PeerDisconnect,
        PeerRefuse,
        PeerState,
        ResyncPause,
        SyncUuid,
        VerifyEnd,
        VerifyStart,
        encode_control,
    )
    controls = b"".join(encode_control(m) for m in (
        PeerState(Role.Primary, DiskState.UpToDate, 0x30), SyncUuid(0x44, True),
        ResyncPause(True), PeerRefuse("no"), PeerDisconnect(),
        VerifyStart(0, 1 << 20, "sha1"), VerifyEnd(wire.VerifyOutcome(0), 3, "done")))
    data_frame = encode_frame(Frame(ReplPacket.DATA, offset=4096, aux=1, payload=b"d" * 64))
    seeds = [b"H" + bytes(transcript), b"D" + controls + data_frame, b"D" + bytes(transcript)]

    def run(data: bytes) -> bool:
        mode, data = data[:1], data[1:]
        if mode == b"H":     # the handshake, as alpha, reading what beta sends
            h = hs("alpha", GenerationUuids(0x30, 0x20), True, Role.Primary)
            h.receive_data(data)
            h.receive_data(b"")
            for _ in range(10000):
                if h.next_event() is NEED_DATA:
                    return True
            raise AssertionError("repl handshake: next_event did not settle")
        dec = ReplDecoder()
        dec.receive_data(data)
        dec.receive_data(b"")
        for _ in range(10000):
            f = dec.next_event()
            if not isinstance(f, Frame):
                return True
            if f.type is ReplPacket.HELLO:
                decode_hello(f)
            elif f.type is ReplPacket.UUIDS:
                decode_uuids(f)
            elif len(f.payload) <= wire.MAX_CONTROL and f.type is not ReplPacket.DATA:
                decode_control(encode_frame(f))
        raise AssertionError("repl decoder: next_event did not settle")
    return Target("repl-peer", seeds, run, (RemoteProtocolError,),
                  [wire.REPL_MAGIC.to_bytes(4, "big"), b"H", b"D"])


def _hb_packet() -> Target:
    from hbd.authkeys import parse_authkeys
    from hbd.protocol.packets import BadPacket, decode_message, encode_message
    keys = {"sha1": parse_authkeys("auth 2\n2 sha1 mahnamahna\n"),
            "md5": parse_authkeys("auth 3\n3 md5 mahnamahna\n"),
            "crc": parse_authkeys("auth 1\n1 crc\n")}
    seeds = []
    for path in sorted((REPO / "tests" / "data").glob("hb_*.bin")):
        method = path.name.split("_")[2] if path.name.startswith("hb_real_") else "sha1"
        seeds.append(method.encode() + b":" + path.read_bytes())
    for method, k in keys.items():
        seeds.append(method.encode() + b":" + encode_message(
            [("t", "status"), ("st", "active"), ("src", "ha1"), ("seq", "2a"), ("hg", "5"),
             ("ts", "6b05facf"), ("ld", "0.1 0.2"), ("ttl", "3")], k))

    def run(data: bytes) -> bool:
        method, _, packet = data.partition(b":")
        decode_message(packet, keys.get(method.decode("latin-1"), keys["sha1"]))
        return True
    return Target("hb-packet", seeds, run, (BadPacket,),
                  [b"###\n", b"%%%\n", b">>>\n", b"<<<\n", b"auth=", b"t=status", b"2:", b"ttl="])


def _config_target(name: str, parse: Callable[[str, str], object], seeds: list[str],
                   words: list[str], path: str) -> Target:
    from hacommon.errors import ConfigError

    def run(data: bytes) -> bool:
        parse(data.decode("utf-8", errors="surrogateescape"), path)
        return True
    return Target(name, [s.encode() for s in seeds], run, (ConfigError,),
                  [w.encode() for w in words], text=True)


MON_CF = """\
alertdir = /usr/lib/mon/alert.d
mondir = /usr/lib/mon/mon.d
maxprocs = 20
randstart = 2s
hostgroup web 10.0.17.26 10.0.17.27
hostgroup routers gw1

watch routers
    service ping
        interval 30s
        monitor ping.monitor
        period wd {Sun-Sat}
            alert mail.alert root@localhost

watch web
    service http
        description web server
        interval 1.5m
        monitor http.monitor -p 80 \\
            -u /index.html
        depend routers:ping && SELF:tcp
        dep_behavior m
        timeout 5s
        restart httpd
        restart_max 2
        period day: wd {Mon-Fri} hr {7am-10pm}
            alertafter 2
            alert mail.alert root@localhost
            alertevery 15m observe_detail
            upalert mail.alert root@localhost
            numalerts 3
    service tcp
        interval 10s
        monitor tcp.monitor -p 80 ;;
        period
            alert file.alert /tmp/x
"""


def _mon_cf() -> Target:
    from hbmon.config import parse_mon_config
    seeds = [MON_CF]
    if os.path.exists("/etc/mon/mon.cf"):
        seeds.append(Path("/etc/mon/mon.cf").read_text(errors="replace"))
    return _config_target("mon.cf", parse_mon_config, seeds,
                          ["hostgroup", "watch", "service", "interval", "monitor", "period",
                           "alert", "upalert", "alertevery", "alertafter", "numalerts", "depend",
                           "dep_behavior", "restart", "timeout", "{Mon-Fri}", "hr {7am-5pm}",
                           "5s", "&&", ";;", "\\\n", "\n    ", " = "], "mon.cf")


def _replica_conf(scratch: str) -> Target:
    """drbd.conf syntax. `include` globs are confined to a copy of the test configs in scratch:
    a mutation must not make the fuzzer read /dev/zero (that would be our hang, not the
    parser's)."""
    import glob as globmod

    import replica.config as rc
    data = REPO / "tests" / "data"
    for p in list(data.glob("inc-*.conf")) + list(data.glob("replica-*.conf")):
        Path(scratch, p.name).write_text(p.read_text())
    real_glob = globmod.glob

    def confined_glob(pattern: str, *a, **kw):
        return [n for n in real_glob(pattern, *a, **kw)
                if os.path.realpath(n).startswith(scratch + os.sep)]

    class _Glob:
        glob = staticmethod(confined_glob)
        has_magic = staticmethod(globmod.has_magic)
    rc.glob = _Glob  # type: ignore[assignment]
    seeds = [p.read_text() for p in sorted(data.glob("replica-*.conf"))]
    seeds.append((REPO / "examples" / "replica.conf").read_text())
    return _config_target("replica.conf", rc.parse_config, seeds,
                          ["global", "common", "resource", "on", "net", "disk", "syncer",
                           "handlers", "startup", "options", "volume", "include", "protocol",
                           "device", "minor", "meta-disk", "internal", "address", "ipv6",
                           "export", "{", "}", ";", '"', "#", "\\", "10M", "99999999999",
                           "[::1]:7000", "unix:/run/r0.sock", "after-sb-0pri", "fencing"],
                          os.path.join(scratch, "fuzz.conf"))


def _heartbeat_files() -> list[Target]:
    from hbd.authkeys import parse_authkeys
    from hbd.config import parse_ha_config
    from hbd.haresources import parse_haresources
    seed = REPO / "examples" / "seed"
    ha_cf = [(seed / "ha.cf").read_text(),
             "debugfile /var/log/ha-debug\nlogfile /var/log/ha-log\nlogfacility local0\n"
             "keepalive 500ms\ndeadtime 10\nwarntime 5\ninitdead 60\nudpport 694\n"
             "bcast eth0 eth1\nmcast eth0 225.0.0.1 694 1 0\nucast eth1 10.0.0.2\n"
             "serial /dev/ttyS0\nbaud 19200\nauto_failback on\nstonith_host * null ha1 ha2\n"
             "respawn hacluster /usr/lib/heartbeat/ipfail\nping 10.0.0.254\nnode ha1\nnode ha2\n"]
    hares = [(seed / "haresources").read_text(),
             "ha1 IPaddr::10.0.17.26/24/eth0/10.0.17.255 datadisk::r0 "
             "Filesystem::/dev/drbd0::/data::ext4 httpd\nha2 10.0.18.5 mysql\n"]
    keys = [(seed / "authkeys").read_text(), "auth 3\n1 crc\n2 sha1 secret\n3 md5 x y\n"]
    return [
        _config_target("ha.cf", parse_ha_config, ha_cf,
                       ["keepalive", "deadtime", "warntime", "initdead", "bcast", "mcast",
                        "ucast", "node", "stonith", "stonith_host", "auto_failback", "ms", "us",
                        "logfacility", "udpport", "\n", "#", " "], "ha.cf"),
        _config_target("haresources", parse_haresources, hares,
                       ["::", "/", "IPaddr", "IPaddr2", "Filesystem", "datadisk", "\\\n", "#",
                        "ha1", " ", "/24", "255.255.255.255"], "haresources"),
        _config_target("authkeys", parse_authkeys, keys, ["auth", "crc", "md5", "sha1", "\n"],
                       "authkeys"),
    ]


def make_targets(scratch: str) -> dict[str, Target]:
    ts = [_nbd_handshake(), _nbd_transmission(scratch), _repl_peer(), _hb_packet(), _mon_cf(),
          _replica_conf(scratch), *_heartbeat_files()]
    return {t.name: t for t in ts}


TARGET_NAMES = ("nbd-handshake", "nbd-transmission", "repl-peer", "hb-packet", "mon.cf",
                "replica.conf", "ha.cf", "haresources", "authkeys")


# --- mutations --------------------------------------------------------------------------------

INTERESTING_8 = (0, 1, 0x7F, 0x80, 0xFF, 0x0A, 0x3B, 0x7B, 0x7D, 0x22, 0x20)
INTERESTING_NUMS = (b"0", b"-1", b"1", b"65535", b"65536", b"2147483648", b"4294967296",
                    b"99999999999999999999999", b"1e9", b"0x10", b"", b"-0", b"0.000001")


def _interesting(width: int, length: int, rng: random.Random) -> int:
    top = (1 << (8 * width)) - 1
    choices = (0, 1, top, top - 1, top >> 1, (top >> 1) + 1, length, length + 1,
               max(0, length - 1), 4096, rng.randrange(top + 1))
    return choices[rng.randrange(len(choices))] & top


def mutate(rng: random.Random, data: bytes, corpus: list[bytes], words: list[bytes],
           text: bool) -> bytes:
    buf = bytearray(data)
    for _ in range(1 + int(rng.expovariate(0.8))):
        op = rng.randrange(12)
        n = len(buf)
        if op == 0 and n:                                     # bit flip
            i = rng.randrange(n)
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:                                   # random / interesting byte
            i = rng.randrange(n)
            buf[i] = rng.randrange(256) if rng.random() < 0.5 else rng.choice(INTERESTING_8)
        elif op == 2 and n:                                   # delete a range
            i = rng.randrange(n)
            del buf[i:i + 1 + int(rng.expovariate(0.1))]
        elif op == 3:                                         # insert random bytes
            i = rng.randrange(n + 1)
            buf[i:i] = rng.randbytes(1 + rng.randrange(16))
        elif op == 4 and words:                               # insert a dictionary word
            i = rng.randrange(n + 1)
            buf[i:i] = rng.choice(words)
        elif op == 5 and n:                                   # duplicate a range
            i = rng.randrange(n)
            j = min(n, i + 1 + rng.randrange(64))
            k = rng.randrange(n + 1)
            buf[k:k] = buf[i:j]
        elif op == 6 and n:                                   # truncate
            del buf[rng.randrange(n):]
        elif op == 7 and corpus:                              # splice with another entry
            other = rng.choice(corpus)
            buf = buf[:rng.randrange(n + 1)] + other[rng.randrange(len(other) + 1):]
        elif op in (8, 9) and n >= 2:                         # length-field edit
            width = rng.choice((1, 2, 4, 8) if n >= 8 else (1, 2))
            i = rng.randrange(n - width + 1)
            buf[i:i + width] = _interesting(width, n, rng).to_bytes(width, "big")
        elif op == 10 and text and n:                         # number edit
            digits = [i for i in range(n) if 48 <= buf[i] <= 57]
            if digits:
                i = rng.choice(digits)
                j = i
                while j < n and 48 <= buf[j] <= 57:
                    j += 1
                buf[i:j] = rng.choice(INTERESTING_NUMS)
        elif op == 11 and n:                                  # swap two ranges' bytes
            i, j = rng.randrange(n), rng.randrange(n)
            buf[i], buf[j] = buf[j], buf[i]
    return bytes(buf[:MAX_INPUT])


# --- the worker -------------------------------------------------------------------------------

def _on_alarm(signum, frame):
    raise Hang(f"input took over {HANG_S} s")


def run_worker(name: str, count: int, seed: int, out_dir: str, scratch: str) -> dict:
    """Run `count` inputs against target `name`; progress and the result as JSON lines.
    `scratch` (on tmpfs, made and removed by the parent, also after a worker died) holds the
    engine's disk and the config copies."""
    if name == "selftest-abort" and os.environ.get("RB_FUZZ_SELFTEST") == "1":
        target = Target(name, [b"seed"], lambda data: os.abort() if b"\0" in data else True, ())
    else:
        target = make_targets(scratch)[name]
    return fuzz_target(target, count, seed, Path(out_dir))


def fuzz_target(target: Target, count: int, seed: int, out: Path) -> dict:
    """`count` inputs (the seeds first, then mutations) against `target`; crashes saved in
    `out`; progress lines and the result (also returned) printed as JSON."""
    name = target.name
    rng = random.Random(seed)
    corpus = list(target.seeds)
    current = os.open(out / f"{name}.{seed}.current", os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                      0o644)
    signal.signal(signal.SIGALRM, _on_alarm)
    errors: dict[str, int] = {}
    crashes = accepted = 0
    t0 = last = time.monotonic()
    for k in range(count):
        data = mutate(rng, rng.choice(corpus), corpus, target.words, target.text) \
            if k >= len(target.seeds) else target.seeds[k]
        os.pwrite(current, struct.pack(">I", len(data)) + data, 0)   # no ftruncate: cheap
        signal.setitimer(signal.ITIMER_REAL, HANG_S)
        try:
            ok = target.run(data)
        except target.allowed as e:
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
        except (Exception, Hang) as e:        # the finding: anything else
            crashes += 1
            if crashes <= 20:
                stem = out / f"crash-{name}-{seed}-{k}"
                stem.with_suffix(".bin").write_bytes(data)
                stem.with_suffix(".txt").write_text(
                    f"{name}: input {k} (seed {seed}): {type(e).__name__}: {e}\n"
                    + "".join(traceback.format_exception(e)))
        else:
            if ok:
                accepted += 1
                if len(corpus) < 400 and rng.random() < 0.05:
                    corpus.append(data)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        now = time.monotonic()
        if now - last >= 1.0:
            last = now
            print(json.dumps({"done": k + 1}), flush=True)
    os.close(current)
    os.unlink(out / f"{name}.{seed}.current")
    result = {"target": name, "done": count, "crashes": crashes, "accepted": accepted,
              "errors": errors, "seconds": round(time.monotonic() - t0, 1)}
    print(json.dumps(result), flush=True)
    return result


# --- the parent -------------------------------------------------------------------------------

def _read_some(fd: int) -> str:
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        out += chunk
    return out.decode(errors="replace")


def run_fuzz(inputs: int, out_dir: Path, parallel: int = 2, seed: int | None = None,
             targets: tuple[str, ...] = TARGET_NAMES, log=print) -> list[dict]:
    """Every target with `inputs` inputs, `parallel` workers at a time; one result per target:
    {"target", "done", "crashes", "accepted", "errors", "seconds", "saved": [paths]}."""
    import subprocess
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = int.from_bytes(os.urandom(4), "big") if seed is None else seed
    pending = list(targets)
    running: dict[str, tuple[subprocess.Popen, float, list[str]]] = {}
    results: dict[str, dict] = {}
    scratch: dict[str, str] = {}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        while pending or running:
            while pending and len(running) < parallel:
                name = pending.pop(0)
                scratch[name] = tempfile.mkdtemp(prefix=f"rb-fuzz-{name}-", dir="/dev/shm")
                p = subprocess.Popen([sys.executable, "-m", "scripts.reliability.fuzz", name,
                                      str(inputs), str(seed), str(out_dir), scratch[name]],
                                     cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                os.set_blocking(p.stdout.fileno(), False)  # type: ignore[union-attr]
                running[name] = (p, time.monotonic(), [])
            time.sleep(0.2)
            for name, (p, seen, lines) in list(running.items()):
                chunk = _read_some(p.stdout.fileno())  # type: ignore[union-attr]
                if chunk:
                    lines.append(chunk)
                    seen = time.monotonic()
                    running[name] = (p, seen, lines)
                rc = p.poll()
                hung = rc is None and time.monotonic() - seen > 60
                if rc is None and not hung:
                    continue
                if hung:
                    p.kill()
                    p.wait()
                del running[name]
                shutil.rmtree(scratch.pop(name), ignore_errors=True)
                text = "".join(lines) + _read_some(p.stdout.fileno())  # type: ignore[union-attr]
                stderr = p.stderr.read().decode(errors="replace")  # type: ignore[union-attr]
                last = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
                res = last[-1] if last and "target" in last[-1] else None
                current = out_dir / f"{name}.{seed}.current"
                if res is None or rc != 0:       # died (a signal) or hung: its input is the crash
                    why = "hang (no progress for 60 s)" if hung else f"exit {rc}"
                    done = last[-1]["done"] if last else 0
                    saved = out_dir / f"crash-{name}-{seed}-died.bin"
                    if current.exists():          # 4-byte length, the input, stale tail
                        raw = current.read_bytes()
                        saved.write_bytes(raw[4:4 + struct.unpack(">I", raw[:4])[0]]
                                          if len(raw) >= 4 else b"")
                        current.unlink()
                    saved.with_suffix(".txt").write_text(f"{name}: worker {why} after {done} "
                                                         f"inputs\n{stderr[-4000:]}")
                    res = {"target": name, "done": done, "crashes": 1, "accepted": 0,
                           "errors": {}, "seconds": 0, "died": why}
                res["saved"] = sorted(str(f) for f in out_dir.glob(f"crash-{name}-*.bin"))
                results[name] = res
                log(f"fuzz {name}: {res['done']} inputs, {res['crashes']} crashes, "
                    f"{res['accepted']} accepted, errors {res['errors']}, {res['seconds']} s")
    finally:
        for p, _, _ in running.values():
            p.kill()
            p.wait()
        for d in scratch.values():
            shutil.rmtree(d, ignore_errors=True)
    return [results[n] for n in targets if n in results]


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    run_worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
