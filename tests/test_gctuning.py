"""The worker's garbage collector settings (streams/gctuning.py). Applied in a child process:
freezing the test process's own objects would outlive the test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from streams.gctuning import PYTHON_DEFAULTS, thresholds_for

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import gc, sys, orjson
from streams.gctuning import tune_gc
kept = [object() for _ in range(10)]
applied = tune_gc(int(sys.argv[1]))
print(orjson.dumps({"applied": applied, "now": gc.get_threshold(),
                    "frozen": gc.get_freeze_count()}).decode())
"""


def _tune_in_child(young: int) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(young)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return dict(orjson.loads(out.stdout))


def test_thresholds_for_a_raised_young_generation() -> None:
    assert thresholds_for(50_000) == (50_000, 20, 10)
    assert thresholds_for(0) == PYTHON_DEFAULTS == (700, 10, 10)


@pytest.mark.parametrize("young", [50_000, 1_000])
def test_a_raised_threshold_is_applied_and_start_up_objects_are_frozen(young: int) -> None:
    got = _tune_in_child(young)
    assert got["applied"] == got["now"] == [young, 20, 10]
    # Everything alive at the call (modules, the probe's list) left the collected generations.
    assert isinstance(got["frozen"], int) and got["frozen"] > 1_000


def test_zero_leaves_pythons_defaults_and_freezes_nothing() -> None:
    got = _tune_in_child(0)
    assert got["applied"] == got["now"] == list(PYTHON_DEFAULTS)
    assert got["frozen"] == 0
