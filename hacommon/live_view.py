# SPDX-License-Identifier: GPL-2.0-or-later
"""The live views of both CLIs (`replicactl status --watch`, `hbctl status --watch`): redraw
on each change a daemon streams, never on a timer.

    watch(changes, draw, plain)     changes: an iterator that blocks until the next change
                                    (the daemon's stream); its end ends the view
      stdout a terminal:  rich Live, draw() -> a renderable, redrawn per change
      otherwise:          plain() -> text, printed per change, blank-line apart
    Ctrl-C leaves either (exit 0), the terminal restored by Live's context.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any


def watch(changes: Iterator[Any], draw: Callable[[], Any], plain: Callable[[], str],
          out: Any = None) -> int:
    out = out or sys.stdout
    try:
        if not out.isatty():
            for _ in changes:
                print(plain(), file=out, flush=True)
                print(file=out, flush=True)
            return 0
        from rich.console import Console
        from rich.live import Live
        with Live(draw(), console=Console(file=out), auto_refresh=False) as live:
            for _ in changes:
                live.update(draw(), refresh=True)
        return 0
    except KeyboardInterrupt:
        return 0
