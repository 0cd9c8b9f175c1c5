"""RFM scores with fixed thresholds and the segment map with an explicit, exhaustive priority."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final


def recency_score(recency_days: float, upper_bounds: Sequence[float]) -> int:
    """5 for the most recent buyers: 5 if within the first bound, 4 within the second, ... 1."""
    for index, bound in enumerate(upper_bounds):
        if recency_days <= bound:
            return 5 - index
    return 1


def ascending_score(value: float, lower_bounds: Sequence[float]) -> int:
    """1 below the first bound, then 2, 3, 4, 5 from each lower bound on (frequency, monetary)."""
    score = 1
    for bound in lower_bounds:
        if value >= bound:
            score += 1
    return score


# The classic 11 segments over R and FM (the rounded-up mean of F and M). The classic maps overlap
# (hibernating vs lost) or rely on an implicit first-match order; this one is ordered explicitly
# and a test checks that every (R, F, M) in 1..5 lands in exactly the first segment that holds.
SEGMENT_PRIORITY: Final[tuple[tuple[str, Callable[[int, int, int], bool]], ...]] = (
    ("champions", lambda r, f, fm: r == 5 and fm >= 4),
    ("loyal", lambda r, f, fm: r >= 3 and fm >= 4),
    ("cant_lose", lambda r, f, fm: r <= 2 and fm == 5),
    ("at_risk", lambda r, f, fm: r <= 2 and fm >= 3),
    ("new_customers", lambda r, f, fm: r == 5 and f == 1),
    ("promising", lambda r, f, fm: r == 4 and f == 1),
    ("potential_loyalist", lambda r, f, fm: r >= 4),
    ("need_attention", lambda r, f, fm: r == 3 and fm == 3),
    ("about_to_sleep", lambda r, f, fm: r == 3),
    ("hibernating", lambda r, f, fm: r == 2),
    ("lost", lambda r, f, fm: r == 1),
)
SEGMENTS: Final = tuple(name for name, _ in SEGMENT_PRIORITY)


def fm_score(f: int, m: int) -> int:
    return (f + m + 1) // 2


def segment_of(r: int, f: int, m: int) -> str:
    if not all(1 <= s <= 5 for s in (r, f, m)):
        raise ValueError(f"scores out of range: r={r} f={f} m={m}")
    fm = fm_score(f, m)
    for name, holds in SEGMENT_PRIORITY:
        if holds(r, f, fm):
            return name
    raise ValueError(f"scores out of range: r={r} f={f} m={m}")
