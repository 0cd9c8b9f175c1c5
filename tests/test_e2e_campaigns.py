"""Campaign automation and erasure end to end: triggers with quiet hours and holdout stamps,
suppressed triggers counted and never published, and an erased customer gone from Redis, the
table and every later output."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from segmentation.timeutil import DAY_MS, HOUR_MS, parse_rfc3339, to_rfc3339
from streams.embedded import EmbeddedStack
from streams.harness import WorkerProcess, read_topic_sync
from tests.e2e_support import fresh_stack, profile, send, start_worker, topic_values, wait_consumed

pytestmark = pytest.mark.e2e

# 23:00 in Shanghai (the default zone): inside the default quiet hours 21:00-09:00.
LATE_EVENING = parse_rfc3339("2026-10-01T23:00:00+08:00")


def purchase(eid: str, customer: str, at_ms: int, amount: str = "250") -> tuple[str, dict]:
    return (
        "purchases",
        {
            "event_id": eid,
            "customer_id": customer,
            "occurred_at": to_rfc3339(at_ms),
            "order_id": eid,
            "amount": amount,
        },
    )


def suppression(
    eid: str, customer: str, at_ms: int, kind: str, channel: str = "email"
) -> tuple[str, dict]:
    return (
        "suppressions",
        {
            "event_id": eid,
            "customer_id": customer,
            "occurred_at": to_rfc3339(at_ms),
            "kind": kind,
            "channel": channel,
        },
    )


EVENTS = [
    # vic: first purchase late in the evening -> welcome, held until 09:00 local.
    purchase("v1", "vic", LATE_EVENING),
    # una unsubscribed from email before her first purchase: her welcome is suppressed (the
    # unsubscribe is published, and consumed, first: see UNSUBSCRIBE_FIRST).
    # eve buys, then asks to be erased; a later event of hers must change nothing.
    purchase("e1", "eve", LATE_EVENING),
    purchase("e2", "eve", LATE_EVENING + 2 * DAY_MS),
]
# Records of different topics have no order between them: una's unsubscribe goes first alone.
UNSUBSCRIBE_FIRST = [suppression("u0", "una", LATE_EVENING - DAY_MS, "unsubscribe")]
EVENTS.append(purchase("u1", "una", LATE_EVENING))

AFTER_ERASE = [
    suppression("e3", "eve", LATE_EVENING + 3 * DAY_MS, "erase", "all"),
    purchase("e4", "eve", LATE_EVENING + 4 * DAY_MS),
    (
        "email-opens",
        {
            "event_id": "e5",
            "customer_id": "eve",
            "message_id": "m",
            "occurred_at": to_rfc3339(LATE_EVENING + 4 * DAY_MS + HOUR_MS),
        },
    ),
]


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    with fresh_stack() as s:
        yield s


@pytest.fixture(scope="module")
def worker(
    stack: EmbeddedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    w = start_worker(stack, tmp_path_factory.mktemp("campaigns"), "worker")
    try:
        send(stack, UNSUBSCRIBE_FIRST)
        wait_consumed(w, 1)
        send(stack, EVENTS)
        wait_consumed(w, 1 + len(EVENTS))
        yield w
    finally:
        w.stop()


def test_trigger_respects_quiet_hours_and_is_stamped(
    stack: EmbeddedStack, worker: WorkerProcess
) -> None:
    triggers = [t for t in topic_values(stack, "campaign-triggers") if t["customer_id"] == "vic"]
    assert [t["campaign"] for t in triggers] == ["welcome"]
    welcome = triggers[0]
    assert welcome["channel"] == "email"
    assert welcome["variant"] in ("treatment", "holdout")
    assert parse_rfc3339(welcome["occurred_at"]) == LATE_EVENING
    assert welcome["send_after"] == "2026-10-02T09:00:00.000+08:00"
    assert welcome["stage"] == "new" and len(welcome["trigger_id"]) == 32


def test_suppressed_trigger_is_counted_not_published(
    stack: EmbeddedStack, worker: WorkerProcess
) -> None:
    assert not [t for t in topic_values(stack, "campaign-triggers") if t["customer_id"] == "una"]
    metrics = worker.metrics()
    assert (
        metrics["tierstream_campaign_triggers_suppressed_total{campaign=welcome,reason=suppressed}"]
        == 1
    )
    status, body = profile(worker, "una")
    assert status == 200 and body is not None and body["suppressions"] == {"email": True}


def test_erase_removes_the_customer_everywhere(stack: EmbeddedStack, worker: WorkerProcess) -> None:
    assert profile(worker, "eve")[0] == 200
    ends = {
        topic: len(read_topic_sync(stack.bootstrap, topic))
        for topic in ("tier-changes", "campaign-triggers", "churn-warnings", "dead-letters")
    }
    # The erase first: records of different topics have no defined order between them.
    consumed = worker.metrics()["tierstream_events_consumed_total"]
    send(stack, AFTER_ERASE[:1])
    wait_consumed(worker, consumed + 1)
    send(stack, AFTER_ERASE[1:])
    wait_consumed(worker, consumed + len(AFTER_ERASE))
    assert profile(worker, "eve")[0] == 404
    # Redis: no key, set member or value mentions her.
    client = redis.Redis.from_url(stack.redis_url)
    try:
        for key in client.scan_iter("*"):
            assert b"eve" not in key
            value = (
                client.get(key) if client.type(key) == b"string" else b"".join(client.smembers(key))
            )
            assert b'"eve"' not in (value or b"") and b"eve" not in (value or b"").split(b"\n")
            if client.type(key) == b"set":
                assert not client.sismember(key, "eve")
    finally:
        client.close()
    # The table: her latest changelog record is a tombstone.
    changelog = read_topic_sync(stack.bootstrap, "tierstream-customers-changelog")
    hers = [r for r in changelog if r["key"] == "eve"]
    assert hers and hers[-1]["value"] is None
    assert all("eve" not in str(r["value"]) for r in changelog if r["key"] != "eve")
    # Following outputs: nothing after the erase mentions her.
    for topic, before in ends.items():
        later = read_topic_sync(stack.bootstrap, topic)[before:]
        assert all("eve" not in str(r["value"]) and r["key"] != "eve" for r in later), topic
    metrics = worker.metrics()
    assert metrics["tierstream_customers_erased_total"] == 1
    assert metrics["tierstream_events_ignored_total{reason=erased,topic=purchases}"] == 1
