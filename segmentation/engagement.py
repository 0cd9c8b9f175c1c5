"""Engagement: interactions weighted and exponentially decayed in event time.

The score is kept as (value, as_of). Adding an event at time t is exact whatever the arrival order:
an event later than as_of decays the stored value forward; a late event is decayed forward to
as_of. So the final score does not depend on the order events arrive in.
"""

from __future__ import annotations

from segmentation.rules import Engagement
from segmentation.timeutil import DAY_MS


def decay(value: float, elapsed_ms: int, half_life_days: float) -> float:
    if elapsed_ms <= 0 or value == 0.0:
        return value
    return value * 0.5 ** (elapsed_ms / (half_life_days * DAY_MS))


def add(
    score: float, as_of_ms: int, weight: float, at_ms: int, half_life_days: float
) -> tuple[float, int]:
    """The score after an interaction of `weight` at `at_ms`, and its new as-of time."""
    if at_ms >= as_of_ms:
        return decay(score, at_ms - as_of_ms, half_life_days) + weight, at_ms
    return score + decay(weight, as_of_ms - at_ms, half_life_days), as_of_ms


def level(score: float, cfg: Engagement) -> str:
    if score >= cfg.high:
        return "high"
    if score >= cfg.medium:
        return "medium"
    return "low"
