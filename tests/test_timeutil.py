"""The event-time helpers against the standard library's own formatting and parsing."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from segmentation.timeutil import parse_rfc3339, to_rfc3339

# Year 1 to year 9999 in epoch milliseconds: what datetime can represent.
FIRST_MS = -62_135_596_800_000
LAST_MS = 253_402_300_799_999


def reference_rfc3339(ms: int) -> str:
    """The formatting `to_rfc3339` replaced (a datetime per call)."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


# Within about 139 years of 1970 the float seconds the old formatting went through are exact to
# well under a microsecond; further out they are not, and it printed some instants 1 ms early
# (hypothesis found 2305-01-29T..46.748 printed as .747). The integer formatting is exact
# everywhere: the round trip below covers the whole range.
FLOAT_EXACT_MS = 2**42


@given(st.integers(min_value=-FLOAT_EXACT_MS, max_value=FLOAT_EXACT_MS))
def test_to_rfc3339_formats_as_datetime_did(ms: int) -> None:
    assert to_rfc3339(ms) == reference_rfc3339(ms)


@given(st.integers(min_value=FIRST_MS, max_value=LAST_MS))
def test_to_rfc3339_round_trips(ms: int) -> None:
    assert parse_rfc3339(to_rfc3339(ms)) == ms


def test_to_rfc3339_edges() -> None:
    assert to_rfc3339(0) == "1970-01-01T00:00:00.000+00:00"
    assert to_rfc3339(-1) == "1969-12-31T23:59:59.999+00:00"
    assert to_rfc3339(1_709_164_800_000) == "2024-02-29T00:00:00.000+00:00"
    assert to_rfc3339(LAST_MS) == "9999-12-31T23:59:59.999+00:00"
