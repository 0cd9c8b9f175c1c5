"""Rules changes: shadow mode reports who would move without publishing; a worker started with
a new rules file re-tiers every customer, publishing the moves with cause=rules_change."""

from __future__ import annotations

import asyncio
import time
from importlib import resources
from pathlib import Path

import orjson
import pytest

from segmentation.rules import load_rules
from segmentation.timeutil import DAY_MS, parse_rfc3339, to_rfc3339
from streams.replay import send_ticks
from tests.e2e_support import fresh_stack, profile, send, start_worker, topic_values, wait_consumed

pytestmark = pytest.mark.e2e

T0 = parse_rfc3339("2026-03-01T10:00:00Z")


def lowered_vip_rules(tmp: Path) -> Path:
    """The default rules with a VIP bar a tenth as high, under a new version."""
    text = resources.files("segmentation").joinpath("default_rules.toml").read_text()
    text = text.replace('rules_version = "default-2026.11"', 'rules_version = "lower-vip-1"')
    text = text.replace(
        "monetary_gt = 1000, frequency_gt = 5", "monetary_gt = 100, frequency_gt = 5"
    )
    path = tmp / "lower-vip.toml"
    path.write_text(text)
    assert load_rules(path).version == "lower-vip-1"
    return path


def purchases(customer: str, count: int, amount: str) -> list[tuple[str, dict]]:
    return [
        (
            "purchases",
            {
                "event_id": f"{customer}-{i}",
                "customer_id": customer,
                "occurred_at": to_rfc3339(T0 + i * DAY_MS),
                "order_id": f"{customer}-{i}",
                "amount": amount,
            },
        )
        for i in range(count)
    ]


def test_shadow_then_switch(tmp_path: Path) -> None:
    new_rules = lowered_vip_rules(tmp_path)
    events = purchases("ann", 7, "50") + purchases("ben", 2, "50")
    with fresh_stack() as stack:
        live = start_worker(stack, tmp_path, "live", TIERSTREAM_SHADOW_RULES=str(new_rules))
        try:
            send(stack, events)
            wait_consumed(live, len(events))
            status, body = live.get("/shadow")
            report = orjson.loads(body)
            assert status == 200
            assert report["shadow_rules_version"] == "lower-vip-1"
            assert report["tier_moves"] == {"active->vip": 1}
            assert report["examples"] == {"active->vip": ["ann"]}
            assert report["customers"] == 2
            # Shadow rules never publish.
            assert all(
                c["rules_version"] == "default-2026.11" for c in topic_values(stack, "tier-changes")
            )
            assert profile(live, "ann")[1]["tier"] == "active"  # type: ignore[index]
        finally:
            live.stop()
        switched = start_worker(stack, tmp_path, "switched", TIERSTREAM_RULES=str(new_rules))
        try:
            # A record per partition lets the agent work through the customers to re-tier.
            asyncio.run(send_ticks(stack.bootstrap, T0 + 7 * DAY_MS))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                moved = [
                    c for c in topic_values(stack, "tier-changes") if c["cause"] == "rules_change"
                ]
                if moved:
                    break
                time.sleep(1)
            assert [
                (c["customer_id"], c["previous_tier"], c["tier"], c["rules_version"]) for c in moved
            ] == [("ann", "active", "vip", "lower-vip-1")]
            assert moved[0]["rule"].endswith(":vip")
            time.sleep(1.5)
            assert profile(switched, "ann")[1]["tier"] == "vip"  # type: ignore[index]
            # Re-tiered too, without a move: only his profile says which rules decided it.
            assert profile(switched, "ben")[1]["rules_version"] == "lower-vip-1"  # type: ignore[index]
        finally:
            switched.stop()
