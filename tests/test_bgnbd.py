"""BG/NBD churn model: published CDNOW results, independent evaluations, and properties."""

from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import approx_fprime

from segmentation.bgnbd import (
    DEFAULT_PARAMS,
    BgNbdParams,
    _expected_purchases_if_alive,
    _Histories,
    churn_p_alive,
    expected_days_between_purchases,
    expected_purchases,
    fit,
    log_likelihood,
    next_crossing_time,
    p_alive,
    p_alive_mbg,
)

# Fader, Hardie & Lee (2005) on the CDNOW sample: 2,357 customers, 39 weeks of calibration.
PUBLISHED = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
PUBLISHED_LL = -9582.4
WEEKLY = BgNbdParams(**PUBLISHED, version="fhl2005", fitted_on=2357, time_unit_days=7.0)


def _cdnow_path() -> Path:
    # Found without importing lifetimes: its import is slow and breaks with numpy/pandas moves.
    spec = importlib.util.find_spec("lifetimes")
    assert spec is not None and spec.submodule_search_locations, (
        "lifetimes, a declared dependency, ships the CDNOW sample"
    )
    return Path(spec.submodule_search_locations[0]) / "datasets" / "cdnow_customers_summary.csv"


@pytest.fixture(scope="module")
def cdnow_weeks() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = np.loadtxt(_cdnow_path(), delimiter=",", skiprows=1)
    assert data.shape == (2357, 4)
    return data[:, 1], data[:, 2], data[:, 3]


@pytest.fixture(scope="module")
def lifetimes_bgf() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from lifetimes import BetaGeoFitter
    except Exception as exc:  # any breakage of a third-party import means "not available"
        pytest.skip(f"lifetimes cannot be imported here: {exc!r}")
    bgf = BetaGeoFitter()
    bgf.params_ = dict(PUBLISHED)
    return bgf


def _sig2(value: float) -> float:
    return float(f"{value:.2g}")


# --- published CDNOW results ---------------------------------------------------------------


def test_cdnow_fit_reproduces_published_parameters(cdnow_weeks: tuple[np.ndarray, ...]) -> None:
    x, t_x_weeks, T_weeks = cdnow_weeks
    params = fit(x, t_x_weeks * 7, T_weeks * 7, version="cdnow-test", time_unit_days=7.0)

    assert params.version == "cdnow-test"
    assert params.fitted_on == 2357
    assert params.time_unit_days == 7.0
    fitted = {"r": params.r, "alpha": params.alpha, "a": params.a, "b": params.b}
    for name, published in PUBLISHED.items():
        assert _sig2(fitted[name]) == _sig2(published), name
        assert fitted[name] == pytest.approx(published, rel=5e-3), name


def test_cdnow_log_likelihood_matches_published(cdnow_weeks: tuple[np.ndarray, ...]) -> None:
    x, t_x, T = cdnow_weeks
    at_published = log_likelihood(WEEKLY.as_array(), x, t_x, T)
    assert at_published == pytest.approx(PUBLISHED_LL, abs=0.05)

    fitted = fit(x, t_x * 7, T * 7, version="v", time_unit_days=7.0)
    at_fitted = log_likelihood(fitted.as_array(), x, t_x, T)
    # The maximum can't be worse than the published (rounded) parameters.
    assert at_fitted >= at_published - 1e-6


def test_cdnow_fit_in_days_is_the_same_model(cdnow_weeks: tuple[np.ndarray, ...]) -> None:
    x, t_x, T = cdnow_weeks
    weekly = fit(x, t_x * 7, T * 7, version="w", time_unit_days=7.0)
    daily = fit(x, t_x * 7, T * 7, version="d")
    assert daily.time_unit_days == 1.0
    assert daily.alpha / 7 == pytest.approx(weekly.alpha, rel=1e-3)
    for name in ("r", "a", "b"):
        assert getattr(daily, name) == pytest.approx(getattr(weekly, name), rel=1e-3)


def test_cdnow_expected_purchases_matches_published_example() -> None:
    # FHL 2005's worked example: x = 2, t_x = 30.43, T = 38.86 weeks, next 39 weeks.
    expected = expected_purchases(39 * 7, 2, 30.43 * 7, 38.86 * 7, WEEKLY)
    assert expected == pytest.approx(1.226, abs=5e-4)


