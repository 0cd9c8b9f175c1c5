"""Event-time order across the input topics of one partition, and offsets acked as a prefix.

Kafka orders records within one topic-partition only. A customer's purchases, opens, clicks and
WeChat interactions sit in four topics, and the consumer interleaves them as its fetches happen
to come back, so the same history could fold in another order on another run: final aggregates
agree (the fold is order-independent), but intermediate transitions, and the campaigns they fire,
would not. `PartitionOrder` holds each partition's records and releases them in event-time order
once every other input topic has moved past their time, or has gone quiet for `idle_ms` (a topic
with no traffic must not stall the others) with nothing of it left unread in the broker (its
high-water mark says so: a backlogged consumer is not a quiet topic). A replay therefore folds in
one order whatever its pace; live traffic waits at most `idle_ms`.

Held records are not acknowledged: `InOrderAcks` releases a topic-partition's offsets to the
consumer only as a contiguous prefix of what was processed, so a crash redelivers whatever was
still held (Kafka commits an offset as "everything before it is done").

Plain data, the clock passed in: no Faust, no Kafka.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")

NO_TIME = -1
# A backlogged consumer can leave one topic-partition without arrivals for a long while (its
# records wait behind other partitions' in the fetch buffers), so "behind" is trusted for this
# many idle periods before a topic whose high-water mark never fills is taken as quiet.
BEHIND_GIVE_UP = 300
TopicPartition = tuple[str, int]


def _nothing_behind(topic: str) -> bool:
    return False


def _always_polled(topic: str, since_ms: int) -> bool:
    return True


@dataclass(order=True)
class _Held(Generic[Item]):
    occurred_ms: int
    rank: int  # the topic's position in the input list breaks event-time ties
    offset: int
    item: Item = field(compare=False)


@dataclass
class Released(Generic[Item]):
    items: list[Item]
    forced: int = 0  # released before their turn because too many were held


class PartitionOrder(Generic[Item]):
    """One partition's records, held until their event time is safe to fold."""

    def __init__(
        self, topics: Sequence[str], *, idle_ms: int, max_held: int, now_ms: int
    ) -> None:
        self.rank = {topic: i for i, topic in enumerate(topics)}
        self.idle_ms = idle_ms
        self.max_held = max_held
        self.heap: list[_Held[Item]] = []
        # Per topic: the newest event time seen, and when a record last arrived (wall time).
        self.high: dict[str, int] = {}
        self.arrived: dict[str, int] = dict.fromkeys(topics, now_ms)
        # When the first record after a pause arrived (every topic idle for `idle_ms`). A topic
        # still quiet then is only taken for quiet once the consumer has fetched it since: its
        # last high-water mark predates the pause's end, and records published with the ones
        # that ended it may be on their way (found in the chunked replay, 2026-12-07).
        self.resumed_ms = now_ms

    def __len__(self) -> int:
        return len(self.heap)

    def note_arrival(self, topic: str, now_ms: int) -> None:
        """A record arrived on `topic` (valid or not): the topic is not idle."""
        if all(now_ms - at >= self.idle_ms for at in self.arrived.values()):
            self.resumed_ms = now_ms
        self.arrived[topic] = max(self.arrived.get(topic, now_ms), now_ms)

    def hold(self, topic: str, occurred_ms: int, offset: int, item: Item, now_ms: int) -> None:
        self.note_arrival(topic, now_ms)
        self.high[topic] = max(self.high.get(topic, NO_TIME), occurred_ms)
        heapq.heappush(self.heap, _Held(occurred_ms, self.rank[topic], offset, item))

    def oldest_ms(self) -> int | None:
        return self.heap[0].occurred_ms if self.heap else None

    def _passed(
        self,
        topic: str,
        head: _Held[Item],
        now_ms: int,
        behind: Callable[[str], bool],
        polled_since: Callable[[str, int], bool],
    ) -> bool:
        """No record of `topic` can still come that sorts before `head` (Kafka keeps each
        topic-partition in order; a producer's late record is late whatever we do)."""
        high = self.high.get(topic, NO_TIME)
        if high > head.occurred_ms or (high == head.occurred_ms and self.rank[topic] > head.rank):
            return True
        quiet_ms = now_ms - self.arrived.get(topic, now_ms)
        if quiet_ms < self.idle_ms:
            return False
        # A high-water mark can stay past the last record for good (transaction markers hold
        # offsets no record fills): after BEHIND_GIVE_UP idle periods, quiet is quiet.
        if quiet_ms >= BEHIND_GIVE_UP * self.idle_ms:
            return True
        return not behind(topic) and polled_since(topic, self.resumed_ms)

    def _head_ready(
        self,
        now_ms: int,
        behind: Callable[[str], bool],
        polled_since: Callable[[str, int], bool],
    ) -> bool:
        head = self.heap[0]
        return all(
            self._passed(topic, head, now_ms, behind, polled_since)
            for topic, rank in self.rank.items()
            if rank != head.rank
        )

    def release_possible(
        self,
        now_ms: int,
        behind: Callable[[str], bool] = _nothing_behind,
        polled_since: Callable[[str, int], bool] = _always_polled,
    ) -> bool:
        return bool(self.heap) and self._head_ready(now_ms, behind, polled_since)

    def release(
        self,
        now_ms: int,
        *,
        until_ms: int | None = None,
        behind: Callable[[str], bool] = _nothing_behind,
        polled_since: Callable[[str, int], bool] = _always_polled,
    ) -> Released[Item]:
        """Pop, in event-time order, every record whose turn has come; with `until_ms`, also
        every record at or before it (an explicit clock move says that time has passed).
        `behind(topic)`: the broker holds records of that topic not received yet.
        `polled_since(topic, ms)`: the consumer has had a fetch answer for it since `ms`."""
        out: Released[Item] = Released([])
        while self.heap:
            if len(self.heap) > self.max_held:
                out.forced += 1
            elif not (
                until_ms is not None and self.heap[0].occurred_ms <= until_ms
            ) and not self._head_ready(now_ms, behind, polled_since):
                break
            out.items.append(heapq.heappop(self.heap).item)
        return out


