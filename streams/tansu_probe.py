"""What one fetch costs the embedded broker as a partition's record batches accumulate.

Tansu's memory storage keeps each produced record batch as an object and, on every fetch of a
partition with records past the requested offset, lists all of that partition's objects to find
the ones to return. So a fetch costs in proportion to the batches the partition holds, whatever
their size, and a long run of small batches (a producer with a short linger at a modest rate, a
profile per 16 KB) slows every consumer of that partition. Apache Kafka finds an offset through
its segment index and does not slow this way.

`python -m streams.tansu_probe` starts a broker, produces one-record batches into one partition
and, at each count in COUNTS, times FETCHES fetches of the last record: wall time and the broker's
CPU time (/proc) per fetch. The figures are in the README (Known limits).
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from streams.bench_baselines import proc_cpu_seconds
from streams.embedded import EmbeddedBroker

COUNTS: Final = (1_000, 5_000, 10_000, 20_000)
FETCHES: Final = 50
TOPIC: Final = "tansu-probe"


def cpu_seconds(pid: int) -> float:
    seconds = proc_cpu_seconds(pid)
    assert seconds is not None, f"the broker (pid {pid}) has exited"
    return seconds


async def probe(broker: EmbeddedBroker) -> list[tuple[int, float, float]]:
    """(batches held, seconds per tail fetch, broker CPU seconds per tail fetch) per count."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    pid = broker.pid
    assert pid is not None, "the broker is not running"
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10
    )
    tp = TopicPartition(TOPIC, 0)
    await producer.start()
    await consumer.start()
    consumer.assign([tp])
    rows = []
    try:
        held = 0
        for count in COUNTS:
            while held < count:
                # One record per request, so one record batch each.
                await producer.send_and_wait(TOPIC, b"x" * 100)
                held += 1
            cpu_before, started = cpu_seconds(pid), time.perf_counter()
            for _ in range(FETCHES):
                consumer.seek(tp, held - 1)
                await consumer.getmany(tp, timeout_ms=5000)
            wall = (time.perf_counter() - started) / FETCHES
            rows.append((held, wall, (cpu_seconds(pid) - cpu_before) / FETCHES))
            print(
                f"{held:>7,} batches held: {wall * 1000:8.2f} ms per tail fetch, broker CPU "
                f"{rows[-1][2] * 1000:8.2f} ms",
                flush=True,
            )
    finally:
        await consumer.stop()
        await producer.stop()
    return rows


def main() -> None:
    with EmbeddedBroker() as broker:
        asyncio.run(probe(broker))


if __name__ == "__main__":
    main()