def _independent_p_alive(x: float, t_x: float, T: float, mbg: bool = False) -> float:
    """FHL's P(alive) note, written with direct powers in weeks (no logs, no unit conversion)."""
    r, alpha, a, b = PUBLISHED["r"], PUBLISHED["alpha"], PUBLISHED["a"], PUBLISHED["b"]
    if mbg:
        return 1.0 / (1.0 + a / (b + x) * ((alpha + T) / (alpha + t_x)) ** (r + x))
    if x == 0:
        return 1.0
    return 1.0 / (1.0 + a / (b + x - 1) * ((alpha + T) / (alpha + t_x)) ** (r + x))


def test_cdnow_p_alive_matches_independent_formula(cdnow_weeks: tuple[np.ndarray, ...]) -> None:
    x, t_x, T = cdnow_weeks
    for xi, txi, Ti in zip(x.tolist(), t_x.tolist(), T.tolist(), strict=True):
        days = (int(xi), txi * 7, Ti * 7)
        assert p_alive(*days, WEEKLY) == pytest.approx(_independent_p_alive(xi, txi, Ti), abs=1e-6)
        assert p_alive_mbg(*days, WEEKLY) == pytest.approx(
            _independent_p_alive(xi, txi, Ti, mbg=True), abs=1e-6
        )


def test_cdnow_p_alive_matches_lifetimes(
    cdnow_weeks: tuple[np.ndarray, ...], lifetimes_bgf: Any
) -> None:
    x, t_x, T = cdnow_weeks
    reference = np.asarray(lifetimes_bgf.conditional_probability_alive(x, t_x, T))
    ours = np.array(
        [
            p_alive(int(xi), txi * 7, Ti * 7, WEEKLY)
            for xi, txi, Ti in zip(x.tolist(), t_x.tolist(), T.tolist(), strict=True)
        ]
    )
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)


def test_cdnow_expected_purchases_matches_lifetimes(
    cdnow_weeks: tuple[np.ndarray, ...], lifetimes_bgf: Any
) -> None:
    x, t_x, T = cdnow_weeks
    reference = np.asarray(
        lifetimes_bgf.conditional_expected_number_of_purchases_up_to_time(39.0, x, t_x, T)
    )
    ours = np.array(
        [
            expected_purchases(39 * 7, int(xi), txi * 7, Ti * 7, WEEKLY)
            for xi, txi, Ti in zip(x.tolist(), t_x.tolist(), T.tolist(), strict=True)
        ]
    )
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-9)


# --- parameters ----------------------------------------------------------------------------


def test_default_params_are_cdnow_in_days() -> None:
    assert DEFAULT_PARAMS.version == "default-cdnow"
    assert DEFAULT_PARAMS.time_unit_days == 1.0
    assert DEFAULT_PARAMS.alpha == pytest.approx(4.414 * 7)
    assert (DEFAULT_PARAMS.r, DEFAULT_PARAMS.a, DEFAULT_PARAMS.b) == (0.243, 0.793, 2.426)
    assert DEFAULT_PARAMS.in_time_unit(7.0).alpha == pytest.approx(4.414)


def test_params_dict_round_trip() -> None:
    fitted = BgNbdParams(0.3, 12.5, 0.9, 3.1, version="2024-05-01T00:00Z", fitted_on=812)
    assert BgNbdParams.from_dict(fitted.to_dict()) == fitted
    assert BgNbdParams.from_dict(DEFAULT_PARAMS.to_dict()) == DEFAULT_PARAMS


@pytest.mark.parametrize(
    "changes",
    [
        {"r": 0.0},
        {"alpha": -1.0},
        {"a": math.nan},
        {"b": math.inf},
        {"time_unit_days": 0.0},
        {"fitted_on": -1},
        {"version": ""},
    ],
)
def test_params_reject_invalid_values(changes: dict[str, Any]) -> None:
    fields = DEFAULT_PARAMS.to_dict() | changes
    with pytest.raises(ValueError):
        BgNbdParams.from_dict(fields)


# --- properties ----------------------------------------------------------------------------

params_st = st.builds(
    BgNbdParams,
    r=st.floats(0.05, 5.0),
    alpha=st.floats(0.1, 500.0),
    a=st.floats(0.05, 5.0),
    b=st.floats(0.05, 20.0),
    version=st.just("prop"),
    fitted_on=st.integers(0, 10**6),
    time_unit_days=st.sampled_from([1.0, 7.0, 30.0]),
)
xs = st.integers(0, 300)
days = st.floats(0.0, 5000.0)
VARIANTS = [p_alive, p_alive_mbg, churn_p_alive]


@given(params=params_st, x=xs, t_x=days, gap=days)
def test_p_alive_is_a_probability(params: BgNbdParams, x: int, t_x: float, gap: float) -> None:
    for variant in VARIANTS:
        assert 0.0 <= variant(x, t_x, t_x + gap, params) <= 1.0


