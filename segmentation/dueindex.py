"""The per-partition index of customers by their next boundary (due time).

A heap per partition with lazy deletion: a customer whose due time changed is pushed again, and
an entry popped with a due time that no longer matches the customer's state is skipped. Popping
what is due costs O(due * log n): the work per tick grows with the customers whose boundary
passed, not with the customers held.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

S = TypeVar("S")

# Stale heap entries tolerated beyond the live ones before the heap is rebuilt.
COMPACT_SLACK = 1024


class DueIndex:
    """Per partition: a heap of (due time, customer id) and the one live due time per customer.

    Every event re-schedules its customer, so without care the heap would grow with the events,
    not the customers: an unchanged due time is not pushed again, and the heap is rebuilt from
    the live entries when stale ones outnumber them."""

    def __init__(self) -> None:
        self._heaps: dict[int, list[tuple[int, str]]] = {}
        self._live: dict[int, dict[str, int]] = {}

    def built(self, partition: int) -> bool:
        return partition in self._heaps

    def build(self, partition: int, entries: Iterable[tuple[int, str]]) -> None:
        live: dict[str, int] = {}
        for due_ms, customer_id in entries:
            live[customer_id] = due_ms
        self._live[partition] = live
        self._rebuild(partition)

    def _rebuild(self, partition: int) -> None:
        heap = [(due_ms, customer_id) for customer_id, due_ms in self._live[partition].items()]
        heapq.heapify(heap)
        self._heaps[partition] = heap

    def push(self, partition: int, due_ms: int, customer_id: str) -> None:
        live = self._live.setdefault(partition, {})
        if live.get(customer_id) == due_ms:
            return
        live[customer_id] = due_ms
        heap = self._heaps.setdefault(partition, [])
        heapq.heappush(heap, (due_ms, customer_id))
        if len(heap) > 2 * len(live) + COMPACT_SLACK:
            self._rebuild(partition)

    def pop_due(self, partition: int, until_ms: int) -> tuple[int, str] | None:
        """The earliest live entry due at or before `until_ms`, removed; None when nothing is
        due. Entries superseded by a later push are dropped on the way."""
        heap = self._heaps.get(partition)
        live = self._live.get(partition, {})
        while heap and heap[0][0] <= until_ms:
            due_ms, customer_id = heapq.heappop(heap)
            if live.get(customer_id) == due_ms:
                del live[customer_id]
                return due_ms, customer_id
        return None

    def next_due(self, partition: int) -> int | None:
        heap = self._heaps.get(partition)
        return heap[0][0] if heap else None

    def size(self, partition: int) -> int:
        """Heap entries, stale ones included (at most about twice the customers scheduled)."""
        return len(self._heaps.get(partition, ()))

    def scheduled(self, partition: int) -> int:
        return len(self._live.get(partition, ()))

    def drop(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self._heaps.pop(partition, None)
            self._live.pop(partition, None)


def due_states(
    index: DueIndex,
    partition: int,
    until_ms: int,
    load: Callable[[str], S | None],
    due_of: Callable[[S], int | None],
) -> Iterator[tuple[int, S]]:
    """The customers whose boundary is at or before `until_ms`, earliest first, each with its
    boundary. Stale heap entries (the customer was erased or rescheduled) are skipped. A caller
    that re-evaluates a customer pushes its new boundary; if that is also due, it comes out of
    this same iteration."""
    while (entry := index.pop_due(partition, until_ms)) is not None:
        due_ms, customer_id = entry
        state = load(customer_id)
        if state is None or due_of(state) != due_ms:
            continue
        yield due_ms, state
