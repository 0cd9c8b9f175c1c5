"""Decoding and validating input records into typed events.

Every way a record can be unusable maps to an `InvalidEvent` with a stable reason code (used as a
metric label) and a detail a person can act on; the glue sends those to `dead-letters`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from segmentation.errors import InvalidEvent
from segmentation.timeutil import DAY_MS, parse_rfc3339

PURCHASES: Final = "purchases"
EMAIL_OPENS: Final = "email-opens"
EMAIL_CLICKS: Final = "email-clicks"
WECHAT: Final = "wechat-interactions"
SUPPRESSIONS: Final = "suppressions"
INPUT_TOPICS: Final = (PURCHASES, EMAIL_OPENS, EMAIL_CLICKS, WECHAT, SUPPRESSIONS)

PURCHASE_KINDS: Final = frozenset({"purchase", "refund"})
WECHAT_KINDS: Final = frozenset(
    {
        "message_reply",
        "moments_like",
        "moments_comment",
        "miniprogram_visit",
        "activity_join",
        "follow",
        "unfollow",
    }
)
SUPPRESSION_KINDS: Final = frozenset({"unsubscribe", "complaint", "resubscribe", "erase"})
SUPPRESSION_CHANNELS: Final = frozenset({"email", "wechat", "all"})

MAX_ID_LENGTH: Final = 128
MAX_AMOUNT: Final = Decimal("1000000000")
# Event times before this are a producer bug (epoch zero, seconds sent as ms...), not history.
MIN_EVENT_TIME_MS: Final = 631_152_000_000  # 1990-01-01T00:00:00Z
DEFAULT_MAX_FUTURE_MS: Final = DAY_MS
# The published contract (schemas/): amounts as text are plain decimals, times RFC 3339.
_DECIMAL_TEXT: Final = re.compile(r"\d+(?:\.\d+)?", re.ASCII)
_RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


@dataclass(frozen=True, slots=True)
class InputEvent:
    """A validated input event; `kind` is the purchase, WeChat or suppression kind, or the topic's
    own name for email events."""

    topic: str
    event_id: str
    customer_id: str
    occurred_ms: int
    kind: str
    order_id: str | None = None
    amount_cents: int = 0
    channel: str | None = None
    campaign_id: str | None = None
    timezone: str | None = None


def decode_json(payload: bytes) -> dict[str, Any]:
    """The JSON object in a record's value, or InvalidEvent saying what is wrong with the bytes."""
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent("not_utf8", f"value is not UTF-8 (byte {exc.start})") from None
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("invalid_json", f"value is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidEvent(
            "invalid_json", f"value must be a JSON object, got {type(value).__name__}"
        )
    return value


# Unicode category Cc, exactly: C0 controls, DEL and C1 controls (tests/test_events.py checks
# every code point against `unicodedata`). One regex scan instead of a category lookup per
# character: ids are checked on every event (cProfile of the core: 4% of its time went there).
CONTROL_CHARACTER: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _identifier(doc: dict[str, Any], field: str, *, required: bool = True) -> str | None:
    value = doc.get(field)
    if value is None:
        if required:
            raise InvalidEvent("missing_field", f"field '{field}' is required")
        return None
    if not isinstance(value, str):
        raise InvalidEvent(
            "wrong_type", f"field '{field}' must be a string, got {type(value).__name__}"
        )
    if not value or len(value) > MAX_ID_LENGTH:
        raise InvalidEvent(
            "invalid_value", f"field '{field}' must be 1 to {MAX_ID_LENGTH} characters long"
        )
    if CONTROL_CHARACTER.search(value) is not None:
        raise InvalidEvent("invalid_value", f"field '{field}' contains control characters")
    return value


def _occurred_ms(doc: dict[str, Any], now_ms: int, max_future_ms: int) -> int:
    value = doc.get("occurred_at")
    if value is None:
        raise InvalidEvent("missing_field", "field 'occurred_at' is required")
    if isinstance(value, bool):
        raise InvalidEvent("wrong_type", "field 'occurred_at' must be RFC 3339 text or epoch ms")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, str):
        if not _RFC3339.fullmatch(value):
            raise InvalidEvent(
                "bad_timestamp",
                f"'occurred_at' {value[:40]!r} is not RFC 3339 with an offset "
                "(e.g. 2026-11-25T10:00:00+08:00)",
            )
        try:
            ms = parse_rfc3339(value)
        except (ValueError, OverflowError) as exc:
            raise InvalidEvent(
                "bad_timestamp",
                f"'occurred_at' {value[:40]!r} is not RFC 3339 with an offset ({exc})",
            ) from None
    else:
        raise InvalidEvent(
            "wrong_type", "field 'occurred_at' must be RFC 3339 text or integer epoch milliseconds"
        )
    if ms < MIN_EVENT_TIME_MS:
        raise InvalidEvent(
            "bad_timestamp", "'occurred_at' is before 1990 (seconds sent instead of milliseconds?)"
        )
    if ms > now_ms + max_future_ms:
        raise InvalidEvent("future_timestamp", "'occurred_at' is too far in the future")
    return ms


