# SPDX-License-Identifier: GPL-2.0-or-later
"""Property tests for replica.conf: malformed input -> ConfigError only; valid configs round-trip.

Three generators: random text, drbd.conf-shaped token soup, and mutations of the fixtures. For
every input the parser either returns a Config that survives dump_config -> parse_config, or
raises ConfigError with a `file:line:` prefix; any other exception (or a hang) is a bug. A fourth,
model-based generator writes valid configs with random options at the common and resource levels
and checks the parsed values against DRBD's inheritance and units.
"""
import pathlib
import re
import tempfile

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from replica.config import DiskOptions, NetOptions, parse_config
from replica.config_dump import dump_config
from replica.errors import ConfigError

DATA = pathlib.Path(__file__).resolve().parent.parent / "data"
FIXTURES = {p.name: p.read_text() for p in sorted(DATA.glob("replica-*.conf"))}
SCRATCH = tempfile.mkdtemp(prefix="replica-config-fuzz-")  # includes resolve into an empty dir
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VOCAB = ["global", "common", "resource", "on", "net", "disk", "syncer", "handlers", "startup",
         "options", "volume", "skip", "include", '"inc*.conf"', "protocol", "device", "minor",
         "meta-disk", "internal", "address", "ipv4", "ipv6", "export", "node-id", "ping-int",
         "timeout", "resync-rate", "al-extents", "cram-hmac-alg", "sha1", "shared-secret",
         "split-brain", "wfc-timeout", "usage-count", "no", "yes", "{", "}", ";", ";", "}", "{",
         "r0", "alice", "bob", "/dev/drbd0", "/dev/nbd0", "/d", "10", "0", "10M", "99999999999",
         "127.0.0.1:7000", "[::1]:7000", "unix:/run/r0.sock", "[3]", "#", '"', "\\", "\n", "\x00"]


def check(text, path):
    """The property: a Config that round-trips, or a located ConfigError, never anything else."""
    try:
        cfg = parse_config(text, path)
    except ConfigError as e:
        assert re.match(rf"{re.escape(path)}:\d+: |{re.escape(str(DATA))}/[\w.-]+:\d+: ", str(e)), str(e)
        return None
    again = parse_config(dump_config(cfg), path)
    assert again == cfg
    return cfg


@FUZZ
@given(st.text(max_size=400))
def test_random_text(text):
    check(text, f"{SCRATCH}/random.conf")


@FUZZ
@given(st.lists(st.sampled_from(VOCAB) | st.text(max_size=6), max_size=80),
       st.lists(st.sampled_from([" ", "\n", "", "\t"]), min_size=1))
def test_token_soup(tokens, separators):
    text = "".join(tok + separators[i % len(separators)] for i, tok in enumerate(tokens))
    check(text, f"{SCRATCH}/soup.conf")


MUTATIONS = st.one_of(
    st.tuples(st.just("delete"), st.integers(0, 4000), st.integers(1, 40)),
    st.tuples(st.just("insert"), st.integers(0, 4000), st.sampled_from(VOCAB) | st.text(max_size=4)),
    st.tuples(st.just("duplicate"), st.integers(0, 4000), st.integers(1, 200)),
    st.tuples(st.just("swap-lines"), st.integers(0, 200), st.integers(0, 200)),
)


def mutate(text, op):
    kind, a, b = op
    a %= len(text) + 1
    if kind == "delete":
        return text[:a] + text[a + b:]
    if kind == "insert":
        return text[:a] + f" {b} " + text[a:]
    if kind == "duplicate":
        return text[:a + b] + text[a:]
    lines = text.split("\n")
    i, j = a % len(lines), b % len(lines)
    lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


@FUZZ
@given(st.sampled_from(sorted(FIXTURES)), st.lists(MUTATIONS, min_size=1, max_size=4))
def test_mutated_fixtures(name, ops):
    text = FIXTURES[name]
    for op in ops:
        text = mutate(text, op)
    check(text, str(DATA / name))  # in DATA, so the include fixture still finds its parts


