"""Tests for segmentation.events.parse_event: every rejection has a stable reason code, and every
accepted value is decoded exactly (amounts to integer cents, timestamps to epoch milliseconds)."""

from __future__ import annotations

import sys
import unicodedata
from typing import Any

import orjson
import pytest

from segmentation.errors import InvalidEvent
from segmentation.events import (
    CONTROL_CHARACTER,
    EMAIL_CLICKS,
    EMAIL_OPENS,
    INPUT_TOPICS,
    MAX_ID_LENGTH,
    MIN_EVENT_TIME_MS,
    PURCHASES,
    SUPPRESSIONS,
    WECHAT,
    WECHAT_KINDS,
    InputEvent,
    parse_event,
)
from segmentation.timeutil import DAY_MS

NOW_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z, the wall clock passed in
JUNE_1_MS = 1_717_200_000_000  # 2024-06-01T00:00:00Z

BASE_DOCS: dict[str, dict[str, Any]] = {
    PURCHASES: {
        "event_id": "evt-1",
        "customer_id": "cust-1",
        "occurred_at": "2024-06-01T00:00:00Z",
        "order_id": "ord-1",
        "amount": "12.50",
    },
    EMAIL_OPENS: {
        "event_id": "evt-1",
        "customer_id": "cust-1",
        "occurred_at": "2024-06-01T00:00:00Z",
        "message_id": "msg-1",
    },
    EMAIL_CLICKS: {
        "event_id": "evt-1",
        "customer_id": "cust-1",
        "occurred_at": "2024-06-01T00:00:00Z",
        "message_id": "msg-1",
        "url": "https://shop.example/p/1",
    },
    WECHAT: {
        "event_id": "evt-1",
        "customer_id": "cust-1",
        "occurred_at": "2024-06-01T00:00:00Z",
        "kind": "follow",
    },
    SUPPRESSIONS: {
        "event_id": "evt-1",
        "customer_id": "cust-1",
        "occurred_at": "2024-06-01T00:00:00Z",
        "kind": "unsubscribe",
        "channel": "email",
    },
}

REQUIRED: dict[str, tuple[str, ...]] = {
    PURCHASES: ("event_id", "customer_id", "occurred_at", "order_id", "amount"),
    EMAIL_OPENS: ("event_id", "customer_id", "occurred_at", "message_id"),
    EMAIL_CLICKS: ("event_id", "customer_id", "occurred_at", "message_id"),
    WECHAT: ("event_id", "customer_id", "occurred_at", "kind"),
    SUPPRESSIONS: ("event_id", "customer_id", "occurred_at", "kind"),
}


def doc_for(topic: str, **changes: Any) -> dict[str, Any]:
    doc = dict(BASE_DOCS[topic])
    doc.update(changes)
    return doc


def parse(topic: str, doc: dict[str, Any], **kwargs: Any) -> InputEvent:
    return parse_event(topic, orjson.dumps(doc), now_ms=NOW_MS, **kwargs)


def rejection(topic: str, payload: dict[str, Any] | bytes, **kwargs: Any) -> InvalidEvent:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    with pytest.raises(InvalidEvent) as info:
        parse_event(topic, raw, now_ms=NOW_MS, **kwargs)
    assert info.value.detail, "a rejection must say what to fix"
    return info.value


def cents(amount: Any) -> int:
    return parse(PURCHASES, doc_for(PURCHASES, amount=amount)).amount_cents


# -- accepted events ----------------------------------------------------------------------------


def test_purchase_is_decoded_into_a_typed_event() -> None:
    event = parse(PURCHASES, doc_for(PURCHASES, channel="web", currency="USD"))
    assert event == InputEvent(
        topic=PURCHASES,
        event_id="evt-1",
        customer_id="cust-1",
        occurred_ms=JUNE_1_MS,
        kind="purchase",
        order_id="ord-1",
        amount_cents=1250,
        channel="web",
    )


def test_purchase_kind_defaults_to_purchase_and_refund_is_accepted() -> None:
    assert parse(PURCHASES, doc_for(PURCHASES)).kind == "purchase"
    assert parse(PURCHASES, doc_for(PURCHASES, kind="refund")).kind == "refund"


