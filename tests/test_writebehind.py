"""State writes wait for the outputs they go with (streams/writebehind.py): a crash can lose a
batch's state and redeliver its inputs, never keep a state whose outputs were lost."""

from __future__ import annotations

import asyncio

import pytest

from streams.writebehind import WriteBehind


def buffer(**kw: float) -> tuple[dict[bytes, bytes], WriteBehind]:
    table: dict[bytes, bytes] = {}
    return table, WriteBehind(
        table, max_records=int(kw.get("max_records", 3)), max_seconds=kw.get("max_seconds", 60)
    )


async def test_reads_see_the_batch_before_the_table() -> None:
    table, writes = buffer()
    table[b"a"] = b"old"
    writes.put(0, b"a", b"new")
    writes.put(0, b"b", b"fresh")
    assert writes.get(b"a") == b"new" and writes.get(b"b") == b"fresh"
    assert table == {b"a": b"old"}
    writes.put(0, b"a", None)
    assert writes.get(b"a") is None


async def test_states_are_written_only_after_every_output_is_delivered() -> None:
    table, writes = buffer()
    loop = asyncio.get_running_loop()
    delivery: asyncio.Future[None] = loop.create_future()
    writes.put(1, b"c", b"state")
    writes.sent(1, delivery)
    writes.folded(1, "record-1")
    flushing = asyncio.ensure_future(writes.flush(1))
    await asyncio.sleep(0.01)
    assert not flushing.done() and table == {}
    delivery.set_result(None)
    assert await flushing == ["record-1"]
    assert table == {b"c": b"state"}
    assert writes.pending() == 0


async def test_deletes_reach_the_table_and_one_write_per_key_per_batch() -> None:
    class Counting(dict[bytes, bytes]):
        writes = 0

        def __setitem__(self, key: bytes, value: bytes) -> None:
            Counting.writes += 1
            super().__setitem__(key, value)

    table = Counting({b"gone": b"x"})
    writes = WriteBehind(table, max_records=10, max_seconds=60)
    for version in range(5):
        writes.put(0, b"k", b"v%d" % version)
    writes.put(0, b"gone", None)
    await writes.flush(0)
    assert dict(table) == {b"k": b"v4"}
    assert Counting.writes == 1


@pytest.mark.parametrize("keys", [[b"b", b"a", b"clock"], [b"clock", b"z", b"a", b"m"]])
async def test_a_flush_writes_in_the_order_of_the_last_put(keys: list[bytes]) -> None:
    """A kill part-way through a flush leaves a prefix of its writes in the changelog, so the
    order is part of the contract: what is put last (the agent's partition clock) is written
    last, even if it was put earlier in the batch too."""
    order: list[bytes] = []

    class Recording(dict[bytes, bytes]):
        def __setitem__(self, key: bytes, value: bytes) -> None:
            order.append(key)
            super().__setitem__(key, value)

    writes = WriteBehind(Recording(), max_records=10, max_seconds=60)
    for key in keys:
        writes.put(0, key, b"1")
    writes.put(0, b"clock", b"2")
    await writes.flush(0)
    assert order == [k for k in keys if k != b"clock"] + [b"clock"]


async def test_a_failed_delivery_is_counted_and_does_not_stall_the_partition() -> None:
    table, writes = buffer()
    loop = asyncio.get_running_loop()
    failed: asyncio.Future[None] = loop.create_future()
    failed.set_exception(RuntimeError("MessageSizeTooLarge"))
    writes.put(0, b"k", b"v")
    writes.sent(0, failed)
    writes.sent(0, None)  # not awaitable (a test double's send): nothing to wait for
    writes.folded(0, "r")
    assert await writes.flush(0) == ["r"]
    assert table == {b"k": b"v"} and writes.failed_sends == 1


def test_a_batch_is_due_by_size_or_age() -> None:
    _, writes = buffer(max_records=2, max_seconds=60)
    assert not writes.due(0)
    writes.folded(0, "a")
    assert not writes.due(0)
    writes.folded(0, "b")
    assert writes.due(0)
    _, aged = buffer(max_records=100, max_seconds=0)
    aged.folded(3, "a")
    assert aged.due(3) and aged.overdue() == [3]


@pytest.mark.parametrize("partition", [0, 5])
async def test_a_revoked_partition_forgets_its_batch(partition: int) -> None:
    table, writes = buffer()
    writes.put(partition, b"k", b"v")
    writes.folded(partition, "r")
    writes.discard([partition])
    assert writes.get(b"k") is None and writes.pending() == 0
    assert await writes.flush(partition) == [] and table == {}


# -- sealed batches: the agent goes on while a batch's outputs are in flight ---------------------


def pending_delivery() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


def seal_one(
    writes: WriteBehind,
    partition: int,
    key: bytes,
    value: bytes,
    record: str,
    *,
    seal: bool = True,
) -> asyncio.Future[None]:
    """A batch of one write, one output still in flight (returned) and one input record."""
    delivery = pending_delivery()
    writes.put(partition, key, value)
    writes.sent(partition, delivery)
    writes.folded(partition, record)
    if seal:
        writes.seal(partition)
    return delivery


async def test_a_sealed_batch_waits_for_its_deliveries_without_blocking_reads() -> None:
    table, writes = buffer()
    delivery = seal_one(writes, 0, b"a", b"1", "r1")
    assert writes.collect(0) == [] and table == {}
    assert writes.get(b"a") == b"1" and writes.pending() == 1 and writes.sealed(0) == 1
    delivery.set_result(None)
    assert writes.collect(0) == ["r1"]
    assert table == {b"a": b"1"} and writes.pending() == 0 and writes.sealed(0) == 0


