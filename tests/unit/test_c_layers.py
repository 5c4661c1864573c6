# SPDX-License-Identifier: GPL-2.0-or-later
"""The C data path keeps its layers: every csrc/ file includes only its own layer or lower ones.

    frontend     nbd_frontend.c fuse_frontend.c         (NBD transmission phase, the FUSE file)
        v
    request      request.h request.c resource.c
        v
    connection   connection.h connection.c              (applies the peer's frames to the device)
        v
    device       device.h device.c
        v
    transport    transport.h transport.c transport_socket.c transport_tls.c
                 digest.h digest.c                      (block digests: calls no other layer)
                 tls.h tls.c                            (OpenSSL sessions: calls no other layer)
    leaves       mirror.h byteorder.h nbd_wire.h repl_wire.h   (constants and inline helpers)

A function is declared only in its layer's private header, so the include graph is the call
graph between files: an upward include or a cycle here would be a call cycle. A new file must
be given a layer below (the test fails on an unknown name), which is the point.
"""
import pathlib
import re

CSRC = pathlib.Path(__file__).resolve().parents[2] / "csrc"

LEAF = -1
LAYERS = {
    "mirror.h": LEAF, "byteorder.h": LEAF, "nbd_wire.h": LEAF, "repl_wire.h": LEAF,
    "transport.h": 0, "transport.c": 0, "transport_socket.c": 0, "digest.h": 0, "digest.c": 0,
    "transport_tls.c": 0, "tls.h": 0, "tls.c": 0,
    "device.h": 1, "device.c": 1,
    "connection.h": 2, "connection.c": 2,
    "request.h": 3, "request.c": 3, "resource.c": 3,
    "nbd_frontend.c": 4, "fuse_frontend.c": 4,
}
LAYER_NAMES = {LEAF: "leaf", 0: "transport", 1: "device", 2: "connection", 3: "request", 4: "frontend"}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def include_graph(sources: dict[str, str]) -> dict[str, list[str]]:
    return {name: INCLUDE.findall(text) for name, text in sources.items()}


def layer_violations(graph: dict[str, list[str]]) -> list[str]:
    """Upward or unknown includes, and includes into a leaf from a leaf that is not one."""
    problems = []
    for name, includes in sorted(graph.items()):
        if name not in LAYERS:
            problems.append(f"{name}: not assigned to a layer")
            continue
        for inc in includes:
            if inc not in LAYERS:
                problems.append(f"{name}: includes {inc}, which is not assigned to a layer")
            elif LAYERS[name] == LEAF and LAYERS[inc] != LEAF:
                problems.append(f"{name}: a leaf header includes {inc} ({LAYER_NAMES[LAYERS[inc]]})")
            elif LAYERS[inc] > LAYERS[name]:
                problems.append(f"{name} ({LAYER_NAMES[LAYERS[name]]}) includes {inc} "
                                f"({LAYER_NAMES[LAYERS[inc]]}): upward")
    return problems


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A cycle between modules (x.c and x.h are one module), or None."""
    def module(name):
        return name.rsplit(".", 1)[0]
    edges: dict[str, set[str]] = {}
    for name, includes in graph.items():
        edges.setdefault(module(name), set()).update(module(i) for i in includes if module(i) != module(name))
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None
    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


def read_sources() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(CSRC.glob("*.[ch]"))}


def test_every_file_includes_only_its_layer_or_lower():
    assert layer_violations(include_graph(read_sources())) == []


def test_no_include_cycle_between_c_files():
    assert find_cycle(include_graph(read_sources())) is None


FRONTENDS = ("nbd_frontend.c", "fuse_frontend.c")


def test_frontends_reach_the_disk_and_peer_only_through_the_request_layer():
    graph = include_graph(read_sources())
    for name in FRONTENDS:
        assert "request.h" in graph[name], name
        assert not {"device.h", "connection.h", "transport.h"} & set(graph[name]), name


REQUEST_API = re.compile(r"\b(request_\w+|device_\w+|conn_\w+|transport_\w+)\s*\(")


def test_the_fuse_frontend_calls_only_the_request_layer():
    """Includes say what a file may see; calls say what it uses: the FUSE file must use the
    request layer alone (no device_* or conn_* call that request.h makes visible)."""
    used = set(REQUEST_API.findall((CSRC / "fuse_frontend.c").read_text()))
    assert used, "the FUSE frontend submits nothing?"
    assert {name for name in used if not name.startswith("request_")} == set()


def test_the_checker_catches_an_upward_include_and_a_cycle():
    bad = {"device.c": ['#include "device.h"\n#include "request.h"\n'], "request.h": ['#include "device.h"\n'],
           "device.h": ['#include "request.h"\n']}
    graph = include_graph({k: "".join(v) for k, v in bad.items()})
    assert any("upward" in p for p in layer_violations(graph))
    assert find_cycle(graph) is not None
    assert layer_violations(include_graph({"new_frontend.c": '#include "request.h"\n'})) == [
        "new_frontend.c: not assigned to a layer"]


LIBRARIES = {"digest.c": {"digest.h", "mirror.h"}, "tls.c": {"tls.h", "mirror.h"}}


def test_the_openssl_libraries_call_no_other_layer():
    """digest.c and tls.c wrap OpenSSL for any layer above; they see only the contract's types."""
    graph = include_graph(read_sources())
    for name, allowed in LIBRARIES.items():
        assert set(graph[name]) <= allowed, name
