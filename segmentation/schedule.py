"""When a customer's standing can next change with no event: the next boundary.

Every time-dependent input of a decision has a known crossing instant: recency and days since the
first purchase grow a day at a time, P(alive) falls as T grows, engagement decays. The customer's
next boundary is the earliest crossing after `as_of` of any threshold the rules or the model use;
the clock re-evaluates the customer then (and only then), so the work per tick grows with the
customers whose boundary passed, not with all customers.

A crossing is the first instant at which the decision's own input, as `evaluate` computes it
(engagement scores rounded to 4 decimals, P(alive) to 6, on whole days of T), is past the
threshold, not the instant the exact curve meets it. A boundary computed on the exact curve can
land where the rounded value still equals the threshold: the re-evaluation there changes nothing,
and the next crossing it computes is that same instant, no longer in the future, so the boundary
is lost and the customer keeps a stale level until some event re-evaluates them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from functools import partial

from segmentation.bgnbd import (
    BgNbdParams,
    churn_p_alive,
    expected_days_between_purchases,
    next_crossing_time,
)
from segmentation.evaluate import Evaluation, engagement_at
from segmentation.rules import Rules, derived
from segmentation.state import NO_TIME, CustomerState
from segmentation.timeutil import DAY_MS, day_of

# How far ahead a P(alive) crossing is searched: beyond it the customer is churned by stage anyway.
P_ALIVE_HORIZON_DAYS = 3 * 365
# `evaluate` rounds these features before any rule compares them.
ENGAGEMENT_DECIMALS = 4
P_ALIVE_DECIMALS = 6
# Half a unit of the last kept decimal: round(v, d) < level once v < level - half, and
# round(v, d) <= level once v < level + half.
_ENGAGEMENT_HALF = 0.5 * 10.0**-ENGAGEMENT_DECIMALS
_P_ALIVE_HALF = 0.5 * 10.0**-P_ALIVE_DECIMALS
# A search for a crossing gives up beyond ~2^62 ms (about 146 million years).
_MAX_DOUBLINGS = 62
# How far a closed-form decay estimate may be from the instant the rounded score passes a level:
# its float error is far below a millisecond; a minute leaves room to spare.
_GUESS_SLACK_MS = 60_000


def _thresholds(rules: Rules, feature: str) -> frozenset[float]:
    """The numbers the tier and tag rules compare `feature` with."""

    return derived(
        rules,
        "thresholds:" + feature,
        lambda: frozenset(value for _, value in _numeric_conditions(rules, feature)),
    )


def _numeric_conditions(rules: Rules, feature: str) -> Iterator[tuple[str, float]]:
    """(operator, number) of every tier and tag condition comparing `feature` with a number."""
    for rule in (*rules.tiers, *rules.tags):
        for cond in rule.conditions:
            value = cond.value
            if (
                cond.feature == feature
                and isinstance(value, int | float)
                and not isinstance(value, bool)
            ):
                yield cond.op, float(value)


def _engagement_flips(rules: Rules) -> tuple[tuple[tuple[float, bool], ...], ...]:
    """Per engagement feature (total, email, WeChat), the levels a decaying rounded score can
    pass, each with whether it flips at `<= level` rather than `< level`: the engagement
    level's `high` / `medium` (a `>=` comparison) and any number a rule compares it with (any
    operator: both the `< v` and the `<= v` flip)."""

    def compute() -> tuple[tuple[tuple[float, bool], ...], ...]:
        cfg = rules.engagement
        out = []
        for index, feature in enumerate(ENGAGEMENT_FEATURES):
            rule_levels = _thresholds(rules, feature)
            strict = rule_levels | {cfg.high, cfg.medium} if index == 0 else rule_levels
            flips = [(level, False) for level in strict] + [(level, True) for level in rule_levels]
            # A rounded score never gets below 0, nor below 0.0 strictly.
            out.append(
                tuple(
                    (level, eq)
                    for level, eq in flips
                    if not (level < 0.0 or (level == 0.0 and not eq))
                )
            )
        return tuple(out)

    return derived(rules, "engagement_flips", compute)


ENGAGEMENT_FEATURES = ("engagement_score", "email_score", "wechat_score")


def _day_steps(origin_ms: int, days: Iterable[float]) -> list[int]:
    """Instants at which a whole-day count since `origin_ms` reaches or passes each threshold,
    whatever the comparison (a condition `< v`, `<= v`, `> v` or `>= v` flips at day v or day
    v + 1): for cut points whose comparison is not known here."""
    out = []
    for v in days:
        whole = math.floor(v)
        out.append(origin_ms + whole * DAY_MS)
        out.append(origin_ms + (whole + 1) * DAY_MS)
    return out


def _flip_days(rules: Rules, feature: str) -> frozenset[int]:
    """The whole-day counts of a day feature (recency_days, days_since_first_purchase, T) at
    which a tier or tag condition on it can change its answer, by its operator: `< v` and `>= v`
    at day ceil(v), `<= v` and `> v` at day floor(v) + 1, `== v` and `!= v` at both. One
    instant per condition, not two: a re-evaluation at the other changes nothing (about half of
    the time re-evaluations on the bench workload were such)."""

    def compute() -> frozenset[int]:
        days: set[int] = set()
        for op, value in _numeric_conditions(rules, feature):
            if op in ("lt", "ge"):
                days.add(math.ceil(value))
            elif op in ("le", "gt"):
                days.add(math.floor(value) + 1)
            else:  # eq, ne: both sides
                days.update((math.floor(value), math.floor(value) + 1))
        return frozenset(days)

    return derived(rules, "flip_days:" + feature, compute)


def _recency_steps(rules: Rules, last_ms: int) -> list[int]:
    """The instants after the last purchase at which a recency score or rule can change."""
    flips = derived(
        rules,
        "recency_flip_days",
        # Fixed scoring: score 5 - i while recency <= bound i (`rfm.recency_score`).
        lambda: (
            _flip_days(rules, "recency_days")
            | {math.floor(b) + 1 for b in rules.scoring.recency_days}
        ),
    )
    steps = [last_ms + d * DAY_MS for d in flips]
    cuts = derived(rules, "recency_cuts", lambda: _recency_cut_levels(rules))
    if cuts:
        steps += _day_steps(last_ms, cuts)
    return steps


def _recency_cut_levels(rules: Rules) -> frozenset[float]:
    """Quantile scoring's recency cut points and hysteresis edges: both days of each are kept
    (the held score's comparison is not known here)."""
    if rules.cutpoints is None:
        return frozenset()
    return frozenset(set(rules.cutpoints.recency) | _recency_hysteresis_edges(rules))


def _recency_hysteresis_edges(rules: Rules) -> set[float]:
    """With quantile scoring a recency score is held past its cut point `c` until the recency
    leaves the widened bucket, `c + w(c)` (see `evaluate.rfm_scores`, min_width 1 day): those
    edges are boundaries too, or a held score would only be re-scored by the next event."""
    cuts = rules.cutpoints
    if rules.scoring.method != "quantile" or cuts is None:
        return set()
    band = rules.scoring.hysteresis
    edges: set[float] = set()
    for c in cuts.recency:
        # Recency only grows with time: a held score is left through the upper edge.
        edges.add(c + max(band * abs(c), 1.0))
    return edges


def first_instant(pred: Callable[[int], bool], after: int, guess: int) -> int | None:
    """The smallest integer t > `after` with pred(t), for a pred that is false at `after` and
    turns true for good at some later t (a decaying value passing below a level). `guess` is a
    close estimate: the common case costs two calls; otherwise a galloping then binary search.
    None when it does not turn true within ~2^62 of `after`."""
    hi = max(guess, after + 1)
    if pred(hi):
        lo, step = hi - 1, 1
        while lo > after and pred(lo):
            hi = lo
            step *= 2
            lo = max(after, hi - step)
    else:
        lo, step = hi, 1
        hi = lo + step
        while not pred(hi):
            if step.bit_length() > _MAX_DOUBLINGS:
                return None
            lo = hi
            step *= 2
            hi = lo + step
    # pred(lo) is false (lo == after, or checked), pred(hi) is true.
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _decay_guess(at_ms: int, value: float, target: float, half_life_ms: float) -> int:
    """When `value` (at `at_ms`) halving every `half_life_ms` reaches `target` (approximately)."""
    if value <= target:
        return at_ms
    return at_ms + math.ceil(half_life_ms * math.log2(value / target))


def engagement_due_ms(
    state: CustomerState, rules: Rules, as_of_ms: int, not_after: int | None = None
) -> int | None:
    """The next instant after `as_of_ms` at which a rounded engagement feature passes a level:
    the engagement level's `high` / `medium` (a `>=` comparison), or a number the rules compare
    an engagement score with (any operator: both the `< v` and the `<= v` flip). Crossings that
    are certainly later than `not_after` (an earlier boundary of another kind) are not searched."""
    if state.engaged_as_of_ms == NO_TIME:
        return None
    half_life_days = rules.engagement.half_life_days
    half_life_ms = half_life_days * DAY_MS

    def values(t: int) -> tuple[float, float, float]:
        email, wechat = engagement_at(state, t, half_life_days)
        return (
            round(email + wechat, ENGAGEMENT_DECIMALS),
            round(email, ENGAGEMENT_DECIMALS),
            round(wechat, ENGAGEMENT_DECIMALS),
        )

    now = values(as_of_ms)
    raw_at_origin = (
        state.email_score + state.wechat_score,
        state.email_score,
        state.wechat_score,
    )
    # (closed-form estimate, feature index, level, flips at `<= level` rather than `< level`)
    pending: list[tuple[int, int, float, bool]] = []
    for index, flips in enumerate(_engagement_flips(rules)):
        for level, or_equal in flips:
            if now[index] <= level if or_equal else now[index] < level:
                continue  # already past: scores only decay
            target = level + _ENGAGEMENT_HALF if or_equal else level - _ENGAGEMENT_HALF
            guess = _decay_guess(
                state.engaged_as_of_ms, raw_at_origin[index], max(target, 1e-12), half_life_ms
            )
            pending.append((guess, index, level, or_equal))
    best: int | None = None
    for guess, index, level, or_equal in sorted(pending):
        bound = best if best is not None else not_after
        if bound is not None and guess > bound + _GUESS_SLACK_MS:
            break  # this and every later estimate cannot be the earliest

        def crossed(t: int, i: int = index, lv: float = level, eq: bool = or_equal) -> bool:
            v = values(t)[i]
            return v <= lv if eq else v < lv

        at = first_instant(crossed, as_of_ms, guess)
        if at is not None and (best is None or at < best):
            best = at
    return best


def p_alive_due_ms(
    ev: Evaluation, rules: Rules, params: BgNbdParams, not_after: int | None = None
) -> list[int]:
    """The next instants after the evaluation at which the rounded P(alive) (on whole days of T)
    passes the churn level (a `<` comparison) or a number the rules compare it with. A level
    not yet passed on the day of `not_after` (an earlier boundary of another kind) is passed
    only after it: its crossing is not searched (one P(alive) instead of a search: the
    searches were a fifth of the core's cost per re-evaluation, cProfile, 2026-12-07)."""
    f = ev.features
    first = ev.first_purchase_ms
    if first is None or f["x"] is None or f["p_alive"] is None:
        return []
    x, t_x, big_t = int(f["x"]), float(f["t_x"]), float(f["T"])
    first_day = day_of(first)
    rule_levels = _thresholds(rules, "p_alive")
    flips = [(level, False) for level in {rules.churn.p_alive_below} | rule_levels]
    flips += [(level, True) for level in rule_levels]

    def rounded(days: int) -> float:
        return round(churn_p_alive(x, t_x, float(max(days, int(t_x))), params), P_ALIVE_DECIMALS)

    def crossed(days: int, lv: float, eq: bool) -> bool:
        v = rounded(days)
        return v <= lv if eq else v < lv

    out: list[int] = []
    for level, or_equal in flips:
        current = f["p_alive"]
        if (current <= level) if or_equal else (current < level):
            continue
        target = level + _P_ALIVE_HALF if or_equal else level - _P_ALIVE_HALF
        if not 0.0 < target < 1.0:
            continue
        if not_after is not None and not crossed(day_of(not_after) - first_day, level, or_equal):
            continue  # P(alive) only falls: this crossing is on a later day than `not_after`
        crossing = next_crossing_time(x, t_x, big_t, target, params, P_ALIVE_HORIZON_DAYS)
        if crossing is None:
            continue

        # The exact crossing is a close guess; check it against what `evaluate` will compute.
        days = first_instant(
            partial(crossed, lv=level, eq=or_equal), int(big_t), math.ceil(crossing)
        )
        if days is not None and days <= big_t + P_ALIVE_HORIZON_DAYS:
            out.append((first_day + days) * DAY_MS)
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
        candidates += _recency_steps(rules, last)
        candidates += [first + d * DAY_MS for d in _flip_days(rules, "days_since_first_purchase")]
        # T counts whole days from the first purchase day (btyd_stats).
        first_day_ms = day_of(first) * DAY_MS
        candidates += [first_day_ms + d * DAY_MS for d in _flip_days(rules, "T")]
        gap_due = churn_gap_due_ms(ev, rules, params)
        if gap_due is not None:
            candidates.append(gap_due)
    future = [c for c in candidates if c > as_of]
    earliest = min(future) if future else None
    if last is not None and first is not None:
        # Searched last, bounded by the cheap boundaries: a P(alive) crossing after the
        # earliest of them cannot be the next boundary (`p_alive_due_ms`).
        p_alive = [c for c in p_alive_due_ms(ev, rules, params, earliest) if c > as_of]
        if p_alive and (earliest is None or min(p_alive) < earliest):
            earliest = min(p_alive)
    engaged = engagement_due_ms(state, rules, as_of, not_after=earliest)
    if engaged is not None and (earliest is None or engaged < earliest):
        return engaged
    return earliest
