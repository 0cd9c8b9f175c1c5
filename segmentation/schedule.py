"""When a customer's standing can next change with no event: the next boundary.

Every time-dependent input of a decision has a known crossing instant: recency and days since the
first purchase grow a day at a time, P(alive) falls as T grows, engagement decays. The customer's
next boundary is the earliest crossing after `as_of` of any threshold the rules or the model use;
the clock re-evaluates the customer then (and only then), so the work per tick grows with the
customers whose boundary passed, not with all customers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from segmentation.bgnbd import BgNbdParams, expected_days_between_purchases, next_crossing_time
from segmentation.evaluate import Evaluation
from segmentation.rules import Rules
from segmentation.state import NO_TIME, CustomerState
from segmentation.timeutil import DAY_MS, day_of

# How far ahead a P(alive) crossing is searched: beyond it the customer is churned by stage anyway.
P_ALIVE_HORIZON_DAYS = 3 * 365


def _thresholds(rules: Rules, feature: str) -> set[float]:
    values: set[float] = set()
    for rule in (*rules.tiers, *rules.tags):
        for cond in rule.conditions:
            if cond.feature == feature and isinstance(cond.value, int | float):
                values.add(float(cond.value))
    return values


def _day_steps(origin_ms: int, days: Iterable[float]) -> list[int]:
    """Instants at which a whole-day count since `origin_ms` reaches or passes each threshold (a
    condition `< v`, `<= v`, `> v` or `>= v` flips at day v or day v + 1)."""
    out = []
    for v in days:
        whole = math.floor(v)
        out.append(origin_ms + whole * DAY_MS)
        out.append(origin_ms + (whole + 1) * DAY_MS)
    return out


def churn_gap_due_ms(ev: Evaluation, rules: Rules, params: BgNbdParams) -> int | None:
    """When the purchase gap exceeds `gap_multiple` x the expected days between purchases."""
    f = ev.features
    if ev.last_purchase_ms is None or f["x"] is None:
        return None
    expected = expected_days_between_purchases(params, f["x"], float(f["t_x"]))
    return ev.last_purchase_ms + int(rules.churn.gap_multiple * expected * DAY_MS)


def next_due_ms(
    state: CustomerState, ev: Evaluation, rules: Rules, params: BgNbdParams
) -> int | None:
    as_of = ev.as_of_ms
    candidates: list[int] = []
    if ev.stage.next_boundary_ms is not None:
        candidates.append(ev.stage.next_boundary_ms)
    last, first = ev.last_purchase_ms, ev.first_purchase_ms
    if last is not None and first is not None:
        recency = set(rules.scoring.recency_days) | _thresholds(rules, "recency_days")
        if rules.cutpoints is not None:
            recency |= set(rules.cutpoints.recency)
        candidates += _day_steps(last, recency)
        candidates += _day_steps(first, _thresholds(rules, "days_since_first_purchase"))
        gap_due = churn_gap_due_ms(ev, rules, params)
        if gap_due is not None:
            candidates.append(gap_due)
        f = ev.features
        first_day = day_of(first)
        for level in {rules.churn.p_alive_below} | _thresholds(rules, "p_alive"):
            if not 0.0 < level < 1.0:
                continue
            crossing = next_crossing_time(
                f["x"], float(f["t_x"]), float(f["T"]), level, params, P_ALIVE_HORIZON_DAYS
            )
            if crossing is not None:
                # P(alive) is evaluated on whole days of T (the BTYD convention).
                candidates.append((first_day + math.ceil(crossing)) * DAY_MS)
    if state.engaged_as_of_ms != NO_TIME:
        half_life_ms = rules.engagement.half_life_days * DAY_MS
        scores = {
            "engagement_score": state.email_score + state.wechat_score,
            "email_score": state.email_score,
            "wechat_score": state.wechat_score,
        }
        for feature, score in scores.items():
            levels = _thresholds(rules, feature)
            if feature == "engagement_score":
                levels |= {rules.engagement.high, rules.engagement.medium}
            for level in levels:
                if score > level > 0:
                    at = state.engaged_as_of_ms + half_life_ms * math.log2(score / level)
                    candidates.append(math.ceil(at))
    future = [c for c in candidates if c > as_of]
    return min(future) if future else None
