"""Tests for streams.deadletter: the dead-letter document, and the size rule that keeps a letter
for a record near the producer's limit publishable (its payload cut, and the letter saying so)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from streams.deadletter import (
    DEFAULT_MAX_REQUEST_BYTES,
    MAX_ERROR_CHARS,
    MAX_KEY_BYTES,
    DeadLetter,
    build_dead_letter,
    max_request_bytes,
)

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
RECEIVED_AT = "2026-11-25T00:00:00.000+00:00"
MB = 1_000_000


def letter_for(
    payload: bytes | None,
    key: bytes | None = b"cust-1",
    *,
    reason: str = "invalid_json",
    detail: str = "value is not valid JSON",
    limit: int = DEFAULT_MAX_REQUEST_BYTES,
) -> tuple[DeadLetter, dict[str, Any]]:
    letter = build_dead_letter(
        source_topic="purchases",
        partition=3,
        offset=41,
        reason=reason,
        detail=detail,
        payload=payload,
        key=key,
        received_at=RECEIVED_AT,
        max_request_bytes=limit,
    )
    doc: dict[str, Any] = orjson.loads(letter.value)
    return letter, doc


def schema_validator() -> Draft202012Validator:
    schema = json.loads((SCHEMAS / "dead-letters.schema.json").read_text("utf-8"))
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def record_size(letter: DeadLetter) -> int:
    """What aiokafka's producer compares with its max_request_size."""
    size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(letter.key, letter.value, [])
    return size


def test_a_small_record_is_kept_whole() -> None:
    original = b'{"event_id": "e", "amount": -1}'
    letter, doc = letter_for(original)
    assert letter.key == b"cust-1"
    assert doc == {
        "source_topic": "purchases",
        "partition": 3,
        "offset": 41,
        "error": "invalid_json: value is not valid JSON",
        "reason": "invalid_json",
        "payload": base64.b64encode(original).decode(),
        "payload_bytes": len(original),
        "payload_sha256": hashlib.sha256(original).hexdigest(),
        "payload_truncated": False,
        "key": base64.b64encode(b"cust-1").decode(),
        "key_truncated": False,
        "received_at": RECEIVED_AT,
    }
    assert schema_validator().is_valid(doc)


@pytest.mark.parametrize("payload", [None, b""])
def test_a_record_without_a_value_has_an_empty_payload(payload: bytes | None) -> None:
    _, doc = letter_for(payload, reason="empty_value", detail="record has no value")
    assert (doc["payload"], doc["payload_bytes"], doc["payload_truncated"]) == ("", 0, False)
    assert doc["payload_sha256"] == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("key", [None, b""])
def test_a_record_without_a_key_has_a_null_key(key: bytes | None) -> None:
    letter, doc = letter_for(b"{}", key)
    assert letter.key == key
    assert (doc["key"], doc["key_truncated"]) == (None, False)


