"""Tests for segmentation.schedule: a customer's next boundary is never missed.

The worker re-evaluates a customer who does nothing only at their next boundary (`next_due_ms`),
so a boundary that is not scheduled leaves a stale tier, stage or engagement level until some
event happens to re-evaluate them: the final state would then depend on when (in which arrival
order) the customer was last evaluated. Found that way: an engagement score that decays to a level
was re-evaluated at the exact crossing instant, where the score (rounded to 4 decimals, as
`evaluate` compares it) still equalled the level, and the boundary was never scheduled again.

The properties, on the pure core with the worker's clock loop simulated (`Partition`):
- between an evaluation and its next boundary the decision does not change;
- the same events folded in time order, shuffled, or shuffled within each day with some delayed
  by weeks, then the clock moved to one end time, leave every customer with the same decision,
  and that decision is what a fresh evaluation at the end time gives.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segmentation.bgnbd import DEFAULT_PARAMS, BgNbdParams, churn_p_alive
from segmentation.dueindex import DueIndex, due_states
from segmentation.evaluate import Evaluation, evaluate
from segmentation.events import EMAIL_CLICKS, EMAIL_OPENS, PURCHASES, WECHAT, InputEvent
from segmentation.quantiles import CutPoints
from segmentation.rules import Rules, default_rules, parse_rules_text
from segmentation.schedule import (
    _flip_days,
    _recency_steps,
    churn_gap_due_ms,
    engagement_due_ms,
    first_instant,
    next_due_ms,
    p_alive_due_ms,
)
from segmentation.state import CustomerState
from segmentation.step import apply_event, reevaluate
from segmentation.timeutil import DAY_MS

PARAMS = DEFAULT_PARAMS
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
MINUTE_MS = 60_000

DEFAULT = default_rules()
# Every time-dependent feature compared with a number, by every kind of operator, and a short
# half-life so engagement crosses several levels within a history.
THRESHOLDS = parse_rules_text(
    """
