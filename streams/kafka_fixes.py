"""A fix for aiokafka's `seek_to_committed`, which Faust calls after every rebalance.

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