# -- model-based: valid configs, expected values ------------------------------------------------

def _choice(keyword_field, pairs):
    return st.sampled_from(pairs).map(lambda p: (keyword_field, *p))


def _ints(kw, field, lo, hi, div=None):
    return st.integers(lo, hi).map(lambda n: (kw, field, str(n), n if div is None else n / div))


@st.composite
def _size(draw, kw, field, lo_kib, hi_kib, bare_unit):
    kib = draw(st.integers(lo_kib, hi_kib))
    for suffix, mult in (("G", 1024 ** 2), ("M", 1024), ("K", 1)):
        if kib % mult == 0 and draw(st.booleans()):
            return kw, field, f"{kib // mult}{suffix}", kib * 1024
    return kw, field, str(kib * 1024 // bare_unit), kib * 1024


NET = [_choice("protocol", [("protocol", v, v) for v in "ABC"]),
       _ints("ping-int", "ping_int_s", 1, 120, 1),
       _ints("connect-int", "connect_int_s", 1, 120, 1),
       _ints("timeout", "timeout_s", 1, 9, 10),          # < 1 s: always below ping-int/connect-int
       _ints("ping-timeout", "ping_timeout_s", 1, 300, 10),
       _ints("max-buffers", "max_buffers", 32, 131072),
       _ints("ko-count", "ko_count", 0, 200),
       _size("sndbuf-size", "sndbuf_size", 0, 128 * 1024, 1),
       _choice("after-sb-0pri", [("after_sb_0pri", v, v) for v in (
           "disconnect", "discard-younger-primary", "discard-zero-changes", "discard-node-alice")]),
       _choice("after-sb-1pri", [("after_sb_1pri", v, v) for v in ("consensus", "discard-secondary")]),
       _choice("tcp-cork", [("tcp_cork", "yes", True)]),             # `no`: refused (NOT_YET)
       _choice("verify-alg", [("verify_alg", v, v) for v in ("sha1", "crc32c", "md5")])]
DISK = [_size("resync-rate", "resync_rate_bps", 1, 4 * 1024 ** 2, 1024),
        _size("c-max-rate", "c_max_rate_bps", 0, 4 * 1024 ** 2, 1024),
        _size("c-fill-target", "c_fill_target_bytes", 0, 1000 * 512 // 1024, 512),
        _ints("al-extents", "al_extents", 7, 65534),
        _ints("c-plan-ahead", "c_plan_ahead_s", 0, 300, 10),
        _choice("on-io-error", [("on_io_error", v, v) for v in ("pass_on", "call-local-io-error", "detach")]),
        _choice("fencing", [("fencing", v, v) for v in ("dont-care", "resource-only", "resource-and-stonith")]),
        _choice("md-flushes", [("md_flushes", "yes", True)])]        # `no`: refused (NOT_YET)
PATHS = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=20).filter(
    lambda s: s != "none")
SECRET = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=64)


