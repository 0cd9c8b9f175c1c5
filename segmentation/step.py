"""`apply_event(state, event, ...) -> StepResult`: the fold of one input event into a customer.

The clock is the event time (never the wall clock), so live traffic, replays and tests run the
same code and produce the same changes with the same ids.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Final

from segmentation import engagement as eng
from segmentation.bgnbd import BgNbdParams, expected_days_between_purchases
from segmentation.campaigns import (
    CampaignPolicy,
    CampaignState,
    Decision,
    SuppressionState,
    Transition,
    apply_suppression,
    decide,
)
from segmentation.evaluate import Evaluation, evaluate, render_profile
from segmentation.events import (
    EMAIL_CLICKS,
    EMAIL_OPENS,
    PURCHASES,
    SUPPRESSIONS,
    WECHAT,
    InputEvent,
)
from segmentation.rules import Rules
from segmentation.schedule import churn_gap_due_ms, next_due_ms
from segmentation.state import NO_TIME, CustomerState, Order, event_digest
from segmentation.timeutil import to_rfc3339

CAUSES: Final = ("event", "time", "rules_change", "backfill")


@dataclass(slots=True)
class StepResult:
    state: CustomerState | None
    changes: list[dict[str, Any]] = field(default_factory=list)
    triggers: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    duplicate: bool = False
    erased: bool = False
    evaluation: Evaluation | None = None
    # The profile is rendered on first use: the agent publishes one per customer per write
    # batch, the last, so the profiles of a customer's earlier steps in a batch are never
    # built (they were a third of those built on the bench workload). What it reads of the
    # state is taken now: a later step may change the state object.
    profile_parts: tuple[str, dict[str, tuple[int, bool]], Rules, BgNbdParams] | None = None
    _profile: dict[str, Any] | None = None

    @property
    def profile(self) -> dict[str, Any] | None:
        """The read model's document after this step (None: duplicate, erased)."""
        if self._profile is None and self.profile_parts is not None:
            assert self.evaluation is not None
            customer_id, suppressions, rules, params = self.profile_parts
            self._profile = render_profile(
                customer_id, suppressions, self.evaluation, rules, params
            )
        return self._profile


