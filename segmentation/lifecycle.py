"""Lifecycle stages, decided by the purchase history and the clock alone.

The stage is a pure function of the purchase times and `as_of`, so it does not depend on the order
events arrived in, and it moves both ways (an at_risk customer who buys is active again):
- prospect:    never bought (engaged, or only known from other events);
- churned:     no purchase for `churned_after` (absolute days, or a multiple of the own gap);
- at_risk:     no purchase for `at_risk_after`;
- reactivated: the gap before the latest purchase was a churn-length gap (came back after churn);
- new:         purchases on one day only;
- active:      repeat buyer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from segmentation.rules import Lifecycle
from segmentation.timeutil import DAY_MS

STAGES: Final = ("prospect", "new", "active", "at_risk", "churned", "reactivated")


@dataclass(frozen=True, slots=True)
class StageDecision:
    stage: str
    reason: str
    at_risk_after_days: float | None
    churned_after_days: float | None
    next_boundary_ms: int | None


def thresholds_days(cfg: Lifecycle, typical_gap_days: float | None) -> tuple[float, float]:
    """The at-risk and churn thresholds in days; relative ones stretch with the customer's own
    rhythm but never below the absolute floor."""
    at_risk = cfg.at_risk_after_days
    churned = cfg.churned_after_days
    if typical_gap_days is not None and typical_gap_days > 0:
        if cfg.at_risk_gap_multiple is not None:
            at_risk = max(at_risk, cfg.at_risk_gap_multiple * typical_gap_days)
        if cfg.churned_gap_multiple is not None:
            churned = max(churned, cfg.churned_gap_multiple * typical_gap_days)
    return at_risk, max(churned, at_risk)


def decide_stage(
    purchase_times_ms: Sequence[int], as_of_ms: int, cfg: Lifecycle, typical_gap_days: float | None
) -> StageDecision:
    """`purchase_times_ms`: the times of the counted orders, ascending."""
    if not purchase_times_ms:
        return StageDecision("prospect", "has never bought", None, None, None)
    at_risk_days, churned_days = thresholds_days(cfg, typical_gap_days)
    last = purchase_times_ms[-1]
    at_risk_at = last + int(at_risk_days * DAY_MS)
    churned_at = last + int(churned_days * DAY_MS)
    idle_days = (as_of_ms - last) / DAY_MS
    if as_of_ms >= churned_at:
        return StageDecision(
            "churned",
            f"no purchase for {idle_days:.1f} days (churned after {churned_days:g})",
            at_risk_days,
            churned_days,
            None,
        )
    next_boundary = churned_at if as_of_ms >= at_risk_at else at_risk_at
    if as_of_ms >= at_risk_at:
        return StageDecision(
            "at_risk",
            f"no purchase for {idle_days:.1f} days (at risk after {at_risk_days:g})",
            at_risk_days,
            churned_days,
            next_boundary,
        )
    last_day = last // DAY_MS
    earlier = [t for t in purchase_times_ms if t // DAY_MS < last_day]
    if earlier:
        returned_at = min(t for t in purchase_times_ms if t // DAY_MS == last_day)
        gap_days = (returned_at - earlier[-1]) / DAY_MS
        if returned_at - earlier[-1] >= int(churned_days * DAY_MS):
            return StageDecision(
                "reactivated",
                f"bought again after {gap_days:.1f} days away (churned after {churned_days:g})",
                at_risk_days,
                churned_days,
                next_boundary,
            )
    first_day = purchase_times_ms[0] // DAY_MS
    if all(t // DAY_MS == first_day for t in purchase_times_ms):
        return StageDecision(
            "new", "bought on one day only", at_risk_days, churned_days, next_boundary
        )
    return StageDecision(
        "active",
        f"repeat buyer, last purchase {idle_days:.1f} days ago",
        at_risk_days,
        churned_days,
        next_boundary,
    )
