"""The worker's garbage collector settings.

With Python's defaults (a young-generation threshold of 700 allocations), the worker ran a full
collection about every 1.3 s at ~1,100 events/s, each 120-190 ms over ~300,000 objects, and each
found almost nothing to free: 9.6-11.2 s of a 75-90 s run (README, Performance). What fills the
old generation is not garbage but objects that live a little longer than a young collection:
records held for their event-time turn, a write batch's pending deliveries, Faust's buffered
messages. A young threshold of tens of thousands lets most of them die before they are promoted,
and freezing what exists at start-up (modules, the app, the rules) keeps it out of every later
full collection. Reference cycles are still collected, only in larger, rarer steps.
"""

from __future__ import annotations

import gc

#: Python's own thresholds (CPython 3.11).
PYTHON_DEFAULTS = (700, 10, 10)
#: Young collections per middle one, and middle ones per full one, with a raised threshold.
MIDDLE, OLD = 20, 10


def thresholds_for(young: int) -> tuple[int, int, int]:
    """The three thresholds for TIERSTREAM_GC_THRESHOLD (0: Python's defaults)."""
    return PYTHON_DEFAULTS if young == 0 else (young, MIDDLE, OLD)


def tune_gc(young: int) -> tuple[int, int, int]:
    """Apply the thresholds; with a raised threshold, also move every object that exists now
    to the permanent generation. Call once the app is built, before it runs."""
    thresholds = thresholds_for(young)
    gc.set_threshold(*thresholds)
    if young != 0:
        gc.freeze()
    return thresholds