def change_id(
    customer_id: str,
    prev: tuple[Any, Any],
    new: tuple[Any, Any],
    at_ms: int,
    rules_version: str,
    trigger: str | None = None,
) -> str:
    """Deterministic: the same transition at the same event time under the same rules has the same
    id in every replay and after every redelivery, so consumers can deduplicate on it.

    `at_ms` must not depend on the partition clock: for a change caused by an input event it is
    that event's own time (with `trigger` its event id), for a time-caused change the boundary's
    instant, so the id survives a restart whose clock differs (see `change_message`)."""
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
    *,
    event_ms: int | None = None,
) -> dict[str, Any]:
    """The tier-changes message. Its id uses `event_ms` (the triggering event's own time) when the
    change comes from an event: the evaluation time `ev.as_of_ms` is the later of that and the
    partition clock, and the clock after a crash and restart is not the clock before it (it is
    persisted with each write batch and re-advanced by whatever records are redelivered), so an
    id built on it would give the same transition caused by the same event a new id."""
    f = ev.features
    return {
        "change_id": change_id(
            state.customer_id,
            previous,
            (ev.tier, ev.stage.stage),
            _id_time(ev, trigger_event_id, event_ms),
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
        "rule": ev.tier_rule,
        "stage_reason": ev.stage.reason,
        "rules_version": rules.version,
        "event_id": trigger_event_id,
        "occurred_at": to_rfc3339(ev.as_of_ms),
    }


def _id_time(ev: Evaluation, trigger_event_id: str | None, event_ms: int | None) -> int:
    """The instant an output id is built on: the triggering event's own time for an event-caused
    output, else the evaluation time (a time boundary, or a rules change)."""
    if trigger_event_id is not None and event_ms is not None:
        return event_ms
    return ev.as_of_ms


def suppression_state(state: CustomerState) -> SuppressionState:
    """The customer's per-channel suppression for the campaign policy (`all` covers both)."""
    sup = SuppressionState()
    for channel, (at_ms, on) in sorted(state.suppressions.items(), key=lambda kv: kv[1]):
        kind = "unsubscribe" if on else "resubscribe"
        sup = apply_suppression(sup, kind, channel, at_ms)
    return sup


def churn_warning(
    state: CustomerState, ev: Evaluation, rules: Rules, params: BgNbdParams
) -> dict[str, Any] | None:
    """A churn warning when P(alive) or the purchase gap crosses the configured level, once per
    episode: not again until the customer buys (a new last purchase starts a new episode)."""
    f = ev.features
    last = ev.last_purchase_ms
    if last is None or f["p_alive"] is None or state.churn_warned_for == last:
        return None
    gap_due = churn_gap_due_ms(ev, rules, params)
    low_p = f["p_alive"] < rules.churn.p_alive_below
    long_gap = gap_due is not None and ev.as_of_ms >= gap_due
    if not (low_p or long_gap):
        return None
    expected = expected_days_between_purchases(params, f["x"], float(f["t_x"]))
    critical = ev.stage.stage == "churned" or f["p_alive"] < rules.churn.p_alive_below / 2
    state.churn_warned_for = last
    text = f"{state.customer_id}\x1fchurn\x1f{last}"
    return {
        "warning_id": hashlib.sha256(text.encode()).hexdigest()[:32],
        "customer_id": state.customer_id,
        "p_alive": f["p_alive"],
        "days_since_last_purchase": f["recency_days"],
        "expected_days_between_purchases": round(expected, 2),
        "tier": ev.tier,
        "stage": ev.stage.stage,
        "severity": "critical" if critical else "warning",
        "reason": (
            f"P(alive) {f['p_alive']:.3f} below {rules.churn.p_alive_below}"
            if low_p
            else f"{f['recency_days']} days since the last purchase, over "
            f"{rules.churn.gap_multiple:g} x the expected {expected:.0f}"
        ),
        "occurred_at": to_rfc3339(ev.as_of_ms),
    }


def _campaigns(
    state: CustomerState,
    ev: Evaluation,
    previous: tuple[str | None, str | None, str | None],
    change: dict[str, Any] | None,
    cause: str,
    policy: CampaignPolicy,
    trigger_event_id: str | None = None,
    event_ms: int | None = None,
) -> Decision | None:
    level = ev.features["engagement_level"]
    if change is None and previous[2] == level:
        return None
    # An engagement-level move alone publishes no tier change, but may enter a campaign
    # (potential + high engagement -> nurture): it gets its own deterministic id.
    cid = (
        change["change_id"]
        if change is not None
        else change_id(
            state.customer_id,
            (previous[0], previous[1]),
            (ev.tier, ev.stage.stage),
            _id_time(ev, trigger_event_id, event_ms),
            f"engagement:{previous[2]}->{level}",
            trigger_event_id,
        )
    )
    transition = Transition(
        customer_id=state.customer_id,
        previous_tier=previous[0],
        tier=ev.tier,
        previous_stage=previous[1],
        stage=ev.stage.stage,
        engagement_level=level,
        previous_engagement_level=previous[2],
        occurred_at_ms=ev.as_of_ms,
        change_id=cid,
        cause=cause,
    )
    campaign_state = CampaignState.from_dict(state.campaigns) if state.campaigns else None
    decision = decide(transition, campaign_state, suppression_state(state), policy, state.timezone)
    state.campaigns = decision.state.to_dict()
    return decision


def reevaluate(
    state: CustomerState,
    rules: Rules,
    params: BgNbdParams,
    as_of_ms: int,
    cause: str,
    trigger_event_id: str | None = None,
    policy: CampaignPolicy | None = None,
    *,
    event_ms: int | None = None,
) -> StepResult:
    """Evaluate at `as_of_ms`; record the new standing and its next boundary; describe any change
    of tier or stage, the campaigns it fires and any churn warning. `event_ms` is the triggering
    event's own time: output ids are built on it rather than on `as_of_ms` (see
    `change_message`)."""
    state.as_of_ms = max(state.as_of_ms, as_of_ms)
    evaluation = evaluate(state, rules, params, state.as_of_ms)
    previous = (state.tier, state.stage, state.engagement_level)
    result = StepResult(state=state, evaluation=evaluation)
    change = None
    if (previous[0], previous[1]) != (evaluation.tier, evaluation.stage.stage):
        change = change_message(
            state,
            evaluation,
            (previous[0], previous[1]),
            cause,
            rules,
            trigger_event_id,
            event_ms=event_ms,
        )
        result.changes.append(change)
    if policy is not None:
        decision = _campaigns(
            state, evaluation, previous, change, cause, policy, trigger_event_id, event_ms
        )
        if decision is not None:
            result.triggers = [t.to_message() for t in decision.triggers]
            result.skipped = list(decision.skipped)
    warning = churn_warning(state, evaluation, rules, params)
    if warning is not None:
        result.warnings.append(warning)
    state.tier, state.stage = evaluation.tier, evaluation.stage.stage
    state.engagement_level = evaluation.features["engagement_level"]
    state.rules_version, state.scores = rules.version, evaluation.scores
    state.next_due_ms = next_due_ms(state, evaluation, rules, params)
    result.profile_parts = (state.customer_id, dict(state.suppressions), rules, params)
    return result


def apply_event(
    state: CustomerState | None,
    ev: InputEvent,
    rules: Rules,
    params: BgNbdParams,
    *,
    cause: str = "event",
    as_of_ms: int = NO_TIME,
    policy: CampaignPolicy | None = None,
) -> StepResult:
    """Fold one validated event into the customer's state and evaluate it at the later of the
    event time and `as_of_ms` (the partition's clock). Redelivery (a seen event id) changes
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
    return reevaluate(
        state,
        rules,
        params,
        max(as_of_ms, ev.occurred_ms),
        cause,
        ev.event_id,
        policy,
        event_ms=ev.occurred_ms,
    )
