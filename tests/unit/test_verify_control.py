# SPDX-License-Identifier: GPL-2.0-or-later
"""Online verify's pure parts: `--start`/`--stop` as drbdsetup takes them (sectors, or a size
with a unit), the algorithm check, and how `status` shows a running verify."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replica import cli
from replica.errors import ReplicaError
from replica.verify import check_alg, parse_sectors
from tests.unit.test_cli_output import status


@pytest.mark.parametrize("text,nbytes", [
    ("0", 0), ("8", 4096), ("2048s", 1 << 20), ("16M", 16 << 20), ("16m", 16 << 20),
    ("1G", 1 << 30), ("4k", 4096), ("1T", 1 << 40), (" 10 ", 5120),
])
def test_start_is_sectors_or_a_size_with_a_unit(text, nbytes):
    assert parse_sectors(text) == nbytes


@pytest.mark.parametrize("text", ["", "x", "-1", "1.5G", "1X", "G", "0x10"])
def test_bad_start_values_are_refused(text):
    with pytest.raises(ReplicaError, match="expected sectors or a size with a unit"):
        parse_sectors(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12))
def test_fuzz_parse_sectors_returns_bytes_or_refuses(text):
    try:
        n = parse_sectors(text)
    except ReplicaError:
        return
    assert n >= 0 and n % 512 == 0


def test_unknown_algorithms_are_refused_in_drbd_words():
    check_alg("verify-alg", "crc32c")
    check_alg("data-integrity-alg", None)
    with pytest.raises(ReplicaError, match="The 'verify-alg' you specified is not known in the "
                                           "kernel"):
        check_alg("verify-alg", "crct10dif")


def test_status_during_verify_shows_verify_state_and_done():
    st_ = status(replication="VerifyS", cstate="VerifyS",
                 verify={"percent": 37.5, "done_bytes": 3, "total_bytes": 8, "rate_bps": 2 << 20,
                         "avg_rate_bps": 1, "eta_s": 4.0, "role": "VerifyS", "oos_blocks": 0,
                         "start_sector": 0})
    assert cli.format_status(st_).splitlines()[-1] == (
        "    replication:VerifyS peer-disk:UpToDate done:37.50")
    assert cli.format_status(st_, verbose=True).endswith("dbdt1:2.00 eta:4")


def test_verify_command_takes_start_and_stop_values():
    args = cli.build_parser().parse_args(["verify", "r0", "--start", "1G", "--stop", "4096"])
    assert (args.start, args.stop, args.handler) == ("1G", "4096", cli.cmd_verify)
