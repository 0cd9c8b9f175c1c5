"""State writes held until the outputs they go with are delivered.

A table write is a changelog record, an output is a record on another topic, and the producer
delivers them independently. Written straight away, a crash could keep the new state (changelog)
and lose the tier change it caused (output): the redelivered input would then be recognised as
already folded and the change never published. So the segment agent keeps, per partition, the
state writes and the input records of a short batch here; `flush` waits for every output of the
batch to be delivered, then writes the states (one changelog record per customer per batch, however
many events it had), and only then are the input records acknowledged. A crash before that
redelivers the inputs, which fold again into the same outputs with the same ids.

The table is anything with `get`, `__setitem__`, `__delitem__` and `__contains__` (a Faust table
in the worker, a dict in tests).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("tierstream.writebehind")


class WriteBehind:
    def __init__(self, table: Any, *, max_records: int, max_seconds: float) -> None:
        self.table = table
        self.max_records = max_records
        self.max_seconds = max_seconds
        self._dirty: dict[bytes, bytes | None] = {}  # None: delete
        # Per partition, the keys to write in the order of their last `put`: a crash part-way
        # through a flush leaves a prefix of it in the changelog, so what is put last (the
        # partition clock) is only there if everything before it is (see `flush`).
        self._keys: dict[int, dict[bytes, None]] = {}
        self._sends: dict[int, list[Any]] = {}
        self._records: dict[int, list[Any]] = {}
        self._since: dict[int, float] = {}
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
            self._sends.setdefault(partition, []).append(delivery)

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
        """Partitions whose batch waited its time out (a flush record should come by)."""
        now = time.monotonic()
        return [p for p, since in self._since.items() if now - since >= self.max_seconds]

    def pending(self) -> int:
        return sum(len(records) for records in self._records.values())

    async def flush(self, partition: int) -> list[Any]:
        """Wait for the batch's outputs, write its states; return its input records, now safe
        to acknowledge. Must run while a record of `partition` is processed (table writes).

        The states are written in the order of their last `put`. The changelog keeps them in
        that order, and a worker killed part-way through keeps a prefix: a key put just before
        the flush (the agent's partition clock) is in the changelog only if every state of the
        batch is."""
        sends = self._sends.pop(partition, [])
        if sends:
            results = await asyncio.gather(*sends, return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                # The producer retries on its own; what still fails is logged and counted, and
                # the state is written anyway (holding it would stall the partition for good).
                self.failed_sends += len(failures)
                log.error(
                    "%d output(s) of partition %d not delivered: %r",
                    len(failures),
                    partition,
                    failures[0],
                )
        for key in self._keys.pop(partition, ()):
            value = self._dirty.pop(key)
            if value is not None:
                self.table[key] = value
            elif key in self.table:
                del self.table[key]
        self._since.pop(partition, None)
        return self._records.pop(partition, [])

    def discard(self, partitions: Iterable[int]) -> None:
        """The partitions were revoked: their batch is redelivered to the next owner."""
        for partition in partitions:
            for key in self._keys.pop(partition, ()):
                self._dirty.pop(key, None)
            self._sends.pop(partition, None)
            self._records.pop(partition, None)
            self._since.pop(partition, None)
