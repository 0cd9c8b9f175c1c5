"""Tests for segmentation.quantiles: KLL accuracy on CDNOW, serialisation, scoring, hysteresis."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from segmentation.quantiles import (
    DEFAULT_K,
    QUINTILE_RANKS,
    CutPoints,
    QuantileSketch,
    cut_points_from_sketches,
    fixed_score,
    merge_sketches,
    score,
    score_with_hysteresis,
    sketch_of,
)

ACCEPTED_RANK_ERROR = 0.01
N_PARTITIONS = 4
# KLL compaction is randomised (seeded from the clock), so one lucky build proves little. Repeat
# the partitioned build and bound the worst case.
TRIALS = 20


def _cdnow_path() -> Path:
    # find_spec locates the package without running lifetimes' __init__, which imports heavy and
    # version-sensitive dependencies the test does not need.
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("lifetimes (which ships the CDNOW data) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "CDNOW_master.txt"


@pytest.fixture(scope="module")
def cdnow_rfm() -> pd.DataFrame:
    path = _cdnow_path()
    if not path.exists():
        pytest.skip(f"CDNOW data not found at {path}")
    tx = pd.read_csv(path, sep=r"\s+", dtype={"customer_id": str, "date": str})
    assert len(tx) == 69_659
    tx["date"] = pd.to_datetime(tx["date"], format="%Y%m%d")
    # The data set ends on 1998-06-30. Recency is counted from the day after.
    as_of = pd.Timestamp("1998-07-01")
    per_customer = tx.groupby("customer_id").agg(
        monetary=("dollar_value", "sum"),
        frequency=("date", "nunique"),
        last=("date", "max"),
    )
    per_customer["recency"] = (as_of - per_customer["last"]).dt.days.astype(float)
    per_customer["frequency"] = per_customer["frequency"].astype(float)
    assert len(per_customer) == 23_570
    return per_customer[["recency", "frequency", "monetary"]]


def _exact_rank_error(sorted_values: np.ndarray, cut: float, target: float) -> float:
    """Distance from ``target`` to the exact rank interval of ``cut``. Zero inside the interval.

    A value tied with others covers every rank from share(< cut) to share(<= cut). A cut point
    that is one of those tied values is exactly right for any target rank in that interval.
    """
    n = len(sorted_values)
    lo = np.searchsorted(sorted_values, cut, side="left") / n
    hi = np.searchsorted(sorted_values, cut, side="right") / n
    if lo <= target <= hi:
        return 0.0
    return float(min(abs(target - lo), abs(target - hi)))


def _partitioned_sketch(values: np.ndarray, rng: np.random.Generator) -> QuantileSketch:
    """Sketch per pseudo-partition, serialised, then merged, as the stream does."""
    assignment = rng.integers(0, N_PARTITIONS, size=len(values))
    blobs = [sketch_of(values[assignment == p]).to_bytes() for p in range(N_PARTITIONS)]
    return merge_sketches(blobs)


@pytest.mark.parametrize("dimension", ["monetary", "frequency", "recency"])
def test_cdnow_quintile_cut_points_within_one_percent_rank_error(
    cdnow_rfm: pd.DataFrame, dimension: str
) -> None:
    values = cdnow_rfm[dimension].to_numpy(dtype=np.float64)
    exact_sorted = np.sort(values)
    rng = np.random.default_rng(20240601)

    errors = np.empty((TRIALS, len(QUINTILE_RANKS)))
    for t in range(TRIALS):
        merged = _partitioned_sketch(values, rng)
        assert merged.n == len(values)
        # Otherwise the test would only show that an exact buffer is exact.
        assert merged.is_estimation_mode
        cuts = merged.quantiles(QUINTILE_RANKS)
        errors[t] = [
            _exact_rank_error(exact_sorted, c, r) for c, r in zip(cuts, QUINTILE_RANKS, strict=True)
        ]

    exact_cuts = np.quantile(values, QUINTILE_RANKS, method="inverted_cdf")
    print(
        f"\n[{dimension}] k={DEFAULT_K}, n={len(values)}, {N_PARTITIONS} partitions merged, "
        f"{TRIALS} trials; exact quintile cuts {np.round(exact_cuts, 2).tolist()}, "
        f"last sketch cuts {np.round(cuts, 2).tolist()}"
    )
    for i, r in enumerate(QUINTILE_RANKS):
        print(
            f"  rank {r:.1f}: max |rank error| {errors[:, i].max():.5f}, "
            f"mean {errors[:, i].mean():.5f}"
        )
    print(f"  worst over all cut points and trials: {errors.max():.5f}")
    assert errors.max() <= ACCEPTED_RANK_ERROR


def test_cdnow_cut_points_from_sketches(cdnow_rfm: pd.DataFrame) -> None:
    sketches = [sketch_of(cdnow_rfm[d].to_numpy()) for d in ("recency", "frequency", "monetary")]
    cp = cut_points_from_sketches(*sketches, version="v1", now_ms=1_000)
    assert cp.population == 23_570
    # Half of CDNOW's customers bought on one day only: both lower frequency cuts land on 1, so
    # every one-time buyer scores F=1 and nobody scores F=2.
    assert cp.frequency[:2] == (1.0, 1.0)
    assert score(1, cp.frequency, higher_is_better=True) == 1
    assert score(2, cp.frequency, higher_is_better=True) >= 3


# --- sketch behaviour ---------------------------------------------------------------------------


def test_serialisation_round_trip() -> None:
    rng = np.random.default_rng(1)
    sketch = sketch_of(rng.lognormal(3, 1, size=50_000))
    blob = sketch.to_bytes()
    back = QuantileSketch.from_bytes(blob)
    assert isinstance(blob, bytes)
    assert back.n == sketch.n
    assert back.k == sketch.k == DEFAULT_K
    assert back.to_bytes() == blob
    ranks = [0.0, 0.1, 0.2, 0.5, 0.8, 0.99, 1.0]
    assert back.quantiles(ranks) == sketch.quantiles(ranks)
    assert back.rank(20.0) == sketch.rank(20.0)


def test_merge_matches_sketch_of_union_within_error() -> None:
    rng = np.random.default_rng(2)
    parts = [rng.gamma(shape, 50, size=30_000) for shape in (0.5, 1.0, 2.0, 5.0)]
    union = np.concatenate(parts)
    exact_sorted = np.sort(union)
    merged = merge_sketches(sketch_of(p).to_bytes() for p in parts)
    single = sketch_of(union)
    assert merged.n == single.n == len(union)
    eps = merged.rank_error
    ranks = np.linspace(0.05, 0.95, 19)
    for r, qm, qs in zip(ranks, merged.quantiles(ranks), single.quantiles(ranks), strict=True):
        assert _exact_rank_error(exact_sorted, qm, r) <= eps
        assert _exact_rank_error(exact_sorted, qs, r) <= eps
    for x in np.quantile(union, ranks):
        assert abs(merged.rank(x) - single.rank(x)) <= 2 * eps


def test_small_merge_is_exact() -> None:
    # Below the first compaction, KLL keeps every value, so the merge must be exact.
    a, b = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    merged = merge_sketches([sketch_of(a).to_bytes(), sketch_of(b).to_bytes()])
    assert merged.n == 10
    assert merged.quantiles(QUINTILE_RANKS) == [2.0, 4.0, 6.0, 8.0]
    assert merged.rank(4.0) == pytest.approx(0.4)


def test_empty_and_invalid_inputs() -> None:
    empty = merge_sketches([])
    assert empty.is_empty and empty.n == 0
    with pytest.raises(ValueError):
        empty.quantiles(QUINTILE_RANKS)
    with pytest.raises(ValueError):
        empty.rank(1.0)
    with pytest.raises(ValueError):
        sketch_of([1.0, math.nan])
    with pytest.raises(ValueError):
        QuantileSketch().update(math.inf)
    with pytest.raises(ValueError):
        sketch_of([1.0]).quantiles([1.5])


def test_cut_points_dict_round_trip_and_validation() -> None:
    s = sketch_of(float(i) for i in range(1, 101))
    cp = cut_points_from_sketches(s, s, s, "2024-06-01T00:00Z#7", 1_717_200_000_000)
    assert cp.monetary == (20.0, 40.0, 60.0, 80.0)
    assert cp.population == 100
    encoded = json.dumps(cp.to_dict())
    assert CutPoints.from_dict(json.loads(encoded)) == cp
    with pytest.raises(ValueError):
        cut_points_from_sketches(s, s, sketch_of([1.0]), "v", 0)
    with pytest.raises(ValueError):
        CutPoints((1, 2, 3), (1, 2, 3, 4), (1, 2, 3, 4), "v", 0, 1)
    with pytest.raises(ValueError):
        CutPoints((4, 3, 2, 1), (1, 2, 3, 4), (1, 2, 3, 4), "v", 0, 1)


# --- scoring: examples that pin the tie rules ---------------------------------------------------

CUTS = (10.0, 20.0, 30.0, 40.0)


@pytest.mark.parametrize(
    ("value", "up", "down"),
    [(5, 1, 5), (10, 1, 5), (10.01, 2, 4), (20, 2, 4), (35, 4, 2), (40, 4, 2), (41, 5, 1)],
)
def test_score_ties_fall_below_the_cut(value: float, up: int, down: int) -> None:
    assert score(value, CUTS, higher_is_better=True) == up
    assert score(value, CUTS, higher_is_better=False) == down


@pytest.mark.parametrize(
    ("value", "up", "down"),
    [(5, 1, 5), (10, 2, 5), (10.01, 2, 4), (20, 3, 4), (39.9, 4, 2), (40, 5, 2), (41, 5, 1)],
)
def test_fixed_score_reaching_a_threshold_earns_it(value: float, up: int, down: int) -> None:
    assert fixed_score(value, CUTS, higher_is_better=True) == up
    assert fixed_score(value, CUTS, higher_is_better=False) == down


def test_tied_cut_points_leave_a_score_empty() -> None:
    freq_cuts = (1.0, 1.0, 2.0, 4.0)
    assert [score(f, freq_cuts, higher_is_better=True) for f in (1, 2, 3, 4, 5)] == [1, 3, 4, 4, 5]


def test_score_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        score(math.nan, CUTS, higher_is_better=True)
    with pytest.raises(ValueError):
        score(1.0, (1.0, 2.0), higher_is_better=True)
    with pytest.raises(ValueError):
        score_with_hysteresis(1.0, CUTS, 3, -0.1, True)
    with pytest.raises(ValueError):
        score_with_hysteresis(100.0, CUTS, 9, 0.05, True)


def test_hysteresis_examples() -> None:
    # Value 20.5 is just above the cut at 20 (band 5% = ±1). Its plain score is 3.
    assert score_with_hysteresis(20.5, CUTS, None, 0.05, True) == 3
    # A customer previously at 2 stays at 2 near the cut, and moves once clearly past it.
    assert score_with_hysteresis(20.5, CUTS, 2, 0.05, True) == 2
    assert score_with_hysteresis(21.0, CUTS, 2, 0.05, True) == 2
    assert score_with_hysteresis(21.01, CUTS, 2, 0.05, True) == 3
    # A big jump goes straight to the plain score.
    assert score_with_hysteresis(45.0, CUTS, 2, 0.05, True) == 5
    # Recency (lower is better): previously R=4 (value in (10, 20]), now 9.6 is within 10 - 0.5.
    assert score_with_hysteresis(9.6, CUTS, 4, 0.05, False) == 4
    assert score_with_hysteresis(9.4, CUTS, 4, 0.05, False) == 5
    # min_width widens the band where a relative band is too narrow (small integer cut points).
    small = (1.0, 1.0, 2.0, 4.0)
    assert score_with_hysteresis(3.0, small, 4, 0.05, True) == 4  # plain score is also 4
    assert score_with_hysteresis(5.0, small, 4, 0.05, True) == 5
    assert score_with_hysteresis(5.0, small, 4, 0.05, True, min_width=1.0) == 4
    # Fixed thresholds use fixed_score for the plain score.
    assert score_with_hysteresis(40.0, CUTS, None, 0.05, True, fixed=True) == 5
    assert score_with_hysteresis(40.0, CUTS, 4, 0.05, True, fixed=True) == 4


def test_hysteresis_oscillation_around_a_cut_point_does_not_flap() -> None:
    path = [19.2, 20.8, 19.5, 20.9, 19.05, 20.0, 20.95]
    for start in (2, 3):
        previous = start
        for v in path:
            previous = score_with_hysteresis(v, CUTS, previous, 0.05, True)
            assert previous == start
    # Without hysteresis the same path flaps on every step.
    plain = [score(v, CUTS, higher_is_better=True) for v in path]
    assert len(set(plain)) == 2


# --- scoring: properties ------------------------------------------------------------------------

finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)
cut_lists = st.lists(finite, min_size=4, max_size=4).map(lambda xs: tuple(sorted(xs)))
bands = st.floats(min_value=0.0, max_value=0.5, allow_nan=False)
scores = st.integers(min_value=1, max_value=5)


@given(finite, cut_lists, st.booleans())
def test_score_in_range(value: float, cuts: tuple[float, ...], hib: bool) -> None:
    assert 1 <= score(value, cuts, higher_is_better=hib) <= 5
    assert 1 <= fixed_score(value, cuts, higher_is_better=hib) <= 5


@given(finite, finite, cut_lists, st.booleans())
def test_score_and_fixed_score_monotone(
    a: float, b: float, cuts: tuple[float, ...], hib: bool
) -> None:
    lo, hi = min(a, b), max(a, b)
    for fn in (score, fixed_score):
        s_lo = fn(lo, cuts, higher_is_better=hib)
        s_hi = fn(hi, cuts, higher_is_better=hib)
        assert (s_lo <= s_hi) if hib else (s_lo >= s_hi)


@given(finite, cut_lists, st.booleans())
def test_score_direction_is_mirrored(value: float, cuts: tuple[float, ...], hib: bool) -> None:
    assert score(value, cuts, higher_is_better=True) + score(
        value, cuts, higher_is_better=False
    ) == 6


@given(finite, cut_lists, st.one_of(st.none(), scores), bands, st.booleans(), st.booleans())
def test_hysteresis_result_is_previous_or_plain(
    value: float,
    cuts: tuple[float, ...],
    previous: int | None,
    band: float,
    hib: bool,
    fixed: bool,
) -> None:
    got = score_with_hysteresis(value, cuts, previous, band, hib, fixed=fixed)
    plain = (fixed_score if fixed else score)(value, cuts, higher_is_better=hib)
    assert got in {previous, plain}
    assert score_with_hysteresis(value, cuts, None, band, hib, fixed=fixed) == plain
    # Zero band means no memory.
    assert score_with_hysteresis(value, cuts, previous, 0.0, hib, fixed=fixed) == plain


@given(
    cut_lists,
    st.integers(min_value=0, max_value=3),
    st.floats(min_value=-1.0, max_value=1.0),
    bands,
    st.booleans(),
    st.data(),
)
def test_hysteresis_holds_while_value_moves_within_band(
    cuts: tuple[float, ...],
    i: int,
    u: float,
    band: float,
    hib: bool,
    data: st.DataObject,
) -> None:
    c = cuts[i]
    # Keep a small safety margin so float rounding cannot push the value just outside the band.
    value = c + 0.999 * u * band * abs(c)
    # Start on either side of cut i: at the cut itself, or just above it.
    side = data.draw(st.sampled_from([c, math.nextafter(c, math.inf)]))
    start = score(side, cuts, higher_is_better=hib)
    # Any value within the band of cut i keeps the score, provided the value does not also cross
    # the far edge of the starting bucket (possible when cut points are close together).
    bucket = start - 1 if hib else 5 - start
    assume(band * abs(c) > 0)  # with no band, landing exactly on the cut is a real crossing
    assume(bucket == 0 or value > cuts[bucket - 1] - band * abs(cuts[bucket - 1]))
    assume(bucket == 4 or value <= cuts[bucket] + band * abs(cuts[bucket]))
    assert score_with_hysteresis(value, cuts, start, band, hib) == start


@settings(max_examples=300)
@given(
    finite,
    cut_lists,
    st.lists(st.floats(min_value=-1.0, max_value=1.0), min_size=4, max_size=4),
    bands,
    st.booleans(),
)
def test_hysteresis_holds_when_cut_points_move_within_band(
    value: float,
    old: tuple[float, ...],
    moves: list[float],
    band: float,
    hib: bool,
) -> None:
    # new = old * (1 + m * band / (1 + band)) moves each cut by at most band * |new|.
    factor = 0.999 * band / (1.0 + band)
    new = tuple(sorted(c * (1.0 + m * factor) for c, m in zip(old, moves, strict=True)))
    for o, n in zip(old, new, strict=False):
        assume(abs(n - o) <= band * abs(n))
    previous = score(value, old, higher_is_better=hib)
    assert score_with_hysteresis(value, new, previous, band, hib) == previous


@given(finite, cut_lists, scores, bands, st.booleans())
def test_hysteresis_clear_move_changes_score(
    value: float, cuts: tuple[float, ...], previous: int, band: float, hib: bool
) -> None:
    bucket = previous - 1 if hib else 5 - previous
    below = bucket > 0 and value <= cuts[bucket - 1] - band * abs(cuts[bucket - 1])
    above = bucket < 4 and value > cuts[bucket] + band * abs(cuts[bucket])
    assume(below or above)
    assert score_with_hysteresis(value, cuts, previous, band, hib) == score(
        value, cuts, higher_is_better=hib
    )