@given(params=params_st, x=xs, t_x=days, gap1=days, gap2=days)
def test_p_alive_does_not_increase_with_T(
    params: BgNbdParams, x: int, t_x: float, gap1: float, gap2: float
) -> None:
    T1, T2 = t_x + min(gap1, gap2), t_x + max(gap1, gap2)
    for variant in VARIANTS:
        assert variant(x, t_x, T1, params) >= variant(x, t_x, T2, params)


@given(params=params_st, x=st.integers(1, 300), t_x=days)
def test_bgnbd_p_alive_right_after_a_purchase(params: BgNbdParams, x: int, t_x: float) -> None:
    # BG/NBD lets a customer drop out at the purchase itself, so at T == t_x P(alive) is the
    # posterior mean of 1 - p, not 1; it is 1 only for x == 0.
    expected = (params.b + x - 1) / (params.a + params.b + x - 1)
    assert p_alive(x, t_x, t_x, params) == pytest.approx(expected, rel=1e-12)
    assert p_alive(0, 0.0, t_x, params) == 1.0


@given(params=params_st, T=days)
def test_one_time_buyers_decay_in_the_stream(params: BgNbdParams, T: float) -> None:
    at_first_purchase = churn_p_alive(0, 0.0, 0.0, params)
    assert at_first_purchase == pytest.approx(params.b / (params.a + params.b), rel=1e-12)
    # ... which is what BG/NBD gives right after the first repeat purchase.
    assert at_first_purchase == pytest.approx(p_alive(1, T, T, params), rel=1e-12)
    assert churn_p_alive(0, 0.0, T, params) <= at_first_purchase
    assert churn_p_alive(0, 0.0, 1e6, params) < at_first_purchase


@given(params=params_st, x=xs, t_x=days, gap=days)
def test_p_alive_does_not_depend_on_the_parameters_time_unit(
    params: BgNbdParams, x: int, t_x: float, gap: float
) -> None:
    in_days = params.in_time_unit(1.0)
    for variant in VARIANTS:
        assert variant(x, t_x, t_x + gap, in_days) == pytest.approx(
            variant(x, t_x, t_x + gap, params), rel=1e-9, abs=1e-300
        )


def test_p_alive_is_stable_for_huge_exponents() -> None:
    assert p_alive(100_000, 1.0, 1e9, DEFAULT_PARAMS) == 0.0
    assert p_alive(100_000, 1e9, 1e9, DEFAULT_PARAMS) == pytest.approx(1.0, abs=1e-5)
    assert 0.0 <= p_alive_mbg(0, 0.0, 1e300, DEFAULT_PARAMS) < 0.01


@pytest.mark.parametrize("bad", [(-1, 0.0, 1.0), (1, 5.0, 4.0), (1, -1.0, 1.0), (1, 0.0, math.nan)])
def test_p_alive_rejects_impossible_histories(bad: tuple[int, float, float]) -> None:
    with pytest.raises(ValueError):
        churn_p_alive(*bad, DEFAULT_PARAMS)


@settings(max_examples=300)
@given(
    params=params_st,
    x=xs,
    t_x=days,
    now_gap=days,
    level=st.floats(0.01, 0.99),
    horizon=st.floats(0.0, 20000.0),
)
def test_next_crossing_time_agrees_with_p_alive(
    params: BgNbdParams, x: int, t_x: float, now_gap: float, level: float, horizon: float
) -> None:
    T_now = t_x + now_gap
    crossing = next_crossing_time(x, t_x, T_now, level, params, horizon)
    if crossing is None:
        assert churn_p_alive(x, t_x, T_now + horizon, params) > level
        return
    assert t_x <= crossing <= T_now + horizon
    assert churn_p_alive(x, t_x, crossing, params) <= level
    if crossing > t_x:
        just_before = math.nextafter(crossing, -math.inf)
        assert churn_p_alive(x, t_x, just_before, params) > level


def test_next_crossing_time_examples() -> None:
    crossing = next_crossing_time(3, 100.0, 150.0, 0.5, DEFAULT_PARAMS, 1000.0)
    assert crossing is not None and 150.0 < crossing < 1150.0
    assert churn_p_alive(3, 100.0, crossing, DEFAULT_PARAMS) == pytest.approx(0.5, abs=1e-12)
    assert next_crossing_time(3, 100.0, 150.0, 0.5, DEFAULT_PARAMS, crossing - 150.1) is None
    # Already below right after the purchase: the crossing is the purchase itself.
    assert next_crossing_time(1, 10.0, 40.0, 0.9, DEFAULT_PARAMS, 30.0) == 10.0
    # A one-time buyer gets a finite boundary thanks to the MBG/NBD treatment of x == 0.
    assert next_crossing_time(0, 0.0, 0.0, 0.5, DEFAULT_PARAMS, math.inf) is not None
    # Beyond ~1e304 days counts as never, even with an unbounded horizon.
    assert next_crossing_time(0, 0.0, 0.0, 1e-300, DEFAULT_PARAMS, math.inf) is None


