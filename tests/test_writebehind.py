"""State writes wait for the outputs they go with (streams/writebehind.py): a crash can lose a
batch's state and redeliver its inputs, never keep a state whose outputs were lost."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.writebehind import MAX_SEALED, SEALED_WAIT_SECONDS, WriteBehind


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


# -- sealed batches: the agent folds the next batch while the last one is delivered -------------


def pending_delivery(writes: WriteBehind, partition: int) -> asyncio.Future[None]:
    delivery: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    writes.sent(partition, delivery)
    return delivery


async def test_a_sealed_batch_is_written_by_the_first_record_after_its_delivery() -> None:
    table, writes = buffer()
    writes.put(0, b"a", b"1")
    delivery = pending_delivery(writes, 0)
    writes.folded(0, "r1")
    await writes.seal(0)  # does not wait for the delivery
    assert writes.sealed(0) == 1 and writes.pending() == 1
    assert writes.get(b"a") == b"1" and table == {}
    assert await writes.complete(0) == [] and table == {}  # not delivered yet
    delivery.set_result(None)
    assert await writes.complete(0) == ["r1"]
    assert table == {b"a": b"1"} and writes.sealed(0) == 0 and writes.pending() == 0


async def test_sealed_batches_are_written_in_the_order_they_were_sealed() -> None:
    """A later batch delivered first waits for the earlier one: the changelog must hold a
    prefix of the batches, never a later state with an earlier one missing."""
    order: list[tuple[bytes, bytes]] = []

    class Recording(dict[bytes, bytes]):
        def __setitem__(self, key: bytes, value: bytes) -> None:
            order.append((key, value))
            super().__setitem__(key, value)

    writes = WriteBehind(Recording(), max_records=10, max_seconds=60)
    writes.put(0, b"a", b"first")
    first = pending_delivery(writes, 0)
    writes.folded(0, "r1")
    await writes.seal(0)
    writes.put(0, b"a", b"second")
    writes.put(0, b"b", b"second")
    second = pending_delivery(writes, 0)
    writes.folded(0, "r2")
    await writes.seal(0)
    second.set_result(None)
    assert await writes.complete(0) == [] and order == []
    assert writes.get(b"a") == b"second"
    first.set_result(None)
    assert await writes.complete(0) == ["r1", "r2"]
    assert order == [(b"a", b"first"), (b"a", b"second"), (b"b", b"second")]


async def test_reads_see_the_newest_sealed_value_after_an_older_batch_is_written() -> None:
    table, writes = buffer()
    writes.put(0, b"a", b"old")
    await writes.seal(0)
    writes.put(0, b"a", b"new")
    newer = pending_delivery(writes, 0)
    await writes.seal(0)
    await writes.complete(0)  # writes the first batch only
    assert table == {b"a": b"old"} and writes.get(b"a") == b"new"
    writes.put(0, b"a", None)
    assert writes.get(b"a") is None  # the open batch comes first
    newer.set_result(None)
    await writes.flush(0)
    assert table == {} and writes.get(b"a") is None


async def test_sealing_waits_for_the_oldest_batch_when_too_many_wait() -> None:
    table, writes = buffer()
    deliveries = []
    for i in range(MAX_SEALED):
        writes.put(0, b"k%d" % i, b"v")
        deliveries.append(pending_delivery(writes, 0))
        await writes.seal(0)
    writes.put(0, b"last", b"v")
    sealing = asyncio.ensure_future(writes.seal(0))
    await asyncio.sleep(0.01)
    assert not sealing.done()
    deliveries[0].set_result(None)
    await sealing
    # The seal only waited: the oldest batch is written by the partition's next record.
    assert writes.sealed(0) == MAX_SEALED + 1 and table == {}
    await writes.complete(0)
    assert table == {b"k0": b"v"} and writes.sealed(0) == MAX_SEALED


async def test_overdue_reports_a_delivered_sealed_batch_left_waiting() -> None:
    _, writes = buffer(max_seconds=60)
    writes.put(1, b"a", b"v")
    waiting = pending_delivery(writes, 1)
    await writes.seal(1)
    writes.put(2, b"b", b"v")
    await writes.seal(2)  # nothing to deliver
    assert writes.overdue() == []
    await asyncio.sleep(SEALED_WAIT_SECONDS * 1.5)
    assert writes.overdue() == [2]  # 1 still waits for its delivery: a flush record would too
    waiting.set_result(None)
    assert writes.overdue() == [1, 2]


async def test_a_revoked_partition_forgets_its_sealed_batches() -> None:
    table, writes = buffer()
    table[b"a"] = b"written"
    writes.put(4, b"a", b"sealed")
    writes.folded(4, "r")
    pending_delivery(writes, 4)
    await writes.seal(4)
    writes.discard([4])
    assert writes.get(b"a") == b"written" and writes.pending() == 0 and writes.sealed(4) == 0
    assert await writes.flush(4) == [] and table == {b"a": b"written"}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("put"), st.sampled_from([b"a", b"b", b"c"]), st.booleans()),
            st.tuples(st.just("seal"), st.none(), st.none()),
            st.tuples(st.just("deliver"), st.integers(0, 20), st.none()),
            st.tuples(st.just("complete"), st.none(), st.none()),
        ),
        max_size=60,
    )
)
def test_any_interleaving_writes_a_prefix_of_delivered_batches(ops: list[Any]) -> None:
    """Against a model: reads always see the last put; the table only ever holds the states of a
    prefix of the sealed batches, each written after its delivery; a final flush writes all."""

    async def run() -> None:
        table: dict[bytes, bytes] = {}
        writes = WriteBehind(table, max_records=100, max_seconds=60)
        latest: dict[bytes, bytes | None] = {}
        batches: list[tuple[dict[bytes, bytes | None], asyncio.Future[None]]] = []
        open_batch: dict[bytes, bytes | None] = {}
        delivery = pending_delivery(writes, 0)
        written = 0
        for n, (op, arg, flag) in enumerate(ops):
            if op == "put":
                value = None if flag else b"%d" % n
                writes.put(0, arg, value)
                latest[arg] = open_batch[arg] = value
            elif op == "seal" and writes.sealed(0) < MAX_SEALED:
                await writes.seal(0)
                batches.append((open_batch, delivery))
                open_batch, delivery = {}, pending_delivery(writes, 0)
            elif op == "deliver" and batches:
                future = batches[arg % len(batches)][1]
                if not future.done():
                    future.set_result(None)
            elif op == "complete":
                await writes.complete(0)
                while written < len(batches) and batches[written][1].done():
                    written += 1
            expected: dict[bytes, bytes] = {}
            for done_batch, _ in batches[:written]:
                for key, value in done_batch.items():
                    if value is None:
                        expected.pop(key, None)
                    else:
                        expected[key] = value
            assert table == expected
            for key in (b"a", b"b", b"c"):
                assert writes.get(key) == latest.get(key)
        for _, future in batches:
            if not future.done():
                future.set_result(None)
        delivery.set_result(None)
        await writes.flush(0)
        assert table == {k: v for k, v in latest.items() if v is not None}
        assert writes.sealed(0) == 0 and writes.pending() == 0

    asyncio.run(run())
