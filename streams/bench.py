"""`tierstream bench`: placeholder until the benchmark lands (issue 7); says so instead of faking."""

from __future__ import annotations

import sys


def run_bench(customers: int, events: int, out: str | None) -> int:
    print(
        "tierstream bench: the benchmark is not implemented yet (issue 7); no figures to report.",
        file=sys.stderr,
    )
    return 2