async def test_sealed_batches_are_written_in_order_whatever_order_their_deliveries_end() -> None:
    order: list[tuple[bytes, bytes]] = []

    class Recording(dict[bytes, bytes]):
        def __setitem__(self, key: bytes, value: bytes) -> None:
            order.append((key, value))
            super().__setitem__(key, value)

    writes = WriteBehind(Recording(), max_records=10, max_seconds=60)
    first, second = pending_delivery(), pending_delivery()
    writes.put(0, b"k", b"old")
    writes.put(0, b"clock", b"1")
    writes.sent(0, first)
    writes.folded(0, "r1")
    writes.seal(0)
    writes.put(0, b"k", b"new")
    writes.put(0, b"clock", b"2")
    writes.sent(0, second)
    writes.folded(0, "r2")
    writes.seal(0)
    second.set_result(None)
    assert writes.collect(0) == [] and order == []  # the later batch waits behind the first
    assert writes.get(b"k") == b"new"
    first.set_result(None)
    assert writes.collect(0) == ["r1", "r2"]
    assert order == [(b"k", b"old"), (b"clock", b"1"), (b"k", b"new"), (b"clock", b"2")]


async def test_writing_an_earlier_batch_keeps_a_later_put_of_the_same_key_visible() -> None:
    table, writes = buffer()
    delivery = pending_delivery()
    writes.put(0, b"k", b"v1")
    writes.sent(0, delivery)
    writes.seal(0)
    writes.put(0, b"k", b"v2")  # the open batch, not sealed yet
    delivery.set_result(None)
    writes.collect(0)
    assert table == {b"k": b"v1"} and writes.get(b"k") == b"v2"
    writes.put(0, b"gone", None)
    writes.seal(0)
    writes.collect(0)
    assert table == {b"k": b"v2"} and writes.get(b"k") == b"v2" and writes.get(b"gone") is None


async def test_flush_waits_for_every_sealed_batch_and_the_open_one() -> None:
    table, writes = buffer()
    first = seal_one(writes, 2, b"a", b"1", "r1")
    second = seal_one(writes, 2, b"b", b"2", "r2", seal=False)
    flushing = asyncio.ensure_future(writes.flush(2))
    await asyncio.sleep(0.01)
    first.set_result(None)
    await asyncio.sleep(0.01)
    assert not flushing.done() and table == {b"a": b"1"}
    second.set_result(None)
    assert await flushing == ["r1", "r2"] and table == {b"a": b"1", b"b": b"2"}


async def test_a_batch_revoked_while_its_flush_waits_is_not_written() -> None:
    table, writes = buffer()
    delivery = seal_one(writes, 1, b"a", b"1", "r1", seal=False)
    flushing = asyncio.ensure_future(writes.flush(1))
    await asyncio.sleep(0.01)
    writes.discard([1])
    delivery.set_result(None)
    assert await flushing == [] and table == {} and writes.get(b"a") is None


async def test_a_failed_delivery_of_a_sealed_batch_is_counted_once() -> None:
    table, writes = buffer()
    failed = seal_one(writes, 0, b"k", b"v", "r")
    failed.set_exception(RuntimeError("MessageSizeTooLarge"))
    assert writes.collect(0) == ["r"]
    assert table == {b"k": b"v"} and writes.failed_sends == 1


async def test_a_delivered_batch_left_uncollected_asks_for_a_flush_record() -> None:
    _, writes = buffer(max_records=100, max_seconds=0.05)
    delivery = seal_one(writes, 4, b"k", b"v", "r")
    await asyncio.sleep(0.06)
    assert writes.overdue() == []  # still in flight: a flush record would only wait for it
    delivery.set_result(None)
    assert writes.overdue() == [4]
    writes.collect(4)
    assert writes.overdue() == []


@pytest.mark.parametrize("seed", range(100))
async def test_reads_and_the_final_table_follow_the_puts_under_any_interleaving(
    seed: int,
) -> None:
    """Random puts, deletes, seals, deliveries and collects over three partitions: every read
    sees the latest put, and once everything is flushed the table holds exactly that."""
    import random

    rng = random.Random(seed)
    table, writes = buffer()
    model: dict[bytes, bytes | None] = {}
    in_flight: list[asyncio.Future[None]] = []
    keys = [b"k%d" % i for i in range(12)]  # key i belongs to partition i % 3
    for step in range(300):
        action = rng.random()
        if action < 0.5:
            key = rng.choice(keys)
            value = None if rng.random() < 0.15 else b"v%d" % step
            writes.put(int(key[1:]) % 3, key, value)
            model[key] = value
            if rng.random() < 0.5:
                delivery = pending_delivery()
                in_flight.append(delivery)
                writes.sent(int(key[1:]) % 3, delivery)
        elif action < 0.65:
            writes.seal(rng.randrange(3))
        elif action < 0.85 and in_flight:
            in_flight.pop(rng.randrange(len(in_flight))).set_result(None)
        else:
            writes.collect(rng.randrange(3))
        for key in keys:
            expected = model.get(key)
            assert writes.get(key) == expected, (seed, step, key)
    for delivery in in_flight:
        delivery.set_result(None)
    for partition in range(3):
        await writes.flush(partition)
    assert table == {k: v for k, v in model.items() if v is not None}
    assert writes.pending() == 0
