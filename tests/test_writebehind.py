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