@pytest.mark.parametrize("topic", [EMAIL_OPENS, EMAIL_CLICKS])
def test_email_events_take_the_topic_as_kind_and_keep_the_campaign(topic: str) -> None:
    event = parse(topic, doc_for(topic, campaign_id="spring-sale"))
    assert (event.topic, event.kind, event.campaign_id) == (topic, topic, "spring-sale")
    assert (event.order_id, event.amount_cents) == (None, 0)


@pytest.mark.parametrize("kind", sorted(WECHAT_KINDS))
def test_every_wechat_kind_is_accepted(kind: str) -> None:
    assert parse(WECHAT, doc_for(WECHAT, kind=kind)).kind == kind


@pytest.mark.parametrize("kind", ["unsubscribe", "complaint", "resubscribe", "erase"])
@pytest.mark.parametrize("channel", ["email", "wechat", "all"])
def test_every_suppression_kind_and_channel_is_accepted(kind: str, channel: str) -> None:
    event = parse(SUPPRESSIONS, doc_for(SUPPRESSIONS, kind=kind, channel=channel))
    assert (event.kind, event.channel) == (kind, channel)


def test_suppression_channel_defaults_to_all() -> None:
    doc = doc_for(SUPPRESSIONS)
    del doc["channel"]
    assert parse(SUPPRESSIONS, doc).channel == "all"


@pytest.mark.parametrize("topic", INPUT_TOPICS)
def test_unknown_extra_fields_are_ignored(topic: str) -> None:
    extra = doc_for(
        topic,
        shop={"name": "x", "tags": [1, 2, None]},
        amount_usd="not checked",
        Event_ID=5,
        notes=None,
    )
    assert parse(topic, extra) == parse(topic, doc_for(topic))


def test_a_known_timezone_is_kept() -> None:
    event = parse(WECHAT, doc_for(WECHAT, timezone="Asia/Shanghai"))
    assert event.timezone == "Asia/Shanghai"


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", "../../etc/passwd", 8, None, "x" * 65])
def test_a_bad_timezone_is_dropped_not_fatal(zone: Any) -> None:
    event = parse(PURCHASES, doc_for(PURCHASES, timezone=zone))
    assert event.timezone is None
    assert event.amount_cents == 1250


@pytest.mark.parametrize("zone", ["America", "Asia", "Etc"])
def test_a_timezone_naming_a_zone_directory_is_dropped_not_fatal(zone: str) -> None:
    event = parse(PURCHASES, doc_for(PURCHASES, timezone=zone))
    assert (event.timezone, event.amount_cents) == (None, 1250)


# -- timestamps ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected_ms"),
    [
        ("2024-06-01T00:00:00Z", JUNE_1_MS),
        ("2024-06-01T00:00:00+00:00", JUNE_1_MS),
        ("2024-06-01T08:00:00+08:00", JUNE_1_MS),
        ("2024-05-31T19:00:00-05:00", JUNE_1_MS),
        ("2024-06-01t00:00:00z", JUNE_1_MS),
        ("2024-06-01T00:00:00.123Z", JUNE_1_MS + 123),
        ("2024-06-01T00:00:00.5+00:00", JUNE_1_MS + 500),
    ],
)
def test_rfc3339_with_an_offset_is_converted_to_epoch_ms(text: str, expected_ms: int) -> None:
    assert parse(EMAIL_OPENS, doc_for(EMAIL_OPENS, occurred_at=text)).occurred_ms == expected_ms


def test_integer_epoch_milliseconds_are_accepted_exactly() -> None:
    for ms in (JUNE_1_MS, JUNE_1_MS + 1, MIN_EVENT_TIME_MS, NOW_MS + DAY_MS):
        assert parse(EMAIL_OPENS, doc_for(EMAIL_OPENS, occurred_at=ms)).occurred_ms == ms


