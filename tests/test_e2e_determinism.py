"""The same history replayed at two speeds publishes the same tier changes, campaign triggers and
churn warnings (same ids, same content): the clock is event time, never the wall clock or the
replay's pace.

The history is CDNOW's purchases with generated engagement on the three engagement topics. Kafka
orders records only within one topic-partition and the consumer interleaves the topics as its
fetches come back, so this holds because the worker folds each partition's records in event-time
order across topics (streams/ordering.py), whatever the interleaving."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from streams import datasets
from tests.e2e_support import fresh_stack, send, start_worker, topic_values, wait_consumed

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

END_OF_HISTORY_MS = 899_251_200_000  # 1998-07-01T00:00:00Z


def replay(tmp: Path, name: str, chunk: int | None) -> dict[str, Any]:
    """Replay CDNOW with engagement; `chunk` paces it (publish a chunk, wait until consumed)."""
    import asyncio

    from streams.replay import send_ticks

    purchases = datasets.time_ordered(datasets.cdnow_purchases())
    engagement = datasets.generate_engagement(purchases, seed=7)
    events = datasets.merge_by_time([("purchases", e) for e in purchases], engagement)
    with fresh_stack() as stack:
        worker = start_worker(stack, tmp, name, TIERSTREAM_CAMPAIGNS_ON_BACKFILL="true")
        try:
            step = chunk or len(events)
            for start in range(0, len(events), step):
                send(stack, events[start : start + step], backfill=True)
                if chunk:
                    wait_consumed(worker, min(start + step, len(events)), timeout=900)
            wait_consumed(worker, len(events), timeout=1800)
            asyncio.run(send_ticks(stack.bootstrap, END_OF_HISTORY_MS))
            time.sleep(5)
            metrics = wait_consumed(worker, len(events), timeout=300)
            return {
                "late": metrics.get("tierstream_events_late_total", 0.0),
                "changes": topic_values(stack, "tier-changes"),
                "triggers": topic_values(stack, "campaign-triggers"),
                "warnings": topic_values(stack, "churn-warnings"),
            }
        finally:
            worker.stop()


def test_two_speeds_publish_identical_outputs(tmp_path: Path) -> None:
    fast = replay(tmp_path, "fast", None)
    slow = replay(tmp_path, "slow", 25_000)
    assert len(fast["changes"]) > 30_000
    for topic, id_field in (
        ("changes", "change_id"),
        ("triggers", "trigger_id"),
        ("warnings", "warning_id"),
    ):
        fast_ids = sorted(m[id_field] for m in fast[topic])
        slow_ids = sorted(m[id_field] for m in slow[topic])
        assert fast_ids == slow_ids, f"{topic} differ"
        assert len(set(fast_ids)) == len(fast_ids), f"duplicate {id_field}"
    # Same ids, same content (but the wall-clock emitted_at).
    assert_same_content(fast, slow, "changes", "change_id", ignore={"emitted_at"})
    assert_same_content(fast, slow, "triggers", "trigger_id", ignore=set())
    causes = {c["cause"] for c in fast["changes"]}
    # Replayed events (and possibly the final explicit clock move, cause=time).
    assert "backfill" in causes and causes <= {"backfill", "time"}
    assert len(fast["warnings"]) > 1000


def assert_same_content(
    fast: dict[str, Any], slow: dict[str, Any], topic: str, id_field: str, *, ignore: set[str]
) -> None:
    """Fail with the first few differing messages, field by field: a plain list comparison of
    30,000 messages makes pytest spend many minutes rendering its diff."""
    strip = lambda m: {k: v for k, v in m.items() if k not in ignore}  # noqa: E731
    by_id = {m[id_field]: strip(m) for m in slow[topic]}
    differing = [
        (m[id_field], strip(m), by_id[m[id_field]])
        for m in fast[topic]
        if strip(m) != by_id[m[id_field]]
    ]
    shown = [
        {
            "id": key,
            **{
                field: (a.get(field), b.get(field))
                for field in sorted(set(a) | set(b))
                if a.get(field) != b.get(field)
            },
        }
        for key, a, b in differing[:3]
    ]
    assert not differing, (
        f"{len(differing)} of {len(fast[topic])} {topic} differ in content "
        f"(late events: fast {fast['late']:.0f}, slow {slow['late']:.0f}); "
        f"first (fast, slow): {shown}"
    )
