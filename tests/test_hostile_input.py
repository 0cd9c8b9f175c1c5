"""Hostile input (issue 6, scenario 4): whatever a producer publishes on an input topic, the
worker stays up, every unusable record is in `dead-letters` with a reason, the good records
around it are used, and tierstream_events_rejected_total equals the dead letters.

Pure level: a hypothesis property over `parse_event` for every input topic (invalid JSON, wrong
types, missing and extra fields, non-UTF-8 bytes, NaN/inf/negative amounts, 1970/2200
timestamps, enormous ids, control characters...): it returns a valid `InputEvent` (which the pure
core can then fold) or raises `InvalidEvent` with a documented reason, never anything else.
tests/test_events.py pins the reason of each hand-picked case; this module does not repeat them.

End to end (`e2e`): one worker, a few hundred records drawn from hypothesis strategies (seeded:
`derandomize`), bad and good interleaved on the same customers' partitions, plus 1 MB records
(bad ones, whose letters must be cut to fit, and a good one), published raw in one go.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from segmentation.bgnbd import DEFAULT_PARAMS
from segmentation.errors import InvalidEvent
from segmentation.events import (
    DEFAULT_MAX_FUTURE_MS,
    EMAIL_CLICKS,
    EMAIL_OPENS,
    INPUT_TOPICS,
    MAX_AMOUNT,
    MAX_ID_LENGTH,
    MIN_EVENT_TIME_MS,
    PURCHASE_KINDS,
    PURCHASES,
    SUPPRESSION_CHANNELS,
    SUPPRESSION_KINDS,
    SUPPRESSIONS,
    WECHAT,
    WECHAT_KINDS,
    InputEvent,
    parse_event,
)
from segmentation.rules import default_rules
from segmentation.state import CustomerState
from segmentation.step import apply_event
from segmentation.timeutil import DAY_MS, to_rfc3339

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
NOW_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z: the pure tests' wall clock
MB = 1_000_000
RULES = default_rules()
REASONS: frozenset[str] = frozenset(
    json.loads((ROOT / "schemas" / "dead-letters.schema.json").read_text("utf-8"))["properties"][
        "reason"
    ]["examples"]
)
# Unicode category Cc: C0 controls, DEL and C1 controls.
CONTROL_CHARS = "".join(chr(c) for c in (*range(0x20), *range(0x7F, 0xA0)))
KNOWN_FIELDS = (
    "event_id",
    "customer_id",
    "occurred_at",
    "order_id",
    "amount",
    "currency",
    "kind",
    "channel",
    "message_id",
    "campaign_id",
    "url",
    "timezone",
)
REQUIRED: dict[str, tuple[str, ...]] = {
    PURCHASES: ("event_id", "customer_id", "occurred_at", "order_id", "amount"),
    EMAIL_OPENS: ("event_id", "customer_id", "occurred_at", "message_id"),
    EMAIL_CLICKS: ("event_id", "customer_id", "occurred_at", "message_id"),
    WECHAT: ("event_id", "customer_id", "occurred_at", "kind"),
    SUPPRESSIONS: ("event_id", "customer_id", "occurred_at", "kind"),
}
ALL_KINDS = sorted(PURCHASE_KINDS | WECHAT_KINDS | SUPPRESSION_KINDS)
JAN_1970_MS = 0
JAN_2200_MS = 7_258_118_400_000  # 2200-01-01T00:00:00Z

# ------------------------------------------------------------------------------ strategies

hostile_text = st.one_of(
    st.text(max_size=24),
    st.text(alphabet=st.sampled_from(CONTROL_CHARS + "aZ9-_ 客ü\u200b\ufeff\u2028"), max_size=12),
    st.sampled_from(
        [
            "",
            " ",
            "null",
            "NaN",
            "nan",
            "Infinity",
            "-Infinity",
            "inf",
            "-1",
            "-0",
            "1e400",
            "0x10",
            "1970-01-01T00:00:00Z",
            "2200-01-01T00:00:00Z",
            "2024-06-01T00:00:00",
            "\x00",
            "x" * (MAX_ID_LENGTH + 1),
            "x" * MAX_ID_LENGTH,
            "../../etc/passwd",
            "Asia/Shanghai",
            "__init__",
            "Factory",
        ]
    ),
)
edge_ints = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from(
        [
            0,
            -1,
            JAN_1970_MS,
            JAN_2200_MS,
            MIN_EVENT_TIME_MS - 1,
            MIN_EVENT_TIME_MS,
            NOW_MS,
            NOW_MS + DEFAULT_MAX_FUTURE_MS,
            NOW_MS + DEFAULT_MAX_FUTURE_MS + 1,
            2**63 - 1,
            -(2**63),
            2**64 - 1,
            int(MAX_AMOUNT),
            int(MAX_AMOUNT) + 1,
        ]
    ),
)
edge_floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([-0.0, 5e-324, 1.7976931348623157e308, 1e9, 1e9 + 0.01, -0.01, 1.7172e12]),
)
json_scalars = st.one_of(st.none(), st.booleans(), edge_ints, edge_floats, hostile_text)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)
OFFSETS = ["Z", "z", "+00:00", "+08:00", "-05:00", "+14:00", "-23:59", "+0100", ""]


@st.composite
def rfc3339_texts(draw: st.DrawFn) -> str:
    moment = draw(
        st.datetimes(min_value=datetime(1960, 1, 1), max_value=datetime(2300, 1, 1))  # noqa: DTZ001
    )
    fraction = draw(st.sampled_from(["", ".5", ".123", ".123456789", ".9999999999"]))
    separator = draw(st.sampled_from(["T", "T", "t", " "]))
    return (
        moment.strftime(f"%Y-%m-%d{separator}%H:%M:%S") + fraction + draw(st.sampled_from(OFFSETS))
    )


def amount_texts() -> st.SearchStrategy[str]:
    return st.decimals(
        min_value=-10, max_value=2 * MAX_AMOUNT, allow_nan=False, allow_infinity=False
    ).map(str)


FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "event_id": st.text(min_size=1, max_size=MAX_ID_LENGTH + 1) | json_values,
    "customer_id": st.text(min_size=1, max_size=MAX_ID_LENGTH + 1)
    | st.text(min_size=MAX_ID_LENGTH, max_size=5000)
    | json_values,
    "occurred_at": st.integers(min_value=MIN_EVENT_TIME_MS - DAY_MS, max_value=NOW_MS + 2 * DAY_MS)
    | rfc3339_texts()
    | json_values,
    "order_id": st.text(min_size=1, max_size=20) | json_values,
    "amount": amount_texts() | edge_floats | edge_ints | json_values,
    "currency": st.sampled_from(["USD", "usd", "EUR", "", "uſd"]) | json_values,
    "kind": st.sampled_from([*ALL_KINDS, "", "Purchase", "poke"]) | json_values,
    "channel": st.sampled_from(sorted(SUPPRESSION_CHANNELS)) | json_values,
    "message_id": st.text(min_size=1, max_size=20) | json_values,
    "campaign_id": st.text(max_size=20) | json_values,
    "url": hostile_text | json_values,
    "timezone": st.sampled_from(["Asia/Shanghai", "Europe/Berlin", "America", "Etc/GMT+14"])
    | json_values,
}
documents = st.builds(
    lambda known, extra: {**extra, **known},
    st.fixed_dictionaries({}, optional=FIELD_VALUES),
    st.dictionaries(st.text(max_size=10), json_values, max_size=3),
)


def _splice(raw: bytes, at: int, inserted: bytes) -> bytes:
    at = at % (len(raw) + 1)
    return raw[:at] + inserted + raw[at:]


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """A record value: a document (often close to a valid one), then maybe damaged."""
    raw = orjson.dumps(draw(documents))
    damage = draw(
        st.sampled_from(
            ["none", "none", "cut", "splice", "non_utf8", "literal", "bytes", "not_object", "deep"]
        )
    )
    if damage == "cut":
        return raw[: draw(st.integers(min_value=0, max_value=len(raw)))]
    if damage == "splice":
        junk = draw(st.binary(min_size=1, max_size=8))
        return _splice(raw, draw(st.integers(min_value=0)), junk)
    if damage == "non_utf8":
        bad = draw(st.sampled_from([b"\xff", b"\xfe", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80"]))
        return _splice(raw, draw(st.integers(min_value=0)), bad)
    if damage == "literal":
        literal = draw(
            st.sampled_from(
                [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1" * 40, b'"\\ud800"']
            )
        )
        return raw[:-1] + b',"amount":' + literal + b"}" if len(raw) > 2 else b"{" + literal
    if damage == "bytes":
        return draw(st.binary(max_size=64))
    if damage == "not_object":
        return orjson.dumps(draw(st.lists(json_values, max_size=3) | json_scalars))
    depth = draw(st.integers(min_value=1, max_value=5000))
    return b"[" * depth + b"]" * depth


def _valid_id(value: str | None) -> bool:
    return (
        isinstance(value, str)
        and 1 <= len(value) <= MAX_ID_LENGTH
        and not any(ch in CONTROL_CHARS for ch in value)
    )


def assert_usable(topic: str, event: InputEvent, now_ms: int = NOW_MS) -> None:
    """An accepted event is what the contract promises, and the pure core can fold it."""
    assert event.topic == topic
    assert _valid_id(event.event_id) and _valid_id(event.customer_id)
    event.customer_id.encode("utf-8")  # the table key: no lone surrogates
    assert MIN_EVENT_TIME_MS <= event.occurred_ms <= now_ms + DEFAULT_MAX_FUTURE_MS
    if topic == PURCHASES:
        assert event.kind in PURCHASE_KINDS and _valid_id(event.order_id)
        assert 0 <= event.amount_cents <= MAX_AMOUNT * 100
        assert event.channel is None or _valid_id(event.channel)
    elif topic in (EMAIL_OPENS, EMAIL_CLICKS):
        assert event.kind == topic
        assert event.campaign_id is None or _valid_id(event.campaign_id)
    elif topic == WECHAT:
        assert event.kind in WECHAT_KINDS
    else:
        assert event.kind in SUPPRESSION_KINDS and event.channel in SUPPRESSION_CHANNELS
    if event.timezone is not None:
        ZoneInfo(event.timezone)
    result = apply_event(None, event, RULES, DEFAULT_PARAMS)
    if result.state is not None:
        assert CustomerState.from_bytes(result.state.to_bytes()).customer_id == event.customer_id
        orjson.dumps(result.profile)
        for change in result.changes:
            orjson.dumps(change)


def outcome(topic: str, payload: bytes, now_ms: int = NOW_MS) -> InputEvent | InvalidEvent:
    """parse_event's answer; any exception other than InvalidEvent propagates (a crash)."""
    try:
        return parse_event(topic, payload, now_ms=now_ms)
    except InvalidEvent as exc:
        return exc


