# SPDX-License-Identifier: GPL-2.0-or-later
"""The compiled data path exports exactly its contract: PyInit__mirror and the rm_* functions
of csrc/mirror.h (csrc/mirror.map hides the rest), and Python reads the shared limits from it."""
import pathlib
import re
import shutil
import subprocess

import pytest

import replica._mirror as compiled
from replica import mirror
from replica.protocol import repl_wire

CSRC = pathlib.Path(__file__).resolve().parents[2] / "csrc"


@pytest.mark.skipif(shutil.which("nm") is None, reason="requires nm (binutils)")
def test_only_the_contract_is_exported():
    out = subprocess.run(["nm", "-D", "--defined-only", compiled.__file__], capture_output=True, text=True,
                         check=True).stdout
    names = {line.split()[-1] for line in out.splitlines() if line.strip()}
    declared = set(re.findall(r"\b(rm_\w+)\(", (CSRC / "mirror.h").read_text()))
    assert names - {"PyInit__mirror"} == declared


def test_python_reads_the_limits_and_layout_from_the_compiled_contract():
    lib, ffi = compiled.lib, compiled.ffi
    assert mirror.STAT_FIELDS == tuple(name for name, _ in ffi.typeof("rm_stats").fields)
    assert mirror.BLOCK_SIZE == lib.RM_BLOCK_SIZE
    assert mirror.AL_EXTENT_SIZE == lib.RM_AL_EXTENT_SIZE
    assert mirror.MAX_RESYNC_CHUNK == lib.RM_MAX_RESYNC_CHUNK
    assert mirror.MAX_CONTROL_FRAME == lib.RM_FRAME_HEADER_SIZE + lib.RM_MAX_CONTROL_PAYLOAD
    # the sans-I/O codec may not import the extension: it keeps the number, checked here
    assert repl_wire.MAX_CONTROL == lib.RM_MAX_CONTROL_PAYLOAD
    assert repl_wire.HEADER.size == lib.RM_FRAME_HEADER_SIZE