rules_version = "schedule-test"
[engagement]
half_life_days = 7
high = 8.0
medium = 2.5
[churn]
p_alive_below = 0.45
[[tiers]]
name = "vip"
when = { engagement_score_gt = 5.0, p_alive_ge = 0.6 }
[[tiers]]
name = "active"
when = { T_ge = 40, email_score_le = 1.5, days_since_first_purchase_lt = 200 }
[[tiers]]
name = "potential"
when = { wechat_score_ge = 2.0, recency_days_le = 45 }
[[tiers]]
name = "ordinary"
when = {}
[[tags]]
name = "quiet_fan"
when = { wechat_score_lt = 1.0, p_alive_gt = 0.35 }
[[tags]]
name = "ex_reader"
when = { email_score_le = 0.5, engagement_score_ne = 0.0 }
[[tags]]
name = "tenth_day"
when = { recency_days_eq = 10 }
[[tags]]
name = "long_known"
when = { T_gt = 20.5, days_since_first_purchase_ge = 35.5 }
[[tags]]
name = "not_day_three"
when = { days_since_first_purchase_ne = 3, recency_days_lt = 17.5, recency_days_gt = 2 }
""",
    fmt="toml",
)
# Quantile scoring: held scores past a cut point must still be re-scored when the hold ends.
QUANTILE = parse_rules_text(
    '[scoring]\nmethod = "quantile"\nhysteresis = 0.1\n[[tiers]]\nname = "ordinary"\n',
    fmt="toml",
).with_cutpoints(
    CutPoints(
        recency=(12.0, 35.0, 70.0, 150.0),
        frequency=(1.0, 2.0, 3.0, 5.0),
        monetary=(20.0, 50.0, 120.0, 400.0),
        version="cut-test",
        computed_at_ms=T0,
        population=1000,
    )
)
RULE_SETS = {"default": DEFAULT, "thresholds": THRESHOLDS, "quantile": QUANTILE}


# -- events -----------------------------------------------------------------------------------


def purchase(customer: str, eid: str, at: int, cents: int = 4_000) -> InputEvent:
    return InputEvent(
        topic=PURCHASES,
        event_id=eid,
        customer_id=customer,
        occurred_ms=at,
        kind="purchase",
        order_id=eid,
        amount_cents=cents,
    )


def engagement(customer: str, eid: str, at: int, topic: str, kind: str | None = None) -> InputEvent:
    return InputEvent(
        topic=topic, event_id=eid, customer_id=customer, occurred_ms=at, kind=kind or topic
    )


def click(customer: str, eid: str, at: int) -> InputEvent:
    return engagement(customer, eid, at, EMAIL_CLICKS)


def email_open(customer: str, eid: str, at: int) -> InputEvent:
    return engagement(customer, eid, at, EMAIL_OPENS)


# -- what the clock must keep right -------------------------------------------------------------


def decision(ev: Evaluation, rules: Rules, params: BgNbdParams = PARAMS) -> tuple[Any, ...]:
    """Everything time can change that the service acts on: tier, stage, engagement level, RFM
    scores and segment, tags, and the two churn-warning conditions."""
    f = ev.features
    gap_due = churn_gap_due_ms(ev, rules, params)
    return (
        ev.tier,
        ev.stage.stage,
        f["engagement_level"],
        ev.scores,
        f["segment"],
        tuple(ev.tags),
        f["p_alive"] is not None and f["p_alive"] < rules.churn.p_alive_below,
        gap_due is not None and ev.as_of_ms >= gap_due,
    )


def stored(state: CustomerState) -> tuple[Any, ...]:
    """What the state keeps of its last decision (and what it publishes changes against)."""
    return (state.tier, state.stage, state.engagement_level, state.scores)


def fresh(state: CustomerState, rules: Rules, at_ms: int) -> tuple[Any, ...]:
    ev = evaluate(state, rules, PARAMS, at_ms)
    return (ev.tier, ev.stage.stage, ev.features["engagement_level"], ev.scores)


@dataclass
class Partition:
    """The worker's clock on one partition, without Kafka: every record first moves the clock to
    its event time (re-evaluating each customer whose boundary passed, at the boundary), then is
    folded at the clock (a late event is evaluated at the partition's present)."""

    rules: Rules
    states: dict[str, CustomerState] = field(default_factory=dict)
    due: DueIndex = field(default_factory=DueIndex)
    clock: int = -1

    def _schedule(self, state: CustomerState | None) -> None:
        if state is not None and state.next_due_ms is not None:
            self.due.push(0, state.next_due_ms, state.customer_id)

    def advance(self, at_ms: int) -> None:
        if at_ms <= self.clock:
            return
        self.clock = at_ms
        for due_ms, state in due_states(
            self.due, 0, at_ms, self.states.get, lambda s: s.next_due_ms
        ):
            reevaluate(state, self.rules, PARAMS, due_ms, "time")
            self._schedule(state)

    def receive(self, event: InputEvent) -> None:
        self.advance(event.occurred_ms)
        result = apply_event(
            self.states.get(event.customer_id), event, self.rules, PARAMS, as_of_ms=self.clock
        )
        assert result.state is not None
        self.states[event.customer_id] = result.state
        self._schedule(result.state)


def replay(events: list[InputEvent], rules: Rules, end_ms: int) -> Partition:
    partition = Partition(rules)
    for event in events:
        partition.receive(event)
    partition.advance(end_ms)
    return partition


def shuffled_within_days(
    events: list[InputEvent], rng: random.Random, delayed_share: float = 0.02
) -> list[InputEvent]:
    """Time order by day, shuffled within each day; `delayed_share` of the events arrive 1-6
    weeks late (after the events of that later day)."""
    keyed = []
    for event in events:
        day = event.occurred_ms // DAY_MS
        if rng.random() < delayed_share:
            day += rng.randint(7, 42)
        keyed.append((day, rng.random(), event))
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [event for _, _, event in keyed]


# -- the regressions ----------------------------------------------------------------------------


def test_a_score_exactly_at_the_medium_level_is_scheduled_to_drop() -> None:
    # One click: a score of exactly 3.0 = medium, which the old `score > level` check skipped.
    state = apply_event(None, click("c", "k1", T0), DEFAULT, PARAMS).state
    assert state is not None and state.engagement_level == "medium"
    due = state.next_due_ms
    assert due is not None
    assert evaluate(state, DEFAULT, PARAMS, due - 1).features["engagement_level"] == "medium"
    assert evaluate(state, DEFAULT, PARAMS, due).features["engagement_level"] == "low"


def test_re_evaluating_at_the_exact_crossing_keeps_the_boundary() -> None:
    # 4.0 decays to 3.0 (medium) after half_life * log2(4/3); at that millisecond the score
    # rounds to 3.0, still medium. The boundary after it must still be scheduled.
    state = apply_event(None, click("c", "k1", T0), DEFAULT, PARAMS).state
    state = apply_event(state, email_open("c", "o1", T0), DEFAULT, PARAMS).state
    assert state is not None
    half_life_ms = DEFAULT.engagement.half_life_days * DAY_MS
    exact = T0 + math.ceil(half_life_ms * math.log2(4.0 / 3.0))
    reevaluate(state, DEFAULT, PARAMS, exact, "time")
    assert state.engagement_level == "medium"
    assert state.next_due_ms is not None and state.next_due_ms > exact
    reevaluate(state, DEFAULT, PARAMS, state.next_due_ms, "time")
    assert state.engagement_level == "low"


def test_a_customer_left_alone_ends_at_the_fresh_decision() -> None:
    # Engaged (high), never bought: the clock alone must take them to low, tier ordinary.
    events = [click("p", f"k{n}", T0 + n * MINUTE_MS) for n in range(4)]
    end = T0 + 400 * DAY_MS
    partition = replay(events, DEFAULT, end)
    state = partition.states["p"]
    assert stored(state) == fresh(state, DEFAULT, end) == ("ordinary", "prospect", "low", None)


@pytest.mark.parametrize(
    ("after", "guess"), [(0, 1), (0, 500), (0, 1_000), (0, 5_000), (999, 0), (10, 10**9)]
)
def test_first_instant_finds_the_first_true_whatever_the_guess(after: int, guess: int) -> None:
    assert first_instant(lambda t: t >= 1_000, after, guess) == max(1_000, after + 1)


def test_first_instant_gives_up_on_a_predicate_that_never_turns_true() -> None:
    assert first_instant(lambda t: False, 0, 10) is None


# -- generated histories ------------------------------------------------------------------------

ENGAGEMENT_KINDS = [
    (EMAIL_OPENS, None),
    (EMAIL_CLICKS, None),
    (WECHAT, "activity_join"),
    (WECHAT, "moments_like"),
    (WECHAT, "follow"),
]


@st.composite
def history(draw: st.DrawFn, customer: str = "c") -> list[InputEvent]:
    """One customer's purchases and engagement over up to a year, in time order; engagement comes
    in bursts, so scores climb past the levels and decay back through them."""
    span = draw(st.sampled_from([3, 60, 360]))
    count = draw(st.integers(1, 14))
    events = []
    for n in range(count):
        at = T0 + draw(st.integers(0, span * DAY_MS // MINUTE_MS)) * MINUTE_MS + n
        if draw(st.integers(0, 3)) == 0:
            cents = draw(st.integers(100, 120_000))
            events.append(purchase(customer, f"{customer}-b{n}", at, cents))
        else:
            topic, kind = draw(st.sampled_from(ENGAGEMENT_KINDS))
            burst = draw(st.integers(1, 4))
            for k in range(burst):
                events.append(
                    engagement(customer, f"{customer}-e{n}-{k}", at + k * MINUTE_MS, topic, kind)
                )
    return sorted(events, key=lambda e: e.occurred_ms)


def followed(events: list[InputEvent], rules: Rules) -> Iterator[CustomerState]:
    """The customer after every event and after every re-evaluation at one of its own
    boundaries, followed until the next event (after the last: for years)."""
    state: CustomerState | None = None
    for index, event in enumerate(events):
        state = apply_event(state, event, rules, PARAMS).state
        assert state is not None
        last = index == len(events) - 1
        until = T0 + 1_200 * DAY_MS if last else events[index + 1].occurred_ms
        for _ in range(200):
            yield state
            due = state.next_due_ms
            if due is None or due > until:
                break
            reevaluate(state, rules, PARAMS, due, "time")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=history(),
    rules_name=st.sampled_from(sorted(RULE_SETS)),
    probes=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=4),
)
def test_nothing_changes_before_the_next_boundary(
    events: list[InputEvent], rules_name: str, probes: list[float]
) -> None:
    """After every event and every re-evaluation at a boundary, the decision holds until the next
    boundary: just before it, and at sampled instants in between; with no boundary, for years."""
    rules = RULE_SETS[rules_name]
    for state in followed(events, rules):
        now = evaluate(state, rules, PARAMS, state.as_of_ms)
        due = state.next_due_ms
        horizon = due - 1 if due is not None else state.as_of_ms + 3 * 365 * DAY_MS
        instants = {horizon} | {
            state.as_of_ms + int(p * (horizon - state.as_of_ms)) for p in probes
        }
        for at in sorted(instants):
            later = evaluate(state, rules, PARAMS, at)
            assert decision(later, rules) == decision(now, rules), (at, due)


def unpruned_next_due_ms(state: CustomerState, ev: Evaluation, rules: Rules) -> int | None:
    """`next_due_ms` the long way: every boundary of every kind searched, none bounded by an
    earlier one (the reference for the pruned searches)."""
    candidates = [ev.stage.next_boundary_ms] if ev.stage.next_boundary_ms is not None else []
    last, first = ev.last_purchase_ms, ev.first_purchase_ms
    if last is not None and first is not None:
        candidates += _recency_steps(rules, last)
        candidates += [first + d * DAY_MS for d in _flip_days(rules, "days_since_first_purchase")]
        candidates += [(first // DAY_MS + d) * DAY_MS for d in _flip_days(rules, "T")]
        gap = churn_gap_due_ms(ev, rules, PARAMS)
        candidates += [gap] if gap is not None else []
        candidates += p_alive_due_ms(ev, rules, PARAMS)
    engaged = engagement_due_ms(state, rules, ev.as_of_ms)
    candidates += [engaged] if engaged is not None else []
    future = [c for c in candidates if c > ev.as_of_ms]
    return min(future) if future else None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=history(), rules_name=st.sampled_from(sorted(RULE_SETS)))
def test_the_pruned_boundary_search_finds_the_same_next_boundary(
    events: list[InputEvent], rules_name: str
) -> None:
    """A P(alive) or engagement crossing later than an earlier boundary is not searched: the
    next boundary is the same as with every crossing searched, after each event and at each
    boundary followed for years."""
    rules = RULE_SETS[rules_name]
    for state in followed(events, rules):
        ev = evaluate(state, rules, PARAMS, state.as_of_ms)
        assert next_due_ms(state, ev, rules, PARAMS) == unpruned_next_due_ms(state, ev, rules)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    histories=st.lists(history(), min_size=1, max_size=6),
    seed=st.integers(0, 2**32 - 1),
    rules_name=st.sampled_from(["default", "thresholds"]),
)
def test_any_arrival_order_ends_in_the_same_decisions(
    histories: list[list[InputEvent]], seed: int, rules_name: str
) -> None:
    rules = RULE_SETS[rules_name]
    events = []
    for index, customer_events in enumerate(histories):
        events += [
            InputEvent(
                topic=e.topic,
                event_id=e.event_id,
                customer_id=f"c{index}",
                occurred_ms=e.occurred_ms,
                kind=e.kind,
                order_id=e.order_id,
                amount_cents=e.amount_cents,
            )
            for e in customer_events
        ]
    events.sort(key=lambda e: e.occurred_ms)
    rng = random.Random(seed)
    end = max(e.occurred_ms for e in events) + rng.randint(0, 500) * DAY_MS
    arrivals = {
        "ordered": events,
        "shuffled": rng.sample(events, len(events)),
        "by_day": shuffled_within_days(events, rng, delayed_share=0.2),
    }
    runs = {name: replay(order, rules, end) for name, order in arrivals.items()}
    for customer in runs["ordered"].states:
        reference = fresh(runs["ordered"].states[customer], rules, end)
        for name, run in runs.items():
            state = run.states[customer]
            assert stored(state) == reference, (name, customer)
            assert state.next_due_ms is None or state.next_due_ms > end
        profiles = [
            reevaluate(run.states[customer], rules, PARAMS, end, "time").profile
            for run in runs.values()
        ]
        assert all(p == profiles[0] for p in profiles[1:]), customer


def test_a_busy_partition_in_shuffled_days_with_late_events_ends_like_the_ordered_one() -> None:
    """The e2e scenario on the pure core: 300 customers over 18 months, shuffled within each day
    and 2% delayed by weeks, clocks moved to the same end."""
    rng = random.Random(20260506)
    events: list[InputEvent] = []
    for c in range(300):
        customer = f"cust{c:03d}"
        for n in range(rng.randint(1, 25)):
            at = T0 + rng.randint(0, 540 * DAY_MS)
            roll = rng.random()
            if roll < 0.25:
                events.append(purchase(customer, f"{customer}-{n}", at, rng.randint(500, 40_000)))
            else:
                topic, kind = rng.choice(ENGAGEMENT_KINDS)
                events.append(engagement(customer, f"{customer}-{n}", at, topic, kind))
    events.sort(key=lambda e: e.occurred_ms)
    end = T0 + 560 * DAY_MS
    ordered = replay(events, DEFAULT, end)
    late = replay(shuffled_within_days(events, rng), DEFAULT, end)
    assert ordered.states.keys() == late.states.keys()
    for customer, state in ordered.states.items():
        assert stored(state) == stored(late.states[customer]) == fresh(state, DEFAULT, end)
    assert len({state.tier for state in ordered.states.values()}) >= 3


def test_a_p_alive_that_rounds_to_the_churn_level_is_re_checked_the_next_day() -> None:
    """P(alive) is published, and compared, rounded to 6 decimals: on the day the exact curve
    passes the churn level it can still round to the level itself (not below it). The warning
    condition turns true the next day, and that day must be a boundary."""
    base = [purchase("r", f"b{n}", T0 + n * 20 * DAY_MS) for n in range(4)]
    state: CustomerState | None = None
    for event in base:
        state = apply_event(state, event, DEFAULT, PARAMS).state
    assert state is not None
    first_day = T0 // DAY_MS
    # A day on which the exact P(alive) is just under its 6-decimal rounding: that rounded value,
    # used as the churn level, is crossed by the exact curve that day but by the rounded one only
    # the next day.
    for day in range(100, 2_000):
        ev = evaluate(state, DEFAULT, PARAMS, (first_day + day) * DAY_MS)
        exact = churn_p_alive(ev.features["x"], float(ev.features["t_x"]), float(day), PARAMS)
        if exact < ev.features["p_alive"]:
            break
    else:
        pytest.fail("no day rounds up")
    level = ev.features["p_alive"]
    rules = parse_rules_text(
        f'[churn]\np_alive_below = {level!r}\n[[tiers]]\nname = "ordinary"\n', fmt="toml"
    )
    reevaluate(state, rules, PARAMS, (first_day + day) * DAY_MS, "time")
    assert state.next_due_ms is not None
    next_day = (first_day + day + 1) * DAY_MS
    assert state.next_due_ms <= next_day
    assert evaluate(state, rules, PARAMS, next_day).features["p_alive"] < level
