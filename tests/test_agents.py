"""Agent-level tests of the Faust glue, following Faust's testing recipe.

Each test builds the real app with `create_app` and `store='memory://'`, and drives the real
agents (`app.agents[...]`) with `agent.test_context()`: no broker is ever contacted. Only the
outbound `send` of the app's output topics is replaced (an `AsyncMock` per topic); tables, the
pure core, metrics and, for the read model, a real Redis server are the real ones.

How the records get in (faust-streaming 0.15.3): `AgentTestWrapper.put()` names the record's
topic after the agent's original channel, and the segment agent subscribes to five topics, so
`put()` would stamp every record "<internal>". Instead a `faust.types.Message` with the real
topic, partition, offset and headers is decoded by the test channel (a plain channel passes the
raw bytes through) and put on it; current_event is then set by the stream, as in a worker, so
table writes are legal. A record counts as processed once Faust acks it: the stream acks a
message when the agent asks for the next one, i.e. after the agent body is done with it.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import AsyncMock

import faust
import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer, TopicPartition
from faust.types import Message
from redis.exceptions import RedisError

import agents.readmodel as readmodel_agent
import agents.segment as segment_agent
from segmentation.bgnbd import DEFAULT_PARAMS
from segmentation.events import PURCHASES, SUPPRESSIONS, parse_event
from segmentation.rules import Rules, parse_rules_text
from segmentation.state import CustomerState
from segmentation.step import apply_event, change_id
from segmentation.timeutil import DAY_MS, parse_rfc3339, to_rfc3339
from streams import readmodel
from streams import topics as names
from streams.app import Runtime, create_app
from streams.embedded import EmbeddedStack, create_topics
from streams.partitioning import partition_for
from streams.settings import Settings, load_settings
from streams.writebehind import SEALED_GRACE_SECONDS

SEGMENT = "tierstream.segment"
PARTITIONS = 4
# Upper bound on waiting for a record to be processed, so that a bug hangs no run. Not a
# performance threshold: a healthy run waits micro- to milliseconds.
GUARD_SECONDS = 30.0
# Nothing listens on port 1: the broker (and Redis, where a test wants it down) refuse at once.
CLOSED_URL_PORT = 1

CHANGE_FIELDS = {
    "change_id",
    "customer_id",
    "previous_tier",
    "tier",
    "previous_stage",
    "stage",
    "rfm_segment",
    "r",
    "f",
    "m",
    "recency_days",
    "frequency",
    "monetary",
    "engagement_score",
    "engagement_level",
    "p_alive",
    "cause",
    "rule",
    "rules_version",
    "occurred_at",
    "emitted_at",
}
DEAD_LETTER_FIELDS = {"source_topic", "partition", "offset", "error", "payload", "received_at"}


# -- helpers -------------------------------------------------------------------------------------


def wall_ms() -> int:
    return int(time.time() * 1000)


def make_settings(tmp_path: Path, redis_url: str, **extra: str) -> Settings:
    env = {
        "TIERSTREAM_BROKER": "kafka://127.0.0.1:1",
        "TIERSTREAM_PARTITIONS": str(PARTITIONS),
        "TIERSTREAM_DATA_DIR": str(tmp_path / "data"),
        "TIERSTREAM_REDIS_URL": redis_url,
        "TIERSTREAM_STORE": "memory",
        # Fold on arrival (the event-time order across topics has its own tests below).
        "TIERSTREAM_ORDER_IDLE_MS": "0",
        # Write each record's state at once (no flush timer runs under test_context()).
        "TIERSTREAM_FLUSH_RECORDS": "1",
        **extra,
    }
    return load_settings(env)


def closed_redis_url() -> str:
    return f"redis://127.0.0.1:{CLOSED_URL_PORT}/0"


def purchase(
    customer_id: str,
    event_id: str,
    order_id: str,
    amount: str,
    occurred_ms: int,
    **extra: Any,
) -> bytes:
    return orjson.dumps(
        {
            "event_id": event_id,
            "customer_id": customer_id,
            "occurred_at": occurred_ms,
            "order_id": order_id,
            "amount": amount,
            **extra,
        }
    )


def metric(runtime: Runtime, name: str, **labels: str) -> float | None:
    value: float | None = runtime.metrics.registry.get_sample_value(name, labels)
    return value


def b64(raw: bytes | None) -> str:
    return base64.b64encode(raw or b"").decode("ascii")


async def eventually(predicate: Callable[[], Awaitable[bool]], poll: float = 0.01) -> None:
    """Wait until `predicate()` holds (bounded by GUARD_SECONDS against hangs)."""

    async def loop() -> None:
        while not await predicate():
            await asyncio.sleep(poll)

    await asyncio.wait_for(loop(), timeout=GUARD_SECONDS)


@dataclass
class SegmentHarness:
    """The segment agent under `test_context()`, with every output topic's send mocked."""

    app: faust.App
    runtime: Runtime
    agent: Any  # faust AgentTestWrapper
    sends: dict[str, AsyncMock]
    offsets: itertools.count[int]

    async def deliver(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        offset: int | None = None,
        wait: bool = True,
    ) -> Message:
        """Deliver one raw record as the consumer would, and return once the agent is done
        (has acked it; with `wait=False`, once the agent has taken it)."""
        if partition is None:
            partition = partition_for(key, PARTITIONS) if key else 0
        message = Message(
            topic=topic,
            partition=partition,
            offset=next(self.offsets) if offset is None else offset,
            timestamp=time.time(),
            timestamp_type=0,
            headers=headers or [],
            key=key,
            value=value,
            checksum=None,
            generation_id=self.app.consumer_generation_id,
        )
        channel = self.agent.stream().channel
        await channel.put(await channel.decode(message))
        if not wait:
            await eventually(self.idle, poll=0)
            return message

        async def processed() -> bool:
            return bool(message.acked) or bool(self.agent.crashed)

        await eventually(processed, poll=0)
        # The worker never dies on input: nothing escaped the agent body.
        assert not self.agent.crashed, self.agent.crash_reason
        return message

    async def idle(self) -> bool:
        """The agent has taken every record put on its channel."""
        return bool(self.agent.stream().channel.queue.empty()) or bool(self.agent.crashed)

    def sent(self, topic: str) -> list[tuple[bytes | None, Any]]:
        """(key, decoded JSON value or None) of every send to `topic`, in order."""
        out = []
        for call in self.sends[topic].await_args_list:
            value = call.kwargs.get("value")
            out.append((call.kwargs.get("key"), orjson.loads(value) if value else None))
        return out

    def state(self, customer_id: str) -> CustomerState | None:
        raw = self.runtime.customers.get(customer_id.encode())
        return CustomerState.from_bytes(raw) if raw is not None else None


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # The segment agent never touches Redis (its client connects lazily), so it points nowhere.
    return make_settings(tmp_path, closed_redis_url())


@asynccontextmanager
async def segment_harness(settings: Settings) -> AsyncIterator[SegmentHarness]:
    app, runtime = create_app(settings)
    assert app.conf.store.scheme == "memory"
    sends: dict[str, AsyncMock] = {}
    for name, topic in runtime.out.items():
        sends[name] = AsyncMock(name=f"{name}.send")
        topic.send = sends[name]  # type: ignore[method-assign]
    agent = app.agents[SEGMENT]
    async with agent.test_context() as tested:
        yield SegmentHarness(app, runtime, tested, sends, itertools.count(100))
    assert not tested.crashed
    await runtime.redis.aclose()


