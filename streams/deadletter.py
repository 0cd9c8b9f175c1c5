"""The `dead-letters` document for an input record that could not be used, kept pure (no Kafka) so
its size rule is unit-tested.

A letter carries the original bytes in base64, a third larger than the bytes themselves: a record
near the producer's maximum request size (Faust's `producer_max_request_size`, 1 000 000 bytes by
default; a broker's `message.max.bytes` is about 1 MiB) would give a letter the producer refuses,
and the record would be lost. So the payload (and an absurdly long key) is cut to what fits, and
the letter says so: `payload_truncated`, the original length `payload_bytes` and its
`payload_sha256` (on every letter), so a person can still find the record (its topic, partition
and offset are in the letter), identify it, and ask its producer for a fixed one.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any, Final

import orjson

from segmentation.jsonbytes import dumps

# Faust's default `producer_max_request_size`; the app does not change it.
DEFAULT_MAX_REQUEST_BYTES: Final = 1_000_000
# What a record costs beyond its key and value (record batch and record headers, varints), with
# a wide margin: aiokafka's own estimate for a one-record batch is under 100 bytes.
RECORD_OVERHEAD_BYTES: Final = 16 * 1024
# Keys longer than this are not customer ids (those are at most 128 characters, 512 bytes of
# UTF-8): the letter keeps their first bytes, and is published without a key.
MAX_KEY_BYTES: Final = 1024
# `error` is `<reason>: <detail>`; details are short, but an internal error's repr need not be.
MAX_ERROR_CHARS: Final = 2000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """What to publish on `dead-letters`: the Kafka key and the JSON document's bytes."""

    key: bytes | None
    value: bytes


def max_request_bytes(app: Any) -> int:
    """The largest record the app's producer sends: its `producer_max_request_size` if it is
    smaller than the default (which real brokers accept), else the default."""
    configured = getattr(getattr(app, "conf", None), "producer_max_request_size", None)
    if isinstance(configured, int) and 0 < configured < DEFAULT_MAX_REQUEST_BYTES:
        return configured
    return DEFAULT_MAX_REQUEST_BYTES


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _error(reason: str, detail: str) -> str:
    error = f"{reason}: {detail}"
    if len(error) > MAX_ERROR_CHARS:
        error = error[: MAX_ERROR_CHARS - 1] + "…"
    return error


def build_dead_letter(
    *,
    source_topic: str,
    partition: int,
    offset: int,
    reason: str,
    detail: str,
    payload: bytes | None,
    key: bytes | None,
    received_at: str,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> DeadLetter:
    """The letter for one record, at most `max_request_bytes` with its key and record overhead.

    The payload is kept whole when it fits; otherwise its first bytes are kept (a multiple of 3,
    so the base64 text is exactly the start of the whole payload's base64) and
    `payload_truncated` is true. A key longer than MAX_KEY_BYTES is cut the same way
    (`key_truncated`) and the letter is published without a key."""
    data = payload or b""
    raw_key = key or b""
    key_truncated = len(raw_key) > MAX_KEY_BYTES
    send_key = None if key_truncated else key
    doc: dict[str, Any] = {
        "source_topic": source_topic,
        "partition": partition,
        "offset": offset,
        "error": _error(reason, detail),
        "reason": reason,
        "payload": "",
        "payload_bytes": len(data),
        "payload_sha256": hashlib.sha256(data).hexdigest(),
        "payload_truncated": False,
        "key": _b64(raw_key[:MAX_KEY_BYTES]) if raw_key else None,
        "key_truncated": key_truncated,
        "received_at": received_at,
    }
    # `payload` holds base64 only (nothing JSON escapes), so the document grows by exactly the
    # length of its text (and `true` is shorter than `false`).
    fixed = len(orjson.dumps(doc))
    room = max_request_bytes - RECORD_OVERHEAD_BYTES - len(send_key or b"") - fixed
    if 4 * -(-len(data) // 3) <= room:
        doc["payload"] = _b64(data)
    else:
        doc["payload"] = _b64(data[: max(0, room // 4 * 3)])
        doc["payload_truncated"] = True
    return DeadLetter(key=send_key, value=dumps(doc))