class InOrderAcks(Generic[Item]):
    """Per topic-partition, the records that arrived, acknowledged only as a contiguous prefix
    of the processed ones."""

    def __init__(self) -> None:
        self._order: dict[TopicPartition, deque[int]] = {}
        self._pending: dict[TopicPartition, dict[int, tuple[Item, bool]]] = {}
        # The highest offset such that it and everything before it (this session) were processed.
        self.done_through: dict[TopicPartition, int] = {}

    def arrived(self, tp: TopicPartition, offset: int, item: Item) -> None:
        self._order.setdefault(tp, deque()).append(offset)
        self._pending.setdefault(tp, {})[offset] = (item, False)

    def processed(self, tp: TopicPartition, offset: int) -> list[Item]:
        """Mark one record processed; return the records that may now be acknowledged."""
        pending = self._pending.get(tp)
        if pending is None or offset not in pending:
            return []
        pending[offset] = (pending[offset][0], True)
        order = self._order[tp]
        ready: list[Item] = []
        while order and pending[order[0]][1]:
            first = order.popleft()
            ready.append(pending.pop(first)[0])
            self.done_through[tp] = first
        return ready

    def held(self) -> int:
        return sum(len(p) for p in self._pending.values())

    def topic_partitions(self) -> list[TopicPartition]:
        return list(self._pending)

    def forget(self, tps: Sequence[TopicPartition]) -> None:
        """The partitions went to another worker: their records will be redelivered there."""
        for tp in tps:
            self._order.pop(tp, None)
            self._pending.pop(tp, None)
            self.done_through.pop(tp, None)
