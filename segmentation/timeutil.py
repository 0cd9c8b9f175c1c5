"""Event-time helpers. The core never reads the clock: times are epoch milliseconds passed in."""

from __future__ import annotations

from datetime import UTC, datetime

DAY_MS = 86_400_000
HOUR_MS = 3_600_000


def day_of(ms: int) -> int:
    """UTC day number; the buy-till-you-die convention counts purchases on one day once."""
    return ms // DAY_MS


def to_rfc3339(ms: int) -> str:
    """Millisecond-precision RFC 3339 in UTC with an explicit offset."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.isoformat(timespec="milliseconds")


def parse_rfc3339(text: str) -> int:
    """Epoch ms of an RFC 3339 timestamp; a timestamp without an offset is ambiguous and refused."""
    candidate = text.strip()
    if candidate.endswith(("Z", "z")):
        candidate = candidate[:-1] + "+00:00"
    dt = datetime.fromisoformat(candidate)
    if dt.tzinfo is None:
        raise ValueError("timestamp has no UTC offset")
    return round(dt.timestamp() * 1000)