@pytest.mark.parametrize(
    "value",
    [
        "2024-06-01T00:00:00",  # naive: no offset
        "2024-06-01",  # date only, naive
        "yesterday",
        "",
        "2024-13-01T00:00:00Z",
        "2024-06-01T25:00:00Z",
        "2024-06-01T00:00:00+25:00",
        "1970-01-01T00:00:00Z",  # epoch zero
        "1989-12-31T23:59:59.999Z",  # just before the 1990 floor
        "0001-01-01T00:00:00+14:00",
        0,
        -1,
        1_717_200_000,  # seconds sent instead of milliseconds
        MIN_EVENT_TIME_MS - 1,
    ],
)
def test_unusable_timestamps_are_bad_timestamp(value: Any) -> None:
    assert rejection(EMAIL_OPENS, doc_for(EMAIL_OPENS, occurred_at=value)).reason == (
        "bad_timestamp"
    )


def test_the_1990_floor_itself_is_accepted() -> None:
    event = parse(EMAIL_OPENS, doc_for(EMAIL_OPENS, occurred_at="1990-01-01T00:00:00Z"))
    assert event.occurred_ms == MIN_EVENT_TIME_MS


@pytest.mark.parametrize(
    "value", ["2100-01-01T00:00:00Z", "9999-12-31T23:59:59-14:00", NOW_MS + DAY_MS + 1]
)
def test_far_future_timestamps_are_future_timestamp(value: Any) -> None:
    assert rejection(EMAIL_OPENS, doc_for(EMAIL_OPENS, occurred_at=value)).reason == (
        "future_timestamp"
    )


def test_the_future_bound_is_configurable_and_inclusive() -> None:
    doc = doc_for(EMAIL_OPENS, occurred_at=NOW_MS)
    assert parse(EMAIL_OPENS, doc, max_future_ms=0).occurred_ms == NOW_MS
    late = doc_for(EMAIL_OPENS, occurred_at=NOW_MS + 1)
    assert rejection(EMAIL_OPENS, late, max_future_ms=0).reason == "future_timestamp"
    assert parse(EMAIL_OPENS, late, max_future_ms=1).occurred_ms == NOW_MS + 1


@pytest.mark.parametrize("value", [True, False, 1.7172e12, 1_717_200_000_000.0, [1], {"ms": 1}])
def test_non_text_non_integer_timestamps_are_wrong_type(value: Any) -> None:
    assert rejection(EMAIL_OPENS, doc_for(EMAIL_OPENS, occurred_at=value)).reason == "wrong_type"


# -- amounts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        ("11.77", 1177),  # 11.77 * 100 in binary floating point is 1176.9999999999998
        (11.77, 1177),
        ("0.1", 10),
        (0.1, 10),
        ("0.2", 20),
        ("0.3", 30),
        (0.30000000000000004, 30),
        (1e2, 10000),
        (100, 10000),
        ("0", 0),
        (0, 0),
        ("12.5", 1250),
        ("1000000000", 100_000_000_000),  # the largest accepted amount
        ("0.005", 0),  # half-even: 0.5 cent rounds to the even 0
        ("0.015", 2),  # 1.5 -> 2
        ("0.025", 2),  # 2.5 -> 2
        ("0.035", 4),  # 3.5 -> 4
        ("1.005", 100),  # 100.5 -> 100
        ("2.675", 268),  # 267.5 -> 268 (a float would give 267.49999...)
        (2.675, 268),
        ("0.0049999", 0),
        ("0.0050001", 1),
    ],
)
def test_amounts_become_exact_integer_cents(amount: Any, expected: int) -> None:
    assert cents(amount) == expected


@pytest.mark.parametrize("text", ["1e2", "1E+2", " 12.5 ", "+5", ".5", "5.", "-0", "1_000"])
def test_amount_text_must_be_a_plain_decimal(text: str) -> None:
    """The published schema's pattern: digits, optionally a point and more digits."""
    with pytest.raises(InvalidEvent) as err:
        cents(text)
    assert err.value.reason == "invalid_amount"


def test_tenth_and_fifth_add_up_to_exactly_thirty_cents() -> None:
    assert cents("0.1") + cents("0.2") == cents("0.3") == 30
    assert cents(0.1) + cents(0.2) == cents(0.1 + 0.2) == 30