def _amount_cents(doc: dict[str, Any]) -> int:
    value = doc.get("amount")
    if value is None:
        raise InvalidEvent("missing_field", "field 'amount' is required")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidEvent("wrong_type", "field 'amount' must be a decimal number or string")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidEvent("invalid_amount", "field 'amount' must be finite")
    text = value if isinstance(value, str) else str(value)
    if isinstance(value, str) and not _DECIMAL_TEXT.fullmatch(text):
        raise InvalidEvent("invalid_amount", f"'amount' {text[:40]!r} is not a decimal number")
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise InvalidEvent(
            "invalid_amount", f"'amount' {str(value)[:40]!r} is not a number"
        ) from None
    if not amount.is_finite():
        raise InvalidEvent("invalid_amount", "field 'amount' must be finite")
    if amount < 0:
        raise InvalidEvent(
            "invalid_amount", "field 'amount' must not be negative (use kind=refund)"
        )
    if amount > MAX_AMOUNT:
        raise InvalidEvent("invalid_amount", "field 'amount' is implausibly large")
    return int((amount * 100).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def _timezone(doc: dict[str, Any]) -> str | None:
    # Optional: a bad zone is not worth losing the event over; it is dropped and the default used.
    value = doc.get("timezone")
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None
    return value


def _choice(doc: dict[str, Any], field: str, allowed: frozenset[str], default: str | None) -> str:
    value = doc.get(field)
    if value is None:
        value = default
    if value is None:
        raise InvalidEvent("missing_field", f"field '{field}' is required")
    if not isinstance(value, str):
        raise InvalidEvent("wrong_type", f"field '{field}' must be a string")
    if value not in allowed:
        raise InvalidEvent(
            "unknown_kind" if field == "kind" else "invalid_value",
            f"'{field}' {value[:40]!r} is not one of {', '.join(sorted(allowed))}",
        )
    return value


def parse_event(
    topic: str,
    payload: bytes,
    *,
    now_ms: int,
    base_currency: str = "USD",
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
) -> InputEvent:
    """Validate one record's value from an input topic. `now_ms` (wall time, passed in) only bounds
    how far in the future an event may claim to be."""
    if topic not in INPUT_TOPICS:
        raise InvalidEvent("unknown_topic", f"topic '{topic}' is not an input topic")
    doc = decode_json(payload)
    event_id = _identifier(doc, "event_id")
    customer_id = _identifier(doc, "customer_id")
    assert event_id is not None and customer_id is not None
    occurred_ms = _occurred_ms(doc, now_ms, max_future_ms)
    timezone = _timezone(doc)
    common: dict[str, Any] = {
        "topic": topic,
        "event_id": event_id,
        "customer_id": customer_id,
        "occurred_ms": occurred_ms,
        "timezone": timezone,
    }
    if topic == PURCHASES:
        kind = _choice(doc, "kind", PURCHASE_KINDS, "purchase")
        order_id = _identifier(doc, "order_id")
        cents = _amount_cents(doc)
        currency = doc.get("currency")
        if currency is not None:
            if not isinstance(currency, str):
                raise InvalidEvent("wrong_type", "field 'currency' must be a string")
            if not currency.isascii() or currency.upper() != base_currency.upper():
                raise InvalidEvent(
                    "foreign_currency",
                    f"currency {currency[:8]!r} is not the base currency {base_currency}; "
                    "convert before publishing",
                )
        channel = _identifier(doc, "channel", required=False)
        return InputEvent(
            kind=kind, order_id=order_id, amount_cents=cents, channel=channel, **common
        )
    if topic in (EMAIL_OPENS, EMAIL_CLICKS):
        _identifier(doc, "message_id")
        campaign_id = _identifier(doc, "campaign_id", required=False)
        return InputEvent(kind=topic, campaign_id=campaign_id, **common)
    if topic == WECHAT:
        kind = _choice(doc, "kind", WECHAT_KINDS, None)
        return InputEvent(kind=kind, **common)
    kind = _choice(doc, "kind", SUPPRESSION_KINDS, None)
    channel = _choice(doc, "channel", SUPPRESSION_CHANNELS, "all")
    return InputEvent(kind=kind, channel=channel, **common)
