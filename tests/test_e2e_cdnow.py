"""The acceptance test of the core issue: replay the CDNOW purchase history (plus generated
engagement) through the embedded broker and a real worker, and compare every customer's profile
with a batch computation written separately with pandas over the same file."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pandas as pd
import pytest
import redis

from streams import datasets, readmodel
from streams.demo import read_profiles
from streams.embedded import EmbeddedStack
from tests.e2e_support import fresh_stack, send, start_worker, wait_consumed

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def batch_reference(engagement: list[tuple[str, dict[str, Any]]]) -> pd.DataFrame:
    """Independent of the streaming code: read the raw file with pandas, aggregate per customer."""
    raw = pd.read_csv(
        datasets.cdnow_path(),
        sep=r"\s+",
        header=None,
        names=["customer_id", "date", "cds", "amount"],
        dtype={"customer_id": str, "date": str},
        skiprows=1,
    )
    raw["day"] = pd.to_datetime(raw["date"], format="%Y%m%d")
    raw["cents"] = (raw["amount"] * 100).round().astype("int64")
    per = raw.groupby("customer_id").agg(
        frequency=("cents", "size"),
        cents=("cents", "sum"),
        first=("day", "min"),
        last=("day", "max"),
        days=("day", "nunique"),
    )
    # The customer's clock is the latest event time the worker saw for them (any topic).
    eng = pd.DataFrame(
        [(e["customer_id"], e["occurred_at"]) for _, e in engagement], columns=["customer_id", "at"]
    )
    eng["at"] = pd.to_datetime(eng["at"], utc=True, format="ISO8601").dt.tz_localize(None)
    last_seen = eng.groupby("customer_id")["at"].max()
    purchase_time = per["last"] + pd.Timedelta(hours=12)  # the replay stamps noon UTC
    per["last_event"] = pd.concat([purchase_time, last_seen.reindex(per.index)], axis=1).max(axis=1)
    per["x"] = per["days"] - 1
    per["t_x"] = (per["last"] - per["first"]).dt.days
    return per


def batch_stages(as_of: pd.Timestamp) -> pd.Series:
    """The default lifecycle rules (at risk after 90 days, churned after 180, reactivated when
    the gap before the latest purchase day was a churn-length one), in pandas."""
    raw = pd.read_csv(
        datasets.cdnow_path(),
        sep=r"\s+",
        header=None,
        skiprows=1,
        names=["customer_id", "date", "cds", "amount"],
        dtype={"customer_id": str, "date": str},
    )
    days = pd.to_datetime(raw["date"], format="%Y%m%d").groupby(raw["customer_id"]).unique()

    def stage(purchase_days: object) -> str:
        ordered = sorted(pd.to_datetime(purchase_days))  # type: ignore[arg-type]
        idle = as_of - (ordered[-1] + pd.Timedelta(hours=12))
        if idle >= pd.Timedelta(days=180):
            return "churned"
        if idle >= pd.Timedelta(days=90):
            return "at_risk"
        if len(ordered) >= 2 and ordered[-1] - ordered[-2] >= pd.Timedelta(days=180):
            return "reactivated"
        return "new" if len(ordered) == 1 else "active"

    return days.map(stage)


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedStack, list, list]]:
    purchases = datasets.time_ordered(datasets.cdnow_purchases())
    engagement = datasets.generate_engagement(purchases, seed=7)
    events = datasets.merge_by_time([("purchases", e) for e in purchases], engagement)
    with fresh_stack() as stack:
        worker = start_worker(
            stack,
            tmp_path_factory.mktemp("cdnow"),
            "worker",
            TIERSTREAM_CAMPAIGNS_ON_BACKFILL="true",
        )
        try:
            send(stack, events, backfill=True)
            wait_consumed(worker, len(events), timeout=1800)
            yield stack, engagement, read_profiles(stack.redis_url)
        finally:
            worker.stop()


def test_every_profile_matches_the_batch_computation(
    replay: tuple[EmbeddedStack, list, list],
) -> None:
    _, engagement, profiles = replay
    reference = batch_reference(engagement)
    streamed = {p["customer_id"]: p for p in profiles if p["rfm"]["frequency"]}
    assert len(reference) == 23_570
    assert set(streamed) == set(reference.index)
    mismatches = []
    for cid, row in reference.iterrows():
        p = streamed[cid]
        got = (
            p["rfm"]["frequency"],
            round(p["rfm"]["monetary"] * 100),
            p["first_purchase_at"][:10],
            p["last_purchase_at"][:10],
            p["btyd"]["x"],
            p["btyd"]["t_x"],
            p["btyd"]["T"],
            p["as_of"] >= row["last_event"].strftime("%Y-%m-%dT%H:%M:%S"),
        )
        want = (
            int(row["frequency"]),
            int(row["cents"]),
            row["first"].strftime("%Y-%m-%d"),
            row["last"].strftime("%Y-%m-%d"),
            int(row["x"]),
            int(row["t_x"]),
            # T runs from the first purchase day to the day of the profile's as-of (its
            # partition's clock), which is never before the customer's own last event.
            (pd.Timestamp(p["as_of"][:10]) - row["first"]).days,
            True,
        )
        if got != want:
            mismatches.append((cid, got, want))
    assert not mismatches, f"{len(mismatches)} customers differ, e.g. {mismatches[:5]}"


def test_redis_holds_every_customer(replay: tuple[EmbeddedStack, list, list]) -> None:
    stack, engagement, profiles = replay
    customers = {e["customer_id"] for _, e in engagement} | set(batch_reference(engagement).index)
    assert {p["customer_id"] for p in profiles} == customers
    client = redis.Redis.from_url(stack.redis_url)
    try:
        tiers = sum(
            client.scard(readmodel.tier_key(t)) for t in ("vip", "active", "potential", "ordinary")
        )
        assert tiers == len(customers)
        sample = orjson.loads(client.get(readmodel.customer_key("07592")))
        assert sample["rfm"]["monetary"] == 13_990.93
    finally:
        client.close()


def test_stage_distribution_at_end_of_history_matches_batch(
    replay: tuple[EmbeddedStack, list, list],
) -> None:
    """Advance every partition's clock to the end of 30 June 1998: each customer's stage (and so
    the distribution) equals the batch computation of the same rules at that instant."""
    import asyncio
    import time

    from streams.replay import send_ticks

    stack, _, _ = replay
    end = pd.Timestamp("1998-07-01T00:00:00")
    asyncio.run(send_ticks(stack.bootstrap, int(end.tz_localize("UTC").timestamp() * 1000)))
    expected = batch_stages(end)
    deadline = time.monotonic() + 300
    while True:
        time.sleep(3)
        streamed = {
            p["customer_id"]: p["stage"]
            for p in read_profiles(stack.redis_url)
            if p["rfm"]["frequency"]
        }
        differ = [c for c, st in expected.items() if streamed.get(c) != st]
        if not differ or time.monotonic() > deadline:
            break
    examples = [(c, streamed.get(c), expected[c]) for c in differ[:5]]
    assert not differ, f"{len(differ)} stages differ, e.g. {examples}"
    assert pd.Series(streamed).value_counts().to_dict() == expected.value_counts().to_dict()


def test_campaigns_holdout_share_and_caps(replay: tuple[EmbeddedStack, list, list]) -> None:
    """Over the replay with engagement: each campaign's holdout share is the configured 10%
    within 2 points, and no customer ever gets more treatment sends than the caps allow."""
    from streams.harness import read_topic_sync

    stack, _, _ = replay
    triggers = [r["value"] for r in read_topic_sync(stack.bootstrap, "campaign-triggers")]
    assert len(triggers) > 10_000
    assert len({t["trigger_id"] for t in triggers}) == len(triggers)
    by_campaign: dict[str, list[dict]] = {}
    for t in triggers:
        by_campaign.setdefault(t["campaign"], []).append(t)
    assert {"welcome", "winback", "welcome_back"} <= set(by_campaign)
    for campaign, sent in by_campaign.items():
        if len(sent) >= 1000:
            share = sum(t["variant"] == "holdout" for t in sent) / len(sent)
            assert abs(share - 0.10) <= 0.02, (campaign, share, len(sent))
    hour = 3_600_000
    caps = {"email": [(1, 16 * hour), (3, 168 * hour)], "wechat": [(1, 24 * hour)]}
    sends: dict[tuple[str, str], list[int]] = {}
    for t in triggers:
        if t["variant"] == "treatment":
            sends.setdefault((t["customer_id"], t["channel"]), []).append(
                int(pd.Timestamp(t["send_after"]).timestamp() * 1000)
            )
    for (customer, channel), times in sends.items():
        times.sort()
        for limit, window in caps[channel]:
            for i in range(len(times) - limit):
                assert times[i + limit] - times[i] >= window, (customer, channel, limit)
