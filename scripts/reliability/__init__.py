# SPDX-License-Identifier: GPL-2.0-or-later
"""The reliability suite's parts (scripts/reliability.py runs them and prints the table).

Each part is a function `run_PART(options, log) -> PartResult`: it builds its own lab (network
namespaces named `rb...`, tmpfs under /dev/shm/rb...), tears it down in `finally`, and returns
one figure line plus the counts the table shows. A part that finds a lost write or a crash
says so in its figure and in `problems`; it does not raise for it (the suite goes on and the
table shows it). An exception out of a part is a failure of the harness or of the product
where no figure can be given; the runner reports it as the part's result.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PartResult:
    part: str
    runs: int
    figure: str                     # the part's one line: "acknowledged writes lost: 0 of 5123"
    lost: int = 0                   # acknowledged writes (blocks, files) not found
    crashes: int = 0                # fuzz crashes, daemons that died on their own
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.lost == 0 and self.crashes == 0
