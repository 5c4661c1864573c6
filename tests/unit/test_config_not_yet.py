# SPDX-License-Identifier: GPL-2.0-or-later
"""No inert options: a drbd.conf option replicad does not do as DRBD does is refused with
`file:line: ...: KEYWORD: not supported (why)`, unless DRBD itself ignores it in our setting (then
one `file:line` warning that `up` and `dump` print), and the value whose behaviour ours already is
passes silently. The table of such options cannot go stale: an entry whose keyword the code starts
to use fails here."""
import dataclasses
import pathlib
import re
import subprocess
import sys

import pytest

from replica.config import DISK_KEYWORDS, NET_KEYWORDS, NOT_YET, STARTUP_KEYWORDS, parse_config
from replica.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[2]
HOSTS = """
    on a { disk /tmp/a; address 10.1.1.1:7789; }
    on b { disk /tmp/b; address 10.1.1.2:7789; }"""


def warnings_for(body: str, top: str = "") -> list[str]:
    return list(parse_config(f"{top}resource r0 {{\n{body}{HOSTS}\n}}\n", "/etc/replica.conf").warnings)


def test_an_option_we_do_not_honour_is_refused_with_file_and_line():
    with pytest.raises(ConfigError) as e:
        warnings_for("    net { protocol C; }\n    disk { disk-timeout 10; }\n")
    assert str(e.value) == ("/etc/replica.conf:3: resource 'r0': disk: disk-timeout: not supported "
                            "(local requests are not timed out)")
    with pytest.raises(ConfigError, match=r"replica.conf:2: resource 'r0': net: max-epoch-size: "
                                          r"not supported \(replicad has no write epochs"):
        warnings_for("    net { max-epoch-size 20; }\n")


def test_what_drbd_ignores_in_our_setting_is_one_warning_at_its_own_line():
    top = "common { startup { stacked-timeouts; } }\n"
    text = f"{top}resource r0 {{{HOSTS}\n}}\nresource r1 {{{HOSTS.replace('7789', '7790')}\n}}\n"
    assert parse_config(text, "/etc/replica.conf").warnings == (
        "/etc/replica.conf:1: common: startup: stacked-timeouts: ignored (DRBD uses it only for "
        "stacked resources, which replica-ha has none of)",)
    assert warnings_for("    net { congestion-fill 1G; }\n") == [
        "/etc/replica.conf:2: resource 'r0': net: congestion-fill: ignored (DRBD uses it only "
        "with on-congestion pull-ahead or disconnect)"]


def test_the_value_that_matches_our_behaviour_passes():
    assert warnings_for("    disk { c-plan-ahead 0; disk-flushes yes; md-flushes yes; disk-timeout 0; }\n"
                        "    net { tcp-cork yes; on-congestion block; max-buffers 8000; }\n") == []
    with pytest.raises(ConfigError, match="disk-flushes: not supported"):
        warnings_for("    disk { disk-flushes no; }\n")


def test_handlers_that_work_are_silent_and_quorum_lost_is_refused():
    text = ("resource r0 {\n    handlers { fence-peer \"/bin/true\"; out-of-sync \"/bin/true\"; "
            "pri-on-incon-degr \"/bin/true\"; before-resync-source \"/bin/true\"; "
            "disconnected \"/bin/true\"; }\n"
            "    on a { device /dev/drbd0; disk /tmp/a; address 10.1.1.1:7789; }\n"
            "    on b { disk /tmp/b; address 10.1.1.2:7789; }\n}\n")
    assert parse_config(text, "/etc/replica.conf").warnings == ()
    with pytest.raises(ConfigError, match="handlers: quorum-lost: not supported"):
        parse_config(text.replace("out-of-sync", "quorum-lost"), "/etc/replica.conf")


def test_implemented_options_are_no_warning():
    assert warnings_for("    net { protocol B; ping-int 15; ko-count 3; after-sb-0pri "
                        "discard-zero-changes; verify-alg crc32c; data-integrity-alg sha1; }\n    disk { resync-rate 10M; al-extents 257; }\n"
                        "    handlers { split-brain \"/bin/true\"; }\n") == []


def _field(section: str, keyword: str) -> str | None:
    table = {"net": NET_KEYWORDS, "disk": DISK_KEYWORDS}.get(section)
    return table[keyword][0] if table and keyword in table else None


def _used_outside_config(pattern: str) -> list[str]:
    out = subprocess.run(["grep", "-rlE", "--include=*.py", pattern, "replica", "hbd", "scripts"],
                         cwd=ROOT, capture_output=True, text=True).stdout.split()
    return [f for f in out if not re.search(r"replica/config[a-z_]*\.py$", f)]


# Readers that do not make the option work (none now: data-integrity-alg, once only compared
# at the handshake, puts a digest on every data frame).
PARTIAL_READERS: dict[tuple[str, str], set[str]] = {}


@pytest.mark.parametrize("section,keyword", sorted(NOT_YET))
def test_the_not_yet_table_is_not_stale(section, keyword):
    """Code that starts reading an option must take it out of NOT_YET in the same change."""
    field = _field(section, keyword)
    pattern = rf"\b{field}\b" if field else rf"[\"']{re.escape(keyword)}[\"']"
    users = set(_used_outside_config(pattern)) - PARTIAL_READERS.get((section, keyword), set())
    assert not users, (f"{section} {keyword}: used by {users}: if it works now, remove it from "
                       f"replica.config.NOT_YET")


def test_every_not_yet_keyword_is_one_the_parser_accepts():
    from replica.config import GLOBAL_KEYWORDS, HANDLERS, HOST_KEYWORDS, OPTIONS_KEYWORDS
    known = {"net": NET_KEYWORDS, "disk": DISK_KEYWORDS, "startup": STARTUP_KEYWORDS,
             "options": OPTIONS_KEYWORDS, "global": GLOBAL_KEYWORDS, "handlers": HANDLERS,
             "host": HOST_KEYWORDS}
    for section, keyword in NOT_YET:
        assert keyword in known[section], (section, keyword)
    assert dataclasses.is_dataclass(NOT_YET[next(iter(NOT_YET))])
    assert sys.version_info >= (3, 11)
