"""End to end through the embedded broker, a real worker process and a real Redis: publish
events, read `tier-changes` and `dead-letters`, the profile over HTTP, in Redis and via the CLI."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator

import orjson
import pytest
import redis

from streams import readmodel
from streams.embedded import EmbeddedStack
from streams.harness import WorkerProcess
from streams.partitioning import partition_for
from tests.e2e_support import (
    PARTITIONS,
    fresh_stack,
    profile,
    send,
    send_raw,
    start_worker,
    topic_values,
    wait_consumed,
)

pytestmark = pytest.mark.e2e

GOOD = [
    (
        "email-opens",
        {
            "event_id": "g1",
            "customer_id": "alice",
            "occurred_at": "2026-01-05T09:00:00+01:00",
            "message_id": "m1",
        },
    ),
    (
        "purchases",
        {
            "event_id": "g2",
            "customer_id": "alice",
            "occurred_at": "2026-01-10T10:00:00Z",
            "order_id": "a1",
            "amount": "1200.00",
        },
    ),
    (
        "purchases",
        {
            "event_id": "g3",
            "customer_id": "alice",
            "occurred_at": 1768384800000,
            "order_id": "a2",
            "amount": 80.5,
        },
    ),  # 2026-01-14T10:00Z
    (
        "purchases",
        {
            "event_id": "g4",
            "customer_id": "bob",
            "occurred_at": "2026-01-11T10:00:00Z",
            "order_id": "b1",
            "amount": "30",
            "currency": "usd",
        },
    ),
    (
        "wechat-interactions",
        {
            "event_id": "g5",
            "customer_id": "carol",
            "occurred_at": "2026-01-12T10:00:00+08:00",
            "kind": "follow",
        },
    ),
    (
        "email-clicks",
        {
            "event_id": "g6",
            "customer_id": "bob",
            "occurred_at": "2026-01-12T11:00:00Z",
            "message_id": "m2",
            "url": "https://shop/x",
        },
    ),
    (
        "suppressions",
        {
            "event_id": "g7",
            "customer_id": "bob",
            "occurred_at": "2026-01-13T11:00:00Z",
            "kind": "unsubscribe",
            "channel": "email",
        },
    ),
    (
        "purchases",
        {
            "event_id": "g8",
            "customer_id": "bob",
            "occurred_at": "2026-01-13T12:00:00Z",
            "order_id": "b1",
            "amount": "30",
            "kind": "refund",
        },
    ),
]

# (expected reason, topic, raw value): every kind of unusable input of the issue.
BAD: list[tuple[str, str, bytes]] = [
    ("invalid_json", "purchases", b'{"event_id": "x1", '),
    ("not_utf8", "email-opens", b'{"event_id": "\xff\xfe"}'),
    (
        "missing_field",
        "purchases",
        orjson.dumps(
            {
                "event_id": "x3",
                "customer_id": "z",
                "occurred_at": "2026-01-01T00:00:00Z",
                "order_id": "o",
            }
        ),
    ),
    (
        "wrong_type",
        "purchases",
        orjson.dumps(
            {
                "event_id": "x4",
                "customer_id": 42,
                "occurred_at": "2026-01-01T00:00:00Z",
                "order_id": "o",
                "amount": 1,
            }
        ),
    ),
    (
        "invalid_amount",
        "purchases",
        orjson.dumps(
            {
                "event_id": "x5",
                "customer_id": "z",
                "occurred_at": "2026-01-01T00:00:00Z",
                "order_id": "o",
                "amount": -5,
            }
        ),
    ),
    (
        "invalid_amount",
        "purchases",
        b'{"event_id": "x6", "customer_id": "z", "occurred_at": "2026-01-01T00:00:00Z", '
        b'"order_id": "o", "amount": "NaN"}',
    ),
    (
        "unknown_kind",
        "wechat-interactions",
        orjson.dumps(
            {
                "event_id": "x7",
                "customer_id": "z",
                "occurred_at": "2026-01-01T00:00:00Z",
                "kind": "poke",
            }
        ),
    ),
    (
        "foreign_currency",
        "purchases",
        orjson.dumps(
            {
                "event_id": "x8",
                "customer_id": "z",
                "occurred_at": "2026-01-01T00:00:00Z",
                "order_id": "o",
                "amount": 1,
                "currency": "EUR",
            }
        ),
    ),
    (
        "bad_timestamp",
        "email-clicks",
        orjson.dumps(
            {"event_id": "x9", "customer_id": "z", "occurred_at": "yesterday", "message_id": "m"}
        ),
    ),
    (
        "future_timestamp",
        "email-opens",
        orjson.dumps(
            {
                "event_id": "x10",
                "customer_id": "z",
                "occurred_at": "2200-01-01T00:00:00Z",
                "message_id": "m",
            }
        ),
    ),
    (
        "bad_timestamp",
        "email-opens",
        orjson.dumps({"event_id": "x11", "customer_id": "z", "occurred_at": 0, "message_id": "m"}),
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
    w = start_worker(stack, tmp_path_factory.mktemp("e2e"), "worker")
    try:
        send(stack, GOOD)
        send_raw(stack, [(topic, b"z", value) for _, topic, value in BAD])
        wait_consumed(w, len(GOOD) + len(BAD))
        yield w
    finally:
        w.stop()


def test_tier_changes_published(stack: EmbeddedStack, worker: WorkerProcess) -> None:
    changes = topic_values(stack, "tier-changes")
    by_customer: dict[str, list[dict]] = {}
    for c in changes:
        by_customer.setdefault(c["customer_id"], []).append(c)
    alice = by_customer["alice"]
    # Records of different topics interleave in any order (Kafka orders within a partition of
    # one topic only), so the open may be seen before or after the purchases; the purchases of
    # one topic are in order: new customer with a 1200 first order, then a repeat buyer.
    stages = [(c["previous_stage"], c["stage"]) for c in alice]
    assert stages[-1] == ("new", "active")
    assert stages[0][0] is None
    assert ("prospect", "new") in stages or (None, "new") in stages
    assert alice[-1]["tier"] == "active"
    assert alice[-1]["occurred_at"] == "2026-01-14T10:00:00.000+00:00"
    assert alice[-1]["cause"] == "event"
    assert alice[-1]["frequency"] == 2 and alice[-1]["monetary"] == 1280.5
    assert alice[-1]["rule"].endswith(":active")
    assert all(len(c["change_id"]) == 32 and c["emitted_at"] for c in changes)
    assert len({c["change_id"] for c in changes}) == len(changes)
    # every message keyed by its customer and on the customer's partition.
    assert {c["customer_id"] for c in changes} == {"alice", "bob", "carol"}


def test_profile_over_http_and_in_redis(stack: EmbeddedStack, worker: WorkerProcess) -> None:
    status, body = profile(worker, "alice")
    assert status == 200 and body is not None
    assert body["tier"] == "active" and body["stage"] == "active"
    assert body["rfm"]["frequency"] == 2
    assert body["rfm"]["monetary"] == 1280.5
    assert body["btyd"] == {"x": 1, "t_x": 4, "T": 4}
    assert body["first_purchase_at"] == "2026-01-10T10:00:00.000+00:00"
    assert "big_spender" in body["tags"]
    assert body["explanation"]["tier"]["rule"].endswith(":active")
    client = redis.Redis.from_url(stack.redis_url)
    try:
        stored = orjson.loads(client.get(readmodel.customer_key("alice")))
        assert stored == body
        assert client.sismember(readmodel.tier_key("active"), "alice")
        assert not client.sismember(readmodel.tier_key("potential"), "alice")
    finally:
        client.close()
    # bob's only order was refunded in full: no purchase counts, his email is suppressed.
    status, bob = profile(worker, "bob")
    assert status == 200 and bob is not None
    assert bob["rfm"]["frequency"] == 0 and bob["rfm"]["monetary"] == 0.0
    assert bob["stage"] == "prospect"
    assert bob["suppressions"] == {"email": True}
    assert profile(worker, "nobody")[0] == 404


def test_tiers_endpoint_and_cli(worker: WorkerProcess) -> None:
    status, body = worker.get("/tiers")
    counts = orjson.loads(body)
    assert status == 200
    assert sum(counts["tiers"].values()) == 3
    assert counts["stages"]["active"] == 1 and counts["stages"]["prospect"] == 2
    out = subprocess.run(
        [sys.executable, "-m", "streams.cli", "customer", "alice", "--url", worker.url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "tier ACTIVE, stage active" in out
    assert "frequency_ge" in out
    as_json = subprocess.run(
        [sys.executable, "-m", "streams.cli", "customer", "alice", "--url", worker.url, "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert orjson.loads(as_json)["customer_id"] == "alice"
    missing = subprocess.run(
        [sys.executable, "-m", "streams.cli", "customer", "nobody", "--url", worker.url],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1 and "unknown customer" in missing.stderr


def test_every_bad_input_is_a_dead_letter(stack: EmbeddedStack, worker: WorkerProcess) -> None:
    letters = topic_values(stack, "dead-letters")
    assert len(letters) == len(BAD)
    by_payload = {base64.b64decode(d["payload"]): d for d in letters}
    for reason, topic, value in BAD:
        letter = by_payload[value]
        assert letter["source_topic"] == topic
        assert letter["error"].startswith(reason + ":"), letter["error"]
        assert letter["partition"] in range(PARTITIONS) and letter["offset"] >= 0
        assert letter["received_at"]
    metrics = worker.metrics()
    assert metrics["tierstream_events_rejected_total"] == len(BAD)
    assert metrics["tierstream_dead_letters_total"] == len(BAD)
    assert metrics["tierstream_events_rejected_total{reason=invalid_amount,topic=purchases}"] == 2


def test_redelivery_changes_nothing(stack: EmbeddedStack, worker: WorkerProcess) -> None:
    before = {c: profile(worker, c)[1] for c in ("alice", "bob", "carol")}
    changes_before = len(topic_values(stack, "tier-changes"))
    consumed = worker.metrics()["tierstream_events_consumed_total"]
    send(stack, GOOD)
    wait_consumed(worker, consumed + len(GOOD))
    after = {c: profile(worker, c)[1] for c in ("alice", "bob", "carol")}
    assert after == before
    assert len(topic_values(stack, "tier-changes")) == changes_before


def test_misrouted_records_are_forwarded_once(stack: EmbeddedStack, worker: WorkerProcess) -> None:
    customer = "dave"
    right = partition_for(customer.encode(), PARTITIONS)
    wrong = (right + 1) % PARTITIONS
    consumed = worker.metrics()["tierstream_events_consumed_total"]
    forwarded = worker.metrics().get("tierstream_events_forwarded_total", 0)

    async def produce() -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
        await producer.start()
        try:
            for i in range(3):
                value = orjson.dumps(
                    {
                        "event_id": f"d{i}",
                        "customer_id": customer,
                        "order_id": f"d{i}",
                        "occurred_at": f"2026-02-0{i + 1}T10:00:00Z",
                        "amount": "10",
                    }
                )
                await producer.send_and_wait(
                    "purchases", value, key=customer.encode(), partition=wrong
                )
        finally:
            await producer.stop()

    import asyncio

    asyncio.run(produce())
    # 3 records read on the wrong partition, forwarded, and read again on the right one.
    worker.wait_for(
        lambda m: (
            m.get("tierstream_events_forwarded_total", 0) >= forwarded + 3
            and m["tierstream_events_consumed_total"] >= consumed + 6
        ),
        timeout=60,
        what="forwarded records consumed",
    )
    wait_consumed(worker, consumed + 6 - forwarded - 3)
    status, body = profile(worker, customer)
    assert status == 200 and body is not None
    assert body["rfm"]["frequency"] == 3 and body["btyd"]["x"] == 2
    assert worker.metrics()["tierstream_events_forwarded_total"] == forwarded + 3


def test_metrics_and_health(worker: WorkerProcess) -> None:
    # The garbage collector's thresholds (streams/gctuning.py) are in force and said at start.
    assert "gc=50000/20/10" in worker.log_path.read_text(errors="replace")
    status, body = worker.get("/health")
    assert status == 200 and orjson.loads(body)["redis"] == "ok"
    metrics = worker.metrics()
    assert metrics["tierstream_events_consumed_total{topic=purchases}"] >= 4
    # New customers, from nothing or from prospect (cross-topic order decides which).
    new = sum(
        v
        for k, v in metrics.items()
        if k.startswith("tierstream_transitions_total{cause=event,")
        and "kind=stage,to_state=new" in k
    )
    assert new >= 3  # alice, bob, dave
