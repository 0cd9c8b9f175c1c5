"""`tierstream bench`: not built yet (issue 7); it says so instead of printing made-up figures."""

from __future__ import annotations

import sys


def run_bench(customers: int, events: int, out: str | None) -> int:
    print(
        "tierstream bench: the benchmark is not implemented yet (issue 7); no figures to report.",
        file=sys.stderr,
    )
    return 2
