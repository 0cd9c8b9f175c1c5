"""Tests for segmentation.rfm: fixed-threshold scores at their bounds, and the segment map's
explicit priority over every (R, F, M)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segmentation.rfm import (
    SEGMENT_PRIORITY,
    SEGMENTS,
    ascending_score,
    fm_score,
    recency_score,
    segment_of,
)

RECENCY_BOUNDS = (30.0, 90.0, 180.0, 365.0)
FREQUENCY_BOUNDS = (2.0, 3.0, 5.0, 10.0)
MONETARY_BOUNDS = (25.0, 60.0, 150.0, 500.0)
CLASSIC_SEGMENTS = {
    "champions",
    "loyal",
    "potential_loyalist",
    "new_customers",
    "promising",
    "need_attention",
    "about_to_sleep",
    "at_risk",
    "cant_lose",
    "hibernating",
    "lost",
}
ALL_SCORES = list(itertools.product(range(1, 6), repeat=3))

bounds = st.lists(
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=4, max_size=4
).map(sorted)
values = st.floats(min_value=-2e6, max_value=2e6, allow_nan=False)


@pytest.mark.parametrize(
    ("days", "score"),
    [
        (0, 5),
        (29, 5),
        (30, 5),
        (30.001, 4),
        (31, 4),
        (90, 4),
        (91, 3),
        (180, 3),
        (181, 2),
        (365, 2),
        (366, 1),
        (10_000, 1),
    ],
)
def test_recency_score_at_and_around_each_bound(days: float, score: int) -> None:
    assert recency_score(days, RECENCY_BOUNDS) == score


@pytest.mark.parametrize(
    ("orders", "score"),
    [(0, 1), (1, 1), (1.999, 1), (2, 2), (3, 3), (4, 3), (5, 4), (9, 4), (10, 5), (500, 5)],
)
def test_frequency_score_at_and_around_each_bound(orders: float, score: int) -> None:
    assert ascending_score(orders, FREQUENCY_BOUNDS) == score


@pytest.mark.parametrize(
    ("spend", "score"),
    [
        (-40.0, 1),  # refunds can make net spend negative
        (0.0, 1),
        (24.99, 1),
        (25.0, 2),
        (59.99, 2),
        (60.0, 3),
        (149.99, 3),
        (150.0, 4),
        (499.99, 4),
        (500.0, 5),
        (1e9, 5),
    ],
)
def test_monetary_score_at_and_around_each_bound(spend: float, score: int) -> None:
    assert ascending_score(spend, MONETARY_BOUNDS) == score


@pytest.mark.parametrize(
    ("f", "m", "fm"), [(1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 3, 3), (4, 5, 5), (5, 4, 5), (1, 5, 3)]
)
def test_fm_is_the_rounded_up_mean(f: int, m: int, fm: int) -> None:
    assert fm_score(f, m) == fm


def test_segment_priority_names_the_eleven_classic_segments_once_each() -> None:
    assert len(SEGMENTS) == 11
    assert set(SEGMENTS) == CLASSIC_SEGMENTS
    assert SEGMENTS[0] == "champions"
    assert SEGMENTS[-1] == "lost"


@pytest.mark.parametrize(("r", "f", "m"), ALL_SCORES)
def test_segment_of_is_the_first_segment_in_priority_whose_predicate_holds(
    r: int, f: int, m: int
) -> None:
    fm = (f + m + 1) // 2
    holding = [name for name, predicate in SEGMENT_PRIORITY if predicate(r, f, fm)]
    assert holding, f"no segment for r={r} f={f} m={m}"
    assert segment_of(r, f, m) == holding[0]


def test_every_segment_is_reachable() -> None:
    reached = {segment_of(r, f, m) for r, f, m in ALL_SCORES}
    assert reached == set(SEGMENTS)


def test_segment_cell_counts() -> None:
    """Pins the whole map, counted by hand. Of the 25 (F, M) pairs, FM = 1, 2, 3, 4, 5 for
    1, 5, 9, 7, 3 of them; the 5 pairs with F = 1 have FM = 1, 2, 2, 3, 3.
    R=5: champions FM>=4 (10), new_customers F=1 (5), potential_loyalist the rest (10).
    R=4: loyal FM>=4 (10), promising F=1 (5), potential_loyalist the rest (10).
    R=3: loyal (10), need_attention FM=3 (9), about_to_sleep FM<=2 (6).
    R=2 and R=1: cant_lose FM=5 (3), at_risk FM 3-4 (16), hibernating / lost FM<=2 (6)."""
    counts = {name: 0 for name in SEGMENTS}
    for r, f, m in ALL_SCORES:
        counts[segment_of(r, f, m)] += 1
    assert counts == {
        "champions": 10,
        "loyal": 20,
        "cant_lose": 6,
        "at_risk": 32,
        "new_customers": 5,
        "promising": 5,
        "potential_loyalist": 20,
        "need_attention": 9,
        "about_to_sleep": 6,
        "hibernating": 6,
        "lost": 6,
    }
    assert sum(counts.values()) == 125


@pytest.mark.parametrize(
    ("r", "f", "m", "segment"),
    [
        (5, 5, 5, "champions"),
        (5, 4, 3, "champions"),  # FM = 4
        (4, 5, 4, "loyal"),  # the design's example profile
        (3, 4, 4, "loyal"),
        (2, 5, 5, "cant_lose"),
        (1, 5, 4, "cant_lose"),  # FM rounds up to 5
        (2, 3, 3, "at_risk"),
        (1, 4, 3, "at_risk"),
        (5, 1, 1, "new_customers"),
        (5, 1, 5, "new_customers"),  # one order, big spend: FM = 3
        (4, 1, 2, "promising"),
        (5, 2, 2, "potential_loyalist"),
        (4, 3, 3, "potential_loyalist"),
        (3, 3, 3, "need_attention"),
        (3, 1, 5, "need_attention"),
        (3, 1, 1, "about_to_sleep"),
        (2, 2, 2, "hibernating"),
        (2, 1, 1, "hibernating"),
        (1, 1, 1, "lost"),
        (1, 2, 2, "lost"),
    ],
)
def test_hand_checked_cells(r: int, f: int, m: int, segment: str) -> None:
    assert segment_of(r, f, m) == segment


@pytest.mark.parametrize(("r", "f", "m"), [(6, 5, 5), (0, 5, 5), (5, 0, 5), (5, 5, 6)])
def test_out_of_range_scores_are_refused(r: int, f: int, m: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        segment_of(r, f, m)


def test_scores_that_no_segment_covers_are_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        segment_of(0, 1, 1)


# -- properties ---------------------------------------------------------------------------------


@settings(max_examples=200)
@given(bounds=bounds, a=values, b=values)
def test_recency_score_never_rises_with_more_days(bounds: list[float], a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert recency_score(low, bounds) >= recency_score(high, bounds)
    assert 1 <= recency_score(a, bounds) <= 5


@settings(max_examples=200)
@given(bounds=bounds, a=values, b=values)
def test_ascending_score_never_falls_with_a_larger_value(
    bounds: list[float], a: float, b: float
) -> None:
    low, high = sorted((a, b))
    assert ascending_score(low, bounds) <= ascending_score(high, bounds)
    assert 1 <= ascending_score(a, bounds) <= 5


@settings(max_examples=200)
@given(bounds=bounds, index=st.integers(0, 3))
def test_each_bound_belongs_to_the_better_score(bounds: list[float], index: int) -> None:
    bound = bounds[index]
    if index == 0 or bounds[index - 1] < bound:  # equal bounds collapse scores
        assert recency_score(bound, bounds) == 5 - index
    if index == 3 or bounds[index + 1] > bound:
        assert ascending_score(bound, bounds) == index + 2


@given(r=st.integers(1, 5), f=st.integers(1, 5), m=st.integers(1, 5))
def test_a_more_recent_buyer_is_never_in_a_colder_segment(r: int, f: int, m: int) -> None:
    """Going up one R score never moves a customer from a warm segment to a lapsed one."""
    lapsed = {"at_risk", "cant_lose", "hibernating", "lost"}
    if r < 5 and segment_of(r, f, m) not in lapsed:
        assert segment_of(r + 1, f, m) not in lapsed
