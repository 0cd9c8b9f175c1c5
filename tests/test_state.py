"""segmentation/state.py: the window of event digests a customer's state remembers (packed
bytes searched in place) behaves like the list it replaced, and reads the earlier formats."""

from __future__ import annotations

import base64
import struct

import orjson
from hypothesis import given
from hypothesis import strategies as st

from segmentation.state import DIGEST_BYTES, SEEN_LIMIT, CustomerState

digests = st.integers(min_value=0, max_value=2**63 - 1)


@given(st.lists(st.tuples(st.booleans(), digests), max_size=200), st.integers(1, 40))
def test_the_window_answers_like_a_list_of_the_latest_digests(
    steps: list[tuple[bool, int]], limit: int
) -> None:
    """Against a plain list model, with a small cap so that eviction is exercised (the cap is
    the module's constant, scaled down here by trimming the model alike)."""
    import segmentation.state as state_mod

    original = state_mod.SEEN_LIMIT
    state_mod.SEEN_LIMIT = limit  # type: ignore[misc]
    try:
        state = CustomerState(customer_id="c")
        model: list[int] = []
        for remember, digest in steps:
            assert state.has_seen(digest) == (digest in model)
            if remember:
                state.remember(digest)
                model.append(digest)
                del model[: max(0, len(model) - limit)]
            assert state.seen_digests() == model
    finally:
        state_mod.SEEN_LIMIT = original  # type: ignore[misc]


def test_a_match_straddling_two_digests_is_not_a_digest_seen() -> None:
    state = CustomerState(customer_id="c")
    state.remember(0x00000000_000000AA)
    state.remember(0xBBCCDDEE_FF000000)
    # The last 4 bytes of the first and the first 4 of the second: present, but unaligned.
    straddling = int.from_bytes(bytes(state.seen[4:12]), "big")
    assert bytes(state.seen).find(straddling.to_bytes(DIGEST_BYTES, "big")) == 4
    assert not state.has_seen(straddling)
    assert state.has_seen(0xBBCCDDEE_FF000000)


def test_the_default_cap_keeps_the_latest_digests() -> None:
    state = CustomerState(customer_id="c")
    for digest in range(SEEN_LIMIT + 3):
        state.remember(digest)
    assert len(state.seen) == SEEN_LIMIT * DIGEST_BYTES
    assert not state.has_seen(2)
    assert state.has_seen(3) and state.has_seen(SEEN_LIMIT + 2)


@given(st.lists(digests, max_size=50))
def test_the_stored_format_is_unchanged_and_the_first_one_still_reads(values: list[int]) -> None:
    state = CustomerState(customer_id="c")
    for digest in values:
        state.remember(digest)
    doc = orjson.loads(state.to_bytes())
    # Base64 of 8 big-endian bytes per digest, as written before the window was packed.
    assert doc["S"] == base64.b64encode(struct.pack(f">{len(values)}Q", *values)).decode()
    assert CustomerState.from_bytes(state.to_bytes()) == state
    # The first format: a JSON list of ints under "s".
    del doc["S"]
    doc["s"] = values
    assert CustomerState.from_dict(doc).seen_digests() == values
