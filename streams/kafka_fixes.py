"""A fix for aiokafka's `seek_to_committed`, which Faust calls after every rebalance, and the
fetch wait Faust hard-codes (see `set_fetch_max_wait`).

aiokafka 0.14's `AIOKafkaConsumer.seek_to_committed` seeks only `if offset and offset > 0`
(aio-libs/aiokafka#1003, open): a committed offset of 0 leaves the fetch position where it was.
Faust's recovery calls it (`Consumer.perform_seek`) every time it resumes the streams after a
rebalance, to move every assigned partition back to its committed offset. When a partition's
committed offset is 0 and the consumer's position is already past it, Faust resumes from that
position, and the records between 0 and it are never handed to the agent
(tests/test_kafka_fixes.py shows it against the embedded broker). A consumer group committed
back to the start (`kafka-consumer-groups --reset-offsets --to-earliest`) is the case that
matters: in tests/test_reliability.py a restarted worker was handed `purchases[3]` from offset
295 in about 1 run in 6; with this fix, 18 runs of 18 consumed everything again.

Offset 0 is an ordinary committed offset on Kafka, so this seeks to it like to any other. The
patch wraps the method once per process; `install()` is idempotent.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger("tierstream.kafka")

SeekToCommitted = Callable[..., Awaitable[Mapping[TopicPartition, int | None]]]

_PATCHED = "_tierstream_seeks_offset_zero"


def seek_to_committed_with_zero(original: SeekToCommitted) -> SeekToCommitted:
    @functools.wraps(original)
    async def seek_to_committed(
        self: AIOKafkaConsumer, *partitions: TopicPartition
    ) -> Mapping[TopicPartition, int | None]:
        committed = await original(self, *partitions)
        for tp, offset in committed.items():
            if offset == 0:
                # What the original skips: without it the position stays past the commit.
                self.seek(tp, 0)
        return committed

    setattr(seek_to_committed, _PATCHED, True)
    return seek_to_committed


def install() -> None:
    current: Any = AIOKafkaConsumer.seek_to_committed
    if getattr(current, _PATCHED, False):
        return
    AIOKafkaConsumer.seek_to_committed = seek_to_committed_with_zero(current)
    log.debug("aiokafka seek_to_committed patched to seek to a committed offset of 0")


_FETCH_WAIT = "_tierstream_fetch_max_wait_ms"


def set_fetch_max_wait(ms: int) -> None:
    """Faust builds its worker consumer with `fetch_max_wait_ms=1500` and no setting for it.

    Apache Kafka answers a fetch as soon as one byte is there (`fetch.min.bytes=1`), so the wait
    only bounds an idle fetch. The embedded broker does not: a fetch over many partitions is
    held for about 500 ms even when a record arrives on one of them (40 partitions, a record
    every 370 ms: 483 ms median from produce to consume with a 1,500 ms wait, 13 ms with 100 ms;
    one partition: 2 ms either way). A worker consumes ~45 partitions, so live records waited
    there for half a second before the agent saw them. TIERSTREAM_FETCH_MAX_WAIT_MS (100 ms by
    default) replaces Faust's value; on Kafka it costs an idle fetch request per wait."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    current: Any = AIOKafkaConsumerThread._create_worker_consumer
    # Set again (another app in the process): wrap Faust's method, not our earlier wrapper.
    original = current.__wrapped__ if hasattr(current, _FETCH_WAIT) else current

    @functools.wraps(original)
    def create_worker_consumer(self: Any, transport: Any) -> AIOKafkaConsumer:
        consumer: AIOKafkaConsumer = original(self, transport)
        # Read by `AIOKafkaConsumer.start()` when it builds its fetcher.
        consumer._fetch_max_wait_ms = ms
        return consumer

    setattr(create_worker_consumer, _FETCH_WAIT, ms)
    thread_class: Any = AIOKafkaConsumerThread  # a method replaced on the class, on purpose
    thread_class._create_worker_consumer = create_worker_consumer
    log.debug("Faust's worker consumer fetches with fetch_max_wait_ms=%d", ms)
