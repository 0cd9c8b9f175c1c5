"""The event-time order across input topics and the prefix acks (streams/ordering.py), as plain
data with the clock passed in."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.ordering import BEHIND_GIVE_UP, InOrderAcks, PartitionOrder

TOPICS = ("purchases", "email-opens", "email-clicks", "wechat-interactions", "suppressions")
IDLE_MS = 1000
TP0 = ("purchases", 0)
NOW = 1_000_000


def order(max_held: int = 1_000_000) -> PartitionOrder[tuple[str, int]]:
    return PartitionOrder(TOPICS, idle_ms=IDLE_MS, max_held=max_held, now_ms=NOW)


# Per topic, the event times of its records in offset order (Kafka keeps each topic-partition in
# order; a producer that publishes in time order gives non-decreasing times).
histories = st.dictionaries(
    st.sampled_from(TOPICS),
    st.lists(st.integers(0, 50), min_size=1, max_size=30).map(sorted),
    min_size=1,
)


def interleave(history: dict[str, list[int]], seed: int) -> list[tuple[str, int, int]]:
    """One arbitrary interleaving of the topics, each kept in its own offset order."""
    rng = random.Random(seed)
    cursors = {topic: 0 for topic in history}
    out = []
    while cursors:
        topic = rng.choice(sorted(cursors))
        offset = cursors[topic]
        out.append((topic, history[topic][offset], offset))
        if offset + 1 == len(history[topic]):
            del cursors[topic]
        else:
            cursors[topic] = offset + 1
    return out


def fold(history: dict[str, list[int]], seed: int) -> list[tuple[str, int]]:
    """Feed one interleaving without the clock moving, then let every topic go quiet."""
    held = order()
    folded: list[tuple[str, int]] = []
    for topic, at, offset in interleave(history, seed):
        held.hold(topic, at, offset, (topic, offset), NOW)
        folded += held.release(NOW).items
    folded += held.release(NOW + IDLE_MS).items
    assert len(held) == 0
    return folded


@settings(max_examples=300, deadline=None)
@given(histories, st.integers(0, 2**32), st.integers(0, 2**32))
def test_every_interleaving_folds_in_one_order(
    history: dict[str, list[int]], seed_a: int, seed_b: int
) -> None:
    a, b = fold(history, seed_a), fold(history, seed_b)
    assert a == b
    # ...and that order is event time, ties by topic then offset.
    keyed = [(history[t][o], TOPICS.index(t), o) for t, o in a]
    assert keyed == sorted(keyed)
    assert len(a) == sum(len(times) for times in history.values())


@settings(max_examples=200, deadline=None)
@given(histories, st.integers(0, 2**32))
def test_a_record_is_released_only_once_every_other_topic_passed_it(
    history: dict[str, list[int]], seed: int
) -> None:
    held = order()
    high: dict[str, int] = {}
    for topic, at, offset in interleave(history, seed):
        held.hold(topic, at, offset, (topic, offset), NOW)
        high[topic] = max(high.get(topic, -1), at)
        for released_topic, released_offset in held.release(NOW).items:
            released_at = history[released_topic][released_offset]
            for other in TOPICS:
                if other != released_topic:
                    assert high.get(other, -1) >= released_at


def test_a_quiet_topic_holds_records_back_until_idle() -> None:
    held = order()
    held.hold("purchases", 10, 0, ("purchases", 0), NOW)
    assert held.release(NOW + IDLE_MS - 1).items == []
    assert held.release_possible(NOW + IDLE_MS)
    assert held.release(NOW + IDLE_MS).items == [("purchases", 0)]


def test_a_topic_that_keeps_arriving_is_not_idle() -> None:
    held = order()
    held.hold("purchases", 10, 0, ("purchases", 0), NOW)
    # email-opens has traffic, but its records are all older: the purchase still waits for it.
    held.hold("email-opens", 5, 0, ("email-opens", 0), NOW + IDLE_MS - 10)
    for other in ("email-clicks", "wechat-interactions", "suppressions"):
        held.note_arrival(other, NOW + IDLE_MS)
    assert held.release(NOW + IDLE_MS).items == []
    # Everything goes quiet: both come out, oldest first.
    assert held.release(NOW + 2 * IDLE_MS).items == [("email-opens", 0), ("purchases", 0)]


def test_equal_times_are_ordered_by_topic() -> None:
    held = order()
    held.hold("email-opens", 10, 0, ("email-opens", 0), NOW)
    for topic in ("purchases", "email-clicks", "wechat-interactions", "suppressions"):
        held.note_arrival(topic, NOW)
    # purchases (rank 0) could still bring a record at 10 that sorts first: wait.
    assert held.release(NOW).items == []
    held.hold("purchases", 10, 0, ("purchases", 0), NOW)
    assert held.release(NOW + IDLE_MS).items == [("purchases", 0), ("email-opens", 0)]


def test_an_explicit_clock_move_releases_everything_up_to_it() -> None:
    held = order()
    for offset, at in enumerate((5, 10, 20)):
        held.hold("purchases", at, offset, ("purchases", offset), NOW)
    released = held.release(NOW, until_ms=10)
    assert released.items == [("purchases", 0), ("purchases", 1)]
    assert held.oldest_ms() == 20


def test_too_many_held_records_are_released_and_counted() -> None:
    held = order(max_held=3)
    for offset in range(5):
        held.hold("purchases", offset, offset, ("purchases", offset), NOW)
    released = held.release(NOW)
    assert released.forced == 2
    assert released.items == [("purchases", 0), ("purchases", 1)]
    assert len(held) == 3


def test_zero_idle_folds_on_arrival() -> None:
    held: PartitionOrder[int] = PartitionOrder(TOPICS, idle_ms=0, max_held=10, now_ms=NOW)
    held.hold("email-clicks", 50, 0, 1, NOW)
    assert held.release(NOW).items == [1]


# -- acks ----------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 40), st.randoms(use_true_random=False))
def test_acks_are_always_a_prefix_of_the_arrivals(count: int, rng: random.Random) -> None:
    acks: InOrderAcks[int] = InOrderAcks()
    for offset in range(count):
        acks.arrived(TP0, offset, offset)
    finishing = list(range(count))
    rng.shuffle(finishing)
    acked: list[int] = []
    done: set[int] = set()
    for offset in finishing:
        done.add(offset)
        acked += acks.processed(TP0, offset)
        # Acked = the longest prefix of arrivals that is all processed.
        prefix = 0
        while prefix in done:
            prefix += 1
        assert acked == list(range(prefix))
        if prefix:
            assert acks.done_through[TP0] == prefix - 1
    assert acks.held() == 0


def test_acks_are_per_topic_partition_and_forgotten_on_revoke() -> None:
    acks: InOrderAcks[str] = InOrderAcks()
    acks.arrived(("a", 0), 7, "a7")
    acks.arrived(("b", 0), 3, "b3")
    acks.arrived(("a", 0), 8, "a8")
    assert acks.processed(("a", 0), 8) == []
    assert acks.processed(("b", 0), 3) == ["b3"]
    acks.forget([("a", 0)])
    assert acks.processed(("a", 0), 7) == []
    assert acks.held() == 0


def test_a_backlogged_topic_is_not_quiet() -> None:
    """No arrival for a while, but the broker holds records of it not received yet (a consumer
    behind on that topic): the purchase waits for them instead of jumping ahead."""
    held = order()
    held.hold("purchases", 10, 0, ("purchases", 0), NOW)
    backlogged = {"email-opens"}
    later = NOW + 5 * IDLE_MS
    assert held.release(later, behind=backlogged.__contains__).items == []
    held.hold("email-opens", 4, 0, ("email-opens", 0), later)
    backlogged.clear()
    assert held.release(later + IDLE_MS, behind=backlogged.__contains__).items == [
        ("email-opens", 0),
        ("purchases", 0),
    ]


def test_a_high_water_mark_that_never_fills_gives_way_in_the_end() -> None:
    held = order()
    held.hold("purchases", 10, 0, ("purchases", 0), NOW)
    always = {"email-opens"}.__contains__
    give_up = BEHIND_GIVE_UP * IDLE_MS
    assert held.release(NOW + give_up - 1, behind=always).items == []
    assert held.release(NOW + give_up, behind=always).items == [("purchases", 0)]


def test_after_a_pause_a_quiet_topic_waits_for_a_fetch_of_it() -> None:
    """Every topic idle, then a purchase arrives: the other topics' last high-water marks
    predate it, and their records published with it may be on their way (the chunked replay of
    the determinism test folded 3 engagement events late this way, 2026-12-07). The purchase
    waits until each quiet topic has been fetched since it arrived; then it goes."""
    held = order()
    resumed = NOW + 5 * IDLE_MS  # a pause: every topic idle for 5 idle periods
    held.hold("purchases", 10, 0, ("purchases", 0), resumed)
    polls = dict.fromkeys(TOPICS, NOW)  # last fetch answer per topic: before the purchase

    def polled_since(topic: str, since_ms: int) -> bool:
        return polls[topic] >= since_ms

    assert not held.release_possible(resumed + 1, polled_since=polled_since)
    assert held.release(resumed + 1, polled_since=polled_since).items == []
    # A fetch answer for the engagement topics came back, with a record of an earlier time.
    for topic in TOPICS:
        polls[topic] = resumed + 50
    held.hold("email-opens", 4, 0, ("email-opens", 0), resumed + 50)
    assert held.release(resumed + 60, polled_since=polled_since).items == [("email-opens", 0)]
    # The purchase then waits for email-opens to go quiet, as any record does.
    later = resumed + 50 + IDLE_MS
    assert held.release(later, polled_since=polled_since).items == [("purchases", 0)]


def test_without_a_pause_the_fetch_check_costs_nothing() -> None:
    """Live traffic on one topic: the first record after the pause waits for a fetch of the
    others; later records arrive while the partition is busy (not after a pause), and the
    others' fetch answers since then suffice, so each goes as soon as the others are quiet."""
    held = order()
    start = NOW + 5 * IDLE_MS
    held.hold("purchases", 10, 0, ("purchases", 0), start)
    polls = dict.fromkeys(TOPICS, start + 5)  # the next fetch answer, 5 ms later
    polled_since = lambda topic, since_ms: polls[topic] >= since_ms  # noqa: E731
    assert held.release(start + 5, polled_since=polled_since).items == [("purchases", 0)]
    held.hold("purchases", 11, 1, ("purchases", 1), start + 20)
    assert held.resumed_ms == start  # the partition was not idle: no new pause
    assert held.release(start + 20, polled_since=polled_since).items == [("purchases", 1)]
