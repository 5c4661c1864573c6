# SPDX-License-Identifier: GPL-2.0-or-later
"""Guard for the sans-I/O rule: nothing under */protocol/ may import I/O, clocks or logging."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTOCOL_DIRS = [ROOT / "replica" / "protocol", ROOT / "hbd" / "protocol"]
FORBIDDEN = frozenset({
    "socket", "select", "selectors", "asyncio", "threading", "subprocess", "os", "time", "logging",
})


def forbidden_imports(source: str, filename: str = "<source>") -> list[str]:
    """Return `line: module` for every import of a forbidden top-level module in `source`.

    Catches `import x`, `import x.y`, `from x import y`, `from x.y import z` and
    `__import__("x")` / `importlib.import_module("x")` with a literal name.
    """
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else \
                func.attr if isinstance(func, ast.Attribute) else ""
            if called in ("__import__", "import_module") and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        for name in names:
            if name.split(".")[0] in FORBIDDEN:
                found.append(f"{node.lineno}: {name}")
    return found


def protocol_modules() -> list[pathlib.Path]:
    return sorted(p for d in PROTOCOL_DIRS if d.is_dir() for p in d.rglob("*.py"))


def test_protocol_packages_exist():
    # If these move, the guard below would silently check nothing.
    assert all(d.is_dir() for d in PROTOCOL_DIRS), PROTOCOL_DIRS
    assert any(p.name == "nbd.py" for p in protocol_modules())


@pytest.mark.parametrize("path", protocol_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_protocol_module_is_sans_io(path):
    bad = forbidden_imports(path.read_text(encoding="utf-8"), str(path))
    assert not bad, f"{path.relative_to(ROOT)}: imports I/O in a sans-I/O package: {bad}"


@pytest.mark.parametrize("source", [
    "import socket",
    "import os.path",
    "from time import monotonic",
    "from asyncio.streams import StreamReader",
    "import struct, logging",
    "def f():\n    import subprocess",
    "__import__('select')",
    "import importlib\nimportlib.import_module('threading')",
    "try:\n    import selectors\nexcept ImportError:\n    pass",
])
def test_guard_catches_forbidden_import(source):
    assert forbidden_imports(source)


@pytest.mark.parametrize("source", [
    "import struct",
    "from collections.abc import Mapping",
    "from . import nbd_wire",
    "from replica.protocol import nbd_wire",
    "import hmac, hashlib, enum, dataclasses, typing, re",
    "ostrich = 1\ntimer = 2",
])
def test_guard_allows_pure_imports(source):
    assert forbidden_imports(source) == []
