"""The tick benchmark runs the agent's due-time path; figures are reported, never asserted."""

from __future__ import annotations

import math

from segmentation.dueindex import DueIndex, due_states
from streams.bench_ticks import measure


def test_tick_bench_reevaluates_exactly_the_due_customers() -> None:
    run = measure(customers=2_000, due=20, ticks=3)
    assert run["customers"] == 2_000 and run["due"] == 20
    assert math.isfinite(run["median_tick_s"]) and run["median_tick_s"] > 0


def test_due_states_skips_stale_and_erased_entries() -> None:
    index = DueIndex()
    index.build(0, [(10, "a"), (20, "b"), (30, "c"), (40, "gone")])
    index.push(0, 15, "a")  # "a" was rescheduled to 15: the entry at 10 is stale
    table = {"a": 15, "b": 20, "c": 30}
    got = list(due_states(index, 0, 35, table.get, lambda due: due))
    assert got == [(15, 15), (20, 20), (30, 30)]
    assert index.next_due(0) == 40 and index.size(0) == 1
