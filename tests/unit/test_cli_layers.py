# SPDX-License-Identifier: GPL-2.0-or-later
"""replicactl's layering: the command groups import cli_ctl, never each other nor replica.cli
(which assembles their handlers into the one Command table)."""
import ast
import pathlib

import pytest

REPLICA = pathlib.Path(__file__).resolve().parents[2] / "replica"
GROUPS = ("cli_roles", "cli_observe", "cli_runtime")
FORBIDDEN = {f"replica.{m}" for m in ("cli", *GROUPS)}


def cli_imports(source: str) -> set[str]:
    """Every replica.cli* module `source` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n.startswith("replica.cli")}
    return found


@pytest.mark.parametrize("group", GROUPS)
def test_a_command_group_imports_only_cli_ctl(group):
    imported = cli_imports((REPLICA / f"{group}.py").read_text())
    assert "replica.cli_ctl" in imported
    assert not imported & FORBIDDEN, f"{group} imports {sorted(imported & FORBIDDEN)}"


def test_the_check_sees_a_group_importing_another():
    assert cli_imports("def f():\n    from replica.cli_observe import format_status\n") == {
        "replica.cli_observe", "replica.cli_observe.format_status"}
    assert cli_imports("from replica import cli\n") == {"replica.cli"}


def test_every_handler_in_the_table_lives_in_a_group_or_cli_ctl():
    from replica import cli
    homes = {h.handler.__module__ for h in cli.COMMANDS}
    assert homes <= {f"replica.{m}" for m in ("cli_ctl", *GROUPS)}, homes
