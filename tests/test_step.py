"""Tests for segmentation.step: the fold of events into a customer's state, and the tier-change
messages it produces.

The properties are the service's contract for late, out-of-order and duplicated input: any
arrival order of the same events gives the same profile, and a redelivered event changes nothing.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segmentation.bgnbd import DEFAULT_PARAMS, churn_p_alive
from segmentation.events import (
    EMAIL_CLICKS,
    EMAIL_OPENS,
    PURCHASES,
    SUPPRESSIONS,
    WECHAT,
    WECHAT_KINDS,
    InputEvent,
    parse_event,
)
from segmentation.rules import default_rules
from segmentation.state import SEEN_LIMIT, CustomerState
from segmentation.step import StepResult, apply_event, change_id, reevaluate
from segmentation.timeutil import DAY_MS, HOUR_MS, to_rfc3339

RULES = default_rules()
PARAMS = DEFAULT_PARAMS
CUSTOMER = "c-42"
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z, a UTC midnight
MINUTE_MS = 60_000


# -- building events ----------------------------------------------------------------------------


def purchase(eid: str, order: str, cents: int, at: int, *, tz: str | None = None) -> InputEvent:
    return InputEvent(
        topic=PURCHASES,
        event_id=eid,
        customer_id=CUSTOMER,
        occurred_ms=at,
        kind="purchase",
        order_id=order,
        amount_cents=cents,
        timezone=tz,
    )


def refund(eid: str, order: str, cents: int, at: int) -> InputEvent:
    return InputEvent(
        topic=PURCHASES,
        event_id=eid,
        customer_id=CUSTOMER,
        occurred_ms=at,
        kind="refund",
        order_id=order,
        amount_cents=cents,
    )


def email(eid: str, at: int, *, click: bool = False) -> InputEvent:
    topic = EMAIL_CLICKS if click else EMAIL_OPENS
    return InputEvent(topic=topic, event_id=eid, customer_id=CUSTOMER, occurred_ms=at, kind=topic)


def wechat(eid: str, kind: str, at: int) -> InputEvent:
    return InputEvent(topic=WECHAT, event_id=eid, customer_id=CUSTOMER, occurred_ms=at, kind=kind)


def suppression(eid: str, kind: str, at: int, channel: str = "all") -> InputEvent:
    return InputEvent(
        topic=SUPPRESSIONS,
        event_id=eid,
        customer_id=CUSTOMER,
        occurred_ms=at,
        kind=kind,
        channel=channel,
    )


def fold(events: list[InputEvent], state: CustomerState | None = None) -> CustomerState:
    for event in events:
        state = apply_event(state, event, RULES, PARAMS).state
    assert state is not None
    return state


def profile_at(state: CustomerState, as_of: int) -> dict[str, Any]:
    profile = reevaluate(state, RULES, PARAMS, as_of, "time").profile
    assert profile is not None
    return profile


def p_alive(x: int, t_x: int, big_t: int) -> float:
    return round(churn_p_alive(x, float(t_x), float(big_t), PARAMS), 6)


# -- generated histories ------------------------------------------------------------------------

ENGAGEMENT_KINDS = [(EMAIL_OPENS, EMAIL_OPENS), (EMAIL_CLICKS, EMAIL_CLICKS)] + [
    (WECHAT, kind) for kind in sorted(WECHAT_KINDS)
]


@st.composite
def histories(draw: st.DrawFn) -> list[InputEvent]:
    """One customer's events: orders (some refunded in full, in part or more than once, some only
    known by a refund), engagement and suppressions, each at its own millisecond."""
    orders = draw(
        st.lists(
            st.tuples(
                st.integers(0, 60_000),  # cents
                st.booleans(),  # the purchase itself is in the history
                st.lists(st.sampled_from(["full", "half", "cent"]), max_size=2),  # refunds
            ),
            max_size=5,
        )
    )
    engagement = draw(st.lists(st.sampled_from(ENGAGEMENT_KINDS), max_size=6))
    suppressions = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["unsubscribe", "complaint", "resubscribe"]),
                st.sampled_from(["email", "wechat", "all"]),
            ),
            max_size=3,
        )
    )
    count = sum(int(bought) + len(refunds) for _, bought, refunds in orders)
    count += len(engagement) + len(suppressions)
    if count == 0:
        return [email("only", T0)]
    # (day, minute) pairs: none shares a millisecond; a short span makes same-day purchases and
    # repeat buyers common, a long one at-risk, churned and reactivated customers.
    span_days = draw(st.sampled_from([1, 20, 400]))
    slots = draw(
        st.lists(
            st.tuples(st.integers(0, span_days), st.integers(0, 24 * 60 - 1)),
            min_size=count,
            max_size=count,
            unique=True,
        )
    )
    times = iter(T0 + day * DAY_MS + minute * MINUTE_MS for day, minute in slots)
    events: list[InputEvent] = []
    for index, (cents, bought, refunds) in enumerate(orders):
        order = f"o{index}"
        if bought:
            events.append(purchase(f"buy-{index}", order, cents, next(times)))
        for n, size in enumerate(refunds):
            amount = {"full": cents, "half": cents // 2, "cent": 1}[size]
            events.append(refund(f"refund-{index}-{n}", order, amount, next(times)))
    for index, (topic, kind) in enumerate(engagement):
        event = InputEvent(
            topic=topic,
            event_id=f"eng-{index}",
            customer_id=CUSTOMER,
            occurred_ms=next(times),
            kind=kind,
        )
        events.append(event)
    for index, (kind, channel) in enumerate(suppressions):
        events.append(suppression(f"sup-{index}", kind, next(times), channel))
    return events


FOLD_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@FOLD_SETTINGS
@given(data=st.data(), events=histories())
def test_any_arrival_order_gives_the_same_profile(
    data: st.DataObject, events: list[InputEvent]
) -> None:
    shuffled = data.draw(st.permutations(events), label="arrival order")
    last = max(e.occurred_ms for e in events)
    as_of = last + data.draw(st.integers(0, 400 * DAY_MS), label="time after the last event")
    in_order = fold(events)
    out_of_order = fold(shuffled)
    assert profile_at(in_order, as_of) == profile_at(out_of_order, as_of)
    assert in_order.as_of_ms == out_of_order.as_of_ms == as_of
    assert in_order.purchase_times() == out_of_order.purchase_times()
    assert in_order.monetary_cents() == out_of_order.monetary_cents()
    assert in_order.suppressions == out_of_order.suppressions
    assert in_order.wechat_follow == out_of_order.wechat_follow


@FOLD_SETTINGS
@given(data=st.data(), events=histories())
def test_redelivery_changes_nothing(data: st.DataObject, events: list[InputEvent]) -> None:
    deliveries = data.draw(st.permutations(events + events), label="deliveries")
    state: CustomerState | None = None
    first_seen: list[InputEvent] = []
    for event in deliveries:
        before = state.to_bytes() if state is not None else None
        result = apply_event(state, event, RULES, PARAMS)
        if any(e.event_id == event.event_id for e in first_seen):
            assert result.duplicate is True
            assert (result.changes, result.profile, result.erased) == ([], None, False)
            assert result.state is state
            assert result.state is not None and result.state.to_bytes() == before
        else:
            assert result.duplicate is False
            first_seen.append(event)
        state = result.state
    assert state is not None
    once = fold(first_seen)
    assert state.to_dict() == once.to_dict()
    as_of = max(e.occurred_ms for e in events) + DAY_MS
    assert profile_at(state, as_of) == profile_at(fold(events), as_of)


@FOLD_SETTINGS
@given(data=st.data(), events=histories())
def test_state_round_trips_through_bytes_exactly(
    data: st.DataObject, events: list[InputEvent]
) -> None:
    state = fold(events)
    if data.draw(st.booleans(), label="reevaluated later"):
        reevaluate(state, RULES, PARAMS, state.as_of_ms + 200 * DAY_MS, "time")
    raw = state.to_bytes()
    copy = CustomerState.from_bytes(raw)
    assert copy == state
    assert copy.to_bytes() == raw
    as_of = state.as_of_ms + DAY_MS
    assert profile_at(copy, as_of) == profile_at(state, as_of)


def test_a_state_with_every_field_set_round_trips() -> None:
    state = fold(
        [
            purchase("p1", "kept", 1234, T0),
            refund("r1", "refund-only", 500, T0 + 1),  # its purchase has not arrived
            purchase("p2", "refunded", 99, T0 + 2),
            refund("r2", "refunded", 99, T0 + 3),
            wechat("w1", "follow", T0 + 4),
            email("m1", T0 + 5),
            suppression("s1", "unsubscribe", T0 + 6, "email"),
            suppression("s2", "resubscribe", T0 + 7, "all"),
            purchase("p3", "zoned", 100, T0 + 8, tz="Asia/Shanghai"),
        ]
    )
    state.customer_id = "客户-1"
    state.email_score = 1.0000000000000002
    state.wechat_score = 0.1 + 0.2
    state.remember(2**63 - 1)
    state.remember(0)
    state.tier, state.stage, state.rules_version = "vip", "reactivated", "v7"
    state.scores = (5, 4, 3)
    state.extra = {"churn_episode": 3, "nested": {"a": [1, 2.5, None]}}
    assert CustomerState.from_bytes(state.to_bytes()) == state
    assert CustomerState.from_bytes(state.to_bytes()) == state
    prospect = CustomerState(customer_id="p", tier="potential", stage="prospect", scores=None)
    assert CustomerState.from_bytes(prospect.to_bytes()) == prospect
    assert CustomerState.from_bytes(CustomerState("e").to_bytes()) == CustomerState("e")


# -- change ids ---------------------------------------------------------------------------------

BASE_CHANGE: tuple[Any, ...] = ("c-42", ("active", "active"), ("active", "at_risk"), T0, "v1")


def test_change_id_is_deterministic_and_compact() -> None:
    first = change_id(*BASE_CHANGE)
    assert first == change_id(*BASE_CHANGE)
    assert re.fullmatch(r"[0-9a-f]{32}", first)


@pytest.mark.parametrize(
    "variant",
    [
        ("c-43", ("active", "active"), ("active", "at_risk"), T0, "v1"),
        ("c-42", (None, "active"), ("active", "at_risk"), T0, "v1"),
        ("c-42", ("vip", "active"), ("active", "at_risk"), T0, "v1"),
        ("c-42", ("active", "new"), ("active", "at_risk"), T0, "v1"),
        ("c-42", ("active", None), ("active", "at_risk"), T0, "v1"),
        ("c-42", ("active", "active"), ("ordinary", "at_risk"), T0, "v1"),
        ("c-42", ("active", "active"), ("active", "churned"), T0, "v1"),
        ("c-42", ("active", "active"), ("active", "at_risk"), T0 + 1, "v1"),
        ("c-42", ("active", "active"), ("active", "at_risk"), T0, "v2"),
        # Swapping previous and new is a different transition.
        ("c-42", ("active", "at_risk"), ("active", "active"), T0, "v1"),
    ],
)
def test_change_id_differs_when_any_component_differs(variant: tuple[Any, ...]) -> None:
    assert change_id(*variant) != change_id(*BASE_CHANGE)


@FOLD_SETTINGS
@given(events=histories())
def test_a_replay_emits_the_same_changes_with_the_same_ids(events: list[InputEvent]) -> None:
    def changes(history: list[InputEvent]) -> list[dict[str, Any]]:
        state: CustomerState | None = None
        out: list[dict[str, Any]] = []
        for event in history:
            result = apply_event(state, event, RULES, PARAMS)
            out.extend(result.changes)
            state = result.state
        assert state is not None
        out.extend(reevaluate(state, RULES, PARAMS, state.as_of_ms + 365 * DAY_MS, "time").changes)
        return out

    assert changes(events) == changes(events)


def test_distinct_changes_at_the_same_as_of_have_distinct_ids() -> None:
    now = T0 + 3 * MINUTE_MS
    history = [
        email("m0", now),  # (None, None) -> (ordinary, prospect)
        purchase("p1", "o1", 1000, T0 + MINUTE_MS),  # late: -> (potential, new)
        refund("r1", "o1", 1000, T0 + 2 * MINUTE_MS),  # late: -> (ordinary, prospect)
        purchase("p2", "o2", 1000, T0 + 2 * MINUTE_MS + 1),  # late: -> (potential, new)
    ]
    state: CustomerState | None = None
    emitted: list[dict[str, Any]] = []
    for event in history:
        result = apply_event(state, event, RULES, PARAMS)
        emitted.extend(result.changes)
        state = result.state
    assert [(c["tier"], c["stage"], c["occurred_at"]) for c in emitted] == [
        ("ordinary", "prospect", to_rfc3339(now)),
        ("potential", "new", to_rfc3339(now)),
        ("ordinary", "prospect", to_rfc3339(now)),
        ("potential", "new", to_rfc3339(now)),
    ]
    assert len({c["change_id"] for c in emitted}) == 4


# -- worked examples ----------------------------------------------------------------------------


def test_a_hand_computed_customer() -> None:
    state = fold(
        [
            purchase("p1", "o1", 1000, T0 + 10 * HOUR_MS),
            purchase("p2", "o2", 550, T0 + 15 * HOUR_MS),  # same day as o1
            purchase("p3", "o3", 2000, T0 + 3 * DAY_MS + 9 * HOUR_MS),
            purchase("p4", "o4", 425, T0 + 10 * DAY_MS + 12 * HOUR_MS),
        ]
    )
    profile = profile_at(state, T0 + 40 * DAY_MS + 12 * HOUR_MS)
    assert profile["customer_id"] == CUSTOMER
    assert profile["rfm"] == {
        "recency_days": 30,
        "frequency": 4,  # orders
        "monetary": 39.75,
        "r": 5,  # 30 days is within the first recency bound
        "f": 3,  # 4 orders: at least 3, fewer than 5
        "m": 2,  # 39.75: at least 25, less than 60
        "segment": "potential_loyalist",  # R=5, FM=ceil(5/2)=3
    }
    # Purchase days 0, 0, 3 and 10: two repeat days, 10 days first to last, 40 to as-of.
    assert profile["btyd"] == {"x": 2, "t_x": 10, "T": 40}
    assert profile["p_alive"] == p_alive(2, 10, 40)
    assert 0.0 < profile["p_alive"] <= 1.0
    assert profile["first_purchase_at"] == "2024-01-01T10:00:00.000+00:00"
    assert profile["last_purchase_at"] == "2024-01-11T12:00:00.000+00:00"
    assert profile["as_of"] == "2024-02-10T12:00:00.000+00:00"
    assert (profile["tier"], profile["stage"], profile["tags"]) == ("active", "active", [])
    assert profile["explanation"]["tier"]["rule"] == "tiers[1]:active"
    assert profile["explanation"]["stage"]["next_boundary_at"] == "2024-04-10T12:00:00.000+00:00"
    assert profile["engagement"]["score"] == 0.0
    assert profile["engagement"]["level"] == "low"
    assert profile["rules_version"] == "default-2026.11"
    assert profile["suppressions"] == {}


def test_amounts_parsed_from_json_add_up_to_exact_cents() -> None:
    def parsed(eid: str, order: str, amount: str) -> InputEvent:
        doc = {
            "event_id": eid,
            "customer_id": CUSTOMER,
            "occurred_at": T0 + HOUR_MS,
            "order_id": order,
            "amount": amount,
        }
        return parse_event(PURCHASES, orjson.dumps(doc), now_ms=T0 + DAY_MS)

    state = fold([parsed("a", "o1", "0.1"), parsed("b", "o2", "0.2"), parsed("c", "o3", "11.77")])
    assert state.monetary_cents() == 1207
    assert profile_at(state, T0 + DAY_MS)["rfm"]["monetary"] == 12.07


def test_a_full_refund_removes_the_order_from_frequency() -> None:
    state = fold(
        [
            purchase("p1", "o1", 1000, T0),
            purchase("p2", "o2", 2000, T0 + 5 * DAY_MS),
            refund("r2", "o2", 2000, T0 + 6 * DAY_MS),
        ]
    )
    profile = profile_at(state, T0 + 10 * DAY_MS)
    assert (profile["rfm"]["frequency"], profile["rfm"]["monetary"]) == (1, 10.0)
    assert profile["last_purchase_at"] == to_rfc3339(T0)
    assert profile["btyd"] == {"x": 0, "t_x": 0, "T": 10}
    assert profile["stage"] == "new"


def test_a_partial_refund_only_reduces_monetary() -> None:
    state = fold(
        [
            purchase("p1", "o1", 1000, T0),
            purchase("p2", "o2", 2000, T0 + 5 * DAY_MS),
            refund("r2", "o2", 500, T0 + 6 * DAY_MS),
        ]
    )
    profile = profile_at(state, T0 + 10 * DAY_MS)
    assert (profile["rfm"]["frequency"], profile["rfm"]["monetary"]) == (2, 25.0)
    assert profile["last_purchase_at"] == to_rfc3339(T0 + 5 * DAY_MS)
    assert profile["stage"] == "active"


def test_partial_refunds_that_add_up_to_the_order_remove_it() -> None:
    state = fold(
        [
            purchase("p1", "o1", 1000, T0),
            refund("r1", "o1", 400, T0 + DAY_MS),
            refund("r2", "o1", 600, T0 + 2 * DAY_MS),
        ]
    )
    assert (state.frequency(), state.monetary_cents()) == (0, 0)
    assert profile_at(state, T0 + 3 * DAY_MS)["stage"] == "prospect"


def test_a_refund_before_its_purchase_gives_the_same_result_as_after() -> None:
    buy_1 = purchase("p1", "o1", 1000, T0)
    buy_2 = purchase("p2", "o2", 2000, T0 + 5 * DAY_MS)
    full = refund("r2", "o2", 2000, T0 + 6 * DAY_MS)
    refund_first = fold([full, buy_1, buy_2])
    refund_last = fold([buy_1, buy_2, full])
    as_of = T0 + 10 * DAY_MS
    assert profile_at(refund_first, as_of) == profile_at(refund_last, as_of)
    assert (refund_first.frequency(), refund_first.monetary_cents()) == (1, 1000)


def test_a_refund_alone_never_makes_frequency_negative() -> None:
    state = fold([refund("r1", "o9", 700, T0)])
    profile = profile_at(state, T0 + DAY_MS)
    assert profile["rfm"]["frequency"] == 0
    assert profile["stage"] == "prospect"
    assert profile["first_purchase_at"] is None


def test_the_same_order_under_two_event_ids_counts_once() -> None:
    state = fold([purchase("p1", "o1", 1000, T0)])
    result = apply_event(state, purchase("p1-again", "o1", 1000, T0), RULES, PARAMS)
    assert result.duplicate is False  # a different event id: not a redelivery...
    assert result.changes == []  # ...but the order is counted once
    assert (state.frequency(), state.monetary_cents()) == (1, 1000)


def test_an_order_republished_with_another_time_is_order_independent() -> None:
    early = purchase("p1", "o1", 1000, T0 + DAY_MS)
    late = purchase("p1-fix", "o1", 1000, T0 + 5 * DAY_MS)
    as_of = T0 + 10 * DAY_MS
    assert profile_at(fold([early, late]), as_of) == profile_at(fold([late, early]), as_of)


def test_a_redelivered_event_is_a_duplicate_with_no_changes() -> None:
    event = purchase("p1", "o1", 1000, T0)
    state = fold([event])
    before = state.to_bytes()
    result = apply_event(state, event, RULES, PARAMS)
    assert result == StepResult(state=state, duplicate=True)
    assert state.to_bytes() == before


def test_a_refund_redelivered_after_many_events_counts_once() -> None:
    refund_event = refund("r1", "o1", 1000, T0 + DAY_MS)
    opens = [email(f"open-{i}", T0 + DAY_MS + i * MINUTE_MS) for i in range(SEEN_LIMIT)]
    state = fold([purchase("p1", "o1", 5000, T0), refund_event, *opens])
    assert state.monetary_cents() == 4000
    result = apply_event(state, refund_event, RULES, PARAMS)
    assert result.changes == []
    assert state.monetary_cents() == 4000


def test_erase_drops_the_customer() -> None:
    state = fold([purchase("p1", "o1", 1000, T0), email("m1", T0)])
    result = apply_event(state, suppression("x1", "erase", T0 + DAY_MS), RULES, PARAMS)
    assert result == StepResult(state=None, erased=True)
    unknown = apply_event(None, suppression("x2", "erase", T0), RULES, PARAMS)
    assert (unknown.state, unknown.erased, unknown.changes) == (None, True, [])


def test_tier_change_messages_carry_both_standings_and_the_exact_time() -> None:
    first_at = T0 + 10 * HOUR_MS
    first = apply_event(None, purchase("p1", "o1", 5000, first_at), RULES, PARAMS)
    assert [{k: v for k, v in c.items() if k != "change_id"} for c in first.changes] == [
        {
            "customer_id": CUSTOMER,
            "previous_tier": None,
            "tier": "potential",
            "previous_stage": None,
            "stage": "new",
            "rfm_segment": "new_customers",
            "r": 5,
            "f": 1,
            "m": 2,
            "recency_days": 0,
            "frequency": 1,
            "monetary": 50.0,
            "engagement_score": 0.0,
            "engagement_level": "low",
            "p_alive": p_alive(0, 0, 0),
            "tags": [],
            "cause": "event",
            "rule": "tiers[3]:potential",
            "stage_reason": "bought on one day only",
            "rules_version": "default-2026.11",
            "event_id": "p1",
            "occurred_at": "2024-01-01T10:00:00.000+00:00",
        }
    ]
    state = first.state
    assert state is not None

    second_at = T0 + DAY_MS + 10 * HOUR_MS
    second = apply_event(state, purchase("p2", "o2", 3000, second_at), RULES, PARAMS)
    [change] = second.changes
    assert (change["previous_tier"], change["tier"]) == ("potential", "active")
    assert (change["previous_stage"], change["stage"]) == ("new", "active")
    assert (change["rfm_segment"], change["r"], change["f"], change["m"]) == (
        "potential_loyalist",
        5,
        2,
        3,
    )
    assert change["occurred_at"] == "2024-01-02T10:00:00.000+00:00"
    assert change["rule"] == "tiers[1]:active"

    # Time alone: at risk exactly 90 days after the last purchase, still in the active tier
    # (recency 90 <= 90); a day later the tier falls through to ordinary.
    assert reevaluate(state, RULES, PARAMS, second_at + 90 * DAY_MS - 1, "time").changes == []
    at_risk = reevaluate(state, RULES, PARAMS, second_at + 90 * DAY_MS, "time")
    [change] = at_risk.changes
    assert (change["previous_tier"], change["tier"]) == ("active", "active")
    assert (change["previous_stage"], change["stage"]) == ("active", "at_risk")
    assert (change["cause"], change["event_id"]) == ("time", None)
    assert change["occurred_at"] == "2024-04-01T10:00:00.000+00:00"
    fallen = reevaluate(state, RULES, PARAMS, second_at + 91 * DAY_MS, "time")
    [change] = fallen.changes
    assert (change["previous_tier"], change["tier"]) == ("active", "ordinary")
    assert (change["previous_stage"], change["stage"]) == ("at_risk", "at_risk")
    assert change["rule"] == "tiers[4]:ordinary"
    # Nothing new to say at the same instant, nor for an earlier one.
    assert reevaluate(state, RULES, PARAMS, second_at + 91 * DAY_MS, "time").changes == []
    assert reevaluate(state, RULES, PARAMS, second_at, "time").changes == []

    # A replay of the same story emits the same four ids, all different.
    emitted = [*first.changes, *second.changes, *at_risk.changes, *fallen.changes]
    ids = [c["change_id"] for c in emitted]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == 4
    again = apply_event(None, purchase("p1", "o1", 5000, first_at), RULES, PARAMS)
    assert again.state is not None
    replayed = [
        *again.changes,
        *apply_event(again.state, purchase("p2", "o2", 3000, second_at), RULES, PARAMS).changes,
        *reevaluate(again.state, RULES, PARAMS, second_at + 90 * DAY_MS, "time").changes,
        *reevaluate(again.state, RULES, PARAMS, second_at + 91 * DAY_MS, "time").changes,
    ]
    assert [c["change_id"] for c in replayed] == ids


def test_a_late_event_does_not_move_as_of_back() -> None:
    state = fold([purchase("p1", "o1", 1000, T0 + 10 * DAY_MS)])
    result = apply_event(state, email("m1", T0 + 2 * DAY_MS), RULES, PARAMS)
    assert state.as_of_ms == T0 + 10 * DAY_MS
    assert result.profile is not None
    assert result.profile["as_of"] == to_rfc3339(T0 + 10 * DAY_MS)
    # The late open counts, decayed over the 8 days to as-of (half-life 30 days).
    assert result.profile["engagement"]["email_score"] == round(0.5 ** (8 / 30), 4)
    assert result.changes == []
    late_buy = apply_event(state, purchase("p0", "o0", 1000, T0 + 2 * DAY_MS), RULES, PARAMS)
    assert late_buy.profile is not None
    assert late_buy.profile["as_of"] == to_rfc3339(T0 + 10 * DAY_MS)
    assert late_buy.profile["first_purchase_at"] == to_rfc3339(T0 + 2 * DAY_MS)
    assert late_buy.profile["last_purchase_at"] == to_rfc3339(T0 + 10 * DAY_MS)
    assert late_buy.profile["rfm"]["recency_days"] == 0


def test_prospect_then_new_then_active() -> None:
    click = apply_event(None, email("m1", T0, click=True), RULES, PARAMS)
    [change] = click.changes
    assert (change["previous_tier"], change["tier"]) == (None, "potential")
    assert (change["previous_stage"], change["stage"]) == (None, "prospect")
    assert change["rule"] == "tiers[2]:potential"  # engaged prospect: a click weighs 3.0
    assert change["engagement_level"] == "medium"
    state = click.state

    bought = apply_event(state, purchase("p1", "o1", 2000, T0 + HOUR_MS), RULES, PARAMS)
    [change] = bought.changes
    assert (change["previous_stage"], change["stage"]) == ("prospect", "new")
    assert (change["previous_tier"], change["tier"]) == ("potential", "potential")
    assert change["rule"] == "tiers[3]:potential"  # the click has decayed below medium

    same_day = apply_event(state, purchase("p2", "o2", 2000, T0 + 5 * HOUR_MS), RULES, PARAMS)
    # A second order on the first day: still "new" (one purchase day, x = 0), but two orders
    # meet the active tier's frequency_ge = 2.
    [change] = same_day.changes
    assert (change["previous_stage"], change["stage"]) == ("new", "new")
    assert (change["previous_tier"], change["tier"]) == ("potential", "active")
    assert same_day.profile is not None
    assert same_day.profile["btyd"] == {"x": 0, "t_x": 0, "T": 0}

    again = apply_event(state, purchase("p3", "o3", 2000, T0 + 2 * DAY_MS), RULES, PARAMS)
    [change] = again.changes
    assert (change["previous_stage"], change["stage"]) == ("new", "active")
    assert (change["previous_tier"], change["tier"]) == ("active", "active")
    assert again.profile is not None
    assert again.profile["btyd"] == {"x": 1, "t_x": 2, "T": 2}


def test_the_newest_suppression_per_channel_wins_whatever_the_arrival_order() -> None:
    unsubscribe = suppression("s1", "unsubscribe", T0 + 5 * DAY_MS, "email")
    older_resubscribe = suppression("s2", "resubscribe", T0 + 2 * DAY_MS, "email")
    wechat_complaint = suppression("s3", "complaint", T0 + DAY_MS, "wechat")
    for order in ([unsubscribe, older_resubscribe], [older_resubscribe, unsubscribe]):
        state = fold([*order, wechat_complaint])
        assert profile_at(state, T0 + 6 * DAY_MS)["suppressions"] == {
            "email": True,
            "wechat": True,
        }
    newer_resubscribe = suppression("s4", "resubscribe", T0 + 6 * DAY_MS, "email")
    assert profile_at(fold([newer_resubscribe], state), T0 + 7 * DAY_MS)["suppressions"] == {
        "email": False,
        "wechat": True,
    }


def test_the_newest_follow_or_unfollow_wins_whatever_the_arrival_order() -> None:
    follow = wechat("w1", "follow", T0)
    unfollow = wechat("w2", "unfollow", T0 + DAY_MS)
    for order in ([follow, unfollow], [unfollow, follow]):
        engagement = profile_at(fold(order), T0 + 2 * DAY_MS)["engagement"]
        assert engagement["wechat_following"] is False


@pytest.mark.parametrize(
    "pair",
    [
        (wechat("w1", "follow", T0), wechat("w2", "unfollow", T0)),
        (suppression("s1", "unsubscribe", T0), suppression("s2", "resubscribe", T0)),
    ],
)
def test_events_at_the_same_instant_are_order_independent(
    pair: tuple[InputEvent, InputEvent],
) -> None:
    first, second = pair
    as_of = T0 + DAY_MS
    assert profile_at(fold([first, second]), as_of) == profile_at(fold([second, first]), as_of)


def test_the_newest_timezone_wins_whatever_the_arrival_order() -> None:
    newer = purchase("p1", "o1", 1000, T0 + 5 * DAY_MS, tz="Asia/Shanghai")
    older = purchase("p0", "o0", 1000, T0 + DAY_MS, tz="Europe/Berlin")
    assert fold([newer, older]).timezone == fold([older, newer]).timezone == "Asia/Shanghai"