# ------------------------------------------------------------------------------ pure level


@given(topic=st.sampled_from(INPUT_TOPICS), payload=payloads())
@settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_parse_event_accepts_a_usable_event_or_rejects_with_a_reason(
    topic: str, payload: bytes
) -> None:
    result = outcome(topic, payload)
    if isinstance(result, InvalidEvent):
        assert result.reason in REASONS, result.reason
        assert result.detail.strip(), "a rejection must say what to fix"
        assert len(str(result)) < 1000, "the reason must not echo the payload"
    else:
        assert_usable(topic, result)


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid event for its topic with one field replaced by anything, or removed."""
    topic = draw(st.sampled_from(INPUT_TOPICS))
    doc: dict[str, Any] = {
        "event_id": "e-1",
        "customer_id": "c-1",
        "occurred_at": NOW_MS - DAY_MS,
        "order_id": "o-1",
        "amount": "12.50",
        "message_id": "m-1",
        "kind": {PURCHASES: "purchase", WECHAT: "follow", SUPPRESSIONS: "unsubscribe"}.get(
            topic, "x"
        ),
        "channel": "email",
    }
    assert isinstance(outcome(topic, orjson.dumps(doc)), InputEvent)
    field = draw(st.sampled_from(KNOWN_FIELDS))
    if draw(st.booleans()):
        doc.pop(field, None)
    else:
        doc[field] = draw(FIELD_VALUES[field])
    return topic, doc


@given(case=near_valid())
@settings(max_examples=400, deadline=None)
def test_one_hostile_field_in_a_valid_event(case: tuple[str, dict[str, Any]]) -> None:
    topic, doc = case
    result = outcome(topic, orjson.dumps(doc))
    if isinstance(result, InvalidEvent):
        assert result.reason in REASONS and result.detail.strip()
        field_names = {f for f in KNOWN_FIELDS if f"'{f}'" in result.detail}
        if result.reason in ("missing_field", "wrong_type"):
            assert field_names, f"the detail names the field: {result.detail}"
    else:
        assert_usable(topic, result)


def _one_mb_doc(**fields: Any) -> bytes:
    """A purchase of exactly 1 MB, padded by an unknown field (or the customer id)."""
    doc: dict[str, Any] = {
        "event_id": "big-1",
        "customer_id": "c-big",
        "occurred_at": NOW_MS - DAY_MS,
        "order_id": "o-big",
        "amount": "1.00",
        **fields,
    }
    pad = next(k for k, v in doc.items() if v == "")
    doc[pad] = "p" * (MB - len(orjson.dumps(doc)))
    raw = orjson.dumps(doc)
    assert len(raw) == MB
    return raw


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        pytest.param(b"\xff" * MB, "not_utf8", id="binary"),
        pytest.param(b"{" + b"x" * (MB - 1), "invalid_json", id="junk"),
        pytest.param(b'{"a":' * (MB // 5), "invalid_json", id="deep"),
        pytest.param(b"[" * (MB // 2) + b"]" * (MB // 2), "invalid_json", id="nested-arrays"),
        pytest.param(_one_mb_doc(customer_id=""), "invalid_value", id="enormous-customer-id"),
        pytest.param(_one_mb_doc(amount=""), "invalid_amount", id="enormous-amount-text"),
        pytest.param(_one_mb_doc(occurred_at=""), "bad_timestamp", id="enormous-timestamp"),
        pytest.param(
            _one_mb_doc(amount="0." + "0" * 10, padding=""), None, id="valid-with-padding"
        ),
        pytest.param(
            orjson.dumps({f"k{i}": i for i in range(90_000)}), "missing_field", id="many-fields"
        ),
    ],
)
def test_one_megabyte_payloads(payload: bytes, reason: str | None) -> None:
    assert len(payload) >= MB * 9 // 10
    result = outcome(PURCHASES, payload)
    if reason is None:
        assert isinstance(result, InputEvent)
        assert_usable(PURCHASES, result)
    else:
        assert isinstance(result, InvalidEvent)
        assert result.reason == reason
        assert len(str(result)) < 1000


@pytest.mark.parametrize("topic", INPUT_TOPICS)
@pytest.mark.parametrize(
    ("occurred_at", "reason"),
    [
        (JAN_1970_MS, "bad_timestamp"),
        (1000, "bad_timestamp"),
        ("1970-01-01T00:00:00Z", "bad_timestamp"),
        ("1970-01-01T08:00:00+08:00", "bad_timestamp"),
        (JAN_2200_MS, "future_timestamp"),
        ("2200-01-01T00:00:00Z", "future_timestamp"),
        ("2200-01-01T00:00:00-14:00", "future_timestamp"),
    ],
)
def test_timestamps_from_1970_and_2200_on_every_topic(
    topic: str, occurred_at: Any, reason: str
) -> None:
    doc = {
        "event_id": "e",
        "customer_id": "c",
        "occurred_at": occurred_at,
        "order_id": "o",
        "amount": 1,
        "message_id": "m",
        "kind": {PURCHASES: "purchase", WECHAT: "follow", SUPPRESSIONS: "erase"}.get(topic),
    }
    result = outcome(topic, orjson.dumps(doc))
    assert isinstance(result, InvalidEvent) and result.reason == reason


@pytest.mark.parametrize(
    "amount",
    [
        pytest.param("0." + "0" * 100_000 + "1", id="tiny-with-100k-digits"),
        pytest.param("0." + "9" * 5000, id="five-thousand-nines"),
        pytest.param(5e-324, id="subnormal"),
        pytest.param(-0.0, id="negative-zero-float"),
        pytest.param(999_999_999.995, id="just-under-the-cap"),
    ],
)
def test_extreme_but_valid_amounts_are_exact_cents(amount: Any) -> None:
    doc = {
        "event_id": "e",
        "customer_id": "c",
        "occurred_at": NOW_MS - DAY_MS,
        "order_id": "o",
        "amount": amount,
    }
    result = outcome(PURCHASES, orjson.dumps(doc))
    assert isinstance(result, InputEvent)
    assert_usable(PURCHASES, result)


# ------------------------------------------------------------------------------ end to end


def collect(strategy: st.SearchStrategy[T], count: int) -> list[T]:
    """`count` examples of a strategy, the same on every run (derandomized), for a test that
    publishes them all at once instead of running once per example."""
    drawn: list[T] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def draw(value: T) -> None:
        drawn.append(value)

    draw()
    return drawn


# Customers that good and bad records share (so they interleave on the same partitions).
CUSTOMERS = ("hx-0001", "hx-0002", "客户-7", "über straße", "a%b?c", "q" * MAX_ID_LENGTH, "c-7")
GOOD_FROM_MS = 1_672_531_200_000  # 2023-01-01
GOOD_TO_MS = 1_748_736_000_000  # 2025-06-01


@dataclass
class Record:
    topic: str
    key: bytes | None
    value: bytes | None
    reason: str | None = None  # None for a good record
    event: InputEvent | None = None
    partition: int = -1
    offset: int = -1


def _when(draw: st.DrawFn, ms: int) -> Any:
    style = draw(st.sampled_from(["ms", "utc", "offset"]))
    if style == "ms":
        return ms
    if style == "utc":
        return to_rfc3339(ms)
    hours = draw(st.integers(min_value=-12, max_value=14))
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(timezone(timedelta(hours=hours)))
    return moment.isoformat(timespec="milliseconds")


@st.composite
def good_documents(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid event (ids filled in later), with what the contract lets vary: number or text
    amounts, epoch ms or RFC 3339 with any offset, unknown extra fields of any shape."""
    topic = draw(st.sampled_from(INPUT_TOPICS))
    ms = draw(st.integers(min_value=GOOD_FROM_MS, max_value=GOOD_TO_MS))
    doc: dict[str, Any] = {
        "customer_id": draw(st.sampled_from(CUSTOMERS)),
        "occurred_at": _when(draw, ms),
    }
    if topic == PURCHASES:
        cents = draw(st.integers(min_value=0, max_value=10**7))
        doc["amount"] = draw(
            st.sampled_from([f"{cents // 100}.{cents % 100:02d}", cents / 100, str(cents // 100)])
        )
        if isinstance(doc["amount"], str) and "." not in doc["amount"]:
            doc["amount"] = int(doc["amount"])
        for name, values in (
            ("currency", ["USD", "usd"]),
            ("kind", ["purchase"]),
            ("channel", ["web", "wechat-shop"]),
        ):
            if draw(st.booleans()):
                doc[name] = draw(st.sampled_from(values))
    elif topic in (EMAIL_OPENS, EMAIL_CLICKS):
        doc["message_id"] = draw(st.text(min_size=1, max_size=20).filter(_valid_id))
        if draw(st.booleans()):
            doc["campaign_id"] = "spring"
    elif topic == WECHAT:
        doc["kind"] = draw(st.sampled_from(sorted(WECHAT_KINDS)))
    else:
        doc["kind"] = draw(st.sampled_from(["unsubscribe", "complaint", "resubscribe"]))
        doc["channel"] = draw(st.sampled_from(sorted(SUPPRESSION_CHANNELS)))
    if draw(st.booleans()):
        doc["timezone"] = draw(st.sampled_from(["Asia/Shanghai", "Mars/Base", 8, None]))
    extra = draw(
        st.dictionaries(
            st.text(max_size=8).filter(lambda k: k not in KNOWN_FIELDS), json_values, max_size=3
        )
    )
    return topic, {**extra, **doc}


def _break(draw: st.DrawFn, topic: str, doc: dict[str, Any]) -> bytes | None:
    """The document made unusable, in one of the ways the issue lists."""
    how = draw(
        st.sampled_from(
            [
                "invalid_json",
                "non_utf8",
                "binary",
                "missing",
                "wrong_type",
                "amount",
                "1970",
                "2200",
                "enormous_id",
                "control_chars",
                "unknown_kind",
                "not_object",
                "tombstone",
            ]
        )
    )
    raw = orjson.dumps(doc)
    if how == "invalid_json":
        return raw[: draw(st.integers(min_value=0, max_value=len(raw) - 1))]
    if how == "non_utf8":
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"]))
        at = raw.index(b'"customer_id":"') + len(b'"customer_id":"')
        return raw[:at] + bad + raw[at:]
    if how == "binary":
        return draw(st.binary(min_size=1, max_size=200).filter(lambda b: not b.isascii()))
    if how == "tombstone":
        return None
    if how == "not_object":
        return orjson.dumps(draw(st.lists(json_scalars, max_size=3) | json_scalars))
    broken = dict(doc)
    if how == "missing":
        broken.pop(draw(st.sampled_from(REQUIRED[topic])))
    elif how == "wrong_type":
        field = draw(st.sampled_from(REQUIRED[topic]))
        non_text: st.SearchStrategy[Any] = (
            st.booleans() | st.lists(json_scalars, max_size=2) | st.just({"x": 1})
        )
        if field not in ("occurred_at", "amount"):  # numbers are valid there
            non_text = non_text | st.integers() | st.floats(allow_nan=False)
        broken[field] = draw(non_text)
    elif how == "amount":
        if topic != PURCHASES:
            return raw[:-1] + b',"customer_id":' + orjson.dumps(draw(st.integers())) + b"}"
        literal = draw(
            st.sampled_from(
                [b"NaN", b"Infinity", b"-Infinity", b'"NaN"', b'"inf"', b"-0.01", b'"-5"', b"1e400"]
            )
        )
        return raw[:-1] + b',"amount":' + literal + b"}"
    elif how == "1970":
        broken["occurred_at"] = draw(
            st.sampled_from(
                [0, 1000, 86_400_000, "1970-01-01T00:00:00Z", "1970-06-01T12:00:00+08:00"]
            )
        )
    elif how == "2200":
        broken["occurred_at"] = draw(
            st.sampled_from([JAN_2200_MS, "2200-01-01T00:00:00Z", "2199-12-31T23:00:00-14:00"])
        )
    elif how == "enormous_id":
        size = draw(st.integers(min_value=MAX_ID_LENGTH + 1, max_value=200_000))
        field = draw(st.sampled_from(["customer_id", "event_id"]))
        broken[field] = draw(st.sampled_from(["x", "客", "\u00e9"])) * size
    elif how == "control_chars":
        field = draw(st.sampled_from(["customer_id", "event_id"]))
        char = draw(st.sampled_from(CONTROL_CHARS))
        text = str(broken[field]) if field in broken else "id"
        at = draw(st.integers(min_value=0, max_value=len(text)))
        broken[field] = text[:at] + char + text[at:]
    else:  # unknown_kind
        broken["kind"] = draw(st.sampled_from(["poke", "Purchase", "gift", ""]))
        if topic in (EMAIL_OPENS, EMAIL_CLICKS):
            broken["customer_id"] = ""  # email topics ignore a kind: make it bad another way
    return orjson.dumps(broken)


@st.composite
def bad_records(draw: st.DrawFn) -> tuple[str, bytes | None, bytes | None]:
    topic, doc = draw(good_documents())
    doc = {"event_id": "bad", **doc}
    if topic == PURCHASES:
        doc["order_id"] = "o-bad"
    key = draw(st.sampled_from(["customer", "customer", "customer", "none", "binary", "long"]))
    keys: dict[str, bytes | None] = {
        "customer": str(doc["customer_id"]).encode(),
        "none": None,
        "binary": b"\xff\xfe" + draw(st.binary(max_size=16)),
        "long": b"k" * 3000,
    }
    value = _break(draw, topic, doc)
    if value is None and keys[key] is None:  # Kafka wants a key or a value
        key = "customer"
    return topic, keys[key], value


def _wall_ms() -> int:
    return int(time.time() * 1000)


def expected_reason(topic: str, value: bytes | None) -> str | None:
    if value is None:
        return "empty_value"
    result = outcome(topic, value, _wall_ms())
    return result.reason if isinstance(result, InvalidEvent) else None


def listed_bad_records() -> list[tuple[str, bytes | None, bytes]]:
    """The issue's list, each at least once whatever the strategies drew: 1970 and 2200 on every
    topic, NaN/inf/negative amounts, enormous customer ids, control characters."""
    out: list[tuple[str, bytes | None, bytes]] = []
    kinds = {PURCHASES: "purchase", WECHAT: "follow", SUPPRESSIONS: "unsubscribe"}
    for topic in INPUT_TOPICS:
        base = {
            "event_id": "listed",
            "customer_id": "c-7",
            "occurred_at": GOOD_TO_MS,
            "order_id": "o-listed",
            "amount": "1.00",
            "message_id": "m-listed",
            "kind": kinds.get(topic),
            "channel": "email",
        }
        for changes in (
            {"occurred_at": JAN_1970_MS},
            {"occurred_at": "1970-01-01T00:00:00Z"},
            {"occurred_at": JAN_2200_MS},
            {"occurred_at": "2200-01-01T00:00:00+08:00"},
            {"customer_id": "9" * 300_000},
            {"customer_id": "c-7\x00"},
            {"event_id": "e\u0085"},
        ):
            out.append((topic, b"c-7", orjson.dumps({**base, **changes})))
        if topic == PURCHASES:
            raw = orjson.dumps(base)
            for literal in (b"NaN", b"Infinity", b"-Infinity", b'"NaN"', b'"inf"', b"-12.5"):
                out.append((topic, b"c-7", raw[:-1] + b',"amount":' + literal + b"}"))
    return out


def build_records() -> list[Record]:
    """Bad and good records interleaved, 1 MB ones among them, a good one last."""
    good = collect(good_documents(), 120)
    bad = collect(bad_records(), 220)
    records: list[Record] = []
    for index, (topic, doc) in enumerate(good):
        doc = {"event_id": f"good-{index}", **doc}
        if topic == PURCHASES:
            doc["order_id"] = f"order-{index}"
        value = orjson.dumps(doc)
        key = None if index % 9 == 0 else doc["customer_id"].encode()
        event = outcome(topic, value, _wall_ms())
        assert isinstance(event, InputEvent), (doc, event)
        records.append(Record(topic, key, value, event=event))
    for topic, key, bad_value in [*bad, *listed_bad_records()]:
        reason = expected_reason(topic, bad_value)
        assert reason is not None, (topic, bad_value)
        records.append(Record(topic, key, bad_value, reason=reason))
    # Interleave deterministically: bad and good records alternate irregularly.
    records.sort(key=lambda r: hashlib.sha256(repr((r.topic, r.key, r.value)).encode()).digest())
    big_id = _one_mb_doc(customer_id="", occurred_at=GOOD_TO_MS)
    big_good = _one_mb_doc(
        customer_id="big-spender", order_id="big-order", occurred_at=GOOD_TO_MS, padding=""
    )
    huge: list[Record] = [
        Record(PURCHASES, b"hx-0001", big_id, reason="invalid_value"),
        Record(EMAIL_OPENS, None, b"\xff" * MB, reason="not_utf8"),
        Record(WECHAT, b"hx-0002", b"{" + b"\x01" * (MB - 1), reason="invalid_json"),
    ]
    good_big_event = outcome(PURCHASES, big_good, _wall_ms())
    assert isinstance(good_big_event, InputEvent)
    huge.append(Record(PURCHASES, b"big-spender", big_good, event=good_big_event))
    for position, record in zip((10, 100, 200, 300), huge, strict=True):
        records.insert(position, record)
    last = orjson.dumps(
        {
            "event_id": "last",
            "customer_id": "after-the-storm",
            "occurred_at": GOOD_TO_MS,
            "order_id": "after-1",
            "amount": "42.00",
        }
    )
    last_event = outcome(PURCHASES, last, _wall_ms())
    assert isinstance(last_event, InputEvent)
    records.append(Record(PURCHASES, b"after-the-storm", last, event=last_event))
    return records


async def _publish(bootstrap: str, records: Sequence[Record]) -> None:
    """Publish as they are, and note where each landed (dead letters are matched by it)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=2 * MB)
    await producer.start()
    try:
        futures = [await producer.send(r.topic, r.value, key=r.key) for r in records]
        for record, future in zip(records, futures, strict=True):
            metadata = await future
            record.partition, record.offset = metadata.partition, metadata.offset
    finally:
        await producer.stop()


async def _read(bootstrap: str, topic: str, at_least: int, timeout: float) -> list[Any]:
    """Every record of `topic` (keys left as bytes: a dead letter keeps a non-UTF-8 key)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * MB,
        fetch_max_bytes=16 * MB,
    )
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        quiet = 0
        while time.monotonic() < deadline and (len(out) < at_least or quiet < 2):
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            got = [record for records in batch.values() for record in records]
            out += got
            quiet = 0 if got else quiet + 1
        return out
    finally:
        await consumer.stop()


def eventually(check: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.5)


@dataclass
class Run:
    records: list[Record]
    letters: list[dict[str, Any]]
    worker: Any
    metrics: dict[str, float]


@pytest.fixture(scope="module")
def storm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    from tests.e2e_support import fresh_stack, start_worker, wait_consumed

    records = build_records()
    with fresh_stack() as stack:
        worker = start_worker(stack, tmp_path_factory.mktemp("hostile"), "worker")
        try:
            asyncio.run(_publish(stack.bootstrap, records))
            wait_consumed(worker, len(records), timeout=150)
            bad = sum(r.reason is not None for r in records)
            raw = asyncio.run(_read(stack.bootstrap, "dead-letters", bad, timeout=60))
            letters = [orjson.loads(r.value) for r in raw]
            yield Run(records, letters, worker, worker.metrics())
        finally:
            worker.stop()


def _expected_profiles(records: Sequence[Record]) -> dict[str, tuple[int, int, int]]:
    """customer -> (orders, net cents, distinct purchase days) from the good records."""
    orders: dict[str, list[InputEvent]] = {}
    for record in records:
        if record.event is not None:
            orders.setdefault(record.event.customer_id, [])
            if record.event.topic == PURCHASES:
                orders[record.event.customer_id].append(record.event)
    return {
        customer: (
            len(events),
            sum(e.amount_cents for e in events),
            len({e.occurred_ms // DAY_MS for e in events}),
        )
        for customer, events in orders.items()
    }


@pytest.mark.e2e
def test_the_worker_stays_up(storm: Run) -> None:
    assert storm.worker.proc is not None and storm.worker.proc.poll() is None
    status, body = storm.worker.get("/health")
    assert status == 200, body
    kinds = {(r.reason is None, r.value is not None and len(r.value) >= MB) for r in storm.records}
    assert kinds == {(True, True), (True, False), (False, True), (False, False)}
    assert {r.topic for r in storm.records if r.reason} == set(INPUT_TOPICS)
    assert len({r.reason for r in storm.records if r.reason}) >= 10
    log = storm.worker.log_path.read_text("utf-8", errors="replace")
    assert "unexpected error" not in log and "could not dead-letter" not in log


@pytest.mark.e2e
def test_every_bad_record_is_a_dead_letter_with_a_reason(storm: Run) -> None:
    by_origin = {(d["source_topic"], d["partition"], d["offset"]): d for d in storm.letters}
    assert len(by_origin) == len(storm.letters), "one letter per record"
    bad = {(r.topic, r.partition, r.offset): r for r in storm.records if r.reason is not None}
    assert set(by_origin) == set(bad), "exactly the bad records are dead-lettered"
    for origin, record in bad.items():
        letter, reason = by_origin[origin], str(record.reason)
        assert letter["reason"] == reason, (origin, letter["error"])
        assert letter["error"].startswith(reason + ": ")
        assert len(letter["error"]) > len(reason) + 2
        original = record.value or b""
        kept = base64.b64decode(letter["payload"], validate=True)
        assert letter["payload_bytes"] == len(original)
        assert letter["payload_sha256"] == hashlib.sha256(original).hexdigest()
        assert letter["payload_truncated"] is (len(original) >= MB)
        if letter["payload_truncated"]:
            assert original.startswith(kept) and len(kept) > MB // 2
        else:
            assert kept == original
        if record.key:
            assert record.key.startswith(base64.b64decode(letter["key"]))
        else:
            assert letter["key"] is None
        assert letter["received_at"]


@pytest.mark.e2e
def test_rejected_counter_equals_the_dead_letters(storm: Run) -> None:
    bad = sum(r.reason is not None for r in storm.records)
    assert storm.metrics["tierstream_events_rejected_total"] == len(storm.letters) == bad
    assert storm.metrics["tierstream_dead_letters_total"] == bad
    for reason in {r.reason for r in storm.records if r.reason}:
        expected = sum(r.reason == reason for r in storm.records)
        counted = sum(
            value
            for name, value in storm.metrics.items()
            if name.startswith("tierstream_events_rejected_total{") and f"reason={reason}," in name
        )
        assert counted == expected, reason


@pytest.mark.e2e
def test_good_records_around_the_bad_ones_are_used(storm: Run) -> None:
    from tests.e2e_support import profile

    expected = _expected_profiles(storm.records)
    assert {"big-spender", "after-the-storm"} <= set(expected)
    assert sum(orders > 1 for orders, _, _ in expected.values()) >= 3

    def matches(customer: str) -> dict[str, Any] | None:
        status, body = profile(storm.worker, urllib.parse.quote(customer, safe=""))
        if status != 200 or body is None:
            return None
        orders, cents, _ = expected[customer]
        rfm = body["rfm"]
        if (rfm["frequency"], round(rfm["monetary"] * 100)) != (orders, cents):
            return None
        return body

    for customer, (orders, _, days) in expected.items():
        body = eventually(partial(matches, customer), 60, f"the profile of {customer!r}")
        assert body["customer_id"] == customer
        if orders:
            assert body["btyd"]["x"] == days - 1
            assert body["stage"] != "prospect"
        else:
            assert body["first_purchase_at"] is None
