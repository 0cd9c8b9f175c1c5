"""Transitions by time, through the real worker: a customer who does nothing moves
active -> at_risk -> churned at the exact instant each boundary passes (event time), and the
clock re-evaluates only the customers whose boundary passed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from segmentation.timeutil import DAY_MS, parse_rfc3339, to_rfc3339
from streams.embedded import EmbeddedStack
from streams.harness import WorkerProcess, caught_up
from streams.replay import send_ticks
from tests.e2e_support import fresh_stack, profile, send, start_worker, topic_values, wait_consumed

pytestmark = pytest.mark.e2e

T0 = parse_rfc3339("2026-01-01T10:00:00Z")


def purchase(
    event_id: str, at_ms: int, customer: str = "tim", amount: str = "40"
) -> tuple[str, dict]:
    return (
        "purchases",
        {
            "event_id": event_id,
            "customer_id": customer,
            "occurred_at": to_rfc3339(at_ms),
            "order_id": event_id,
            "amount": amount,
        },
    )


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    with fresh_stack() as s:
        yield s


@pytest.fixture(scope="module")
def worker(
    stack: EmbeddedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    w = start_worker(stack, tmp_path_factory.mktemp("time"), "worker")
    try:
        yield w
    finally:
        w.stop()


def advance(stack: EmbeddedStack, worker: WorkerProcess, at_ms: int) -> None:
    asyncio.run(send_ticks(stack.bootstrap, at_ms))
    worker.wait_for(
        caught_up, timeout=60, what="ticks processed"
    )
    import time

    time.sleep(2.0)  # ticks are not counted as events: give the agent a moment, then settle
    worker.wait_for(caught_up, timeout=60, what="backlog")


def stage_changes(stack: EmbeddedStack, customer: str) -> list[tuple[str | None, str, str, str]]:
    return [
        (c["previous_stage"], c["stage"], c["occurred_at"], c["cause"])
        for c in topic_values(stack, "tier-changes")
        if c["customer_id"] == customer and c["previous_stage"] != c["stage"]
    ]


def test_lifecycle_by_event_time_alone(stack: EmbeddedStack, worker: WorkerProcess) -> None:
    second = T0 + 14 * DAY_MS
    send(stack, [purchase("t1", T0), purchase("t2", second)])
    wait_consumed(worker, 2)
    assert [s[:2] for s in stage_changes(stack, "tim")] == [(None, "new"), ("new", "active")]

    # Nothing happens to tim; the clock passes his boundaries (90 and 180 days of silence).
    advance(stack, worker, second + 200 * DAY_MS)
    at_risk_at = to_rfc3339(second + 90 * DAY_MS)
    churned_at = to_rfc3339(second + 180 * DAY_MS)
    assert stage_changes(stack, "tim")[2:] == [
        ("active", "at_risk", at_risk_at, "time"),
        ("at_risk", "churned", churned_at, "time"),
    ]
    status, body = profile(worker, "tim")
    assert status == 200 and body is not None
    # Re-evaluated at each boundary that passed (stage, R score, tier conditions, P(alive)).
    assert body["stage"] == "churned" and body["as_of"] >= churned_at
    # A churn warning, once for this episode, at the instant a level was crossed.
    warnings = [w for w in topic_values(stack, "churn-warnings") if w["customer_id"] == "tim"]
    assert len(warnings) == 1
    assert second < parse_rfc3339(warnings[0]["occurred_at"]) <= second + 180 * DAY_MS

    # He buys again after a churn-length gap: reactivated, by his purchase's event time.
    back = second + 250 * DAY_MS
    send(stack, [purchase("t3", back)])
    wait_consumed(worker, 3)
    assert stage_changes(stack, "tim")[4:] == [
        ("churned", "reactivated", to_rfc3339(back), "event")
    ]
    # ... and moves on with time again: at risk 90 days after that purchase.
    advance(stack, worker, back + 95 * DAY_MS)
    assert stage_changes(stack, "tim")[5:] == [
        ("reactivated", "at_risk", to_rfc3339(back + 90 * DAY_MS), "time")
    ]
    metrics = worker.metrics()
    assert (
        metrics[
            "tierstream_transitions_total{cause=time,from_state=active,kind=stage,to_state=at_risk}"
        ]
        == 1
    )
    assert metrics["tierstream_churn_warnings_total"] == 1


def test_clock_survives_a_restart(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The due index is rebuilt from the table (its changelog) after a restart: a boundary
    scheduled before the restart still fires when the clock passes it afterwards."""
    tmp = tmp_path_factory.mktemp("restart")
    start = T0 - 400 * DAY_MS
    with fresh_stack() as stack:
        first = start_worker(stack, tmp, "first")
        try:
            send(stack, [purchase("r1", start, "rita"), purchase("r2", start + DAY_MS, "rita")])
            wait_consumed(first, 2)
        finally:
            first.stop()
        again = start_worker(stack, tmp, "again")
        try:
            assert profile(again, "rita")[1]["stage"] == "active"  # type: ignore[index]
            advance(stack, again, start + 100 * DAY_MS)
            changes = stage_changes(stack, "rita")
            at_risk_at = to_rfc3339(start + DAY_MS + 90 * DAY_MS)
            assert changes[-1] == ("active", "at_risk", at_risk_at, "time")
        finally:
            again.stop()
