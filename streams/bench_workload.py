"""The benchmark's workload: a seeded, generated stream of valid events over the four event topics.

Events follow the design's shapes (purchases with refunds and optional currency/channel, email
opens and clicks, WeChat interactions), keyed by customer id, with event times spread over the
`span_days` before generation (wall clock), published in event-time order with a small share of
exact redeliveries (duplicates must not count twice). Records are kept encoded (bytes), so a
million events cost a few hundred MB, not gigabytes of dicts; the events of a few customers are
decoded again for the correctness check.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaProducer

from segmentation.events import EMAIL_CLICKS, EMAIL_OPENS, PURCHASES, WECHAT

#: The four event topics the benchmark publishes to (suppressions stay empty: an erase would
#: make the sample check trivial and is not a throughput case).
EVENT_TOPICS: Final = (PURCHASES, EMAIL_OPENS, EMAIL_CLICKS, WECHAT)
#: Share of events per topic: engagement dominates, as in a real shop.
TOPIC_MIX: Final = (0.25, 0.35, 0.12, 0.28)
REFUND_SHARE: Final = 0.03
DUPLICATE_SHARE: Final = 0.005
RFC3339_SHARE: Final = 0.3  # the rest carry integer epoch milliseconds
DEFAULT_SPAN_DAYS: Final = 180.0
_WECHAT_KINDS: Final = (
    "message_reply",
    "moments_like",
    "moments_comment",
    "miniprogram_visit",
    "activity_join",
    "follow",
    "unfollow",
)
_WECHAT_WEIGHTS: Final = (10, 30, 8, 30, 5, 4, 1)
_CHANNELS: Final = ("web", "app", "store", "miniprogram")
_CAMPAIGNS: Final = tuple(f"cmp-{i:02d}" for i in range(20))
_SHANGHAI: Final = timezone(timedelta(hours=8))


@dataclass
class Workload:
    """Encoded records in publishing order: topic index, key and value per record."""

    customers: int
    seed: int
    generated_at_ms: int
    span_days: float
    prefix: str = "bench-"
    topic_index: bytearray = field(default_factory=bytearray)
    customer_of: array[int] = field(default_factory=lambda: array("i"))
    keys: list[bytes] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    duplicates: int = 0
    refunds: int = 0

    def __len__(self) -> int:
        return len(self.values)

    @property
    def per_topic(self) -> dict[str, int]:
        counts = [0] * len(EVENT_TOPICS)
        for index in self.topic_index:
            counts[index] += 1
        return {topic: counts[i] for i, topic in enumerate(EVENT_TOPICS)}

    @property
    def value_bytes(self) -> int:
        return sum(len(v) for v in self.values)

    def customer_id(self, index: int) -> str:
        return f"{self.prefix}c{index:07d}"

    def events_of(self, customers: Sequence[int]) -> dict[int, list[tuple[str, bytes]]]:
        """(topic, value) of every record of these customers, in publishing order."""
        wanted = set(customers)
        out: dict[int, list[tuple[str, bytes]]] = {c: [] for c in wanted}
        for i, customer in enumerate(self.customer_of):
            if customer in wanted:
                out[customer].append((EVENT_TOPICS[self.topic_index[i]], self.values[i]))
        return out

    def records(self) -> Iterator[tuple[str, bytes, bytes]]:
        for i, value in enumerate(self.values):
            yield EVENT_TOPICS[self.topic_index[i]], self.keys[i], value


def compact(value: bytes) -> bytes:
    """An exact-size copy: orjson 3.13 hands back bytes over-allocated to about 4 KiB, which is
    harmless for a message sent at once but multiplies the memory of anything kept."""
    return bytes(memoryview(value))


def _occurred_at(ms: int, rng: random.Random) -> int | str:
    if rng.random() >= RFC3339_SHARE:
        return ms
    # RFC 3339 with a non-UTC offset, as a shop in China would send it.
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(_SHANGHAI)
    return dt.isoformat(timespec="milliseconds")


def _amount(cents: int, rng: random.Random) -> str | float:
    # Decimal text mostly (what money should be sent as), sometimes a JSON number.
    return f"{cents / 100:.2f}" if rng.random() < 0.7 else cents / 100


def generate(
    customers: int,
    events: int,
    *,
    seed: int = 7,
    span_days: float = DEFAULT_SPAN_DAYS,
    now_ms: int | None = None,
    prefix: str = "bench-",
) -> Workload:
    """`events` records over `customers` customers (each has at least one event; activity is
    skewed, log-normally), event times uniform over the `span_days` before `now_ms`."""
    if customers < 1 or events < customers:
        raise ValueError(f"need 1 <= customers <= events, got {customers} and {events}")
    rng = random.Random(seed)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    span_ms = int(span_days * 86_400_000)
    start = now - span_ms
    weights = [rng.lognormvariate(0.0, 1.0) for _ in range(customers)]
    # A few exact redeliveries among the records; the rest are fresh draws: everyone once, then
    # the rest by activity, each with a time and a topic.
    n_dup = min(int(events * DUPLICATE_SHARE), events - customers)
    fresh = events - n_dup
    owners = list(range(customers))
    owners.extend(rng.choices(range(customers), weights=weights, k=fresh - customers))
    topic_draws = rng.choices(range(len(EVENT_TOPICS)), weights=TOPIC_MIX, k=fresh)
    # Times end a second before `now` so no event is "in the future" for the worker.
    draws = sorted(
        (start + int(rng.random() * max(span_ms - 1000, 1)), owners[i], topic_draws[i])
        for i in range(fresh)
    )
    del owners, topic_draws
    dup_after = set(rng.sample(range(1, fresh), n_dup)) if fresh > 1 else set()
    work = Workload(
        customers=customers, seed=seed, generated_at_ms=now, span_days=span_days, prefix=prefix
    )
    keys = [work.customer_id(c).encode() for c in range(customers)]
    orders: dict[int, list[tuple[str, int]]] = {}
    recent: list[int] = []  # record indices to redeliver from
    for n, (at_ms, customer, topic) in enumerate(draws):
        if n in dup_after:
            # An exact redelivery of a recent record, arriving late (its event time is older).
            j = recent[rng.randrange(len(recent))]
            work.topic_index.append(work.topic_index[j])
            work.customer_of.append(work.customer_of[j])
            work.keys.append(work.keys[j])
            work.values.append(work.values[j])
            work.duplicates += 1
        cid = work.customer_id(customer)
        doc: dict[str, Any] = {
            "event_id": f"{prefix}e{n:08d}",
            "customer_id": cid,
            "occurred_at": _occurred_at(at_ms, rng),
        }
        name = EVENT_TOPICS[topic]
        if name == PURCHASES:
            history = orders.get(customer)
            if history and rng.random() < REFUND_SHARE:
                order_id, cents = history[rng.randrange(len(history))]
                refund = cents if rng.random() < 0.5 else max(1, cents // 2)
                doc.update(order_id=order_id, amount=_amount(refund, rng), kind="refund")
                work.refunds += 1
            else:
                cents = max(100, int(rng.lognormvariate(3.6, 0.9) * 100))
                order_id = f"{prefix}o{n:08d}"
                orders.setdefault(customer, []).append((order_id, cents))
                doc.update(order_id=order_id, amount=_amount(cents, rng))
                if rng.random() < 0.5:
                    doc["currency"] = "USD"
                if rng.random() < 0.6:
                    doc["channel"] = _CHANNELS[rng.randrange(len(_CHANNELS))]
        elif name in (EMAIL_OPENS, EMAIL_CLICKS):
            doc["message_id"] = f"{prefix}m{rng.randrange(events):08d}"
            if rng.random() < 0.8:
                doc["campaign_id"] = _CAMPAIGNS[rng.randrange(len(_CAMPAIGNS))]
            if name == EMAIL_CLICKS and rng.random() < 0.7:
                doc["url"] = f"https://shop.example/p/{rng.randrange(5000)}"
        else:
            doc["kind"] = rng.choices(_WECHAT_KINDS, weights=_WECHAT_WEIGHTS)[0]
        work.topic_index.append(topic)
        work.customer_of.append(customer)
        work.keys.append(keys[customer])
        work.values.append(compact(orjson.dumps(doc)))
        if len(recent) < 1000:
            recent.append(len(work.values) - 1)
        else:
            recent[rng.randrange(1000)] = len(work.values) - 1
    return work


def latency_event(
    index: int, prefix: str, occurred_ms: int, rng: random.Random
) -> tuple[str, bytes, bytes, str]:
    """The first purchase of a new customer (so it always produces a tier change):
    (topic, key, value, event_id)."""
    cid = f"{prefix}new{index:07d}"
    event_id = f"{prefix}lat{index:07d}"
    cents = max(100, int(rng.lognormvariate(3.6, 0.9) * 100))
    doc = {
        "event_id": event_id,
        "customer_id": cid,
        "occurred_at": occurred_ms,
        "order_id": f"{prefix}lo{index:07d}",
        "amount": f"{cents / 100:.2f}",
        "currency": "USD",
    }
    return PURCHASES, cid.encode(), orjson.dumps(doc), event_id


async def publish_records(
    bootstrap: str,
    records: Iterator[tuple[str, bytes, bytes]],
    total: int,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> float:
    """Publish encoded records (keyed: aiokafka's murmur2 partitioner, like Java clients);
    returns the seconds it took."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024, acks=1
    )
    await producer.start()
    started = time.monotonic()
    try:
        pending = []
        done = 0
        for topic, key, value in records:
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                done += len(pending)
                pending.clear()
                if on_progress is not None:
                    on_progress(done)
        if pending:
            await asyncio.gather(*pending)
            done += len(pending)
        await producer.flush()
        if on_progress is not None:
            on_progress(done)
    finally:
        await producer.stop()
    return time.monotonic() - started


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