@pytest.fixture
async def segment(settings: Settings) -> AsyncIterator[SegmentHarness]:
    async with segment_harness(settings) as harness:
        yield harness


def one_dead_letter(segment: SegmentHarness) -> tuple[bytes | None, dict[str, Any]]:
    letters = segment.sent(names.DEAD_LETTERS)
    assert len(letters) == 1, letters
    key, doc = letters[0]
    assert isinstance(doc, dict)
    return key, doc


# -- segment agent: the happy path ---------------------------------------------------------------


async def test_valid_purchase_updates_table_and_publishes_change_and_profile(
    segment: SegmentHarness,
) -> None:
    rt = segment.runtime
    occurred = wall_ms() - 2 * DAY_MS
    value = purchase("cust-1", "evt-1", "ord-1", "120.50", occurred, channel="web")
    await segment.deliver(PURCHASES, value, key=b"cust-1")

    state = segment.state("cust-1")
    assert state is not None
    assert state.customer_id == "cust-1"
    assert state.frequency() == 1
    assert state.monetary_cents() == 12050
    assert (state.tier, state.stage) == ("potential", "new")
    assert state.rules_version == rt.rules.version

    changes = segment.sent(names.TIER_CHANGES)
    assert len(changes) == 1
    key, change = changes[0]
    assert key == b"cust-1"
    assert change.keys() >= CHANGE_FIELDS
    assert change["customer_id"] == "cust-1"
    assert (change["previous_tier"], change["tier"]) == (None, "potential")
    assert (change["previous_stage"], change["stage"]) == (None, "new")
    assert change["cause"] == "event"
    assert change["frequency"] == 1
    assert change["monetary"] == pytest.approx(120.5)
    assert change["rfm_segment"] == "new_customers"
    assert change["rules_version"] == rt.rules.version
    assert change["rule"].endswith(":potential")
    assert change["occurred_at"] == to_rfc3339(occurred)
    assert parse_rfc3339(change["emitted_at"]) >= occurred
    assert change["change_id"] == change_id(
        "cust-1", (None, None), ("potential", "new"), occurred, rt.rules.version, "evt-1"
    )

    profiles = segment.sent(names.PROFILES)
    assert len(profiles) == 1
    key, profile = profiles[0]
    assert key == b"cust-1"
    assert profile["customer_id"] == "cust-1"
    assert (profile["tier"], profile["stage"]) == ("potential", "new")
    assert profile["rfm"]["frequency"] == 1
    assert profile["rfm"]["monetary"] == pytest.approx(120.5)
    assert profile["rules_version"] == rt.rules.version

    assert segment.sent(names.DEAD_LETTERS) == []
    assert metric(rt, "tierstream_events_consumed_total", topic=PURCHASES) == 1
    assert (
        metric(
            rt,
            "tierstream_transitions_total",
            kind="tier",
            from_state="none",
            to_state="potential",
            cause="event",
        )
        == 1
    )
    assert (
        metric(
            rt,
            "tierstream_transitions_total",
            kind="stage",
            from_state="none",
            to_state="new",
            cause="event",
        )
        == 1
    )
    assert metric(rt, "tierstream_processing_latency_seconds_count") == 1
    assert metric(rt, "tierstream_last_event_time_seconds") == pytest.approx(occurred / 1000)
    assert metric(rt, "tierstream_dead_letters_total", topic=PURCHASES) is None


async def test_second_order_moves_the_customer_on(segment: SegmentHarness) -> None:
    occurred = wall_ms() - 10 * DAY_MS
    await segment.deliver(PURCHASES, purchase("c2", "e1", "o1", "40", occurred), key=b"c2")
    await segment.deliver(
        PURCHASES, purchase("c2", "e2", "o2", "45", occurred + 3 * DAY_MS), key=b"c2"
    )
    state = segment.state("c2")
    assert state is not None and state.frequency() == 2
    changes = [doc for _, doc in segment.sent(names.TIER_CHANGES)]
    assert len(changes) == 2
    assert changes[1]["previous_tier"] == changes[0]["tier"]
    assert changes[1]["tier"] == state.tier
    assert len(segment.sent(names.PROFILES)) == 2


@pytest.mark.parametrize(
    ("topic", "doc"),
    [
        ("email-opens", {"message_id": "m1", "campaign_id": "spring"}),
        ("email-clicks", {"message_id": "m1", "url": "https://shop.example/x"}),
        ("wechat-interactions", {"kind": "activity_join"}),
        ("suppressions", {"kind": "unsubscribe", "channel": "email"}),
    ],
)
async def test_every_input_topic_is_applied(
    segment: SegmentHarness, topic: str, doc: dict[str, Any]
) -> None:
    value = orjson.dumps(
        {"event_id": "e1", "customer_id": "c3", "occurred_at": wall_ms() - DAY_MS, **doc}
    )
    await segment.deliver(topic, value, key=b"c3")
    assert segment.state("c3") is not None
    assert len(segment.sent(names.PROFILES)) == 1
    assert segment.sent(names.DEAD_LETTERS) == []
    assert metric(segment.runtime, "tierstream_events_consumed_total", topic=topic) == 1


# -- segment agent: bad input becomes a dead letter ----------------------------------------------


def _bad_inputs() -> list[Any]:
    now = wall_ms()
    past = now - DAY_MS
    good = {
        "event_id": "bad-1",
        "customer_id": "c-bad",
        "occurred_at": past,
        "order_id": "o-bad",
        "amount": "10",
    }

    def variant(**changes: Any) -> bytes:
        doc = {**good, **changes}
        return orjson.dumps({k: v for k, v in doc.items() if v is not None})

    return [
        pytest.param(PURCHASES, b'{"event_id": "x", "customer_id": ', "invalid_json", id="json"),
        pytest.param(PURCHASES, b"\xff\xfe\x00not-utf8", "not_utf8", id="not-utf8"),
        pytest.param(PURCHASES, variant(customer_id=None), "missing_field", id="missing-field"),
        pytest.param(PURCHASES, variant(amount="-5.00"), "invalid_amount", id="negative-amount"),
        pytest.param(PURCHASES, variant(kind="gift"), "unknown_kind", id="unknown-kind"),
        pytest.param(
            "wechat-interactions",
            orjson.dumps({**good, "kind": "poke"}),
            "unknown_kind",
            id="unknown-wechat-kind",
        ),
        pytest.param(PURCHASES, variant(currency="EUR"), "foreign_currency", id="currency"),
        pytest.param(
            PURCHASES, variant(occurred_at=now + 10 * DAY_MS), "future_timestamp", id="future"
        ),
        pytest.param(PURCHASES, None, "empty_value", id="none-value"),
    ]


