"""The start-of-assignment offset check (streams/sequence.py): a first record past the committed
offset seeks the consumer back (again while records past it keep coming); records fetched before
the seek took effect are dropped; a hole that will not go away is accepted after a timeout; holes
later in the partition are left to the consumer."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.sequence import RESEEK_S, REWIND_TIMEOUT_S, Decision, OffsetSequence, Verdict

TP = ("purchases", 0)


def verdicts(
    seq: OffsetSequence, offsets: list[int], start: int | None = 0, now_s: float = 0.0
) -> list[Verdict]:
    return [seq.check(TP, o, start, now_s).verdict for o in offsets]


def test_records_from_the_committed_offset_are_accepted() -> None:
    seq = OffsetSequence()
    assert verdicts(seq, [5, 6, 7], start=5) == [Verdict.ACCEPT] * 3


def test_a_first_record_before_the_committed_offset_is_accepted() -> None:
    # A redelivery of earlier records (Faust seeking to an older position): nothing is missing.
    seq = OffsetSequence()
    assert verdicts(seq, [3, 4], start=5) == [Verdict.ACCEPT] * 2


def test_a_first_record_past_the_committed_offset_seeks_back_to_it() -> None:
    # The group reset case: committed 0, the first record the agent sees is 295.
    seq = OffsetSequence()
    assert seq.check(TP, 295, 0) == Decision(Verdict.SEEK, 0)
    # Records fetched before the seek took effect: dropped, not acknowledged.
    assert verdicts(seq, [296, 297, 398]) == [Verdict.DROP] * 3
    # The redelivery from the committed offset: started.
    assert verdicts(seq, [0, 1, 2]) == [Verdict.ACCEPT] * 3


def test_the_seek_is_repeated_while_records_past_the_start_keep_coming() -> None:
    # Faust may seek the partition itself after its recovery, over our seek.
    seq = OffsetSequence()
    assert seq.check(TP, 295, 0, now_s=10.0).verdict is Verdict.SEEK
    assert seq.check(TP, 398, 0, now_s=10.0 + RESEEK_S / 2).verdict is Verdict.DROP
    assert seq.check(TP, 399, 0, now_s=10.0 + RESEEK_S) == Decision(Verdict.SEEK, 0)
    assert seq.check(TP, 400, 0, now_s=10.5 + RESEEK_S).verdict is Verdict.DROP
    assert seq.check(TP, 0, 0, now_s=11.0 + RESEEK_S).verdict is Verdict.ACCEPT


def test_a_timer_repeats_the_seek_when_nothing_of_the_partition_comes() -> None:
    # The first seek's records were all dropped by the fetch loop: no record arrives at all.
    seq = OffsetSequence()
    assert seq.check(TP, 8, 0, now_s=10.0).verdict is Verdict.SEEK
    assert seq.check(TP, 9, 0, now_s=10.1).verdict is Verdict.DROP
    assert seq.due_seeks(10.0 + RESEEK_S / 2) == []
    assert seq.due_seeks(10.0 + RESEEK_S) == [(TP, 0)]
    assert seq.due_seeks(10.0 + RESEEK_S) == []  # not again before RESEEK_S more
    assert seq.check(TP, 0, 0, now_s=11.0 + RESEEK_S).verdict is Verdict.ACCEPT
    assert seq.due_seeks(100.0) == []


def test_a_hole_that_will_not_go_away_is_accepted_after_the_timeout() -> None:
    # A log start moved by retention, or a committed offset on a transaction marker.
    seq = OffsetSequence()
    assert seq.check(TP, 5, 0, now_s=100.0) == Decision(Verdict.SEEK, 0)
    assert seq.check(TP, 5, 0, now_s=100.0 + REWIND_TIMEOUT_S) == Decision(Verdict.HOLE, 0)
    assert verdicts(seq, [6, 7], now_s=101.0 + REWIND_TIMEOUT_S) == [Verdict.ACCEPT] * 2


def test_holes_after_the_start_are_left_to_the_consumer() -> None:
    # Transaction markers and aborted transactions leave holes on Kafka: no seek, no stall.
    seq = OffsetSequence()
    assert verdicts(seq, [0, 1, 3, 10, 11]) == [Verdict.ACCEPT] * 5


def test_give_up_accepts_the_hole_when_the_seek_failed() -> None:
    seq = OffsetSequence()
    assert seq.check(TP, 3, 0).verdict is Verdict.SEEK
    seq.give_up(TP)
    assert verdicts(seq, [4, 5]) == [Verdict.ACCEPT] * 2


def test_an_unknown_start_takes_the_first_record_as_the_start() -> None:
    seq = OffsetSequence()
    assert verdicts(seq, [100, 101, 105], start=None) == [Verdict.ACCEPT] * 3


def test_forget_starts_again_from_the_commit() -> None:
    seq = OffsetSequence()
    assert verdicts(seq, [0, 1, 2]) == [Verdict.ACCEPT] * 3
    assert seq.knows(TP)
    seq.forget([TP])
    assert not seq.knows(TP)
    assert seq.check(TP, 2, 1) == Decision(Verdict.SEEK, 1)
    assert seq.topic_partitions() == [TP]


def test_partitions_are_independent() -> None:
    seq = OffsetSequence()
    other = ("purchases", 1)
    assert seq.check(TP, 3, 0).verdict is Verdict.SEEK
    assert seq.check(other, 0, 0).verdict is Verdict.ACCEPT
    assert seq.check(TP, 0, 0).verdict is Verdict.ACCEPT


@given(
    skipped=st.integers(min_value=1, max_value=50),
    fetched_ahead=st.integers(min_value=0, max_value=30),
    overridden=st.integers(min_value=0, max_value=3),
)
def test_every_offset_from_the_commit_is_processed_once_in_order(
    skipped: int, fetched_ahead: int, overridden: int
) -> None:
    """The consumer skips the first `skipped` records after the commit; `fetched_ahead` more were
    already fetched when the seek is made; the next `overridden` seeks are undone (Faust seeking
    the partition itself). Every offset from the commit on is processed, once, in order."""
    log = list(range(skipped + fetched_ahead + 20))
    seq = OffsetSequence()
    processed: list[int] = []
    now = 0.0
    delivered = log[skipped:]
    undone = overridden
    for _ in range(overridden + 3):
        sought = False
        for offset in delivered:
            now += 0.001
            decision = seq.check(TP, offset, 0, now)
            if decision.verdict in (Verdict.ACCEPT, Verdict.HOLE):
                processed.append(offset)
            elif decision.verdict is Verdict.SEEK:
                sought = True
        if not sought:
            break
        if undone > 0:
            undone -= 1
            delivered = log[skipped + fetched_ahead :]  # the seek was overridden
            now += RESEEK_S
        else:
            delivered = log
    assert processed == log