@pytest.mark.parametrize("size", [MB, MB - 1, MB + 1, 3 * MB])
def test_a_payload_too_big_for_the_producer_is_cut_and_the_letter_says_so(size: int) -> None:
    original = bytes(range(256)) * (size // 256) + b"\xff" * (size % 256)
    letter, doc = letter_for(original)
    assert len(letter.value) <= DEFAULT_MAX_REQUEST_BYTES
    assert record_size(letter) <= DEFAULT_MAX_REQUEST_BYTES
    assert doc["payload_truncated"] is True
    assert doc["payload_bytes"] == size
    assert doc["payload_sha256"] == hashlib.sha256(original).hexdigest()
    kept = base64.b64decode(doc["payload"], validate=True)
    assert original.startswith(kept)
    # As much as fits is kept, not some token prefix.
    assert len(kept) > DEFAULT_MAX_REQUEST_BYTES // 2
    assert schema_validator().is_valid(doc)
    assert letter.key == b"cust-1"


def test_the_cut_payload_is_the_start_of_the_whole_payloads_base64() -> None:
    original = bytes(range(256)) * 4000
    _, doc = letter_for(original)
    assert base64.b64encode(original).decode().startswith(doc["payload"])


def test_the_largest_payload_that_fits_is_kept_whole_and_one_more_byte_is_cut() -> None:
    limit = 50_000
    low, high = 0, limit
    while low < high:  # the longest payload kept whole
        middle = (low + high + 1) // 2
        if letter_for(b"x" * middle, limit=limit)[1]["payload_truncated"]:
            high = middle - 1
        else:
            low = middle
    whole, doc = letter_for(b"x" * low, limit=limit)
    assert not doc["payload_truncated"]
    assert record_size(whole) <= limit
    cut, doc = letter_for(b"x" * (low + 3), limit=limit)
    assert doc["payload_truncated"] and doc["payload_bytes"] == low + 3
    assert record_size(cut) <= limit


@given(
    payload=st.binary(max_size=5000),
    key=st.none() | st.binary(max_size=2 * MAX_KEY_BYTES),
    detail=st.text(max_size=3 * MAX_ERROR_CHARS),
    limit=st.integers(min_value=20_000, max_value=40_000),
)
@settings(max_examples=150, deadline=None)
def test_every_letter_fits_and_describes_the_record(
    payload: bytes, key: bytes | None, detail: str, limit: int
) -> None:
    letter, doc = letter_for(payload, key, detail=detail, limit=limit)
    assert record_size(letter) <= limit
    assert schema_validator().is_valid(doc)
    kept = base64.b64decode(doc["payload"], validate=True)
    assert payload.startswith(kept)
    assert doc["payload_truncated"] is (kept != payload)
    assert doc["payload_bytes"] == len(payload)
    assert doc["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert doc["error"].startswith("invalid_json: ")
    assert len(doc["error"]) <= MAX_ERROR_CHARS
    if key:
        assert key.startswith(base64.b64decode(doc["key"], validate=True))
        assert doc["key_truncated"] is (len(key) > MAX_KEY_BYTES)
    else:
        assert doc["key"] is None and doc["key_truncated"] is False


def test_a_huge_key_is_cut_in_the_letter_and_not_used_to_publish_it() -> None:
    key = b"k" * (MB // 2)
    letter, doc = letter_for(b"z" * MB, key)
    assert letter.key is None
    assert doc["key_truncated"] is True
    assert base64.b64decode(doc["key"]) == key[:MAX_KEY_BYTES]
    assert doc["payload_truncated"] is True
    assert record_size(letter) <= DEFAULT_MAX_REQUEST_BYTES


def test_a_key_at_the_limit_is_kept() -> None:
    key = b"k" * MAX_KEY_BYTES
    letter, doc = letter_for(b"{}", key)
    assert letter.key == key
    assert (base64.b64decode(doc["key"]), doc["key_truncated"]) == (key, False)


def test_a_long_error_is_cut() -> None:
    _, doc = letter_for(b"{}", reason="internal_error", detail="x" * 10_000)
    assert len(doc["error"]) == MAX_ERROR_CHARS
    assert doc["error"].startswith("internal_error: xxx") and doc["error"].endswith("…")
    assert doc["reason"] == "internal_error"


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        (None, DEFAULT_MAX_REQUEST_BYTES),
        (SimpleNamespace(conf=SimpleNamespace(producer_max_request_size=500_000)), 500_000),
        (SimpleNamespace(conf=SimpleNamespace(producer_max_request_size=5_000_000)), MB),
        (SimpleNamespace(conf=SimpleNamespace(producer_max_request_size=0)), MB),
        (SimpleNamespace(conf=SimpleNamespace()), MB),
    ],
)
def test_the_limit_follows_a_lowered_producer_setting_only(app: Any, expected: int) -> None:
    assert max_request_bytes(app) == expected


def test_the_schema_states_the_key_limit_of_the_code() -> None:
    properties = json.loads((SCHEMAS / "dead-letters.schema.json").read_text("utf-8"))["properties"]
    assert f"{MAX_KEY_BYTES} bytes" in properties["key_truncated"]["description"]
    assert f"{MAX_KEY_BYTES} bytes" in properties["key"]["description"]
