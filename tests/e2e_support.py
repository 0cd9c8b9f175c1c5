"""Helpers for end-to-end tests: a fresh embedded stack and a real worker process per module."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.embedded import EmbeddedStack, MissingDependency, create_topics
from streams.harness import WorkerProcess, caught_up, read_topic_sync
from streams.replay import publish
from streams.topics import ALL_TOPICS

PARTITIONS = 4


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@contextmanager
def fresh_stack() -> Iterator[EmbeddedStack]:
    """A stack of its own, so each module's topics hold only its own records."""
    stack = EmbeddedStack()
    try:
        stack.start()
    except MissingDependency as exc:
        if in_ci():
            pytest.fail(f"CI is set, so not skipping: {exc}", pytrace=False)
        pytest.skip(str(exc))
    try:
        asyncio.run(create_topics(stack.bootstrap, ALL_TOPICS, PARTITIONS))
        yield stack
    finally:
        stack.stop()


def start_worker(stack: EmbeddedStack, tmp: Path, name: str, **env: str) -> WorkerProcess:
    worker = WorkerProcess(
        {
            **stack.env(),
            "TIERSTREAM_PARTITIONS": str(PARTITIONS),
            "TIERSTREAM_DATA_DIR": str(tmp / f"{name}-data"),
            "TIERSTREAM_APP_ID": "tierstream",
            # The tests' events are historical: the clock is their event time, not wall time.
            "TIERSTREAM_LIVE_CLOCK": "false",
            **env,
        },
        tmp / f"{name}.log",
    )
    worker.start()
    return worker


def send(
    stack: EmbeddedStack, events: Sequence[tuple[str, dict[str, Any]]], *, backfill: bool = False
) -> None:
    asyncio.run(publish(stack.bootstrap, events, backfill=backfill, progress=False))


async def _send_raw(
    bootstrap: str, records: Sequence[tuple[str, bytes | None, bytes | None]]
) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for topic, key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


def send_raw(
    stack: EmbeddedStack, records: Sequence[tuple[str, bytes | None, bytes | None]]
) -> None:
    asyncio.run(_send_raw(stack.bootstrap, records))


def wait_consumed(
    worker: WorkerProcess, total: float, *, timeout: float = 120.0
) -> dict[str, float]:
    """Until the worker has consumed `total` records (forwarded ones count twice: once on the
    wrong partition, once on the right one)."""
    worker.wait_for(
        lambda m: (
            m.get("tierstream_events_consumed_total", 0)
            - m.get("tierstream_events_forwarded_total", 0)
            >= total
            and caught_up(m)
        ),
        timeout=timeout,
        what=f"{total:.0f} events consumed and written to Redis",
    )
    # The profile of the last event may still sit in the read model's fetch window.
    settle(worker)
    return worker.metrics()


def settle(worker: WorkerProcess, seconds: float = 1.5) -> None:
    """Let the read model's fetch window pass."""
    time.sleep(seconds)
    worker.wait_for(
        lambda m: caught_up(m), timeout=60, what="Redis backlog 0"
    )


def topic_values(stack: EmbeddedStack, topic: str) -> list[dict[str, Any]]:
    return [r["value"] for r in read_topic_sync(stack.bootstrap, topic) if r["value"] is not None]


def profile(worker: WorkerProcess, customer_id: str) -> tuple[int, dict[str, Any] | None]:
    status, body = worker.get(f"/customers/{customer_id}")
    return status, (orjson.loads(body) if body else None)
