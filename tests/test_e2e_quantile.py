"""Population-relative RFM in the pipeline: with scoring.method = "quantile" the worker builds
KLL sketches of its customers' current values, merges them into versioned quintile cut points
on a schedule, and re-scores everyone when they move, publishing the moves (cause=rules_change,
rules_version "<rules>+cut-...")."""

from __future__ import annotations

import asyncio
import time
from importlib import resources
from pathlib import Path

import pytest

from segmentation.timeutil import DAY_MS, parse_rfc3339, to_rfc3339
from streams.replay import send_ticks
from tests.e2e_support import fresh_stack, profile, send, start_worker, topic_values, wait_consumed

pytestmark = pytest.mark.e2e

T0 = parse_rfc3339("2026-06-01T10:00:00Z")


def quantile_rules(tmp: Path) -> Path:
    text = resources.files("segmentation").joinpath("default_rules.toml").read_text()
    text = text.replace('method = "fixed"', 'method = "quantile"')
    text = text.replace('rules_version = "default-2026.11"', 'rules_version = "quintiles-1"')
    # VIP = the top spend quintile, so a cut-point move moves customers between tiers.
    text = text.replace(
        "when = { monetary_gt = 1000, frequency_gt = 5, recency_days_le = 180 }",
        "when = { m_eq = 5 }",
    )
    path = tmp / "quintiles.toml"
    path.write_text(text)
    return path


def test_cutpoints_rescore_and_publish(tmp_path: Path) -> None:
    # 300 buyers whose spend spreads over two orders of magnitude.
    events = [
        (
            "purchases",
            {
                "event_id": f"q{i}-{j}",
                "customer_id": f"q{i:03d}",
                "occurred_at": to_rfc3339(T0 + (i % 90) * DAY_MS + j * 7 * DAY_MS),
                "order_id": f"q{i}-{j}",
                "amount": f"{5 + i * 3}.00",
            },
        )
        for i in range(300)
        for j in range(1 + i % 4)
    ]
    with fresh_stack() as stack:
        worker = start_worker(
            stack,
            tmp_path,
            "worker",
            TIERSTREAM_RULES=str(quantile_rules(tmp_path)),
            TIERSTREAM_CUTPOINTS_SECONDS="3",
        )
        try:
            send(stack, events)
            wait_consumed(worker, len(events))
            # The re-scoring runs a chunk per record: a few more records drive it to the end.
            deadline = time.monotonic() + 90
            rescored: list[dict] = []
            while time.monotonic() < deadline and not rescored:
                # In live mode the per-partition ticks drive it; here an explicit clock move.
                asyncio.run(send_ticks(stack.bootstrap, T0 + 120 * DAY_MS))
                time.sleep(3)
                rescored = [
                    c for c in topic_values(stack, "tier-changes") if c["cause"] == "rules_change"
                ]
            assert rescored, worker.log_tail()
            assert all(c["rules_version"].startswith("quintiles-1+cut-") for c in rescored)
            # Under the fixed bounds m = 5 from a net spend of 500; the top quintile starts
            # higher, so customers leave vip with the new cut points.
            assert any(c["previous_tier"] == "vip" and c["tier"] != "vip" for c in rescored)
            asyncio.run(send_ticks(stack.bootstrap, T0 + 121 * DAY_MS))  # the last chunks
            time.sleep(3)
            status, body = profile(worker, "q299")
            assert status == 200 and body is not None
            explained = body["explanation"]["rfm"]
            assert explained["method"] == "quantile"
            assert explained["population"] == 300
            assert len(explained["monetary_cuts"]) == 4
            assert body["rfm"]["m"] == 5  # the biggest spender is in the top quintile
            assert profile(worker, "q000")[1]["rfm"]["m"] == 1  # type: ignore[index]
            # The version in force (cut points refresh every 3 s here) is exported.
            versions = [k for k in worker.metrics() if k.startswith("tierstream_rules_info{")]
            assert len(versions) == 1 and "rules_version=quintiles-1+cut-" in versions[0]
        finally:
            worker.stop()