@pytest.mark.parametrize(
    "amount",
    [
        "-1",
        -0.01,
        "-0.01",
        "NaN",
        "nan",
        "sNaN",
        "Infinity",
        "-Infinity",
        "inf",
        "abc",
        "",
        "1,00",
        "12 USD",
        "$12",
        "0x10",
        "1000000000.01",
        1e10,
        "1e12",
        10**12,
    ],
)
def test_unusable_amounts_are_invalid_amount(amount: Any) -> None:
    assert rejection(PURCHASES, doc_for(PURCHASES, amount=amount)).reason == "invalid_amount"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_json_number_literals_are_invalid_json(literal: bytes) -> None:
    raw = (
        b'{"event_id":"e","customer_id":"c","occurred_at":1717200000000,'
        b'"order_id":"o","amount":' + literal + b"}"
    )
    assert rejection(PURCHASES, raw).reason == "invalid_json"


@pytest.mark.parametrize("amount", [True, False, [1], {"value": 1}])
def test_non_numeric_amount_types_are_wrong_type(amount: Any) -> None:
    assert rejection(PURCHASES, doc_for(PURCHASES, amount=amount)).reason == "wrong_type"


@pytest.mark.parametrize("amount", ["1_000", "\u0661\u0662"])
def test_python_only_number_spellings_are_invalid_amount(amount: str) -> None:
    assert rejection(PURCHASES, doc_for(PURCHASES, amount=amount)).reason == "invalid_amount"


# -- currency -----------------------------------------------------------------------------------


@pytest.mark.parametrize("currency", ["USD", "usd", None])
def test_base_currency_or_none_is_accepted(currency: Any) -> None:
    assert parse(PURCHASES, doc_for(PURCHASES, currency=currency)).amount_cents == 1250


@pytest.mark.parametrize("currency", ["EUR", "CNY", "", "US"])
def test_a_foreign_currency_is_rejected(currency: str) -> None:
    error = rejection(PURCHASES, doc_for(PURCHASES, currency=currency))
    assert error.reason == "foreign_currency"
    assert "USD" in error.detail


def test_the_base_currency_is_configurable() -> None:
    doc = doc_for(PURCHASES, currency="CNY")
    assert parse(PURCHASES, doc, base_currency="CNY").amount_cents == 1250
    usd = doc_for(PURCHASES, currency="USD")
    assert rejection(PURCHASES, usd, base_currency="CNY").reason == "foreign_currency"


def test_a_non_text_currency_is_wrong_type() -> None:
    assert rejection(PURCHASES, doc_for(PURCHASES, currency=840)).reason == "wrong_type"


# -- payload --------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b'{"a":1,}', b"{'a': 1}", b"{}{}"])
def test_invalid_json_is_invalid_json(raw: bytes) -> None:
    assert rejection(PURCHASES, raw).reason == "invalid_json"


@pytest.mark.parametrize("raw", [b"\xff\xfe{}", b'{"event_id":"caf\xe9"}', b"\xc3"])
def test_bytes_that_are_not_utf8_are_not_utf8(raw: bytes) -> None:
    assert rejection(PURCHASES, raw).reason == "not_utf8"


@pytest.mark.parametrize("raw", [b"[]", b'[{"event_id":"e"}]', b'"text"', b"42", b"null", b"true"])
def test_json_that_is_not_an_object_is_rejected(raw: bytes) -> None:
    error = rejection(PURCHASES, raw)
    assert error.reason == "invalid_json"
    assert "object" in error.detail


def test_an_unknown_topic_is_unknown_topic() -> None:
    assert rejection("orders", doc_for(PURCHASES)).reason == "unknown_topic"


# -- required fields, types, ids -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "field"), [(t, f) for t, fields in REQUIRED.items() for f in fields]
)
def test_each_required_field_missing_or_null_is_missing_field(topic: str, field: str) -> None:
    absent = doc_for(topic)
    del absent[field]
    error = rejection(topic, absent)
    assert error.reason == "missing_field"
    assert f"'{field}'" in error.detail
    assert rejection(topic, doc_for(topic, **{field: None})).reason == "missing_field"