@pytest.mark.parametrize(("topic", "value", "reason"), _bad_inputs())
async def test_bad_input_is_dead_lettered_and_the_agent_goes_on(
    segment: SegmentHarness, topic: str, value: bytes | None, reason: str
) -> None:
    rt = segment.runtime
    before = wall_ms()
    bad = await segment.deliver(topic, value, key=b"c-bad", partition=2)
    after = wall_ms()

    key, letter = one_dead_letter(segment)
    assert letter.keys() >= DEAD_LETTER_FIELDS
    assert key == b"c-bad"
    assert letter["source_topic"] == topic
    assert letter["partition"] == 2
    assert letter["offset"] == bad.offset
    assert letter["error"].startswith(f"{reason}: ")
    assert len(letter["error"]) > len(reason) + 2  # a detail a person can act on
    assert base64.b64decode(letter["payload"]) == (value or b"")
    assert letter["payload"] == b64(value)
    assert before <= parse_rfc3339(letter["received_at"]) <= after
    assert segment.state("c-bad") is None
    assert segment.sent(names.PROFILES) == []
    assert segment.sent(names.TIER_CHANGES) == []
    assert metric(rt, "tierstream_events_rejected_total", topic=topic, reason=reason) == 1
    assert metric(rt, "tierstream_dead_letters_total", topic=topic) == 1

    # The next good event is processed as usual.
    good = purchase("c-good", "e-good", "o-good", "30", wall_ms() - DAY_MS)
    await segment.deliver(PURCHASES, good, key=b"c-good")
    assert segment.state("c-good") is not None
    assert [k for k, _ in segment.sent(names.PROFILES)] == [b"c-good"]
    assert len(segment.sent(names.DEAD_LETTERS)) == 1


