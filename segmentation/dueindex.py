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


class DueIndex:
    def __init__(self) -> None:
        self._heaps: dict[int, list[tuple[int, str]]] = {}

    def built(self, partition: int) -> bool:
        return partition in self._heaps

    def build(self, partition: int, entries: Iterable[tuple[int, str]]) -> None:
        heap = list(entries)
        heapq.heapify(heap)
        self._heaps[partition] = heap

    def push(self, partition: int, due_ms: int, customer_id: str) -> None:
        heapq.heappush(self._heaps.setdefault(partition, []), (due_ms, customer_id))

    def pop_due(self, partition: int, until_ms: int) -> tuple[int, str] | None:
        """The earliest entry due at or before `until_ms`, removed; None when nothing is due."""
        heap = self._heaps.get(partition)
        if not heap or heap[0][0] > until_ms:
            return None
        return heapq.heappop(heap)

    def next_due(self, partition: int) -> int | None:
        heap = self._heaps.get(partition)
        return heap[0][0] if heap else None

    def size(self, partition: int) -> int:
        return len(self._heaps.get(partition, ()))

    def drop(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self._heaps.pop(partition, None)


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
