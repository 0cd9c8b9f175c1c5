"""Publishing histories to the input topics: the demo's replay and a shop's backfill."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson
from aiokafka import AIOKafkaProducer

from streams.topics import BACKFILL_HEADER, TICKS

TopicEvent = tuple[str, dict[str, Any]]


class Progress:
    """A dependency-free progress bar on stderr (a line per update when not a terminal)."""

    def __init__(self, total: int, label: str, stream: TextIO = sys.stderr) -> None:
        self.total, self.label, self.stream = max(total, 1), label, stream
        self.started = time.monotonic()
        self.last_draw = 0.0
        self.tty = stream.isatty()

    def update(self, done: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_draw < (0.2 if self.tty else 5.0):
            return
        self.last_draw = now
        elapsed = max(now - self.started, 1e-9)
        share = min(done / self.total, 1.0)
        bar = "█" * int(share * 30) + "·" * (30 - int(share * 30))
        line = (
            f"{self.label} {bar} {done:>9,}/{self.total:,} {share:6.1%} {done / elapsed:>9,.0f}/s"
        )
        if self.tty:
            self.stream.write("\r" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self, done: int) -> None:
        self.update(done, force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


@dataclass
class ReplayStats:
    per_topic: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.per_topic.values())

    @property
    def events_per_second(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0


def encode_key(event: dict[str, Any]) -> bytes | None:
    customer_id = event.get("customer_id")
    return customer_id.encode() if isinstance(customer_id, str) else None


async def publish(
    bootstrap: str,
    events: Sequence[TopicEvent],
    *,
    backfill: bool = True,
    progress: bool = True,
    label: str = "replay",
    producer_factory: Callable[..., AIOKafkaProducer] = AIOKafkaProducer,
    producer_options: dict[str, Any] | None = None,
) -> ReplayStats:
    """Publish (topic, event) pairs in order, keyed by customer id (murmur2, like Java clients).
    Backfilled records carry a header so their changes say cause=backfill."""
    headers = [(BACKFILL_HEADER, b"1")] if backfill else None
    producer = producer_factory(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        max_batch_size=256 * 1024,
        acks=1,
        **(producer_options or {}),
    )
    await producer.start()
    stats = ReplayStats()
    bar = Progress(len(events), label) if progress else None
    started = time.monotonic()
    try:
        pending = []
        for index, (topic, event) in enumerate(events, 1):
            pending.append(
                await producer.send(
                    topic, orjson.dumps(event), key=encode_key(event), headers=headers
                )
            )
            stats.per_topic[topic] = stats.per_topic.get(topic, 0) + 1
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
                if bar:
                    bar.update(index)
        if pending:
            await asyncio.gather(*pending)
        await producer.flush()
    finally:
        await producer.stop()
    stats.seconds = time.monotonic() - started
    if bar:
        bar.close(len(events))
    return stats


async def send_ticks(bootstrap: str, at_ms: int) -> int:
    """Move every partition's clock to `at_ms`: one tick record per partition of the ticks
    topic. Customers whose boundary is due by then are re-evaluated, with cause=time."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(TICKS))
        value = orjson.dumps({"t": at_ms})
        for partition in partitions:
            await producer.send_and_wait(TICKS, value, partition=partition)
        return len(partitions)
    finally:
        await producer.stop()