@pytest.mark.parametrize("level", [0.0, 1.0, -0.5, math.nan])
def test_next_crossing_time_rejects_levels_outside_0_1(level: float) -> None:
    with pytest.raises(ValueError):
        next_crossing_time(1, 1.0, 2.0, level, DEFAULT_PARAMS, 10.0)


def test_expected_days_between_purchases_shrinks_to_the_population() -> None:
    population_gap = DEFAULT_PARAMS.alpha / DEFAULT_PARAMS.r
    assert expected_days_between_purchases(DEFAULT_PARAMS, 0, 0.0) == pytest.approx(population_gap)
    assert expected_days_between_purchases(
        DEFAULT_PARAMS.in_time_unit(7.0), 0, 0.0
    ) == pytest.approx(population_gap)
    regular = expected_days_between_purchases(DEFAULT_PARAMS, 1000, 10_000.0)
    assert regular == pytest.approx(10.0, rel=0.01)
    one_quick_repeat = expected_days_between_purchases(DEFAULT_PARAMS, 1, 2.0)
    assert 2.0 < one_quick_repeat < population_gap


def test_expected_purchases_basic_behaviour() -> None:
    assert expected_purchases(0.0, 3, 50.0, 80.0, DEFAULT_PARAMS) == 0.0
    values = [expected_purchases(t, 3, 50.0, 80.0, DEFAULT_PARAMS) for t in (7, 30, 90, 365)]
    assert all(v > 0 for v in values)
    assert values == sorted(values)
    # a == 1 makes the closed form 0/0; the limit must still come out finite and continuous.
    at_one = BgNbdParams(0.5, 20.0, 1.0, 3.0, version="a1", fitted_on=0)
    near_one = BgNbdParams(0.5, 20.0, 1.0 + 1e-4, 3.0, version="a1", fitted_on=0)
    assert expected_purchases(90, 3, 50.0, 80.0, at_one) == pytest.approx(
        expected_purchases(90, 3, 50.0, 80.0, near_one), rel=1e-3
    )


def test_expected_purchases_quadrature_agrees_with_the_closed_form(
    cdnow_weeks: tuple[np.ndarray, ...],
) -> None:
    x, t_x, T = cdnow_weeks
    for xi, txi, Ti in list(zip(x.tolist(), t_x.tolist(), T.tolist(), strict=True))[::10]:
        history = (int(xi), txi * 7, Ti * 7)
        closed = expected_purchases(39 * 7, *history, WEEKLY)
        by_quadrature = _expected_purchases_if_alive(39 * 7, int(xi), Ti * 7, WEEKLY)
        assert by_quadrature * p_alive(*history, WEEKLY) == pytest.approx(closed, rel=1e-6)


def test_expected_purchases_where_scipy_hyp2f1_gives_up() -> None:
    # A concentrated Beta and a ten-year horizon on a one-day alpha: scipy's 2F1 returns NaN.
    params = BgNbdParams(0.62, 0.79, 8.16, 178.8, version="edge", fitted_on=0)
    expected = expected_purchases(3650.0, 0, 0.0, 0.0, params)
    # Everyone alive buys about r / alpha per day until dropping out after ~1 / p purchases.
    mean_purchases_before_dropout = (params.a + params.b - 1) / (params.a - 1)
    assert 0.9 * mean_purchases_before_dropout < expected < mean_purchases_before_dropout


# --- fitting -------------------------------------------------------------------------------


