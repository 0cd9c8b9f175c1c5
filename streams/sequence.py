"""Offsets received in sequence per topic-partition: records skipped by the consumer are
fetched again instead of being committed over.

A consumer group committed back to offset 0 and a worker restarted: the worker sometimes received
only part of the input (2,298 of 4,298 records), with no error and no rebalance. Faust reads a
committed offset of 0 as "no commit" and drops records its fetcher handed over while the
partition was not yet active; the records after the hole were then processed and acknowledged,
and the commit moved over the hole. On a brand-new group that loses events for good.

So the segment agent checks every input record against the next offset it expects on its
topic-partition (the committed offset for the first record after an assignment). A record past
it means a hole: the consumer is sought back to the expected offset once, and the records that
were already fetched after the hole are dropped unacknowledged (they come again after the seek).
If the redelivery starts past the expected offset again, the hole is real (a compacted topic,
transaction markers, a log start moved by retention) and is accepted; so is a hole whose seek has
not taken effect within REWIND_TIMEOUT_S (a stalled partition would be worse than the hole).
Pure: the clock is passed in, the agent does the seek and the logging.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

TopicPartition = tuple[str, int]

REWIND_TIMEOUT_S: Final = 30.0


class Verdict(Enum):
    ACCEPT = "accept"  # in sequence (or a redelivery of an earlier offset): process it
    SEEK = "seek"  # past a hole: seek the consumer back to `Decision.offset`, drop this record
    DROP = "drop"  # fetched before the seek took effect: it comes again, drop it
    HOLE = "hole"  # the redelivery after a seek skipped the same offsets: a real hole, process it


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    offset: int  # SEEK: where to seek; HOLE: the first offset missing


class OffsetSequence:
    def __init__(self) -> None:
        self._next: dict[TopicPartition, int] = {}
        # topic-partition -> (offset sought back to, highest offset dropped since, when)
        self._rewinding: dict[TopicPartition, tuple[int, int, float]] = {}

    def check(
        self, tp: TopicPartition, offset: int, start: int | None, now_s: float = 0.0
    ) -> Decision:
        """`start` is where the consumer was to begin on `tp` (the group's committed offset, 0
        for none), used only for the first record of `tp` since it was assigned; None when not
        known (no running consumer): the first record then sets the sequence."""
        rewinding = self._rewinding.get(tp)
        if rewinding is not None:
            wanted, last_dropped, since = rewinding
            if offset == wanted:
                del self._rewinding[tp]
            elif offset <= last_dropped or now_s - since > REWIND_TIMEOUT_S:
                # The fetch after the seek starts past the expected offset again (or the seek
                # never took effect).
                del self._rewinding[tp]
                self._next[tp] = offset + 1
                return Decision(Verdict.HOLE, wanted)
            else:
                self._rewinding[tp] = (wanted, offset, since)
                return Decision(Verdict.DROP, wanted)
        else:
            expected = self._next.get(tp)
            if expected is None:
                expected = offset if start is None else start
            if offset > expected:
                self._rewinding[tp] = (expected, offset, now_s)
                return Decision(Verdict.SEEK, expected)
        self._next[tp] = max(offset + 1, self._next.get(tp, 0))
        return Decision(Verdict.ACCEPT, offset)

    def knows(self, tp: TopicPartition) -> bool:
        """Whether a record of `tp` was seen since it was assigned (`start` is then unused)."""
        return tp in self._next or tp in self._rewinding

    def give_up(self, tp: TopicPartition, offset: int) -> None:
        """The seek failed: take `offset` as the sequence from here (the hole is accepted)."""
        self._rewinding.pop(tp, None)
        self._next[tp] = offset + 1

    def forget(self, tps: list[TopicPartition]) -> None:
        """Partitions revoked: the next owner (maybe this worker again) starts from the commit."""
        for tp in tps:
            self._next.pop(tp, None)
            self._rewinding.pop(tp, None)

    def topic_partitions(self) -> list[TopicPartition]:
        return list(self._next.keys() | self._rewinding.keys())
