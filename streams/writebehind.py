"""State writes held until the outputs they go with are delivered.

A table write is a changelog record, an output is a record on another topic, and the producer
delivers them independently. Written straight away, a crash could keep the new state (changelog)
and lose the tier change it caused (output): the redelivered input would then be recognised as
already folded and the change never published. So the segment agent keeps, per partition, the
state writes and the input records of a short batch here. When the batch is due it is *sealed*:
its outputs are handed to the producer and the agent goes on with the next records. Once every
output of a sealed batch is delivered, its states are written (one changelog record per customer
per batch, however many events it had), and only then are its input records acknowledged. A
crash before that redelivers the inputs, which fold again into the same outputs with the same
ids.

Sealed batches of a partition are written in the order they were sealed, each only after the one
before it, so the changelog holds them in order and a later batch's state never lands before an
earlier one's. The agent collects the delivered ones at the partition's next record (a table may
only be written while a record of its partition is processed); a partition that goes quiet gets a
flush record from the agent's timer (`overdue`), which waits for what is still in flight.

(Until 2026-12-07 the agent waited for a batch's deliveries inline: 6.7 ms median, 51 ms at most
per flush, during which no partition of the worker moved.)

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
from typing import Any

log = logging.getLogger("tierstream.writebehind")

# A sealed batch delivered this long ago and not collected: its partition has gone quiet, and a
# flush record writes it (the record costs a trip through the stream; while records flow, the
# next one collects the batch first).
SEALED_GRACE_SECONDS = 0.1


@dataclass(slots=True)
class _Sealed:
    """A batch whose outputs are in flight: its writes wait for them."""

    writes: list[tuple[bytes, bytes | None]]  # in the order of their last `put`
    sends: list[Any]
    records: list[Any]
    sealed_at: float
    number: int  # sealed batches are numbered in the order they were sealed
    checked: int = 0  # sends[:checked] are known to be done
    failures: list[BaseException] = field(default_factory=list)

    def delivered(self) -> bool:
        """Whether every output is done (delivered or failed), without waiting."""
        sends = self.sends
        while self.checked < len(sends):
            send = sends[self.checked]
            if not send.done():
                return False
            self._note(send)
            self.checked += 1
        return True

    async def wait(self) -> None:
        rest = self.sends[self.checked :]
        if rest:
            await asyncio.wait(rest)
            self.delivered()  # notes the failures and moves the cursor past them all

    def _note(self, send: Any) -> None:
        # Reading the exception also marks it retrieved (no "never retrieved" warning).
        error = send.exception() if not send.cancelled() else asyncio.CancelledError()
        if error is not None:
            self.failures.append(error)


class WriteBehind:
    def __init__(self, table: Any, *, max_records: int, max_seconds: float) -> None:
        self.table = table
        self.max_records = max_records
        self.max_seconds = max_seconds
        # The latest value put for each key not yet in the table (None: delete), whether its
        # batch is open or sealed: what every read sees.
        self._dirty: dict[bytes, bytes | None] = {}
        # The open batch, per partition: the keys to write in the order of their last `put` (a
        # crash part-way through a write leaves a prefix of it in the changelog, so what is put
        # last, the partition clock, is only there if everything before it is).
        self._keys: dict[int, dict[bytes, None]] = {}
        self._sends: dict[int, list[Any]] = {}
        self._records: dict[int, list[Any]] = {}
        self._since: dict[int, float] = {}
        self._sealed: dict[int, deque[_Sealed]] = {}
        # The number of the last sealed batch that put each key in `_dirty`: writing an earlier
        # batch must not drop a later batch's value from `_dirty` (equal values are no proof).
        self._last_sealed_by: dict[bytes, int] = {}
        self._numbered = 0
        self.failed_sends = 0

    def get(self, key: bytes) -> bytes | None:
        if key in self._dirty:
            return self._dirty[key]
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
            self._sends.setdefault(partition, []).append(asyncio.ensure_future(delivery))

    def folded(self, partition: int, record: Any) -> None:
        """An input record whose state writes and outputs are in the batch."""
        self._records.setdefault(partition, []).append(record)
        self._since.setdefault(partition, time.monotonic())

    def due(self, partition: int) -> bool:
        """Whether the open batch is to be sealed (by size or age)."""
        records = self._records.get(partition)
        if not records:
            return False
        return (
            len(records) >= self.max_records
            or time.monotonic() - self._since[partition] >= self.max_seconds
        )

    def overdue(self) -> list[int]:
        """Partitions that need a flush record: an open batch that waited its time out, or a
        sealed batch delivered and still unwritten a moment after (no record of the partition
        came by to collect it: the partition went quiet)."""
        now = time.monotonic()
        out = {p for p, since in self._since.items() if now - since >= self.max_seconds}
        grace = min(self.max_seconds, SEALED_GRACE_SECONDS)
        out.update(
            p
            for p, sealed in self._sealed.items()
            if sealed and now - sealed[0].sealed_at >= grace and sealed[0].delivered()
        )
        return sorted(out)

    def pending(self) -> int:
        """Input records folded and not yet safe to acknowledge."""
        open_records = sum(len(records) for records in self._records.values())
        return open_records + sum(
            len(batch.records) for sealed in self._sealed.values() for batch in sealed
        )

    def sealed(self, partition: int) -> int:
        """The partition's sealed batches still waiting for deliveries."""
        return len(self._sealed.get(partition, ()))

    def seal(self, partition: int) -> None:
        """Close the partition's open batch: its outputs are all handed to the producer."""
        keys = self._keys.pop(partition, None)
        records = self._records.pop(partition, [])
        sends = self._sends.pop(partition, [])
        self._since.pop(partition, None)
        if not (keys or records or sends):
            return
        dirty, last = self._dirty, self._last_sealed_by
        self._numbered += 1
        number = self._numbered
        for key in keys or ():
            last[key] = number
        self._sealed.setdefault(partition, deque()).append(
            _Sealed(
                [(key, dirty[key]) for key in keys or ()],
                sends,
                records,
                time.monotonic(),
                number,
            )
        )

    def collect(self, partition: int) -> list[Any]:
        """Write the sealed batches whose outputs are all delivered, oldest first, stopping at
        the first that is not; return their input records, now safe to acknowledge. Must run
        while a record of `partition` is processed (table writes). Never waits."""
        sealed = self._sealed.get(partition)
        if not sealed:
            return []
        done: list[Any] = []
        while sealed and sealed[0].delivered():
            done.extend(self._write(partition, sealed.popleft()))
        return done

    async def flush(self, partition: int) -> list[Any]:
        """Seal the open batch, wait for the outputs of every sealed batch, write their states;
        return their input records, now safe to acknowledge. Must run while a record of
        `partition` is processed (table writes)."""
        self.seal(partition)
        sealed = self._sealed.get(partition)
        done: list[Any] = []
        while sealed:
            await sealed[0].wait()
            if self._sealed.get(partition) is not sealed or not sealed:
                break  # a rebalance discarded the partition's batches during the wait
            done.extend(self._write(partition, sealed.popleft()))
        return done

    def _write(self, partition: int, batch: _Sealed) -> list[Any]:
        """Write a sealed batch's states in the order of their last `put`. The changelog keeps
        them in that order, and a worker killed part-way through keeps a prefix: a key put just
        before the seal (the agent's partition clock) is in the changelog only if every state
        of the batch is."""
        if batch.failures:
            # The producer retries on its own; what still fails is logged and counted, and the
            # state is written anyway (holding it would stall the partition for good).
            self.failed_sends += len(batch.failures)
            log.error(
                "%d output(s) of partition %d not delivered: %r",
                len(batch.failures),
                partition,
                batch.failures[0],
            )
        table, dirty, last = self.table, self._dirty, self._last_sealed_by
        still_open = self._keys.get(partition, {})
        for key, value in batch.writes:
            if value is not None:
                table[key] = value
            elif key in table:
                del table[key]
            # Reads go to the table from now on, unless a later batch put the key again.
            if last.get(key) == batch.number:
                del last[key]
                if key not in still_open:
                    del dirty[key]
        return batch.records

    def discard(self, partitions: Iterable[int]) -> None:
        """The partitions were revoked: their batches, open and sealed, are redelivered to the
        next owner (their outputs may be published twice, under the same ids)."""
        for partition in partitions:
            for key in self._keys.pop(partition, ()):
                self._dirty.pop(key, None)
            for batch in self._sealed.pop(partition, ()):
                for key, _ in batch.writes:
                    self._dirty.pop(key, None)
                    self._last_sealed_by.pop(key, None)
            self._sends.pop(partition, None)
            self._records.pop(partition, None)
            self._since.pop(partition, None)
