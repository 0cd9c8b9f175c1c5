"""aiokafka's seek_to_committed with a committed offset of 0 (streams/kafka_fixes.py), against
the embedded broker: the consumer has read past the commit in its assignment, as Faust's does
before a rebalance, and must be back at 0 after the seek Faust does when it resumes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from streams import kafka_fixes
from streams.embedded import EmbeddedStack
from tests.e2e_support import fresh_stack

pytestmark = [pytest.mark.e2e]

TOPIC = "purchases"
RECORDS = 10


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    with fresh_stack() as s:
        asyncio.run(_produce(s.bootstrap))
        yield s


async def _produce(bootstrap: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i in range(RECORDS):
            await producer.send_and_wait(TOPIC, b"%d" % i, partition=0)
    finally:
        await producer.stop()


async def _first_offset_after_seek(
    bootstrap: str, group: str, seek: kafka_fixes.SeekToCommitted
) -> int:
    """Commit 0, read everything, call `seek` as Faust does; the offset read next."""
    tp = TopicPartition(TOPIC, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.commit({tp: OffsetAndMetadata(0, "")})
        read = 0
        while read < RECORDS:
            batch = await consumer.getmany(tp, timeout_ms=2000)
            assert batch, "no records from the embedded broker"
            read += sum(len(records) for records in batch.values())
        assert await consumer.position(tp) == RECORDS
        committed = await seek(consumer)
        assert committed == {tp: 0}
        batch = await consumer.getmany(tp, timeout_ms=2000, max_records=1)
        if not batch:  # nothing more to read: still at the end
            return await consumer.position(tp)
        return batch[tp][0].offset
    finally:
        await consumer.stop()


def test_a_committed_offset_of_zero_rewinds_the_consumer(stack: EmbeddedStack) -> None:
    kafka_fixes.install()
    kafka_fixes.install()  # idempotent: wrapped once
    seek = AIOKafkaConsumer.seek_to_committed
    assert getattr(seek, "__wrapped__", None) is not None
    assert not hasattr(seek.__wrapped__, "__wrapped__")  # type: ignore[attr-defined]
    first = asyncio.run(_first_offset_after_seek(stack.bootstrap, "fix-patched", seek))
    assert first == 0


def test_the_unpatched_aiokafka_stays_past_the_commit(stack: EmbeddedStack) -> None:
    """The upstream behaviour the patch exists for (aio-libs/aiokafka#1003)."""
    kafka_fixes.install()
    original = AIOKafkaConsumer.seek_to_committed.__wrapped__  # type: ignore[attr-defined]
    first = asyncio.run(_first_offset_after_seek(stack.bootstrap, "fix-original", original))
    if first == 0:
        pytest.skip("this aiokafka seeks to a committed 0 itself: streams/kafka_fixes.py can go")
    assert first == RECORDS


def test_the_worker_consumer_fetches_with_the_configured_wait() -> None:
    """Faust builds its worker consumer with fetch_max_wait_ms=1500 (no setting); the wrapper
    replaces it, and setting it again wraps Faust's method, not the earlier wrapper."""
    from types import SimpleNamespace

    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    thread_class: Any = AIOKafkaConsumerThread
    original = thread_class._create_worker_consumer
    built: list[SimpleNamespace] = []

    def faust_builds(self: object, transport: object) -> SimpleNamespace:
        consumer = SimpleNamespace(_fetch_max_wait_ms=1500)  # what start() reads
        built.append(consumer)
        return consumer

    try:
        thread_class._create_worker_consumer = faust_builds
        kafka_fixes.set_fetch_max_wait(100)
        kafka_fixes.set_fetch_max_wait(250)
        wrapper = thread_class._create_worker_consumer
        assert wrapper.__wrapped__ is faust_builds
        consumer = wrapper(object(), object())
        assert consumer._fetch_max_wait_ms == 250
        assert built == [consumer]
    finally:
        thread_class._create_worker_consumer = original
