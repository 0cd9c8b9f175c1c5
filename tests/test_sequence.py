"""The offset sequence check (streams/sequence.py): a hole in the offsets received is sought back
once; records fetched before the seek took effect are dropped; a hole that comes again is real."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.sequence import REWIND_TIMEOUT_S, Decision, OffsetSequence, Verdict

TP = ("purchases", 0)


def verdicts(seq: OffsetSequence, offsets: list[int], start: int | None = 0) -> list[Verdict]:
    return [seq.check(TP, o, start).verdict for o in offsets]


def test_records_in_sequence_from_the_committed_offset_are_accepted() -> None:
    seq = OffsetSequence()
    assert verdicts(seq, [5, 6, 7], start=5) == [Verdict.ACCEPT] * 3


def test_a_first_record_past_the_committed_offset_seeks_back_to_it() -> None:
    # The group reset case: committed 0, the first record the agent sees is 2000.
    seq = OffsetSequence()
    assert seq.check(TP, 2000, 0) == Decision(Verdict.SEEK, 0)
    # Records fetched before the seek took effect: dropped, not acknowledged.
    assert verdicts(seq, [2001, 2002]) == [Verdict.DROP, Verdict.DROP]
    # The redelivery from the expected offset: back in sequence.
    assert verdicts(seq, [0, 1, 2]) == [Verdict.ACCEPT] * 3


def test_a_hole_in_the_middle_seeks_back_to_the_first_missing_offset() -> None:
    seq = OffsetSequence()
    assert verdicts(seq, [0, 1, 2]) == [Verdict.ACCEPT] * 3
    assert seq.check(TP, 10, 0) == Decision(Verdict.SEEK, 3)
    assert verdicts(seq, [11, 3, 4]) == [Verdict.DROP, Verdict.ACCEPT, Verdict.ACCEPT]


def test_a_hole_that_comes_again_after_the_seek_is_real_and_accepted() -> None:
    # Transaction markers, compaction, or a log start moved by retention: the offsets are gone.
    seq = OffsetSequence()
    assert verdicts(seq, [0, 1]) == [Verdict.ACCEPT] * 2
    assert seq.check(TP, 5, 0) == Decision(Verdict.SEEK, 2)
    assert verdicts(seq, [6, 7]) == [Verdict.DROP, Verdict.DROP]
    assert seq.check(TP, 5, 0) == Decision(Verdict.HOLE, 2)
    assert verdicts(seq, [6, 7, 8]) == [Verdict.ACCEPT] * 3


def test_a_seek_that_never_takes_effect_gives_way_to_the_hole_after_the_timeout() -> None:
    seq = OffsetSequence()
    assert seq.check(TP, 3, 0, now_s=100.0) == Decision(Verdict.SEEK, 0)
    assert seq.check(TP, 4, 0, now_s=100.0 + REWIND_TIMEOUT_S).verdict is Verdict.DROP
    assert seq.check(TP, 5, 0, now_s=101.0 + REWIND_TIMEOUT_S) == Decision(Verdict.HOLE, 0)
    assert seq.check(TP, 6, 0, now_s=102.0 + REWIND_TIMEOUT_S).verdict is Verdict.ACCEPT


def test_give_up_accepts_the_hole_when_the_seek_failed() -> None:
    seq = OffsetSequence()
    assert seq.check(TP, 3, 0).verdict is Verdict.SEEK
    seq.give_up(TP, 3)
    assert verdicts(seq, [4, 5]) == [Verdict.ACCEPT] * 2


def test_a_redelivered_earlier_offset_is_accepted_and_does_not_move_the_sequence_back() -> None:
    seq = OffsetSequence()
    assert verdicts(seq, [0, 1, 2, 1, 3]) == [Verdict.ACCEPT] * 5
    assert seq.check(TP, 4, 0).verdict is Verdict.ACCEPT


def test_an_unknown_start_takes_the_first_record_as_the_sequence() -> None:
    seq = OffsetSequence()
    assert verdicts(seq, [100, 101], start=None) == [Verdict.ACCEPT] * 2
    assert seq.check(TP, 103, None) == Decision(Verdict.SEEK, 102)


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
    st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=40, unique=True),
)
def test_every_offset_of_a_log_is_processed_whatever_the_consumer_skips(kept: list[int]) -> None:
    """A consumer that skips records (those not in `kept`) on its first pass but delivers the
    whole log from where it is sought: every offset from 0 to the end is accepted once, in
    order."""
    log = list(range(max(kept) + 1))
    seq = OffsetSequence()
    first_pass = sorted(kept)
    processed: list[int] = []
    delivered = first_pass
    for _ in range(len(log) + 2):
        sought = None
        for offset in delivered:
            decision = seq.check(TP, offset, 0)
            if decision.verdict in (Verdict.ACCEPT, Verdict.HOLE):
                processed.append(offset)
            elif decision.verdict is Verdict.SEEK and sought is None:
                sought = decision.offset
        if sought is None:
            break
        delivered = log[sought:]  # after a seek the broker delivers everything from there
    assert processed == log
