"""`apply_event(state, event, ...) -> StepResult`: the fold of one input event into a customer.

The clock is the event time (never the wall clock), so live traffic, replays and tests run the
same code and produce the same changes with the same ids.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Final

from segmentation import engagement as eng
from segmentation.bgnbd import BgNbdParams
from segmentation.evaluate import Evaluation, evaluate, profile_of
from segmentation.events import (
    EMAIL_CLICKS,
    EMAIL_OPENS,
    PURCHASES,
    SUPPRESSIONS,
    WECHAT,
    InputEvent,
)
from segmentation.rules import Rules
from segmentation.state import NO_TIME, CustomerState, Order, event_digest
from segmentation.timeutil import to_rfc3339

CAUSES: Final = ("event", "time", "rules_change", "backfill")


@dataclass(slots=True)
class StepResult:
    state: CustomerState | None
    changes: list[dict[str, Any]] = field(default_factory=list)
    profile: dict[str, Any] | None = None
    duplicate: bool = False
    erased: bool = False
    evaluation: Evaluation | None = None


def change_id(
    customer_id: str,
    prev: tuple[Any, Any],
    new: tuple[Any, Any],
    at_ms: int,
    rules_version: str,
    trigger: str | None = None,
) -> str:
    """Deterministic: the same transition at the same event time under the same rules has the same
    id in every replay and after every redelivery, so consumers can deduplicate on it."""
    parts = (customer_id, prev[0], prev[1], new[0], new[1], at_ms, rules_version, trigger)
    text = "\x1f".join(str(p) for p in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _apply_purchase(state: CustomerState, ev: InputEvent) -> None:
    assert ev.order_id is not None
    order = state.orders.get(ev.order_id)
    if ev.kind == "purchase":
        if order is None:
            state.orders[ev.order_id] = Order(ev.occurred_ms, ev.amount_cents)
        elif order.at_ms == NO_TIME or (ev.occurred_ms, ev.amount_cents) < (
            order.at_ms,
            order.cents,
        ):  # its refund arrived first, or a republished order: the earliest version wins
            order.at_ms, order.cents = ev.occurred_ms, ev.amount_cents
        # else: the same order published again under another event id: counted once.
    else:
        if order is None:
            order = state.orders[ev.order_id] = Order(NO_TIME, 0)
        order.refunds.setdefault(event_digest(ev.event_id), ev.amount_cents)


def _engagement_weight(ev: InputEvent, rules: Rules) -> tuple[str, float]:
    weights = rules.engagement.weights
    if ev.topic == EMAIL_OPENS:
        return "email", weights.get("email_open", 1.0)
    if ev.topic == EMAIL_CLICKS:
        return "email", weights.get("email_click", 3.0)
    return "wechat", weights.get(ev.kind, 1.0)


def _apply_engagement(state: CustomerState, ev: InputEvent, rules: Rules) -> None:
    channel, weight = _engagement_weight(ev, rules)
    half_life = rules.engagement.half_life_days
    at = ev.occurred_ms
    if state.engaged_as_of_ms == NO_TIME:
        state.engaged_as_of_ms = at
    elif at > state.engaged_as_of_ms:
        elapsed = at - state.engaged_as_of_ms
        state.email_score = eng.decay(state.email_score, elapsed, half_life)
        state.wechat_score = eng.decay(state.wechat_score, elapsed, half_life)
        state.engaged_as_of_ms = at
    contribution = eng.decay(weight, state.engaged_as_of_ms - at, half_life)
    if channel == "email":
        state.email_score += contribution
    else:
        state.wechat_score += contribution
    state.engagement_events += 1
    if ev.topic == WECHAT and ev.kind in ("follow", "unfollow"):
        following = ev.kind == "follow"
        if state.wechat_follow is None or (at, following) >= state.wechat_follow:
            state.wechat_follow = (at, following)


def _apply_suppression(state: CustomerState, ev: InputEvent) -> None:
    assert ev.channel is not None
    on = ev.kind in ("unsubscribe", "complaint")
    current = state.suppressions.get(ev.channel)
    # Latest by event time wins, so a late resubscribe does not undo a newer unsubscribe.
    if current is None or (ev.occurred_ms, on) >= current:
        state.suppressions[ev.channel] = (ev.occurred_ms, on)


def change_message(
    state: CustomerState,
    ev: Evaluation,
    previous: tuple[str | None, str | None],
    cause: str,
    rules: Rules,
    trigger_event_id: str | None,
) -> dict[str, Any]:
    f = ev.features
    return {
        "change_id": change_id(
            state.customer_id,
            previous,
            (ev.tier, ev.stage.stage),
            ev.as_of_ms,
            rules.version,
            trigger_event_id or cause,
        ),
        "customer_id": state.customer_id,
        "previous_tier": previous[0],
        "tier": ev.tier,
        "previous_stage": previous[1],
        "stage": ev.stage.stage,
        "rfm_segment": f["segment"],
        "r": f["r"],
        "f": f["f"],
        "m": f["m"],
        "recency_days": f["recency_days"],
        "frequency": f["frequency"],
        "monetary": f["monetary"],
        "engagement_score": f["engagement_score"],
        "engagement_level": f["engagement_level"],
        "p_alive": f["p_alive"],
        "tags": ev.tags,
        "cause": cause,
        "rule": ev.tier_explanation["rule"],
        "stage_reason": ev.stage.reason,
        "rules_version": rules.version,
        "event_id": trigger_event_id,
        "occurred_at": to_rfc3339(ev.as_of_ms),
    }


def reevaluate(
    state: CustomerState,
    rules: Rules,
    params: BgNbdParams,
    as_of_ms: int,
    cause: str,
    trigger_event_id: str | None = None,
) -> StepResult:
    """Evaluate at `as_of_ms`, record the new standing, and describe any change of tier or stage."""
    state.as_of_ms = max(state.as_of_ms, as_of_ms)
    evaluation = evaluate(state, rules, params, state.as_of_ms)
    previous = (state.tier, state.stage)
    changes = []
    if previous != (evaluation.tier, evaluation.stage.stage):
        changes.append(change_message(state, evaluation, previous, cause, rules, trigger_event_id))
    state.tier, state.stage = evaluation.tier, evaluation.stage.stage
    state.rules_version, state.scores = rules.version, evaluation.scores
    return StepResult(
        state=state,
        changes=changes,
        profile=profile_of(state, evaluation, rules, params),
        evaluation=evaluation,
    )


def apply_event(
    state: CustomerState | None,
    ev: InputEvent,
    rules: Rules,
    params: BgNbdParams,
    *,
    cause: str = "event",
) -> StepResult:
    """Fold one validated event into the customer's state. Redelivery (a seen event id) changes
    nothing; `erase` drops the customer."""
    if ev.topic == SUPPRESSIONS and ev.kind == "erase":
        return StepResult(state=None, erased=True)
    if state is None:
        state = CustomerState(customer_id=ev.customer_id)
    digest = event_digest(ev.event_id)
    if state.has_seen(digest):
        return StepResult(state=state, duplicate=True)
    if ev.topic == PURCHASES:
        _apply_purchase(state, ev)
    elif ev.topic == SUPPRESSIONS:
        _apply_suppression(state, ev)
    else:
        _apply_engagement(state, ev, rules)
    if ev.timezone and (ev.occurred_ms, ev.timezone) >= (
        state.timezone_at_ms,
        state.timezone or "",
    ):
        state.timezone, state.timezone_at_ms = ev.timezone, ev.occurred_ms
    state.remember(digest)
    return reevaluate(state, rules, params, ev.occurred_ms, cause, ev.event_id)
