"""Encoded JSON that is kept (table states, outputs waiting for delivery) holds no slack."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

import segmentation.jsonbytes
import segmentation.state
from segmentation.jsonbytes import dumps
from segmentation.state import CustomerState, Order, event_digest

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=8) | st.dictionaries(st.text(max_size=10), children, max_size=8)
    ),
    max_leaves=60,
)


@given(json_values)
def test_dumps_encodes_like_orjson(value: Any) -> None:
    assert dumps(value) == orjson.dumps(value)


def allocated(make: Callable[[], bytes]) -> tuple[int, int]:
    """(bytes allocated for the result still alive, its length): what is still allocated by
    the lines that encode (here or in the state), so that an unrelated allocation the run
    happens to keep (a cache, another test's garbage collected meanwhile) is not counted. A
    first call outside the trace warms what the encoding itself caches."""
    make()
    tracemalloc.start()
    try:
        result = make()
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    encoders = snapshot.filter_traces(
        [
            tracemalloc.Filter(True, segmentation.jsonbytes.__file__),
            tracemalloc.Filter(True, segmentation.state.__file__),
        ]
    )
    return sum(stat.size for stat in encoders.statistics("filename")), len(result)


def big_state() -> CustomerState:
    state = CustomerState(customer_id="c-1")
    for i in range(40):
        state.orders[f"order-{i}"] = Order(at_ms=1_700_000_000_000 + i, cents=1999)
    for i in range(300):
        state.remember(event_digest(f"event-{i}"))
    return state


@pytest.mark.parametrize(
    "make",
    [
        lambda: dumps({"customer_id": "c-1", "tier": "vip", "stage": "active"}),
        lambda: dumps({"history": list(range(2000))}),
        lambda: big_state().to_bytes(),
    ],
    ids=["small record", "8 KB record", "customer state"],
)
def test_the_kept_bytes_are_allocated_at_their_length(make: Callable[[], bytes]) -> None:
    # orjson alone allocated 4 KB for the small record and ~32 KB for the 3.6 KB state.
    size, length = allocated(make)
    assert size <= length + 256, (size, length)
