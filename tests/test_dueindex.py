"""The due-time index: what comes out is each customer's latest due time, in time order, and its
size follows the customers scheduled, not the events that re-scheduled them."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from segmentation.dueindex import COMPACT_SLACK, DueIndex

pushes = st.lists(st.tuples(st.integers(0, 100), st.sampled_from("abcdefgh")), max_size=200)


@settings(max_examples=300, deadline=None)
@given(pushes, st.integers(0, 100))
def test_pop_due_yields_each_customers_latest_due_time_in_order(
    scheduled: list[tuple[int, str]], until: int
) -> None:
    index = DueIndex()
    latest: dict[str, int] = {}
    for due, customer in scheduled:
        index.push(0, due, customer)
        latest[customer] = due
    popped = []
    while (entry := index.pop_due(0, until)) is not None:
        popped.append(entry)
    expected = sorted((due, c) for c, due in latest.items() if due <= until)
    assert popped == expected
    assert index.scheduled(0) == sum(1 for due in latest.values() if due > until)


def test_the_heap_follows_the_customers_not_the_events() -> None:
    index = DueIndex()
    customers = [f"c{i}" for i in range(100)]
    for step in range(1000):  # every customer re-scheduled 1,000 times
        for customer in customers:
            index.push(0, 10_000 + step, customer)
    assert index.scheduled(0) == len(customers)
    assert index.size(0) <= 2 * len(customers) + COMPACT_SLACK + 1


def test_an_unchanged_due_time_is_not_pushed_again() -> None:
    index = DueIndex()
    index.push(0, 5, "a")
    index.push(0, 5, "a")
    assert index.size(0) == 1
    assert index.pop_due(0, 10) == (5, "a")
    assert index.pop_due(0, 10) is None


def test_build_and_drop() -> None:
    index = DueIndex()
    index.build(3, [(7, "a"), (3, "b")])
    assert index.built(3) and index.next_due(3) == 3
    index.drop([3])
    assert not index.built(3) and index.pop_due(3, 100) is None
