"""Features, tier, stage and tags of one customer at one instant, with the explanation.

`evaluate(state, rules, params, as_of_ms)` is the single place where a customer's standing is
decided; profiles, tier changes and the HTTP explanation all come from its result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from segmentation import engagement as eng
from segmentation.bgnbd import BgNbdParams, churn_p_alive
from segmentation.lifecycle import StageDecision, decide_stage
from segmentation.quantiles import score_with_hysteresis
from segmentation.rfm import ascending_score, recency_score, segment_of
from segmentation.rules import Rules, derived
from segmentation.state import NO_TIME, CustomerState
from segmentation.timeutil import DAY_MS, day_of, to_rfc3339


@dataclass(frozen=True, slots=True)
class Evaluation:
    as_of_ms: int
    features: dict[str, Any]
    tier: str
    tier_rule: str  # the tier rule that holds, as "tiers[i]:name" (or "fallback")
    stage: StageDecision
    tags: list[str]
    scores: tuple[int, int, int] | None
    first_purchase_ms: int | None
    last_purchase_ms: int | None
    rules: Rules = field(compare=False, repr=False)  # for the explanation, built on demand

    @property
    def tier_explanation(self) -> dict[str, Any]:
        """Why this tier: every condition of the rule that holds and of the rules before it.
        Built on demand (a profile, the HTTP explanation), not at each evaluation."""
        return self.rules.tier_for(self.features)[1]


def btyd_stats(purchase_times_ms: list[int], as_of_ms: int) -> tuple[int, int, int] | None:
    """(x, t_x, T) in days: repeat purchase days, first->last purchase day, first day->as-of day."""
    if not purchase_times_ms:
        return None
    days = sorted({day_of(t) for t in purchase_times_ms})
    first = days[0]
    return len(days) - 1, days[-1] - first, max(day_of(as_of_ms) - first, days[-1] - first)


def rfm_scores(
    rules: Rules,
    recency_days: int,
    frequency: int,
    monetary: float,
    previous: tuple[int, int, int] | None,
) -> tuple[int, int, int]:
    """Fixed thresholds, or population quintiles with hysteresis: near a cut point the previous
    score holds, so customers do not flap when the cut points move a little."""
    s = rules.scoring
    cuts = rules.cutpoints
    if s.method != "quantile" or cuts is None:
        return (
            recency_score(recency_days, s.recency_days),
            ascending_score(frequency, s.frequency),
            ascending_score(monetary, s.monetary),
        )
    prev = previous or (None, None, None)
    band = s.hysteresis
    # Whole-valued dimensions get a minimum band (1 day, half an order): a relative band around
    # a small integer cut point would be narrower than one step.
    return (
        score_with_hysteresis(recency_days, cuts.recency, prev[0], band, False, min_width=1),
        score_with_hysteresis(frequency, cuts.frequency, prev[1], band, True, min_width=0.5),
        score_with_hysteresis(monetary, cuts.monetary, prev[2], band, True),
    )


def engagement_at(
    state: CustomerState, as_of_ms: int, half_life_days: float
) -> tuple[float, float]:
    if state.engaged_as_of_ms == NO_TIME:
        return 0.0, 0.0
    elapsed = as_of_ms - state.engaged_as_of_ms
    return (
        eng.decay(state.email_score, elapsed, half_life_days),
        eng.decay(state.wechat_score, elapsed, half_life_days),
    )


def evaluate(state: CustomerState, rules: Rules, params: BgNbdParams, as_of_ms: int) -> Evaluation:
    times = state.purchase_times()
    frequency = len(times)
    monetary = state.monetary_cents() / 100
    email_score, wechat_score = engagement_at(state, as_of_ms, rules.engagement.half_life_days)
    engagement_score = round(email_score + wechat_score, 4)
    btyd = btyd_stats(times, as_of_ms)
    features: dict[str, Any] = {
        "frequency": frequency,
        "monetary": monetary,
        "engagement_score": engagement_score,
        "engagement_level": eng.level(engagement_score, rules.engagement),
        "email_score": round(email_score, 4),
        "wechat_score": round(wechat_score, 4),
        "wechat_following": state.wechat_follow[1] if state.wechat_follow else False,
        "recency_days": None,
        "r": None,
        "f": None,
        "m": None,
        "segment": None,
        "p_alive": None,
        "x": None,
        "t_x": None,
        "T": None,
        "days_since_first_purchase": None,
    }
    scores = None
    typical_gap = None
    if times and btyd is not None:
        recency_days = (as_of_ms - times[-1]) // DAY_MS
        scores = rfm_scores(rules, recency_days, frequency, monetary, state.scores)
        x, t_x, big_t = btyd
        typical_gap = t_x / x if x > 0 else None
        features.update(
            recency_days=recency_days,
            r=scores[0],
            f=scores[1],
            m=scores[2],
            segment=segment_of(*scores),
            p_alive=round(churn_p_alive(x, float(t_x), float(big_t), params), 6),
            x=x,
            t_x=t_x,
            T=big_t,
            days_since_first_purchase=(as_of_ms - times[0]) // DAY_MS,
        )
    stage = decide_stage(times, as_of_ms, rules.lifecycle, typical_gap)
    features["stage"] = stage.stage
    tier, tier_rule = rules.tier_rule(features)
    return Evaluation(
        as_of_ms=as_of_ms,
        features=features,
        tier=tier,
        tier_rule=tier_rule,
        stage=stage,
        tags=rules.tags_for(features),
        scores=scores,
        first_purchase_ms=times[0] if times else None,
        last_purchase_ms=times[-1] if times else None,
        rules=rules,
    )


def rfm_explanation(rules: Rules) -> dict[str, Any]:
    """How the scores are computed: the same for every profile under these rules, so built
    once per rules object (it was 2% of the worker's time, py-spy, 2026-12-07). Shared: not to
    be changed by a caller."""
    return derived(rules, "rfm_explanation", lambda: _rfm_explanation(rules))


def _rfm_explanation(rules: Rules) -> dict[str, Any]:
    cuts = rules.cutpoints
    if rules.scoring.method == "quantile" and cuts is not None:
        return {
            "method": "quantile",
            "cutpoints_version": cuts.version,
            "population": cuts.population,
            "recency_days_cuts": list(cuts.recency),
            "frequency_cuts": list(cuts.frequency),
            "monetary_cuts": list(cuts.monetary),
            "hysteresis": rules.scoring.hysteresis,
        }
    return {
        "method": "fixed",
        "recency_days_bounds": list(rules.scoring.recency_days),
        "frequency_bounds": list(rules.scoring.frequency),
        "monetary_bounds": list(rules.scoring.monetary),
    }


def profile_of(
    state: CustomerState, ev: Evaluation, rules: Rules, params: BgNbdParams
) -> dict[str, Any]:
    """The read model's document: the design's profile shape plus the explanation."""
    return render_profile(state.customer_id, state.suppressions, ev, rules, params)


def render_profile(
    customer_id: str,
    suppressions: dict[str, tuple[int, bool]],
    ev: Evaluation,
    rules: Rules,
    params: BgNbdParams,
) -> dict[str, Any]:
    """`profile_of` from the only parts of the state it reads (see `StepResult.profile`)."""
    f = ev.features
    return {
        "customer_id": customer_id,
        "tier": ev.tier,
        "stage": ev.stage.stage,
        "tags": ev.tags,
        "rfm": {
            "recency_days": f["recency_days"],
            "frequency": f["frequency"],
            "monetary": f["monetary"],
            "r": f["r"],
            "f": f["f"],
            "m": f["m"],
            "segment": f["segment"],
        },
        "btyd": {"x": f["x"], "t_x": f["t_x"], "T": f["T"]},
        "engagement": {
            "score": f["engagement_score"],
            "level": f["engagement_level"],
            "email_score": f["email_score"],
            "wechat_score": f["wechat_score"],
            "wechat_following": f["wechat_following"],
        },
        "p_alive": f["p_alive"],
        "first_purchase_at": to_rfc3339(ev.first_purchase_ms) if ev.first_purchase_ms else None,
        "last_purchase_at": to_rfc3339(ev.last_purchase_ms) if ev.last_purchase_ms else None,
        "as_of": to_rfc3339(ev.as_of_ms),
        "rules_version": rules.version,
        "suppressions": {k: v[1] for k, v in sorted(suppressions.items())},
        "explanation": {
            "tier": ev.tier_explanation,
            "stage": {
                "stage": ev.stage.stage,
                "reason": ev.stage.reason,
                "at_risk_after_days": ev.stage.at_risk_after_days,
                "churned_after_days": ev.stage.churned_after_days,
                "next_boundary_at": (
                    to_rfc3339(ev.stage.next_boundary_ms) if ev.stage.next_boundary_ms else None
                ),
            },
            "rfm": rfm_explanation(rules),
            "p_alive": {
                "model": "BG/NBD (MBG-style for one-time buyers)",
                "params_version": params.version,
                "x": f["x"],
                "t_x": f["t_x"],
                "T": f["T"],
            },
            "tags": [
                {"tag": rule.name, "description": rule.description}
                for rule in rules.tags
                if rule.name in ev.tags
            ],
        },
    }