def _simulate(
    n: int,
    r: float,
    alpha: float,
    a: float,
    b: float,
    seed: int,
    *,
    dropout: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw BG/NBD histories in days (the generative story, not the likelihood).

    ``dropout`` replaces the Beta(a, b) dropout probability by one shared value.
    """
    rng = np.random.default_rng(seed)
    rates = rng.gamma(r, 1 / alpha, n)
    dropouts = rng.beta(a, b, n) if dropout is None else np.full(n, dropout)
    T = rng.uniform(180, 540, n)
    x = np.zeros(n)
    t_x = np.zeros(n)
    for i in range(n):
        t = 0.0
        while True:
            t += rng.exponential(1 / rates[i])
            if t > T[i]:
                break
            x[i] += 1
            t_x[i] = t
            if rng.random() < dropouts[i]:
                break
    return x, t_x, T


def test_fit_recovers_simulated_parameters() -> None:
    x, t_x, T = _simulate(5000, r=0.5, alpha=20.0, a=0.8, b=3.0, seed=0)
    fitted = fit(x, t_x, T, version="sim")
    assert fitted.version == "sim"
    assert fitted.fitted_on == 5000
    # The mean purchase rate and mean dropout probability are the well-identified quantities.
    assert fitted.r / fitted.alpha == pytest.approx(0.5 / 20.0, rel=0.1)
    assert fitted.a / (fitted.a + fitted.b) == pytest.approx(0.8 / 3.8, rel=0.1)
    for name, truth in {"r": 0.5, "alpha": 20.0, "a": 0.8, "b": 3.0}.items():
        assert getattr(fitted, name) == pytest.approx(truth, rel=0.3), name


@given(
    histories=st.lists(
        st.tuples(st.integers(0, 20), st.floats(0, 300), st.floats(0, 300)), max_size=60
    ),
    unit=st.sampled_from([1.0, 7.0]),
)
def test_fit_returns_defaults_for_tiny_data(
    histories: list[tuple[int, float, float]], unit: float
) -> None:
    x = [h[0] for h in histories]
    t_x = [min(h[1], h[2]) if h[0] else 0.0 for h in histories]
    T = [max(h[1], h[2]) for h in histories]
    assert fit(x, t_x, T, version="v", time_unit_days=unit, min_customers=61) == (
        DEFAULT_PARAMS.in_time_unit(unit)
    )


def test_fit_keeps_the_homogeneous_dropout_limit() -> None:
    # One shared dropout probability is Beta(a, b) with a, b -> inf, a limit of the model: the
    # fit may run towards the box edge there and must still be kept.
    x, t_x, T = _simulate(3000, r=0.5, alpha=20.0, a=1.0, b=1.0, seed=1, dropout=0.2)
    fitted = fit(x, t_x, T, version="homogeneous")
    assert fitted.version == "homogeneous"
    assert fitted.a + fitted.b > 20  # a concentrated Beta, whether interior or at the edge
    assert fitted.a / (fitted.a + fitted.b) == pytest.approx(0.2, rel=0.1)
    assert fitted.r / fitted.alpha == pytest.approx(0.5 / 20.0, rel=0.1)


def test_fit_falls_back_when_nobody_drops_out() -> None:
    x, t_x, T = _simulate(3000, r=0.5, alpha=20.0, a=1.0, b=1.0, seed=2, dropout=0.0)
    assert fit(x, t_x, T, version="v") == DEFAULT_PARAMS


def test_fit_falls_back_to_previous_params() -> None:
    previous = BgNbdParams(0.4, 3.0, 0.7, 2.0, version="prev", fitted_on=900, time_unit_days=7.0)
    assert fit([1, 2], [3.0, 4.0], [5.0, 6.0], version="v", previous=previous) == (
        previous.in_time_unit(1.0)
    )
    # Enough customers, but nobody came back: BG/NBD cannot see dropout at all.
    n = 800
    T = np.linspace(1, 400, n)
    no_repeats = fit(np.zeros(n), np.zeros(n), T, version="v", previous=previous)
    assert no_repeats.version == "prev"


def test_fit_rejects_malformed_histories() -> None:
    with pytest.raises(ValueError):
        fit([1, 2], [3.0], [5.0, 6.0], version="v")
    with pytest.raises(ValueError):
        fit([1], [7.0], [5.0], version="v")
    with pytest.raises(ValueError):
        fit([1], [1.0], [math.nan], version="v")


def test_fitting_kernel_agrees_with_log_likelihood_and_its_gradient(
    cdnow_weeks: tuple[np.ndarray, ...],
) -> None:
    x, t_x, T = cdnow_weeks
    histories = _Histories.build(x, t_x, T)
    for params in ([0.243, 4.414, 0.793, 2.426], [1.3, 0.7, 5.0, 0.2]):
        log_params = np.log(params)
        value, grad = histories.neg_mean_ll_and_grad(log_params)
        assert -value * len(x) == pytest.approx(log_likelihood(params, x, t_x, T), rel=1e-12)
        numeric = approx_fprime(log_params, lambda p: histories.neg_mean_ll_and_grad(p)[0], 1e-7)
        np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-6)


def test_log_likelihood_outside_the_domain_is_minus_infinity() -> None:
    assert log_likelihood([0.0, 1.0, 1.0, 1.0], [1], [1.0], [2.0]) == -math.inf
