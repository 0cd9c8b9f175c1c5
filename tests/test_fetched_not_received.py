"""The segment agent's "behind" test sees records the client fetched but the agent has not
received, whatever the broker reports as its high-water mark (the embedded broker under-reports
it after batched produces: streams/embedded.py). Without this, a topic whose last records sit in
the client's buffers was taken for quiet and its records folded late (caught by
tests/test_e2e_determinism.py once the worker got faster)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.types import TP

from agents.segment import fetched_not_received
from streams.embedded import EmbeddedStack

pytestmark = [pytest.mark.e2e]

TOPIC = "fetched-not-received-probe"
RECORDS = 10


def as_faust_consumer(client: AIOKafkaConsumer) -> SimpleNamespace:
    """What the agent reaches through Faust's consumer: its thread's aiokafka client."""
    return SimpleNamespace(_thread=SimpleNamespace(_ensure_consumer=lambda: client))


async def _probe(bootstrap: str) -> dict[str, object]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=200)
    await producer.start()
    try:  # one record batch
        sent = [await producer.send(TOPIC, b"%d" % i, partition=0) for i in range(RECORDS)]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    tp = TopicPartition(TOPIC, 0)
    client = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await client.start()
    try:
        client.assign([tp])
        client.seek(tp, 0)
        consumer, ftp = as_faust_consumer(client), TP(TOPIC, 0)
        first = await client.getmany(tp, timeout_ms=5000, max_records=1)
        assert [r.offset for r in first[tp]] == [0]
        out: dict[str, object] = {
            "highwater": client.highwater(tp),
            # The agent has record 0; 1..9 are in the client's fetch buffer.
            "buffered": fetched_not_received(consumer, ftp, 0),
        }
        rest = await client.getmany(tp, timeout_ms=5000)
        assert [r.offset for r in rest[tp]] == list(range(1, RECORDS))
        # Drained from the client (Faust's queues would hold them), not at the agent yet.
        out["drained"] = fetched_not_received(consumer, ftp, 0)
        await client.getmany(tp, timeout_ms=200)  # lets the client drop the spent fetch
        out["all_received"] = fetched_not_received(consumer, ftp, RECORDS - 1)
        return out
    finally:
        await client.stop()


def test_records_fetched_but_not_received_count_as_behind(embedded_stack: EmbeddedStack) -> None:
    seen = asyncio.run(_probe(embedded_stack.bootstrap))
    assert seen["buffered"] is True
    assert seen["drained"] is True
    assert seen["all_received"] is False
    # Kafka answers 10; the embedded broker may answer 1 (the batch's base offset + 1), which
    # is why the high-water mark alone is not enough.
    assert seen["highwater"] in (1, RECORDS)


def test_a_consumer_without_those_internals_leaves_it_to_the_high_water_mark() -> None:
    assert fetched_not_received(object(), TP(TOPIC, 0), 0) is False
