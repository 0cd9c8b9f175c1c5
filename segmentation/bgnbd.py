"""BG/NBD churn model: P(alive) from (x, t_x, T), and maximum-likelihood refits.

The model is Fader, Hardie & Lee (2005), "Counting Your Customers the Easy Way". While alive a
customer buys at rate lambda ~ Gamma(r, alpha); after each purchase they drop out with
probability p ~ Beta(a, b). The stream holds each customer's buy-till-you-die summary
(``x`` repeat-purchase days, ``t_x`` days from first to last purchase, ``T`` days from first
purchase to now) and evaluates the closed forms below on every event and timer tick; the four
population parameters are refitted from the whole table on a schedule by :func:`fit`.

Units. Every time argument of this module is in days, the stream's unit. ``BgNbdParams`` carries
``time_unit_days``, the unit its ``alpha`` is expressed in (7.0 for the weekly parameters of the
literature), and the functions convert, so weekly and daily parameters of the same model give
the same answers and cannot be mixed up by a caller.

Which P(alive) the stream uses: :func:`churn_p_alive`. In plain BG/NBD (:func:`p_alive`) a
customer can only drop out right after a purchase, so a one-time buyer (x == 0) has P(alive) = 1
forever and would never warn or churn. :func:`churn_p_alive` therefore uses the MBG/NBD form
(Batislam, Denizel & Filiztekin 2007, where dropout can also follow the first purchase) for
x == 0 and plain BG/NBD for x > 0, all with the BG/NBD-fitted parameters. The two agree where
they meet: a first-time buyer at T == 0 gets b / (a + b), exactly what BG/NBD gives a customer
right after their first repeat purchase, and from there one-time buyers who vanish decay.
:func:`next_crossing_time`, which schedules a customer's next churn boundary, follows the same
choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.integrate import quad
from scipy.optimize import minimize
from scipy.special import betaln, digamma, gammaln, hyp2f1

__all__ = [
    "DEFAULT_PARAMS",
    "BgNbdParams",
    "churn_p_alive",
    "expected_days_between_purchases",
    "expected_purchases",
    "fit",
    "log_likelihood",
    "next_crossing_time",
    "p_alive",
    "p_alive_mbg",
]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class BgNbdParams:
    """Population parameters of BG/NBD, with the provenance needed to version and audit them.

    ``alpha`` is a scale in units of ``time_unit_days`` days; ``r``, ``a`` and ``b`` have no unit.
    ``fitted_on`` is the number of customers of the fit (0 for built-in defaults, which were not
    fitted on this service's data).
    """

    r: float
    alpha: float
    a: float
    b: float
    version: str
    fitted_on: int
    time_unit_days: float = 1.0

    def __post_init__(self) -> None:
        for name in ("r", "alpha", "a", "b", "time_unit_days"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"BgNbdParams.{name} must be finite and > 0, got {value!r}")
        if self.fitted_on < 0:
            raise ValueError(f"BgNbdParams.fitted_on must be >= 0, got {self.fitted_on!r}")
        if not self.version:
            raise ValueError("BgNbdParams.version must not be empty")

    @property
    def alpha_days(self) -> float:
        return self.alpha * self.time_unit_days

    def in_time_unit(self, time_unit_days: float) -> BgNbdParams:
        """The same model expressed in another time unit (same version: nothing was refitted)."""
        if time_unit_days == self.time_unit_days:
            return self
        return replace(
            self,
            alpha=self.alpha * self.time_unit_days / time_unit_days,
            time_unit_days=float(time_unit_days),
        )

    def as_array(self) -> FloatArray:
        return np.array([self.r, self.alpha, self.a, self.b], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BgNbdParams:
        return cls(
            r=float(data["r"]),
            alpha=float(data["alpha"]),
            a=float(data["a"]),
            b=float(data["b"]),
            version=str(data["version"]),
            fitted_on=int(data["fitted_on"]),
            time_unit_days=float(data.get("time_unit_days", 1.0)),
        )


# CDNOW (Fader, Hardie & Lee 2005, 2,357 customers, 39 weeks): a retail purchase process that is
# a reasonable prior for a shop with too little history of its own. Weekly alpha 4.414 in days.
DEFAULT_PARAMS = BgNbdParams(
    r=0.243,
    alpha=4.414 * 7.0,
    a=0.793,
    b=2.426,
    version="default-cdnow",
    fitted_on=0,
    time_unit_days=1.0,
)


def _check_history(x: float, t_x: float, T: float) -> None:
    # NaN fails every comparison, so it is rejected here too.
    if not (x >= 0 and 0 <= t_x <= T and math.isfinite(T)):
        raise ValueError(f"invalid BTYD history x={x!r}, t_x={t_x!r}, T={T!r}")


def _logistic_of_minus(z: float) -> float:
    """1 / (1 + exp(z)) without overflow for large |z|."""
    if z > 0:
        ez = math.exp(-z)
        return ez / (1.0 + ez)
    return 1.0 / (1.0 + math.exp(z))


def _log_odds_dead(log_c: float, exponent: float, t_x: float, T: float, alpha_days: float) -> float:
    """log(c * ((alpha + T) / (alpha + t_x)) ** exponent), the log odds of having dropped out."""
    # log1p keeps the ratio exact near T == t_x, where a plain log of a ratio loses digits.
    return log_c + exponent * math.log1p((T - t_x) / (alpha_days + t_x))


def p_alive(x: int, t_x: float, T: float, params: BgNbdParams) -> float:
    """P(alive | x, t_x, T) of plain BG/NBD; 1 for x == 0 (see the module docstring)."""
    _check_history(x, t_x, T)
    if x == 0:
        return 1.0
    log_c = math.log(params.a) - math.log(params.b + x - 1)
    return _logistic_of_minus(_log_odds_dead(log_c, params.r + x, t_x, T, params.alpha_days))


def p_alive_mbg(x: int, t_x: float, T: float, params: BgNbdParams) -> float:
    """P(alive | x, t_x, T) of MBG/NBD, where dropout may also follow the first purchase."""
    _check_history(x, t_x, T)
    log_c = math.log(params.a) - math.log(params.b + x)
    return _logistic_of_minus(_log_odds_dead(log_c, params.r + x, t_x, T, params.alpha_days))


def churn_p_alive(x: int, t_x: float, T: float, params: BgNbdParams) -> float:
    """The P(alive) the stream publishes: MBG/NBD for one-time buyers, BG/NBD otherwise."""
    if x == 0:
        return p_alive_mbg(x, t_x, T, params)
    return p_alive(x, t_x, T, params)


def expected_purchases(t: float, x: int, t_x: float, T: float, params: BgNbdParams) -> float:
    """E[purchases in (T, T + t] | x, t_x, T], FHL 2005 eq. (10); all times in days."""
    _check_history(x, t_x, T)
    if not (t >= 0 and math.isfinite(t)):
        raise ValueError(f"invalid horizon t={t!r}")
    if t == 0:
        return 0.0
    r, alpha, b = params.r, params.alpha_days, params.b
    # The formula is 0/0 at a == 1 (its limit is finite); a nudge this small costs ~1e-9
    # relative accuracy, well below what the parameters are known to.
    a = params.a if abs(params.a - 1.0) > 1e-7 else 1.0 + 1e-7
    z = t / (alpha + T + t)
    # Euler's transformation of the paper's (1-z)**(r+x) * 2F1(r+x, b+x; a+b+x-1; z): its
    # upper parameters no longer grow with x, so frequent buyers do not overflow 2F1.
    hyp = float(hyp2f1(a + b - 1.0 - r, a - 1.0, a + b + x - 1.0, z))
    if math.isfinite(hyp):
        decayed = math.exp((a - 1.0) * math.log1p(-z)) * hyp
        if_alive = (a + b + x - 1.0) / (a - 1.0) * (1.0 - decayed)
    else:
        # scipy returns NaN for z near 1 with large parameters (a concentrated Beta and a
        # horizon of years on a fast purchase clock).
        if_alive = _expected_purchases_if_alive(t, x, T, params)
    return if_alive * p_alive(x, t_x, T, params)


def _expected_purchases_if_alive(t: float, x: float, T: float, params: BgNbdParams) -> float:
    """E[purchases in (T, T + t] | alive at T] by quadrature, for where 2F1 cannot be evaluated.

    Given alive at T the posterior is lambda ~ Gamma(r + x, alpha + T), p ~ Beta(a, b + x), and
    an alive customer makes (1 - exp(-lambda p t)) / p purchases in expectation; lambda
    integrates out in closed form, leaving one smooth integral over p.
    """
    r, alpha, a, b = params.r, params.alpha_days, params.a, params.b
    scale, exponent, tail = t / (alpha + T), r + x, b + x - 1.0
    log_beta = float(betaln(a, b + x))

    def purchases(p: float) -> float:
        return -math.expm1(-exponent * math.log1p(p * scale)) / p if p > 0 else exponent * scale

    def without_p_power(p: float) -> float:
        return purchases(p) * math.exp(tail * math.log1p(-p) - log_beta) if p < 1 else 0.0

    def integrand(p: float) -> float:
        return without_p_power(p) * math.exp((a - 1.0) * math.log(p)) if p > 0 else 0.0

    # Split at the Beta mean, where the mass concentrates when b + x is large; below it an
    # a < 1 singularity at 0 is handed to QUADPACK's algebraic weight, which is exact for it
    # (and only accurate for small exponents, hence not for a >= 1).
    split = a / (a + b + x)
    if a < 1:
        below = quad(without_p_power, 0.0, split, weight="alg", wvar=(a - 1.0, 0.0), limit=200)[0]
    else:
        below = quad(integrand, 0.0, split, limit=200)[0]
    above = quad(integrand, split, 1.0, limit=200)[0]
    return float(below + above)


def expected_days_between_purchases(params: BgNbdParams, x: int, t_x: float) -> float:
    """Expected gap between purchases, in days, for the churn warning's explanation.

    1 / E[lambda | x purchases in (0, t_x]] = (alpha + t_x) / (r + x): the Gamma posterior of
    the purchase rate of a customer seen alive up to their last purchase. It is alpha / r, the
    population's mean gap, for a one-time buyer and tends to the observed t_x / x as x grows,
    so one lucky quick repeat does not make a customer look overdue after a few days.
    """
    if not (x >= 0 and t_x >= 0 and math.isfinite(t_x)):
        raise ValueError(f"invalid history x={x!r}, t_x={t_x!r}")
    return (params.alpha_days + t_x) / (params.r + x)


def log_likelihood(
    params_array: npt.ArrayLike,
    x: npt.ArrayLike,
    t_x: npt.ArrayLike,
    T: npt.ArrayLike,
    *,
    weights: npt.ArrayLike | None = None,
) -> float:
    """BG/NBD log-likelihood (FHL 2005 eq. 6) of ``params_array = [r, alpha, a, b]``.

    The paper's likelihood in the paper's terms: times in the unit of ``alpha``, no conversion
    to days. ``weights`` counts identical histories (a table's distinct rows).
    Returns -inf for parameters outside the model's domain.
    """
    r, alpha, a, b = (float(v) for v in np.asarray(params_array, dtype=np.float64))
    if not all(math.isfinite(v) and v > 0 for v in (r, alpha, a, b)):
        return -math.inf
    xs = np.asarray(x, dtype=np.float64)
    txs = np.asarray(t_x, dtype=np.float64)
    Ts = np.asarray(T, dtype=np.float64)
    repeat = xs > 0
    with np.errstate(all="ignore"):
        ln_a1 = gammaln(r + xs) - gammaln(r) + r * math.log(alpha)
        ln_a2 = betaln(a, b + xs) - betaln(a, b)
        ln_a3 = -(r + xs) * np.log(alpha + Ts)
        # x == 0 has no "dropped out after the last purchase" branch; the max() only keeps the
        # discarded side of the where() finite.
        ln_a4 = np.where(
            repeat,
            math.log(a) - np.log(b + np.maximum(xs, 1.0) - 1.0) - (r + xs) * np.log(alpha + txs),
            -np.inf,
        )
        per_customer = ln_a1 + ln_a2 + np.logaddexp(ln_a3, ln_a4)
        if weights is None:
            total = float(np.sum(per_customer))
        else:
            total = float(np.dot(np.asarray(weights, dtype=np.float64), per_customer))
    return total if math.isfinite(total) else -math.inf


# Log-parameter box for the optimiser; see _identified() for what its edges mean.
_LOG_BOUND = 15.0
_EDGE_MARGIN = 0.5
# A Gamma or Beta with both shape parameters above e**5 is within ~10% of a point mass.
_HOMOGENEOUS_LOG = 5.0
_INFEASIBLE = 1e100


def fit(
    x: npt.ArrayLike,
    t_x: npt.ArrayLike,
    T: npt.ArrayLike,
    *,
    version: str,
    time_unit_days: float = 1.0,
    min_customers: int = 500,
    min_repeat_buyers: int = 50,
    previous: BgNbdParams | None = None,
) -> BgNbdParams:
    """Maximum-likelihood BG/NBD parameters of a customer table; times in days.

    ``time_unit_days`` picks the unit of the returned ``alpha`` (7.0 reproduces the weekly
    parameters of the literature); the likelihood does not depend on it. With fewer than
    ``min_customers`` customers or ``min_repeat_buyers`` customers with x > 0 (dropout is only
    visible in repeat buyers), or an optimisation that fails or lands on the edge of the
    parameter space, the result is ``previous`` (else :data:`DEFAULT_PARAMS`) in the requested
    unit and under its own version: callers tell a refit from a fallback by
    ``result.version == version``. Malformed histories raise ``ValueError``.

    CPU-bound (seconds for a million customers): run it off the event loop.
    """
    if not version:
        raise ValueError("version must not be empty")
    time_unit_days = float(time_unit_days)
    if not (math.isfinite(time_unit_days) and time_unit_days > 0):
        raise ValueError(f"time_unit_days must be finite and > 0, got {time_unit_days!r}")
    xs, txs, Ts = (np.asarray(v, dtype=np.float64).ravel() for v in (x, t_x, T))
    if not xs.shape == txs.shape == Ts.shape:
        raise ValueError(f"x, t_x and T differ in length: {xs.size}, {txs.size}, {Ts.size}")
    valid = np.isfinite(xs) & np.isfinite(txs) & np.isfinite(Ts)
    valid &= (xs >= 0) & (txs >= 0) & (txs <= Ts)
    if not valid.all():
        bad = int(np.flatnonzero(~valid)[0])
        raise ValueError(
            f"invalid BTYD history at row {bad}: x={xs[bad]}, t_x={txs[bad]}, T={Ts[bad]}"
        )

    fallback = (previous if previous is not None else DEFAULT_PARAMS).in_time_unit(time_unit_days)
    n_customers = int(xs.size)
    n_repeat = int(np.count_nonzero(xs > 0))
    if n_customers < max(min_customers, 1) or n_repeat < max(min_repeat_buyers, 1):
        return fallback

    histories = _Histories.build(xs, txs / time_unit_days, Ts / time_unit_days)
    log_params = _optimise(histories, _starting_point(xs, Ts / time_unit_days))
    if log_params is None:
        return fallback
    r, alpha, a, b = (float(v) for v in np.exp(log_params))
    return BgNbdParams(
        r=r,
        alpha=alpha,
        a=a,
        b=b,
        version=version,
        fitted_on=n_customers,
        time_unit_days=time_unit_days,
    )


@dataclass(frozen=True)
class _Histories:
    """A customer table compressed for repeated likelihood evaluations.

    Day-stamped histories repeat a lot (every one-time buyer of a given age shares one row), and
    the Gamma-function terms depend on x alone, which takes few distinct values; so the rows are
    deduplicated with counts and the special functions are evaluated once per distinct x.
    """

    x: FloatArray
    t_x: FloatArray
    T: FloatArray
    weight: FloatArray
    level_of_row: npt.NDArray[np.intp]
    x_levels: FloatArray
    level_weight: FloatArray

    @classmethod
    def build(cls, x: FloatArray, t_x: FloatArray, T: FloatArray) -> _Histories:
        rows, counts = np.unique(np.column_stack([x, t_x, T]), axis=0, return_counts=True)
        weight = counts.astype(np.float64)
        x_levels, level_of_row = np.unique(rows[:, 0], return_inverse=True)
        level_weight = np.bincount(level_of_row, weights=weight, minlength=x_levels.size).astype(
            np.float64
        )
        return cls(
            x=rows[:, 0],
            t_x=rows[:, 1],
            T=rows[:, 2],
            weight=weight,
            level_of_row=level_of_row,
            x_levels=x_levels,
            level_weight=level_weight,
        )

    @property
    def n(self) -> float:
        return float(self.weight.sum())

    def neg_mean_ll_and_grad(self, log_params: FloatArray) -> tuple[float, FloatArray]:
        """-LL / n and its gradient with respect to log([r, alpha, a, b])."""
        r, alpha, a, b = (float(v) for v in np.exp(log_params))
        xl, wl = self.x_levels, self.level_weight
        x, w, lv = self.x, self.weight, self.level_of_row
        with np.errstate(all="ignore"):
            ll_levels = (
                gammaln(r + xl)
                - gammaln(r)
                + r * math.log(alpha)
                + gammaln(b + xl)
                + gammaln(a + b)
                - gammaln(a + b + xl)
                - gammaln(b)
            )
            # x == 0 rows have no "dropped out after the last purchase" branch; max() only
            # keeps the discarded side of the where() finite.
            b_x_1 = b + np.maximum(xl, 1.0) - 1.0
            exponent = r + x
            log_alpha_T = np.log(alpha + self.T)
            log_alpha_tx = np.log(alpha + self.t_x)
            ln_alive = -exponent * log_alpha_T
            ln_dead = np.where(
                x > 0, (math.log(a) - np.log(b_x_1))[lv] - exponent * log_alpha_tx, -np.inf
            )
            ln_mix = np.logaddexp(ln_alive, ln_dead)
            ll = float(np.dot(wl, ll_levels) + np.dot(w, ln_mix))
            share_alive = np.exp(ln_alive - ln_mix)
            share_dead = np.exp(ln_dead - ln_mix)

            d_r = np.dot(wl, digamma(r + xl) - digamma(r) + math.log(alpha)) - np.dot(
                w, share_alive * log_alpha_T + share_dead * log_alpha_tx
            )
            d_alpha = self.n * r / alpha - np.dot(
                w, exponent * (share_alive / (alpha + self.T) + share_dead / (alpha + self.t_x))
            )
            d_a = np.dot(wl, digamma(a + b) - digamma(a + b + xl)) + np.dot(w, share_dead) / a
            d_b = np.dot(
                wl, digamma(b + xl) - digamma(a + b + xl) - digamma(b) + digamma(a + b)
            ) - np.dot(w, share_dead / b_x_1[lv])
            grad = np.array([d_r * r, d_alpha * alpha, d_a * a, d_b * b], dtype=np.float64)
        if not (math.isfinite(ll) and np.all(np.isfinite(grad))):
            return _INFEASIBLE, np.zeros(4)
        return -ll / self.n, -grad / self.n


def _starting_point(x: FloatArray, T: FloatArray) -> FloatArray:
    # r = 1 with the mean rate matched to the observed repeat rate puts alpha on the data's
    # time scale; a = 1, b = 3 is a middling dropout probability of 1/4 per purchase.
    rate = max(float(x.sum()), 1.0) / max(float(T.sum()), 1e-9)
    return np.log(np.array([1.0, 1.0 / rate, 1.0, 3.0]))


def _optimise(histories: _Histories, start: FloatArray) -> FloatArray | None:
    def value(log_params: FloatArray) -> float:
        return histories.neg_mean_ll_and_grad(log_params)[0]

    bounds = [(-_LOG_BOUND, _LOG_BOUND)] * 4
    candidates: list[FloatArray] = []
    try:
        first = minimize(
            histories.neg_mean_ll_and_grad,
            start,
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 2000},
        )
        candidates.append(np.asarray(first.x, dtype=np.float64))
        if not first.success:
            # A line search that gives up near a flat optimum is common; the derivative-free
            # method then finishes the job from where it stopped.
            second = minimize(
                value,
                first.x if np.all(np.isfinite(first.x)) else start,
                method="Nelder-Mead",
                options={"xatol": 1e-9, "fatol": 1e-14, "maxiter": 4000, "maxfev": 8000},
            )
            candidates.append(np.asarray(second.x, dtype=np.float64))
    except (ArithmeticError, ValueError):
        return None
    usable = [c for c in candidates if _identified(c) and value(c) < _INFEASIBLE]
    if not usable:
        return None
    return min(usable, key=value)


def _identified(log_params: FloatArray) -> bool:
    """Whether an optimum at ``log([r, alpha, a, b])`` is a usable answer.

    r and alpha, or a and b, running off together is the model's homogeneous limit (everyone
    shares one purchase rate, or one dropout probability); the box edge approximates it closely,
    so it is kept. Anything else on the edge (b -> inf alone when nobody ever drops out,
    anything -> 0) means the data cannot identify the model.
    """
    if not np.all(np.isfinite(log_params)):
        return False
    edge = _LOG_BOUND - _EDGE_MARGIN
    if np.any(log_params <= -edge):
        return False
    for i, j in ((0, 1), (2, 3)):
        at_edge = log_params[i] >= edge or log_params[j] >= edge
        if at_edge and min(log_params[i], log_params[j]) < _HOMOGENEOUS_LOG:
            return False
    return True


def next_crossing_time(
    x: int,
    t_x: float,
    T_now: float,
    level: float,
    params: BgNbdParams,
    horizon_days: float,
) -> float | None:
    """The earliest T (days since first purchase) with ``churn_p_alive(x, t_x, T) <= level``.

    For fixed (x, t_x) P(alive) falls monotonically in T, so this is the customer's next churn
    boundary until they buy again. The result is exact in floating point: P(alive) at the
    returned T is <= ``level`` and at the float just below it (if that is still >= t_x) it is
    > ``level``, so a timer scheduled for it never fires early or finds nothing to do.

    It may be <= ``T_now`` (already below the level, e.g. right after a purchase when the level
    is high, or when catching up); the caller fires at once and can stamp that event time. None
    when the crossing lies beyond ``T_now + horizon_days``.
    """
    _check_history(x, t_x, T_now)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if not horizon_days >= 0:
        raise ValueError(f"horizon_days must be >= 0, got {horizon_days!r}")

    def prob(T: float) -> float:
        return churn_p_alive(x, t_x, T, params)

    if prob(t_x) <= level:
        return float(t_x)
    # Closed form of 1 / (1 + c * ((alpha + T) / (alpha + t_x)) ** e) == level, in logs so
    # that tiny levels cannot overflow; the bracketing below removes its rounding error.
    log_c = math.log(params.a) - math.log(params.b + (x - 1 if x > 0 else 0))
    exponent = params.r + x
    alpha = params.alpha_days
    log_target = math.log(alpha + t_x) + (math.log((1.0 - level) / level) - log_c) / exponent
    limit = T_now + horizon_days
    if log_target > math.log(alpha + limit) + 1e-9:
        return None
    guess = math.exp(log_target) - alpha if log_target < 700.0 else math.inf
    if not math.isfinite(guess):
        return None
    crossing = _first_at_or_below(prob, level, lo_floor=float(t_x), guess=guess)
    return crossing if crossing <= limit else None


def _first_at_or_below(
    prob: Callable[[float], float], level: float, *, lo_floor: float, guess: float
) -> float:
    """Smallest float T > lo_floor with prob(T) <= level, given prob(lo_floor) > level."""
    step = max(abs(guess), 1.0) * 1e-12
    hi = max(guess, math.nextafter(lo_floor, math.inf))
    while prob(hi) > level:
        hi += step
        step *= 2.0
    lo = max(hi - step, lo_floor)
    while lo > lo_floor and prob(lo) <= level:
        lo = max(lo - step, lo_floor)
        step *= 2.0
    # Invariant prob(lo) > level >= prob(hi); halve until they are adjacent floats.
    while True:
        mid = lo + (hi - lo) / 2.0
        if mid <= lo or mid >= hi:
            return hi
        if prob(mid) <= level:
            hi = mid
        else:
            lo = mid