async def test_unexpected_error_is_dead_lettered_as_internal_error(
    segment: SegmentHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = segment.runtime
    failures = iter([RuntimeError("boom")])

    def apply_event_failing_once(*args: Any, **kwargs: Any) -> Any:
        exc = next(failures, None)
        if exc is not None:
            raise exc
        return apply_event(*args, **kwargs)

    monkeypatch.setattr(segment_agent, "apply_event", apply_event_failing_once)
    occurred = wall_ms() - DAY_MS
    first = purchase("c-err", "e1", "o1", "20", occurred)
    message = await segment.deliver(PURCHASES, first, key=b"c-err")

    _, letter = one_dead_letter(segment)
    assert letter["error"].startswith("internal_error: ")
    assert "boom" in letter["error"]
    assert letter["source_topic"] == PURCHASES
    assert letter["offset"] == message.offset
    assert letter["payload"] == b64(first)
    assert segment.state("c-err") is None
    assert (
        metric(rt, "tierstream_events_rejected_total", topic=PURCHASES, reason="internal_error")
        == 1
    )

    # The following event is processed ...
    await segment.deliver(PURCHASES, purchase("c-next", "e2", "o2", "20", occurred), key=b"c-next")
    assert segment.state("c-next") is not None
    # ... and the dead letter's payload, re-published, is used in full.
    await segment.deliver(PURCHASES, base64.b64decode(letter["payload"]), key=b"c-err")
    state = segment.state("c-err")
    assert state is not None and state.frequency() == 1
    assert [k for k, _ in segment.sent(names.TIER_CHANGES)] == [b"c-next", b"c-err"]


async def test_event_whose_output_send_failed_can_be_replayed(segment: SegmentHarness) -> None:
    calls = itertools.count()

    async def tier_send_failing_once(*args: Any, **kwargs: Any) -> None:
        if next(calls) == 0:
            raise RuntimeError("KafkaTimeoutError: metadata not available")

    segment.sends[names.TIER_CHANGES].side_effect = tier_send_failing_once
    value = purchase("c-send", "e1", "o1", "20", wall_ms() - DAY_MS)
    await segment.deliver(PURCHASES, value, key=b"c-send")
    _, letter = one_dead_letter(segment)
    assert letter["error"].startswith("internal_error: ")

    # The operator re-publishes the dead letter: the change must come out this time.
    await segment.deliver(PURCHASES, base64.b64decode(letter["payload"]), key=b"c-send")
    assert segment.sends[names.TIER_CHANGES].await_count == 2


# -- segment agent: idempotency, routing, causes, erasure ----------------------------------------


async def test_redelivery_changes_nothing(segment: SegmentHarness) -> None:
    value = purchase("c-dup", "e-dup", "o-dup", "99.99", wall_ms() - DAY_MS)
    await segment.deliver(PURCHASES, value, key=b"c-dup")
    stored = segment.runtime.customers.get(b"c-dup")
    assert stored is not None

    await segment.deliver(PURCHASES, value, key=b"c-dup")  # same event_id, redelivered
    assert segment.runtime.customers.get(b"c-dup") == stored
    assert len(segment.sent(names.TIER_CHANGES)) == 1
    assert len(segment.sent(names.PROFILES)) == 1
    assert segment.sent(names.DEAD_LETTERS) == []
    assert metric(segment.runtime, "tierstream_events_consumed_total", topic=PURCHASES) == 2


@pytest.fixture
async def ordered(tmp_path: Path) -> AsyncIterator[SegmentHarness]:
    """The segment agent with the event-time order across topics on (a quiet topic releases
    after a minute, so only the records and explicit clock moves of a test release anything)."""
    settings = make_settings(tmp_path, closed_redis_url(), TIERSTREAM_ORDER_IDLE_MS="60000")
    async with segment_harness(settings) as harness:
        yield harness


def email_open(customer_id: str, event_id: str, occurred_ms: int) -> bytes:
    return orjson.dumps(
        {
            "event_id": event_id,
            "customer_id": customer_id,
            "occurred_at": occurred_ms,
            "message_id": f"m-{event_id}",
        }
    )


async def test_records_wait_for_the_other_topics_and_fold_in_event_time_order(
    ordered: SegmentHarness,
) -> None:
    """The purchase arrives first but happened after the open: it is held (not acked, nothing
    published) until the clock is moved past both, then both fold, the open first."""
    rt = ordered.runtime
    start = wall_ms() - 10 * DAY_MS
    key = b"c-order"
    partition = partition_for(key, PARTITIONS)
    bought = await ordered.deliver(
        PURCHASES, purchase("c-order", "p1", "o1", "80", start + DAY_MS), key=key, wait=False
    )
    opened = await ordered.deliver(
        "email-opens", email_open("c-order", "m1", start), key=key, wait=False
    )
    assert not bought.acked and not opened.acked
    assert ordered.sent(names.PROFILES) == []
    assert metric(rt, "tierstream_events_held") == 2

    tick = orjson.dumps({"t": start + 2 * DAY_MS})
    await ordered.deliver(names.TICKS, tick, partition=partition)
    assert bought.acked and opened.acked
    assert metric(rt, "tierstream_events_held") == 0
    # Folded in event-time order: the open (a prospect: no purchase yet), then the purchase.
    changes = [doc for _, doc in ordered.sent(names.TIER_CHANGES)]
    assert [c["stage"] for c in changes] == ["prospect", "new"], changes
    # One profile per customer per write batch: the last one.
    profiles = [doc for _, doc in ordered.sent(names.PROFILES)]
    assert len(profiles) == 1
    assert profiles[0]["rfm"]["frequency"] == 1
    assert profiles[0]["engagement"]["score"] > 0
    assert metric(rt, "tierstream_events_late_total", topic=PURCHASES) == 0


async def test_acks_are_a_prefix_of_each_topic_partition(ordered: SegmentHarness) -> None:
    """A later record of the same topic-partition that is folded is not acked while an earlier
    one is still held: Kafka commits offsets as 'everything before this is done'."""
    start = wall_ms() - 10 * DAY_MS
    key = b"c-prefix"
    held = await ordered.deliver(
        PURCHASES, purchase("c-prefix", "p1", "o1", "10", start + DAY_MS), key=key, wait=False
    )
    bad = await ordered.deliver(PURCHASES, b"not json", key=key, wait=False)
    assert len(ordered.sent(names.DEAD_LETTERS)) == 1  # the bad record is done at once...
    assert not bad.acked and not held.acked  # ...but waits behind the held one
    tick = orjson.dumps({"t": start + 2 * DAY_MS})
    await ordered.deliver(names.TICKS, tick, partition=partition_for(key, PARTITIONS))
    assert held.acked and bad.acked


async def test_a_record_at_or_below_the_folded_offsets_is_a_redelivery(
    segment: SegmentHarness,
) -> None:
    """After a crash or a consumer group reset the same offsets come again: skipped by offset,
    whatever the event-id window still holds."""
    rt = segment.runtime
    key = b"c-offset"
    first = purchase("c-offset", "e1", "o1", "10", wall_ms() - 3 * DAY_MS)
    second = purchase("c-offset", "e2", "o2", "20", wall_ms() - 2 * DAY_MS)
    await segment.deliver(PURCHASES, first, key=key, offset=0)
    await segment.deliver(PURCHASES, second, key=key, offset=1)
    stored = rt.customers.get(key)
    profiles = len(segment.sent(names.PROFILES))

    # The state forgot its event ids (as after a long history): the offsets still tell.
    state = CustomerState.from_bytes(stored)
    state.seen.clear()
    rt.customers.data[key] = state.to_bytes()  # the store itself: no changelog outside a stream
    await segment.deliver(PURCHASES, first, key=key, offset=0)
    await segment.deliver(PURCHASES, second, key=key, offset=1)
    assert len(segment.sent(names.PROFILES)) == profiles
    assert CustomerState.from_bytes(rt.customers[key]).frequency() == 2
    assert metric(rt, "tierstream_events_ignored_total", topic=PURCHASES, reason="redelivered") == 2


async def test_one_profile_per_customer_per_write_batch(tmp_path: Path) -> None:
    """The read model needs only a customer's last profile: a batch publishes one per customer
    (the latest), when it is written, and the Redis backlog counts it until then."""
    settings = make_settings(
        tmp_path, closed_redis_url(), TIERSTREAM_FLUSH_RECORDS="4", TIERSTREAM_FLUSH_MS="60000"
    )
    async with segment_harness(settings) as segment:
        rt = segment.runtime
        start = wall_ms() - 10 * DAY_MS
        # Two customers of one partition: one batch.
        a = "c-a"
        b = next(
            c
            for c in (f"c-b{n}" for n in range(100))
            if partition_for(c.encode(), PARTITIONS) == partition_for(a.encode(), PARTITIONS)
        )
        records = [
            (a, purchase(a, "a1", "oa1", "10", start)),
            (a, purchase(a, "a2", "oa2", "20", start + DAY_MS)),
            (b, purchase(b, "b1", "ob1", "30", start + DAY_MS)),
        ]
        for customer, value in records:
            await segment.deliver(PURCHASES, value, key=customer.encode(), wait=False)
        await asyncio.sleep(0.05)
        assert segment.sent(names.PROFILES) == []
        assert len(segment.sent(names.TIER_CHANGES)) >= 2  # changes go out at once
        assert rt.redis_backlog() == 2  # two customers' profiles wait for the batch
        last = purchase(a, "a3", "oa3", "40", start + 2 * DAY_MS)
        assert (await segment.deliver(PURCHASES, last, key=a.encode())).acked
        profiles = segment.sent(names.PROFILES)
        assert sorted(key for key, _ in profiles) == sorted([a.encode(), b.encode()])
        latest = {key: doc for key, doc in profiles}
        assert latest[a.encode()]["rfm"]["frequency"] == 3
        assert rt.profiles_pending == 0
        # Each carries its tier and stage as headers (the read model files it undecoded).
        for call in segment.sends[names.PROFILES].await_args_list:
            doc = orjson.loads(call.kwargs["value"])
            assert call.kwargs["headers"] == [
                (names.TIER_HEADER, doc["tier"].encode()),
                (names.STAGE_HEADER, doc["stage"].encode()),
            ]


async def test_state_waits_for_its_outputs_to_be_delivered(segment: SegmentHarness) -> None:
    """A crash must never keep a state whose tier change was lost: the state record (and the
    input's ack) waits until every output it caused is delivered."""
    rt = segment.runtime
    delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    segment.sends[names.TIER_CHANGES].return_value = delivered
    value = purchase("c-wait", "e1", "o1", "30", wall_ms() - DAY_MS)
    message = await segment.deliver(PURCHASES, value, key=b"c-wait", wait=False)
    await asyncio.sleep(0.05)
    assert len(segment.sent(names.TIER_CHANGES)) == 1  # published at once...
    assert rt.customers.get(b"c-wait") is None  # ...but the state waits for its delivery
    assert not message.acked
    assert rt.processor is not None and rt.processor.flushes_needed() == []
    delivered.set_result(None)
    # The partition is quiet: the agent's timer (not run under test_context()) sends it a
    # flush record once the delivered batch has waited its grace.
    await asyncio.sleep(SEALED_GRACE_SECONDS)
    assert rt.processor.flushes_needed() == [message.partition]
    assert rt.processor.flushes_needed() == []  # requested once
    assert rt.customers.get(b"c-wait") is None  # not written before the flush record comes
    await segment.deliver(names.TICKS, segment_agent.FLUSH, partition=message.partition)

    async def written() -> bool:
        return bool(message.acked) and rt.customers.get(b"c-wait") is not None

    await eventually(written)


async def test_a_sealed_batch_is_written_at_the_next_record_without_waiting(
    segment: SegmentHarness,
) -> None:
    """The agent does not stop for a batch's deliveries: the next records fold while they are
    in flight, and the batch is written at the first record after they are all delivered,
    before any later batch of the partition."""
    rt = segment.runtime
    assert rt.processor is not None
    delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    segment.sends[names.TIER_CHANGES].return_value = delivered
    customers = [f"c-seal-{i}" for i in range(40)]
    keys = [c.encode() for c in customers]
    partition = partition_for(keys[0], PARTITIONS)
    same = [k for k in keys if partition_for(k, PARTITIONS) == partition][:3]
    assert len(same) == 3
    first = await segment.deliver(
        PURCHASES,
        purchase(same[0].decode(), "e1", "o1", "30", wall_ms() - DAY_MS),
        key=same[0],
        wait=False,
    )
    # Its change is in flight; the next customer's change is delivered at once.
    segment.sends[names.TIER_CHANGES].return_value = None
    second = await segment.deliver(
        PURCHASES,
        purchase(same[1].decode(), "e1", "o2", "30", wall_ms() - DAY_MS),
        key=same[1],
        wait=False,
    )
    assert len(segment.sent(names.TIER_CHANGES)) == 2  # folded without waiting for the first
    assert rt.processor.writes.sealed(partition) == 2
    assert rt.customers.get(same[0]) is None and rt.customers.get(same[1]) is None
    assert not first.acked and not second.acked  # the second waits behind the first
    delivered.set_result(None)
    third = await segment.deliver(
        PURCHASES, purchase(same[2].decode(), "e1", "o3", "30", wall_ms() - DAY_MS), key=same[2]
    )
    assert first.acked and second.acked and third.acked
    assert all(rt.customers.get(k) is not None for k in same)


def _customer_and_wrong_partition(customer_id: str) -> tuple[bytes, int, int]:
    key = customer_id.encode()
    right = partition_for(key, PARTITIONS)
    return key, right, (right + 1) % PARTITIONS


async def test_misrouted_record_is_forwarded_once_and_not_applied_here(
    segment: SegmentHarness,
) -> None:
    key, right, wrong = _customer_and_wrong_partition("c-mis")
    value = purchase("c-mis", "e1", "o1", "50", wall_ms() - DAY_MS)
    message = await segment.deliver(PURCHASES, value, key=key, partition=wrong)

    forwards = segment.sends[PURCHASES].await_args_list
    assert len(forwards) == 1
    forwarded_from = f"{PURCHASES}/{wrong}/{message.offset}".encode()
    assert forwards[0].kwargs == {
        "key": key,
        "value": value,
        "partition": right,
        "headers": [(names.FORWARDED_HEADER, forwarded_from)],
    }
    assert segment.state("c-mis") is None
    assert segment.sent(names.PROFILES) == []
    assert segment.sent(names.TIER_CHANGES) == []
    assert segment.sent(names.DEAD_LETTERS) == []
    assert metric(segment.runtime, "tierstream_events_forwarded_total", topic=PURCHASES) == 1

    # The forwarded copy arrives on the right partition and is applied there, not forwarded again.
    await segment.deliver(
        PURCHASES, value, key=key, partition=right, headers=forwards[0].kwargs["headers"]
    )
    assert segment.sends[PURCHASES].await_count == 1
    state = segment.state("c-mis")
    assert state is not None and state.frequency() == 1
    assert len(segment.sent(names.TIER_CHANGES)) == 1


async def test_record_without_key_is_forwarded_under_its_customer_id(
    segment: SegmentHarness,
) -> None:
    _, right, wrong = _customer_and_wrong_partition("c-nokey")
    value = purchase("c-nokey", "e1", "o1", "50", wall_ms() - DAY_MS)
    await segment.deliver(PURCHASES, value, key=None, partition=wrong)
    (call,) = segment.sends[PURCHASES].await_args_list
    assert call.kwargs["key"] == b"c-nokey"
    assert call.kwargs["partition"] == right


async def test_forwarded_record_is_applied_even_if_still_misrouted(
    segment: SegmentHarness,
) -> None:
    key, _, wrong = _customer_and_wrong_partition("c-loop")
    value = purchase("c-loop", "e1", "o1", "50", wall_ms() - DAY_MS)
    headers = [(names.FORWARDED_HEADER, f"{PURCHASES}/0/7".encode())]
    await segment.deliver(PURCHASES, value, key=key, partition=wrong, headers=headers)

    assert segment.sends[PURCHASES].await_count == 0  # no loop
    assert segment.state("c-loop") is not None
    assert len(segment.sent(names.PROFILES)) == 1
    assert metric(segment.runtime, "tierstream_events_forwarded_total", topic=PURCHASES) is None


async def test_forwarding_keeps_the_backfill_header(segment: SegmentHarness) -> None:
    key, right, wrong = _customer_and_wrong_partition("c-fwd-bf")
    value = purchase("c-fwd-bf", "e1", "o1", "50", wall_ms() - DAY_MS)
    await segment.deliver(
        PURCHASES, value, key=key, partition=wrong, headers=[(names.BACKFILL_HEADER, b"1")]
    )
    (call,) = segment.sends[PURCHASES].await_args_list
    headers = dict(call.kwargs["headers"])
    assert headers[names.BACKFILL_HEADER] == b"1"
    assert names.FORWARDED_HEADER in headers

    await segment.deliver(
        PURCHASES, value, key=key, partition=right, headers=call.kwargs["headers"]
    )
    ((_, change),) = segment.sent(names.TIER_CHANGES)
    assert change["cause"] == "backfill"


async def test_backfill_header_makes_cause_backfill(segment: SegmentHarness) -> None:
    rt = segment.runtime
    value = purchase("c-bf", "e1", "o1", "75", wall_ms() - 30 * DAY_MS)
    await segment.deliver(
        PURCHASES, value, key=b"c-bf", headers=[(names.BACKFILL_HEADER, b"replay-2026")]
    )
    changes = segment.sent(names.TIER_CHANGES)
    assert len(changes) == 1
    assert changes[0][1]["cause"] == "backfill"
    assert (
        metric(
            rt,
            "tierstream_transitions_total",
            kind="tier",
            from_state="none",
            to_state="potential",
            cause="backfill",
        )
        == 1
    )
    # Backfilled history says nothing about live latency.
    assert metric(rt, "tierstream_processing_latency_seconds_count") == 0


async def test_erase_deletes_the_customer_and_sends_a_tombstone(segment: SegmentHarness) -> None:
    occurred = wall_ms() - 2 * DAY_MS
    await segment.deliver(PURCHASES, purchase("c-gdpr", "e1", "o1", "60", occurred), key=b"c-gdpr")
    assert b"c-gdpr" in segment.runtime.customers

    erase = orjson.dumps(
        {
            "event_id": "e2",
            "customer_id": "c-gdpr",
            "occurred_at": occurred + DAY_MS,
            "kind": "erase",
            "channel": "all",
        }
    )
    await segment.deliver(SUPPRESSIONS, erase, key=b"c-gdpr")

    assert segment.runtime.customers.get(b"c-gdpr") is None
    assert b"c-gdpr" not in segment.runtime.customers
    profiles = segment.sent(names.PROFILES)
    assert [k for k, _ in profiles] == [b"c-gdpr", b"c-gdpr"]
    assert profiles[-1][1] is None  # tombstone
    assert segment.sends[names.PROFILES].await_args_list[-1].kwargs["value"] is None
    assert len(segment.sent(names.TIER_CHANGES)) == 1  # only the purchase's
    assert metric(segment.runtime, "tierstream_customers_erased_total") == 1


# -- read-model agent ----------------------------------------------------------------------------


def core_profile(rules: Rules, customer_id: str, *orders: tuple[str, int]) -> dict[str, Any]:
    """A real profile from the pure core for a customer with these (amount, event time) orders."""
    state = None
    profile: dict[str, Any] | None = None
    for index, (amount, at_ms) in enumerate(orders):
        value = purchase(customer_id, f"{customer_id}-e{index}", f"o{index}", amount, at_ms)
        event = parse_event(PURCHASES, value, now_ms=wall_ms())
        result = apply_event(state, event, rules, DEFAULT_PARAMS)
        state, profile = result.state, result.profile
    assert profile is not None
    # As it travels: JSON on the profiles topic and in Redis (tuples come back as lists).
    travelled: dict[str, Any] = orjson.loads(orjson.dumps(profile))
    return travelled


async def members(client: aioredis.Redis, key: str) -> set[str]:
    return {m.decode() if isinstance(m, bytes) else m for m in await client.smembers(key)}


@dataclass
class ReadModelHarness:
    """Drives the read model's feed as its consumer loop does, one fetch at a time, with the
    records a fetch of partition 0 of the profiles topic would hold."""

    runtime: Runtime
    feed: readmodel_agent.ProfileFeed
    pending: list[Any] = field(default_factory=list)
    offset: int = 0

    def __post_init__(self) -> None:
        self.feed.owned = {0}

    def put(self, customer_id: str, profile: dict[str, Any] | None) -> None:
        value = orjson.dumps(profile) if profile is not None else None
        # What the segment agent does when it publishes a profile: the backlog counts it.
        self.runtime.profiles_sent += 1
        # Every other record with the headers the segment agent sets (the undecoded path),
        # the others without (records published before the headers existed).
        headers = []
        if profile is not None and self.offset % 2:
            headers = readmodel.profile_headers(profile)
        self.pending.append(
            SimpleNamespace(
                key=customer_id.encode(), value=value, headers=headers, offset=self.offset
            )
        )
        self.offset += 1

    def write(self) -> asyncio.Task[None]:
        """Write what was put since the last write, as one fetch."""
        fetched = {TopicPartition(names.PROFILES, 0): self.pending}
        self.pending = []
        return asyncio.create_task(self.feed.write_fetch(fetched))

    async def written(self, customer_id: str, profile: dict[str, Any]) -> None:
        """Write the fetch and wait until `profile` is in Redis and nothing is left to write."""
        if self.pending:
            await asyncio.wait_for(self.write(), timeout=GUARD_SECONDS)
        rt = self.runtime

        async def done() -> bool:
            try:
                stored = await readmodel.read_profile(rt.redis, customer_id)
            except (RedisError, OSError):
                return False
            return stored == profile and metric(rt, "tierstream_redis_backlog") == 0

        await eventually(done)


def redis_write_failed(rt: Runtime) -> Callable[[], Awaitable[bool]]:
    """A predicate for `eventually`: the read model has failed a Redis write at least once."""

    async def failed() -> bool:
        return (metric(rt, "tierstream_redis_write_failures_total") or 0) >= 1

    return failed


async def _readmodel(settings: Settings, rules: Rules | None = None) -> tuple[Runtime, Any]:
    _, runtime = create_app(settings, rules=rules)
    return runtime, runtime.read_model


def _record(key: bytes | None, value: bytes | None, headers: Any = ()) -> Any:
    return SimpleNamespace(key=key, value=value, headers=headers)


def test_latest_profiles_keeps_each_customers_last_record_and_skips_keyless_ones() -> None:
    a1, a2, b = {"customer_id": "a", "n": 1}, {"customer_id": "a", "n": 2}, {"customer_id": "b"}
    records = [
        _record(b"a", orjson.dumps(a1)),
        _record(b"b", orjson.dumps(b)),
        _record(None, orjson.dumps(b)),
        _record(b"a", orjson.dumps(a2)),
        _record(b"b", None),
    ]
    assert readmodel_agent.latest_profiles(records) == {"a": a2, "b": None}
    assert readmodel_agent.latest_profiles([]) == {}


def test_latest_profiles_keeps_a_profile_with_tier_and_stage_headers_undecoded() -> None:
    doc = orjson.dumps({"customer_id": "a", "tier": "vip", "stage": "active"})
    headers = [(names.TIER_HEADER, b"vip"), (names.STAGE_HEADER, b"active")]
    partial = [(names.TIER_HEADER, b"vip")]  # both are needed: decoded otherwise
    assert readmodel_agent.latest_profiles([_record(b"a", doc, headers)]) == {
        "a": readmodel.EncodedProfile("vip", "active", doc)
    }
    assert readmodel_agent.latest_profiles([_record(b"a", doc, partial)]) == {
        "a": orjson.loads(doc)
    }
    # Erased: no value, whatever the headers.
    assert readmodel_agent.latest_profiles([_record(b"a", None, headers)]) == {"a": None}


async def test_readmodel_writes_latest_profile_per_customer_and_memberships(
    tmp_path: Path, redis_url: str
) -> None:
    rt, agent = await _readmodel(make_settings(tmp_path, redis_url))
    day = DAY_MS
    t0 = wall_ms() - 400 * day
    big = core_profile(rt.rules, "c1", *[("400", t0 + i * 30 * day) for i in range(7)])
    once = core_profile(rt.rules, "c2", ("30", t0 + 390 * day))
    smaller = core_profile(rt.rules, "c1", ("400", t0), ("400", t0 + 10 * day))
    newcomer = core_profile(rt.rules, "c3", ("70", t0 + 395 * day))
    assert big["tier"] != smaller["tier"] or big["stage"] != smaller["stage"]
    try:
        model = ReadModelHarness(rt, agent)
        model.put("c1", big)
        model.put("c2", once)
        await model.written("c2", once)
        assert await readmodel.read_profile(rt.redis, "c1") == big

        # A second fetch: two updates of c1 (the last wins), c2 erased, c3 new.
        model.put("c1", big)
        model.put("c1", smaller)
        model.put("c2", None)
        model.put("c3", newcomer)
        await model.written("c3", newcomer)

        assert await readmodel.read_profile(rt.redis, "c1") == smaller
        assert await readmodel.read_profile(rt.redis, "c2") is None
        assert await readmodel.read_profile(rt.redis, "c3") == newcomer

        counts = await readmodel.read_counts(rt.redis)
        expected_tiers = {tier: 0 for tier in counts["tiers"]}
        expected_stages = {stage: 0 for stage in counts["stages"]}
        for profile in (smaller, newcomer):
            expected_tiers[profile["tier"]] += 1
            expected_stages[profile["stage"]] += 1
        assert counts == {"tiers": expected_tiers, "stages": expected_stages}
        for tier in counts["tiers"]:
            expected = {p["customer_id"] for p in (smaller, newcomer) if p["tier"] == tier}
            assert await members(rt.redis, readmodel.tier_key(tier)) == expected
        for stage in counts["stages"]:
            expected = {p["customer_id"] for p in (smaller, newcomer) if p["stage"] == stage}
            assert await members(rt.redis, readmodel.stage_key(stage)) == expected
        assert metric(rt, "tierstream_redis_write_failures_total") == 0
    finally:
        await rt.redis.aclose()


async def test_write_with_retry_survives_redis_refusing_connections(
    tmp_path: Path, redis_url: str
) -> None:
    rt, _ = await _readmodel(make_settings(tmp_path, closed_redis_url()))
    refused = rt.redis
    profile = core_profile(rt.rules, "c-retry", ("80", wall_ms() - DAY_MS))
    rt.profiles_sent += 1  # as the segment agent counts a published profile
    writer = asyncio.create_task(readmodel_agent.write_with_retry(rt, {"c-retry": profile}, 1))
    try:
        await eventually(redis_write_failed(rt))
        assert not writer.done()
        assert metric(rt, "tierstream_redis_backlog") == 1

        rt.redis = readmodel.connect(redis_url)  # Redis is back
        await asyncio.wait_for(writer, timeout=GUARD_SECONDS)

        assert await readmodel.read_profile(rt.redis, "c-retry") == profile
        assert metric(rt, "tierstream_redis_backlog") == 0
        assert (metric(rt, "tierstream_redis_write_failures_total") or 0) >= 1
    finally:
        writer.cancel()
        await refused.aclose()
        await rt.redis.aclose()


async def test_readmodel_agent_lags_while_redis_is_down_then_catches_up(
    tmp_path: Path, redis_url: str
) -> None:
    rt, agent = await _readmodel(make_settings(tmp_path, closed_redis_url()))
    refused = rt.redis
    first = core_profile(rt.rules, "c-down", ("80", wall_ms() - 2 * DAY_MS))
    try:
        model = ReadModelHarness(rt, agent)
        model.put("c-down", first)
        writing = model.write()

        await eventually(redis_write_failed(rt))
        assert metric(rt, "tierstream_redis_backlog") == 1
        assert not writing.done()

        rt.redis = readmodel.connect(redis_url)
        await asyncio.wait_for(writing, timeout=GUARD_SECONDS)
        await model.written("c-down", first)
    finally:
        await refused.aclose()
        await rt.redis.aclose()


async def test_the_feed_writes_its_partitions_and_commits_what_it_wrote(
    tmp_path: Path, embedded_stack: EmbeddedStack, redis_url: str
) -> None:
    """Through the embedded broker: the feed writes the profiles of the partitions it owns
    (the last one per customer), not the others', and commits after the write, so a consumer
    of the same group that takes the partition over starts after what was written."""
    suffix = uuid.uuid4().hex[:8]
    settings = make_settings(
        tmp_path,
        redis_url,
        TIERSTREAM_BROKER=embedded_stack.broker_url,
        TIERSTREAM_APP_ID=f"feed-test-{suffix}",
    )
    rt, feed = await _readmodel(settings)
    await create_topics(embedded_stack.bootstrap, [names.PROFILES], PARTITIONS)
    t0 = wall_ms() - 30 * DAY_MS
    first = core_profile(rt.rules, f"a-{suffix}", ("40", t0))
    latest = core_profile(rt.rules, f"a-{suffix}", ("40", t0), ("900", t0 + DAY_MS))
    other = core_profile(rt.rules, f"b-{suffix}", ("70", t0))
    elsewhere = core_profile(rt.rules, f"x-{suffix}", ("70", t0))
    later = core_profile(rt.rules, f"c-{suffix}", ("55", t0))
    producer = AIOKafkaProducer(bootstrap_servers=embedded_stack.bootstrap)
    await producer.start()

    async def publish(partition: int, *profiles: dict[str, Any]) -> int:
        offset = -1
        for profile in profiles:
            meta = await producer.send_and_wait(
                names.PROFILES,
                orjson.dumps(profile),
                key=profile["customer_id"].encode(),
                partition=partition,
                headers=readmodel.profile_headers(profile),
            )
            offset = meta.offset
        return offset

    async def feed_until(consumer: Any, profile: dict[str, Any]) -> None:
        async def stored() -> bool:
            await feed.step(consumer)
            return await readmodel.read_profile(rt.redis, profile["customer_id"]) == profile

        await eventually(stored)

    p0 = TopicPartition(names.PROFILES, 0)
    feed.wanted = lambda: {0}  # type: ignore[method-assign]
    consumer = feed.consumer = feed.make_consumer()
    await consumer.start()
    try:
        end = await publish(0, first, other, latest)
        await publish(1, elsewhere)
        await feed_until(consumer, latest)
        assert await readmodel.read_profile(rt.redis, other["customer_id"]) == other
        assert await readmodel.read_profile(rt.redis, elsewhere["customer_id"]) is None
        assert await consumer.committed(p0) == end + 1
    finally:
        await consumer.stop()

    # The partition's next owner (another worker's feed, same group) starts after the commit.
    await rt.redis.delete(readmodel.customer_key(other["customer_id"]))
    consumer = feed.consumer = feed.make_consumer()
    await consumer.start()
    try:
        feed.assigned = set()
        end = await publish(0, later)
        await feed_until(consumer, later)
        assert await consumer.committed(p0) == end + 1
        # What was written before the takeover is not read again.
        assert await readmodel.read_profile(rt.redis, other["customer_id"]) is None
    finally:
        await consumer.stop()
        await producer.stop()
        await rt.redis.aclose()


def test_the_feed_follows_the_input_partitions_faust_assigned_to_the_worker() -> None:
    """Not the table's standby partitions (another worker folds those), and during a rebalance
    only what it owned and was not revoked."""
    assigned = {
        TopicPartition(PURCHASES, 1),
        TopicPartition(names.TICKS, 1),
        TopicPartition("email-opens", 2),
        TopicPartition("tierstream-customers-changelog", 3),  # a standby replica
    }
    app = SimpleNamespace(rebalancing=False, consumer=SimpleNamespace(assignment=lambda: assigned))
    feed = readmodel_agent.ProfileFeed(SimpleNamespace(app=app), asyncio.Lock())  # type: ignore[arg-type]
    assert feed.wanted() == {1, 2}
    feed.owned = {1}
    app.rebalancing = True
    assert feed.wanted() == {1}


async def test_a_revoke_abandons_a_write_retrying_against_a_redis_that_is_down(
    tmp_path: Path,
) -> None:
    """The partition's next owner writes its profiles from the last committed offset; this
    worker must not write them later (older snapshots over newer ones), nor hold the
    rebalance while Redis is down."""
    rt, feed = await _readmodel(make_settings(tmp_path, closed_redis_url()))
    try:
        model = ReadModelHarness(rt, feed)
        model.put("c-moved", core_profile(rt.rules, "c-moved", ("80", wall_ms() - DAY_MS)))
        writing = model.write()

        await eventually(redis_write_failed(rt))
        assert metric(rt, "tierstream_redis_backlog") == 1

        await asyncio.wait_for(feed.revoke({0}), timeout=GUARD_SECONDS)
        await asyncio.wait_for(writing, timeout=GUARD_SECONDS)
        assert feed.owned == set()
        # Not this worker's to write any more: it leaves this worker's backlog.
        assert metric(rt, "tierstream_redis_backlog") == 0
    finally:
        await rt.redis.aclose()


CUSTOM_RULES = """
rules_version = "gold-silver-1"

[[tiers]]
name = "gold"
[tiers.when]
monetary_ge = 100

[[tiers]]
name = "silver"
"""


async def test_readmodel_memberships_follow_custom_tier_names(
    tmp_path: Path, redis_url: str
) -> None:
    rules = parse_rules_text(CUSTOM_RULES, fmt="toml")
    rt, agent = await _readmodel(make_settings(tmp_path, redis_url), rules=rules)
    t0 = wall_ms() - 20 * DAY_MS
    gold = core_profile(rules, "c-g", ("150", t0))
    assert gold["tier"] == "gold"
    silver = {**gold, "tier": "silver"}  # e.g. after a refund or a rules change
    try:
        model = ReadModelHarness(rt, agent)
        model.put("c-g", gold)
        await model.written("c-g", gold)
        model.put("c-g", silver)
        await model.written("c-g", silver)
        assert await members(rt.redis, readmodel.tier_key("gold")) == set()
        assert await members(rt.redis, readmodel.tier_key("silver")) == {"c-g"}
    finally:
        await rt.redis.aclose()


async def test_redis_tls_setting_gives_a_tls_client(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("not used before connecting\n")
    settings = make_settings(
        tmp_path,
        closed_redis_url(),
        TIERSTREAM_REDIS_TLS="true",
        TIERSTREAM_REDIS_CA_FILE=str(ca_file),
    )
    _, rt = create_app(settings)
    try:
        connection_class = rt.redis.connection_pool.connection_class
        assert connection_class is aioredis.SSLConnection
    finally:
        await rt.redis.aclose()


# -- segment agent: a kill part-way through a write batch ----------------------------------------


class RecordingTable:
    """The customers table, logging every write in order: what a crash leaves of the changelog
    is a prefix of this log (one changelog partition keeps its records in order)."""

    def __init__(self, table: Any, log: list[tuple[str, Any, Any]]) -> None:
        self.table = table
        self.log = log

    def __getattr__(self, name: str) -> Any:
        return getattr(self.table, name)

    def __getitem__(self, key: bytes) -> Any:
        return self.table[key]

    def __contains__(self, key: object) -> bool:
        return key in self.table

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.log.append(("write", key, value))
        self.table[key] = value

    def __delitem__(self, key: bytes) -> None:
        self.log.append(("write", key, None))
        del self.table[key]


KILL_CUSTOMERS = 6


def kill_history() -> tuple[int, list[tuple[bytes, bytes]]]:
    """Purchases of customers of one partition over two years, in event-time order, with gaps
    long enough for time-caused moves (new -> at_risk -> churned) between their orders."""
    customers: list[str] = []
    n = 0
    while len(customers) < KILL_CUSTOMERS:
        cid = f"k-{n}"
        n += 1
        if partition_for(cid.encode(), PARTITIONS) == 0:
            customers.append(cid)
    start = parse_rfc3339("2024-01-01T00:00:00Z")
    events: list[tuple[int, str, str]] = []
    for i, cid in enumerate(customers):
        gap = 40 + 37 * i  # days: from regular buyers to ones who come back after churning
        day = i * 3
        while day < 720:
            events.append((start + day * DAY_MS, cid, f"{cid}-{day}"))
            day += gap + (day % 11)
    events.sort()
    records = [
        (cid.encode(), purchase(cid, eid, eid, str(10 + len(eid)), at)) for at, cid, eid in events
    ]
    return start + 800 * DAY_MS, records


async def run_history(
    settings: Settings,
    records: list[tuple[bytes, bytes]],
    end_ms: int,
    stored: list[tuple[str, Any, Any]] | None = None,
) -> tuple[list[tuple[str, Any, Any]], dict[bytes, Any]]:
    """Deliver `records` (offsets 0..n-1 of purchases[0]) and a final tick to `end_ms` to a
    fresh agent whose table starts as `stored` left it; returns the log of its table writes and
    tier-change sends, and the final states."""
    log: list[tuple[str, Any, Any]] = []
    async with segment_harness(settings) as segment:
        rt = segment.runtime
        for _, key, value in stored or ():
            if value is None:
                rt.customers.data.pop(key, None)
            else:
                rt.customers.data[key] = value
        recording = RecordingTable(rt.customers, log)
        rt.customers = recording
        assert rt.processor is not None
        rt.processor.writes.table = recording

        async def changed(*args: Any, **kwargs: Any) -> None:
            log.append(("change", orjson.loads(kwargs["value"])["change_id"], None))

        segment.sends[names.TIER_CHANGES].side_effect = changed
        for offset, (key, value) in enumerate(records):
            await segment.deliver(PURCHASES, value, key=key, partition=0, offset=offset, wait=False)
        tick = orjson.dumps({"t": end_ms})
        last = await segment.deliver(names.TICKS, tick, partition=0, offset=10_000)
        assert last.acked
        states = {
            key: CustomerState.from_bytes(rt.customers.table[key]).to_dict()
            for key in {k for k, _ in records}
        }
    return log, states


async def test_a_kill_part_way_through_a_write_batch_changes_no_output_id(
    tmp_path: Path,
) -> None:
    """A worker killed while it writes a batch leaves a prefix of the batch's writes in the
    changelog. Restarted from any such prefix and fed its input again, it must end with the
    states of an uninterrupted run and publish only changes that run published, with the same
    ids. (The crash-restart e2e test found the partition clock written before some states of its
    batch: the restarted worker folded those customers' events again behind a clock already past
    them, at the wrong instant, and published their changes under new ids.)"""
    settings = make_settings(
        tmp_path, closed_redis_url(), TIERSTREAM_FLUSH_RECORDS="5", TIERSTREAM_FLUSH_MS="60000"
    )
    end_ms, records = kill_history()
    reference_log, reference_states = await run_history(settings, records, end_ms)
    reference_ids = {cid for kind, cid, _ in reference_log if kind == "change"}
    assert len(reference_ids) > 3 * KILL_CUSTOMERS  # time-caused moves as well as purchases
    kill_points = [i for i, (kind, _, _) in enumerate(reference_log) if kind == "write"]
    assert len(kill_points) > 20
    for point in kill_points:
        before = reference_log[:point]
        stored = [entry for entry in before if entry[0] == "write"]
        published = {cid for kind, cid, _ in before if kind == "change"}
        log, states = await run_history(settings, records, end_ms, stored)
        again = {cid for kind, cid, _ in log if kind == "change"}
        context = f"killed before write {point} ({reference_log[point][1]!r})"
        assert again - reference_ids == set(), context
        assert published | again == reference_ids, context
        assert states == reference_states, context


async def test_a_partition_revoked_mid_batch_and_assigned_again_changes_no_output_id(
    tmp_path: Path,
) -> None:
    """A rebalance revokes a partition whose write batch is not written yet: the batch is
    discarded and its records come again. The partition clock must go with it (it is rebuilt
    from the table at the next assignment): a clock kept in memory would be past the records
    folded again, which would then be evaluated at the wrong instant, under other ids."""
    settings = make_settings(
        tmp_path, closed_redis_url(), TIERSTREAM_FLUSH_RECORDS="1000", TIERSTREAM_FLUSH_MS="60000"
    )
    end_ms, records = kill_history()
    reference_log, reference_states = await run_history(settings, records, end_ms)
    reference_ids = {cid for kind, cid, _ in reference_log if kind == "change"}
    ids: list[str] = []
    async with segment_harness(settings) as segment:
        rt = segment.runtime

        async def changed(*args: Any, **kwargs: Any) -> None:
            ids.append(orjson.loads(kwargs["value"])["change_id"])

        segment.sends[names.TIER_CHANGES].side_effect = changed
        half = len(records) // 2
        for offset, (key, value) in enumerate(records[:half]):
            await segment.deliver(PURCHASES, value, key=key, partition=0, offset=offset, wait=False)
        await eventually(lambda: _async_true(rt.processor.writes.pending() == half))
        assert rt.clocks.get(0) is not None and rt.customers.get(records[0][0]) is None
        rt.processor.revoked({0})
        assert 0 not in rt.clocks
        # The records of the discarded batch come again, and the rest after them.
        for offset, (key, value) in enumerate(records):
            await segment.deliver(PURCHASES, value, key=key, partition=0, offset=offset, wait=False)
        last = await segment.deliver(
            names.TICKS, orjson.dumps({"t": end_ms}), partition=0, offset=10_000
        )
        assert last.acked
        states = {
            key: CustomerState.from_bytes(rt.customers[key]).to_dict()
            for key in {k for k, _ in records}
        }
    assert set(ids) - reference_ids == set()
    assert set(ids) == reference_ids
    assert states == reference_states


async def _async_true(value: bool) -> bool:
    return value
