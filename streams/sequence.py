"""The first offset received on a topic-partition after an assignment is checked against the
committed one: records the consumer skipped there are fetched again instead of being committed
over.

A consumer group committed back to offset 0 and a worker restarted: the worker sometimes received
only part of the input (2,298 of 4,298 records), with no error and no rebalance; its log showed
`purchases[3]` starting at offset 295. Faust reads a committed offset of 0 as "no commit" and can
drop records its fetcher handed over while a partition was not yet active after the assignment;
the records after the hole were then processed and acknowledged, and the commit moved over the
hole. On a brand-new group that loses events for good.

So the segment agent checks the first record of every input topic-partition after an assignment
against where the consumer was to start (the committed offset, 0 when there is none). A record
past it means a hole: the consumer is sought back, and the records fetched before the seek took
effect are dropped unacknowledged (they come again after it). The seek is repeated every
RESEEK_S until the wanted record comes (a seek racing with a fetch in flight can be undone by
Faust's fetch loop, which drops records below the last offset it handed over), and after
REWIND_TIMEOUT_S a record past the start is accepted, the hole taken as real (a log start moved by
retention, a committed offset on a transaction marker) rather than stall the partition.

Only the first record is checked: later holes are normal on Kafka (transaction markers, aborted
transactions, compaction) and Faust's fetch loop already accounts for them; a check there would
stall on every transaction marker. Pure: the clock is passed in, the agent seeks and logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

TopicPartition = tuple[str, int]

RESEEK_S: Final = 2.0
REWIND_TIMEOUT_S: Final = 20.0


class Verdict(Enum):
    ACCEPT = "accept"  # process it
    SEEK = "seek"  # past the start: seek the consumer to `Decision.offset`, drop this record
    DROP = "drop"  # past the start while a seek is under way: it comes again, drop it
    HOLE = "hole"  # the seeks did not bring the start back in time: a real hole, process it


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    offset: int  # SEEK: where to seek; HOLE: the first offset missing


@dataclass(slots=True)
class _Rewind:
    wanted: int
    since: float
    sought_at: float


class OffsetSequence:
    def __init__(self) -> None:
        self._started: set[TopicPartition] = set()
        self._rewinding: dict[TopicPartition, _Rewind] = {}

    def knows(self, tp: TopicPartition) -> bool:
        """Whether `tp` has started since it was assigned (`start` is then unused)."""
        return tp in self._started or tp in self._rewinding

    def check(
        self, tp: TopicPartition, offset: int, start: int | None, now_s: float = 0.0
    ) -> Decision:
        """`start` is where the consumer was to begin on `tp` (the group's committed offset, 0
        for none), read for the first record of `tp` since it was assigned; None when not
        known (no running consumer): that record is then taken as the start."""
        if tp in self._started:
            return Decision(Verdict.ACCEPT, offset)
        rewind = self._rewinding.get(tp)
        if rewind is None:
            if start is None or offset <= start:
                self._started.add(tp)
                return Decision(Verdict.ACCEPT, offset)
            self._rewinding[tp] = _Rewind(start, now_s, now_s)
            return Decision(Verdict.SEEK, start)
        if offset <= rewind.wanted:
            del self._rewinding[tp]
            self._started.add(tp)
            return Decision(Verdict.ACCEPT, offset)
        if now_s - rewind.since >= REWIND_TIMEOUT_S:
            del self._rewinding[tp]
            self._started.add(tp)
            return Decision(Verdict.HOLE, rewind.wanted)
        if now_s - rewind.sought_at >= RESEEK_S:
            rewind.sought_at = now_s
            return Decision(Verdict.SEEK, rewind.wanted)
        return Decision(Verdict.DROP, rewind.wanted)

    def due_seeks(self, now_s: float) -> list[tuple[TopicPartition, int]]:
        """Seeks to repeat now: the wanted record has not come for RESEEK_S. Asked by a timer
        too, not only when a record comes: Faust's fetch loop drops records below the last
        offset it handed over, so the records of the first seek can all be dropped when it
        raced with a fetch in flight, and then nothing of the partition comes at all."""
        due = []
        for tp, rewind in self._rewinding.items():
            if now_s - rewind.sought_at >= RESEEK_S:
                rewind.sought_at = now_s
                due.append((tp, rewind.wanted))
        return due

    def give_up(self, tp: TopicPartition) -> None:
        """The seek failed: go on from here (the hole is accepted)."""
        self._rewinding.pop(tp, None)
        self._started.add(tp)

    def forget(self, tps: list[TopicPartition]) -> None:
        """Partitions revoked: the next owner (maybe this worker again) starts from the commit."""
        for tp in tps:
            self._started.discard(tp)
            self._rewinding.pop(tp, None)

    def topic_partitions(self) -> list[TopicPartition]:
        return list(self._started | self._rewinding.keys())
