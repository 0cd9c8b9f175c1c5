"""State writes held until the outputs they go with are delivered.

A table write is a changelog record, an output is a record on another topic, and the producer
delivers them independently. Written straight away, a crash could keep the new state (changelog)
and lose the tier change it caused (output): the redelivered input would then be recognised as
already folded and the change never published. So the segment agent keeps, per partition, the
state writes and the input records of a short batch here; `flush` waits for every output of the
batch to be delivered, then writes the states (one changelog record per customer per batch, however
many events it had), and only then are the input records acknowledged. A crash before that
redelivers the inputs, which fold again into the same outputs with the same ids.

A due batch is sealed rather than flushed on the spot: its outputs are on their way, and the
agent goes on folding the next batch while they are delivered; each later record of the
partition completes, in order, every sealed batch whose outputs have all arrived (writes its
states, returns its records for acknowledgement). Waiting for the delivery in place stalled the
agent for a produce round trip per batch and partition; with the embedded broker slowing as it
filled, that cost the soak its margin while the worker's CPU fell (README, Known limits). The
guarantees are unchanged: a batch's states are written only after its outputs are delivered,
batches are written in the order they were sealed (the changelog keeps a prefix of the
sequence), and reads see the newest value, open batch first, then the sealed ones.

The table is anything with `get`, `__setitem__`, `__delitem__` and `__contains__` (a Faust table
in the worker, a dict in tests).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

log = logging.getLogger("tierstream.writebehind")

#: Sealed batches a partition may have waiting for delivery before sealing another waits for the
#: oldest (memory stays bounded when the broker is slower than the agent).
MAX_SEALED: Final = 8
#: A sealed batch whose outputs are delivered is written by the partition's next record; one
#: left waiting this long after sealing (no more records) is reported by `overdue`.
SEALED_WAIT_SECONDS: Final = 0.05


@dataclass(slots=True)
class _Sealed:
    seq: int
    sends: list[Any]
    writes: dict[bytes, bytes | None]  # in the order of the last put
    records: list[Any]
    at: float = field(default_factory=time.monotonic)

    def delivered(self) -> bool:
        return all(send.done() for send in self.sends)


class WriteBehind:
    def __init__(self, table: Any, *, max_records: int, max_seconds: float) -> None:
        self.table = table
        self.max_records = max_records
        self.max_seconds = max_seconds
        self._dirty: dict[bytes, bytes | None] = {}  # None: delete
        # Per partition, the keys to write in the order of their last `put`: a crash part-way
        # through a flush leaves a prefix of it in the changelog, so what is put last (the
        # partition clock) is only there if everything before it is (see `_write`).
        self._keys: dict[int, dict[bytes, None]] = {}
        self._sends: dict[int, list[Any]] = {}
        self._records: dict[int, list[Any]] = {}
        self._since: dict[int, float] = {}
        self._sealed: dict[int, deque[_Sealed]] = {}
        # The newest sealed value of each key not yet written, with its batch's sequence number.
        self._shadow: dict[bytes, tuple[int, bytes | None]] = {}
        self._seq = 0
        self.failed_sends = 0

    def get(self, key: bytes) -> bytes | None:
        if key in self._dirty:
            return self._dirty[key]
        shadowed = self._shadow.get(key)
        if shadowed is not None:
            return shadowed[1]
        value: bytes | None = self.table.get(key)
        return value

    def put(self, partition: int, key: bytes, value: bytes | None) -> None:
        """Write (None: delete) `key`, which belongs to `partition`'s table partition."""
        self._dirty[key] = value
        keys = self._keys.setdefault(partition, {})
        keys.pop(key, None)
        keys[key] = None

    def sent(self, partition: int, delivery: Any) -> None:
        """An output's delivery (what the producer's send returned) the batch waits for."""
        if inspect.isawaitable(delivery):
            # A future (Faust's send returns one) or a coroutine, made a task: `done` is asked.
            self._sends.setdefault(partition, []).append(asyncio.ensure_future(delivery))

    def folded(self, partition: int, record: Any) -> None:
        """An input record whose state writes and outputs are in the batch."""
        self._records.setdefault(partition, []).append(record)
        self._since.setdefault(partition, time.monotonic())

    def due(self, partition: int) -> bool:
        records = self._records.get(partition)
        if not records:
            return False
        return (
            len(records) >= self.max_records
            or time.monotonic() - self._since[partition] >= self.max_seconds
        )

    def overdue(self) -> list[int]:
        """Partitions whose open batch waited its time out, or whose oldest sealed batch is
        delivered and has waited SEALED_WAIT_SECONDS for a record to write it (a flush record
        should come by). One still waiting for its delivery is not: a flush record would only
        wait for it in the agent's place."""
        now = time.monotonic()
        due = {p for p, since in self._since.items() if now - since >= self.max_seconds}
        for partition, queue in self._sealed.items():
            if queue and now - queue[0].at >= SEALED_WAIT_SECONDS and queue[0].delivered():
                due.add(partition)
        return sorted(due)

    def pending(self) -> int:
        """Input records folded and not yet safe to acknowledge (open and sealed batches)."""
        open_records = sum(len(records) for records in self._records.values())
        return open_records + sum(
            len(batch.records) for queue in self._sealed.values() for batch in queue
        )

    def sealed(self, partition: int) -> int:
        return len(self._sealed.get(partition, ()))

    async def seal(self, partition: int) -> None:
        """Close the partition's open batch: its states are written once its outputs are
        delivered (`complete`), while the next batch is folded. Waits for the oldest sealed
        batch when MAX_SEALED are already waiting."""
        self._seq += 1
        batch = _Sealed(
            self._seq,
            self._sends.pop(partition, []),
            {key: self._dirty.pop(key) for key in self._keys.pop(partition, ())},
            self._records.pop(partition, []),
        )
        self._since.pop(partition, None)
        for key, value in batch.writes.items():
            self._shadow[key] = (batch.seq, value)
        queue = self._sealed.setdefault(partition, deque())
        queue.append(batch)
        if len(queue) > MAX_SEALED:
            await self._deliveries(partition, queue[0])

    async def complete(self, partition: int, *, wait: bool = False) -> list[Any]:
        """Write, in sealing order, every sealed batch of the partition whose outputs are
        delivered (all of them, waiting for their delivery, if `wait`); returns their input
        records, now safe to acknowledge. Must run while a record of `partition` is processed
        (table writes)."""
        queue = self._sealed.get(partition)
        done: list[Any] = []
        while queue:
            batch = queue[0]
            if not batch.delivered():
                if not wait:
                    break
                await self._deliveries(partition, batch)
                if not queue or queue[0] is not batch:
                    break  # discarded meanwhile (a rebalance): its records come again
            queue.popleft()
            self._count_failures(partition, batch)
            self._write(batch)
            done.extend(batch.records)
        if queue is not None and not queue:
            del self._sealed[partition]
        return done

    async def flush(self, partition: int) -> list[Any]:
        """Seal the open batch and write every sealed batch of the partition, waiting for their
        outputs; returns their input records, now safe to acknowledge."""
        if self._records.get(partition) or self._keys.get(partition) or self._sends.get(partition):
            await self.seal(partition)
        return await self.complete(partition, wait=True)

    async def _deliveries(self, partition: int, batch: _Sealed) -> None:
        """Wait for the batch's outputs."""
        if not batch.delivered():
            await asyncio.wait(batch.sends)

    def _count_failures(self, partition: int, batch: _Sealed) -> None:
        """The producer retries on its own; what still failed is logged and counted, and the
        state is written anyway (holding it would stall the partition for good)."""
        failures: list[BaseException] = []
        for send in batch.sends:
            if send.cancelled():
                failures.append(asyncio.CancelledError())
            elif (error := send.exception()) is not None:
                failures.append(error)
        if failures:
            self.failed_sends += len(failures)
            log.error(
                "%d output(s) of partition %d not delivered: %r",
                len(failures),
                partition,
                failures[0],
            )

    def _write(self, batch: _Sealed) -> None:
        """The batch's states, in the order of their last put: the changelog keeps them in that
        order, and a worker killed part-way through keeps a prefix, so a key put just before the
        seal (the agent's partition clock) is in the changelog only if every state of the batch
        is."""
        for key, value in batch.writes.items():
            if value is not None:
                self.table[key] = value
            elif key in self.table:
                del self.table[key]
            shadowed = self._shadow.get(key)
            if shadowed is not None and shadowed[0] == batch.seq:
                del self._shadow[key]

    def discard(self, partitions: Iterable[int]) -> None:
        """The partitions were revoked: their batch is redelivered to the next owner."""
        for partition in partitions:
            for key in self._keys.pop(partition, ()):
                self._dirty.pop(key, None)
            self._sends.pop(partition, None)
            self._records.pop(partition, None)
            self._since.pop(partition, None)
            for batch in self._sealed.pop(partition, ()):
                for key in batch.writes:
                    shadowed = self._shadow.get(key)
                    if shadowed is not None and shadowed[0] == batch.seq:
                        del self._shadow[key]
