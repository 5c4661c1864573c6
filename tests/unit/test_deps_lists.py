# SPDX-License-Identifier: GPL-2.0-or-later
"""`make deps` installs what the product needs to run, `make test-deps` (run by `make test`) adds
the test-only tools: the Makefile's lists, scripts/deps.sh's two modes, setup.py's
install_requires (what scripts/install.sh installs), the README's lists and `make -n`'s order."""
import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# tools only the tests and demos use (issue 14: they come with `make test`, not `make deps`)
TEST_ONLY = {"qemu-system-x86", "qemu-utils", "nbdkit", "libnbd-bin", "python3-libnbd", "fio", "tcpdump",
             "iperf3", "sockperf", "heartbeat", "drbd-utils", "nbd-client", "busybox-static", "cpio",
             "resource-agents", "pacemaker", "corosync", "pacemaker-cli-utils", "curl", "nginx",
             "mariadb-server"}
RUNTIME_NEEDS = {"python3", "python3-venv", "python3-dev", "gcc", "pkg-config", "libfuse3-dev", "libssl-dev",
                 "fuse3", "iproute2", "e2fsprogs", "psmisc", "mon"}
RUNTIME_PIP = {"cffi", "cryptography", "pyroute2", "rich", "prometheus-client"}
TEST_PIP = {"pytest", "pytest-timeout", "hypothesis", "ruff", "mypy"}


def make_var(name: str) -> list[str]:
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    m = re.search(rf"^{name} :=(.*)$", text, re.M)
    assert m, f"Makefile has no {name}"
    return m.group(1).split()


def pip_name(req: str) -> str:
    return re.split(r"[<>=!~\[ ]", req, maxsplit=1)[0].lower().replace("_", "-")


def install_requires() -> set[str]:
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return {pip_name(ast.literal_eval(e)) for e in node.value.elts}
    raise AssertionError("setup.py has no install_requires")


def test_runtime_and_test_lists_are_apart_and_complete():
    runtime, test = set(make_var("APT_RUNTIME")), set(make_var("APT_TEST"))
    assert runtime >= RUNTIME_NEEDS, RUNTIME_NEEDS - runtime
    assert test >= TEST_ONLY, TEST_ONLY - test
    assert not runtime & test
    assert not runtime & TEST_ONLY
    assert len(make_var("APT_RUNTIME")) == len(runtime) and len(make_var("APT_TEST")) == len(test)


def test_pip_runtime_is_install_requires_and_test_tools_stay_out_of_it():
    assert install_requires() == RUNTIME_PIP
    pip_test = {pip_name(p) for p in make_var("PIP_TEST")}
    assert pip_test == TEST_PIP and not pip_test & RUNTIME_PIP
    deps = (REPO / "scripts/deps.sh").read_text()
    runtime_branch = deps.split('if [[ $mode == runtime ]]; then', 1)[1].split("\nfi\n", 1)[0]
    assert not any(t in runtime_branch for t in TEST_PIP), runtime_branch
    install = (REPO / "scripts/install.sh").read_text()
    assert not any(re.search(rf"\b{t}\b", install) for t in TEST_PIP)
    assert "pip install -q --no-build-isolation ." in install    # install_requires, as make deps


def test_readme_lists_the_same_packages():
    readme = (REPO / "README.md").read_text()
    section = readme.split("`make deps` is what the product needs", 1)[1].split("Tests that need root", 1)[0]
    runtime_part, test_part = section.split("`make test-deps`", 1)
    words = lambda text: set(re.findall(r"[a-z0-9][a-z0-9.+-]*", " ".join(re.findall(r"`([^`]*)`", text))))  # noqa: E731
    assert set(make_var("APT_RUNTIME")) | RUNTIME_PIP <= words(runtime_part)
    assert set(make_var("APT_TEST")) | TEST_PIP <= words(test_part)
    assert not set(make_var("APT_TEST")) & words(runtime_part)


def test_make_test_installs_runtime_then_test_tools_then_lints_and_tests():
    if shutil.which("make") is None:
        pytest.skip("needs make on PATH")
    out = subprocess.run(["make", "-n", "-B", "test"], cwd=REPO, capture_output=True, text=True, timeout=60,
                         check=True).stdout.splitlines()
    runtime = next(i for i, line in enumerate(out) if "scripts/deps.sh runtime" in line)
    test = next(i for i, line in enumerate(out) if "scripts/deps.sh test" in line)
    pytest_line = next(i for i, line in enumerate(out) if "-m pytest tests" in line)
    assert runtime < test < pytest_line
    assert out[runtime].split('"', 4)[-1].split() == make_var("APT_RUNTIME")
    assert out[test].split('"', 6)[-1].split() == make_var("APT_TEST")
    only = subprocess.run(["make", "-n", "-B", "deps"], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=True).stdout
    assert "scripts/deps.sh runtime" in only and "scripts/deps.sh test" not in only
    for target in ("demo", "bench", "lint", "test-unit"):
        dry = subprocess.run(["make", "-n", "-B", target], cwd=REPO, capture_output=True, text=True,
                             timeout=60, check=True).stdout
        assert "scripts/deps.sh test" in dry, target
    assert "make test" in (REPO / ".ci/run").read_text()      # CI gets both lists


def test_every_listed_package_exists_in_debian():
    """Names, not guesses: apt's local cache knows each one (no network: apt-cache reads the lists)."""
    if shutil.which("apt-cache") is None:
        pytest.skip("needs apt-cache (Debian)")
    names = make_var("APT_RUNTIME") + make_var("APT_TEST")
    r = subprocess.run(["apt-cache", "show", "--no-all-versions", *names], capture_output=True, text=True,
                       timeout=60)
    known = set(re.findall(r"^Package: (\S+)$", r.stdout, re.M))
    if not known:
        pytest.skip("apt's package lists are empty here (apt-get update never ran)")
    assert set(names) <= known, set(names) - known