def quote(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@st.composite
def options(draw, pool):
    chosen = draw(st.lists(st.sampled_from(range(len(pool))), unique=True, max_size=len(pool)))
    return [draw(pool[i]) for i in chosen]


@st.composite
def host_body(draw, replicated, port):
    parts = [f"disk {quote(draw(PATHS))};"]
    dev = draw(st.sampled_from(["", "/dev/drbd{n}", "minor {n}", "/dev/nbd{n}", "/dev/nbd{n} minor {n}"]))
    if dev:
        parts.append("device " + dev.format(n=port % 100) + ";")
    md = draw(st.sampled_from(["", "internal", "path", "indexed"]))
    if md:
        path = quote(draw(PATHS.filter(lambda s: "[" not in s and s != "internal")))
        parts.append({"internal": "meta-disk internal;", "path": f"meta-disk {path};",
                      "indexed": f"meta-disk {path} [{draw(st.integers(0, 9999))}];"}[md])
    if replicated or draw(st.booleans()):
        ip = draw(st.ip_addresses())
        parts.append(f"address ipv{ip.version} {ip if ip.version == 4 else f'[{ip}]'}:{port};")
    exp = draw(st.sampled_from(["", "unix", "tcp4", "tcp6", "name"]))
    if exp:
        parts.append({"unix": f"export unix:/run/replica/r{port}.sock;", "tcp4": f"export 127.0.0.1:{port};",
                      "tcp6": f"export [::1]:{port};", "name": f"export tcp:localhost:{port};"}[exp])
    return " ".join(parts)


@st.composite
def configs(draw):
    """(text, expectations) for a valid config with random common/resource options."""
    common_net, common_disk = draw(options(NET)), draw(options(DISK))
    if not any(kw == "timeout" for kw, *_ in common_net):  # DRBD: timeout < ping-int, connect-int
        common_net.append(("timeout", "timeout_s", "5", 0.5))
    text = ["global { usage-count no; }"] if draw(st.booleans()) else []
    text.append("common { net { %s } disk { %s } }" % (
        " ".join(f"{kw} {v};" for kw, _, v, _ in common_net),
        " ".join(f"{kw} {v};" for kw, _, v, _ in common_disk)))
    expect = {}
    names = draw(st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True), min_size=1,
                          max_size=3, unique=True).filter(lambda ns: "all" not in ns))
    for i, name in enumerate(names):
        net, disk = draw(options(NET)), draw(options(DISK))
        hosts = draw(st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,7}", fullmatch=True), min_size=1,
                              max_size=2, unique=True))
        body = [f"net {{ {' '.join(f'{kw} {v};' for kw, _, v, _ in net)} }}",
                f"disk {{ {' '.join(f'{kw} {v};' for kw, _, v, _ in disk)} }}"]
        if draw(st.booleans()):
            body.append(f"net {{ cram-hmac-alg sha256; shared-secret {quote(draw(SECRET))}; }}")
        if draw(st.booleans()):
            body.append(f"handlers {{ split-brain {quote(draw(PATHS))}; }}")
        for j, host in enumerate(hosts):
            body.append(f"on {host} {{ {draw(host_body(len(hosts) == 2, 7000 + 10 * i + j))} }}")
        text.append(f"resource {name} {{\n  " + "\n  ".join(body) + "\n}")
        expect[name] = ({f: v for _, f, _, v in common_net + net}, {f: v for _, f, _, v in common_disk + disk},
                        hosts)
    return "\n".join(text) + "\n", expect


@FUZZ
@given(configs())
def test_generated_configs_inherit_and_round_trip(case):
    text, expect = case
    cfg = parse_config(text, f"{SCRATCH}/gen.conf")
    assert list(cfg.resources) == list(expect)
    for name, (net, disk, hosts) in expect.items():
        r = cfg.resource(name)
        assert r.net == NetOptions(**{**{k: getattr(r.net, k) for k in ("cram_hmac_alg", "shared_secret")}, **net})
        assert r.disk == DiskOptions(**disk)
        assert list(r.hosts) == hosts
        assert r.standalone == (len(hosts) == 1)
    text2 = dump_config(cfg)
    again = parse_config(text2, "dumped.conf")
    assert again == cfg
    assert dump_config(again).splitlines()[1:] == text2.splitlines()[1:]


@FUZZ
@given(configs(), st.integers(0, 10 ** 6), st.sampled_from(VOCAB))
def test_generated_configs_with_one_bad_token(case, where, token):
    """Inserting one token into a valid config may make it invalid, but only as a ConfigError."""
    text, _ = case
    where %= len(text) + 1
    assume(token.strip())
    check(text[:where] + f" {token} " + text[where:], f"{SCRATCH}/bad.conf")