@pytest.mark.parametrize(
    ("topic", "field", "value"),
    [
        (PURCHASES, "event_id", 123),
        (PURCHASES, "customer_id", ["c"]),
        (PURCHASES, "customer_id", 42),
        (PURCHASES, "order_id", 7),
        (PURCHASES, "channel", 3),
        (PURCHASES, "kind", 1),
        (EMAIL_OPENS, "message_id", 99),
        (EMAIL_CLICKS, "campaign_id", {"id": 1}),
        (WECHAT, "kind", True),
        (SUPPRESSIONS, "kind", ["unsubscribe"]),
        (SUPPRESSIONS, "channel", 1),
    ],
)
def test_wrong_field_types_are_wrong_type(topic: str, field: str, value: Any) -> None:
    error = rejection(topic, doc_for(topic, **{field: value}))
    assert error.reason == "wrong_type"
    assert f"'{field}'" in error.detail


@pytest.mark.parametrize("field", ["event_id", "customer_id", "order_id"])
@pytest.mark.parametrize(
    "value",
    ["", "x" * (MAX_ID_LENGTH + 1), "a\nb", "tab\there", "nul\x00", "bell\x07", "del\x7f", "\x1f"],
)
def test_empty_too_long_or_control_character_ids_are_invalid_value(field: str, value: str) -> None:
    error = rejection(PURCHASES, doc_for(PURCHASES, **{field: value}))
    assert error.reason == "invalid_value"
    assert f"'{field}'" in error.detail


@pytest.mark.parametrize("value", ["x" * MAX_ID_LENGTH, "客户-42", "a b", "ü"])
def test_ids_up_to_the_limit_and_non_ascii_ids_are_accepted(value: str) -> None:
    assert parse(PURCHASES, doc_for(PURCHASES, customer_id=value)).customer_id == value


def test_c1_control_characters_in_ids_are_invalid_value() -> None:
    error = rejection(PURCHASES, doc_for(PURCHASES, customer_id="a\u0085b"))
    assert error.reason == "invalid_value"


# -- kinds and channels --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "kind"),
    [
        (PURCHASES, "return"),
        (PURCHASES, "Purchase"),
        (PURCHASES, "follow"),
        (WECHAT, "like"),
        (WECHAT, "purchase"),
        (WECHAT, ""),
        (SUPPRESSIONS, "delete"),
        (SUPPRESSIONS, "Unsubscribe"),
        (SUPPRESSIONS, "follow"),
    ],
)
def test_unknown_kind_per_topic_is_unknown_kind(topic: str, kind: str) -> None:
    assert rejection(topic, doc_for(topic, kind=kind)).reason == "unknown_kind"


@pytest.mark.parametrize("topic", [EMAIL_OPENS, EMAIL_CLICKS])
def test_email_topics_ignore_a_kind_field(topic: str) -> None:
    assert parse(topic, doc_for(topic, kind="refund")).kind == topic


@pytest.mark.parametrize("channel", ["sms", "EMAIL", "", "push"])
def test_a_bad_suppression_channel_is_invalid_value(channel: str) -> None:
    error = rejection(SUPPRESSIONS, doc_for(SUPPRESSIONS, channel=channel))
    assert error.reason == "invalid_value"
    assert "'channel'" in error.detail


def test_an_explicit_null_purchase_kind_means_the_default() -> None:
    assert parse(PURCHASES, doc_for(PURCHASES, kind=None)).kind == "purchase"


def test_the_control_character_check_is_unicode_category_cc_for_every_code_point() -> None:
    """`CONTROL_CHARACTER` replaced a `unicodedata.category(ch) == "Cc"` test per character:
    the same answer for every code point, alone and inside an id."""
    for code in range(sys.maxunicode + 1):
        ch = chr(code)
        expected = unicodedata.category(ch) == "Cc"
        assert (CONTROL_CHARACTER.search(ch) is not None) is expected, hex(code)
        if expected:
            assert CONTROL_CHARACTER.search(f"id-{ch}-x") is not None
