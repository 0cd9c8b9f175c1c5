"""Tests for segmentation.lifecycle (stage decisions and their exact boundary times) and
segmentation.engagement (exact half-life decay, arrival-order independence)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segmentation.engagement import add, decay, level
from segmentation.lifecycle import STAGES, decide_stage, thresholds_days
from segmentation.rules import Engagement, Lifecycle
from segmentation.timeutil import DAY_MS, HOUR_MS

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z, a UTC midnight
ABSOLUTE = Lifecycle(at_risk_after_days=90, churned_after_days=180)
RELATIVE = Lifecycle(
    at_risk_after_days=90,
    churned_after_days=180,
    at_risk_gap_multiple=2.0,
    churned_gap_multiple=4.0,
)
ENGAGEMENT = Engagement(half_life_days=30, high=10.0, medium=3.0, weights={})


def days(n: float) -> int:
    return int(n * DAY_MS)


def stage_at(
    times: list[int], as_of: int, cfg: Lifecycle = ABSOLUTE, gap: float | None = None
) -> str:
    return decide_stage(times, as_of, cfg, gap).stage


# -- stages -------------------------------------------------------------------------------------


def test_a_customer_who_never_bought_is_a_prospect_with_no_boundary() -> None:
    decision = decide_stage([], T0, ABSOLUTE, None)
    assert decision.stage == "prospect"
    assert decision.next_boundary_ms is None
    assert (decision.at_risk_after_days, decision.churned_after_days) == (None, None)


def test_one_purchase_day_is_new_until_the_at_risk_boundary() -> None:
    first = T0 + 10 * HOUR_MS
    decision = decide_stage([first], first, ABSOLUTE, None)
    assert decision.stage == "new"
    assert decision.next_boundary_ms == first + days(90)
    assert (decision.at_risk_after_days, decision.churned_after_days) == (90, 180)
    assert stage_at([first], first + days(90) - 1) == "new"


def test_several_purchases_on_one_utc_day_are_still_new() -> None:
    times = [T0, T0 + 5 * HOUR_MS, T0 + DAY_MS - 1]
    assert stage_at(times, T0 + DAY_MS) == "new"


def test_purchases_on_two_utc_days_are_active_even_an_hour_apart() -> None:
    times = [T0 - HOUR_MS, T0]  # 23:00 and 00:00 the next day
    decision = decide_stage(times, T0 + HOUR_MS, ABSOLUTE, None)
    assert decision.stage == "active"
    assert decision.next_boundary_ms == T0 + days(90)


def test_at_risk_exactly_at_last_plus_n_days() -> None:
    last = T0 + days(3) + 7 * HOUR_MS
    times = [T0, last]
    assert stage_at(times, last + days(90) - 1) == "active"
    decision = decide_stage(times, last + days(90), ABSOLUTE, None)
    assert decision.stage == "at_risk"
    assert decision.next_boundary_ms == last + days(180)


def test_churned_exactly_at_last_plus_m_days_with_no_further_boundary() -> None:
    last = T0 + days(3)
    times = [T0, last]
    assert stage_at(times, last + days(180) - 1) == "at_risk"
    decision = decide_stage(times, last + days(180), ABSOLUTE, None)
    assert decision.stage == "churned"
    assert decision.next_boundary_ms is None
    assert stage_at(times, last + days(10_000)) == "churned"


def test_a_one_day_buyer_also_goes_at_risk_then_churned() -> None:
    assert stage_at([T0], T0 + days(90)) == "at_risk"
    assert stage_at([T0], T0 + days(180)) == "churned"


def test_reactivated_after_a_churn_length_gap() -> None:
    back = T0 + days(180)
    decision = decide_stage([T0, back], back, ABSOLUTE, None)
    assert decision.stage == "reactivated"
    assert decision.next_boundary_ms == back + days(90)
    # One millisecond short of a churn-length gap is just a repeat purchase.
    assert stage_at([T0, back - 1], back) == "active"


def test_reactivated_lasts_until_the_next_purchase_or_boundary() -> None:
    back = T0 + days(200)
    assert stage_at([T0, back], back + days(90) - 1) == "reactivated"
    assert stage_at([T0, back], back + days(90)) == "at_risk"
    assert stage_at([T0, back, back + days(7)], back + days(7)) == "active"


def test_a_return_with_two_orders_on_one_day_is_reactivated() -> None:
    back = T0 + days(200)
    assert stage_at([T0, back, back + HOUR_MS], back + 2 * HOUR_MS) == "reactivated"


def test_stages_move_both_ways() -> None:
    times = [T0]
    journey = [stage_at(times, T0)]
    journey.append(stage_at(times, T0 + days(90)))  # idle: at_risk
    times.append(T0 + days(100))
    journey.append(stage_at(times, T0 + days(100)))  # bought again: active
    journey.append(stage_at(times, T0 + days(190)))  # idle: at_risk
    journey.append(stage_at(times, T0 + days(280)))  # idle: churned
    times.append(T0 + days(300))
    journey.append(stage_at(times, T0 + days(300)))  # came back: reactivated
    times.append(T0 + days(301))
    journey.append(stage_at(times, T0 + days(301)))  # bought again: active
    assert journey == ["new", "at_risk", "active", "at_risk", "churned", "reactivated", "active"]
    assert set(journey) | {"prospect"} == set(STAGES)


# -- relative thresholds ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "gap", "expected"),
    [
        (ABSOLUTE, None, (90, 180)),
        (ABSOLUTE, 200.0, (90, 180)),  # no multiples configured: the days alone
        (RELATIVE, None, (90, 180)),
        (RELATIVE, 0.0, (90, 180)),
        (RELATIVE, 10.0, (90, 180)),  # 2x10 and 4x10 are below the floors
        (RELATIVE, 45.0, (90, 180)),  # exactly the floors
        (RELATIVE, 60.0, (120, 240)),
        (RELATIVE, 100.0, (200, 400)),
        (Lifecycle(90, 180, at_risk_gap_multiple=3.0), 50.0, (150, 180)),
        (Lifecycle(90, 180, churned_gap_multiple=3.0), 70.0, (90, 210)),
        # An at-risk threshold past the churn one drags churn along: never churned before at risk.
        (Lifecycle(90, 180, at_risk_gap_multiple=10.0), 30.0, (300, 300)),
    ],
)
def test_thresholds_in_days(cfg: Lifecycle, gap: float | None, expected: tuple[int, int]) -> None:
    assert thresholds_days(cfg, gap) == expected


def test_relative_thresholds_move_the_boundaries_by_gap_multiples() -> None:
    times = [T0, T0 + days(60)]
    last = times[-1]
    decision = decide_stage(times, last, RELATIVE, 60.0)
    assert (decision.stage, decision.next_boundary_ms) == ("active", last + days(120))
    assert (decision.at_risk_after_days, decision.churned_after_days) == (120, 240)
    assert stage_at(times, last + days(120) - 1, RELATIVE, 60.0) == "active"
    at_risk = decide_stage(times, last + days(120), RELATIVE, 60.0)
    assert (at_risk.stage, at_risk.next_boundary_ms) == ("at_risk", last + days(240))
    assert stage_at(times, last + days(240) - 1, RELATIVE, 60.0) == "at_risk"
    assert stage_at(times, last + days(240), RELATIVE, 60.0) == "churned"


def test_fractional_relative_thresholds_land_on_the_millisecond() -> None:
    times = [T0, T0 + days(1)]
    last = times[-1]
    decision = decide_stage(times, last, Lifecycle(1, 2, at_risk_gap_multiple=1.5), 1.0)
    assert decision.next_boundary_ms == last + 36 * HOUR_MS


def test_reactivation_uses_the_relative_churn_threshold() -> None:
    times = [T0, T0 + days(200)]
    assert stage_at(times, times[-1], ABSOLUTE, 200.0) == "reactivated"
    # With a 4x gap multiple and a typical gap of 60 days, churn takes 240 days: 200 is not one.
    assert stage_at(times, times[-1], RELATIVE, 60.0) == "active"
    assert stage_at([T0, T0 + days(240)], T0 + days(240), RELATIVE, 60.0) == "reactivated"


# -- engagement ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("elapsed_days", "expected"), [(0, 8.0), (30, 4.0), (60, 2.0), (90, 1.0), (15, 8 * 0.5**0.5)]
)
def test_decay_halves_every_half_life_exactly(elapsed_days: int, expected: float) -> None:
    assert decay(8.0, days(elapsed_days), 30) == expected


def test_decay_of_nothing_or_backwards_in_time_is_unchanged() -> None:
    assert decay(0.0, days(10), 30) == 0.0
    assert decay(5.0, -days(10), 30) == 5.0
    assert decay(5.0, 0, 30) == 5.0
    assert decay(5.0, days(1), 1) == 2.5


def test_add_a_later_event_decays_the_stored_score_forward() -> None:
    assert add(4.0, T0, 2.0, T0 + days(30), 30) == (4.0, T0 + days(30))
    assert add(0.0, T0, 3.0, T0 + days(5), 30) == (3.0, T0 + days(5))


def test_add_a_late_event_decays_it_to_the_stored_time() -> None:
    assert add(4.0, T0 + days(60), 4.0, T0 + days(30), 30) == (6.0, T0 + days(60))
    assert add(4.0, T0, 1.0, T0, 30) == (5.0, T0)


@pytest.mark.parametrize(
    ("score", "expected"),
    [(0.0, "low"), (2.9999, "low"), (3.0, "medium"), (9.9999, "medium"), (10.0, "high")],
)
def test_level_thresholds_are_inclusive(score: float, expected: str) -> None:
    assert level(score, ENGAGEMENT) == expected


interactions = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 4.0]),
        st.integers(min_value=0, max_value=days(400)),
    ),
    min_size=1,
    max_size=25,
)


def fold(events: list[tuple[float, int]], half_life: float) -> tuple[float, int]:
    score, as_of = 0.0, 0
    for weight, at in events:
        score, as_of = add(score, as_of, weight, T0 + at, half_life)
    return score, as_of


@settings(max_examples=200)
@given(
    data=st.data(),
    events=interactions,
    half_life=st.sampled_from([1.0, 7.5, 30.0, 365.0]),
)
def test_the_final_score_does_not_depend_on_arrival_order(
    data: st.DataObject, events: list[tuple[float, int]], half_life: float
) -> None:
    shuffled = data.draw(st.permutations(events))
    score, as_of = fold(events, half_life)
    other, other_as_of = fold(shuffled, half_life)
    assert as_of == other_as_of == T0 + max(at for _, at in events)
    assert math.isclose(score, other, rel_tol=1e-9, abs_tol=1e-300)
    exact = sum(w * 0.5 ** ((as_of - T0 - at) / (half_life * DAY_MS)) for w, at in events)
    assert math.isclose(score, exact, rel_tol=1e-9, abs_tol=1e-300)
