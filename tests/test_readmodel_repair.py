"""Rebuilding the Redis read model after Redis lost its data: which table records belong to a
partition, the profile a saved state gives back (the one the segment agent published with it),
and the marker / fill-missing steps against a real redis-server."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from segmentation.bgnbd import DEFAULT_PARAMS
from segmentation.events import InputEvent, parse_event
from segmentation.quantiles import CutPoints
from segmentation.rules import Rules, default_rules, parse_rules_text
from segmentation.state import CustomerState
from segmentation.step import StepResult, apply_event, reevaluate
from segmentation.timeutil import DAY_MS
from streams import readmodel
from streams.embedded import EmbeddedRedis, MissingDependency
from streams.partitioning import partition_for

PARTITIONS = 4
START_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z


def event(topic: str, **doc: Any) -> InputEvent:
    return parse_event(topic, orjson.dumps(doc), now_ms=START_MS + 3_000 * DAY_MS)


def history(customer_id: str, seed: int) -> list[InputEvent]:
    """Purchases, a refund, email and WeChat engagement, in event-time order."""
    rng = random.Random(seed)
    at = START_MS + rng.randrange(30) * DAY_MS
    out: list[InputEvent] = []
    for i in range(rng.randint(1, 8)):
        at += rng.randint(1, 60) * DAY_MS
        cents = rng.randint(500, 40_000)
        out.append(
            event(
                "purchases",
                event_id=f"{customer_id}-p{i}",
                customer_id=customer_id,
                occurred_at=at,
                order_id=f"{customer_id}-o{i}",
                amount=f"{cents // 100}.{cents % 100:02d}",
            )
        )
        if rng.random() < 0.5:
            out.append(
                event(
                    "email-opens",
                    event_id=f"{customer_id}-m{i}",
                    customer_id=customer_id,
                    occurred_at=at + 3_600_000,
                    message_id=f"m{i}",
                )
            )
    if rng.random() < 0.5:
        out.append(
            event(
                "purchases",
                event_id=f"{customer_id}-r",
                customer_id=customer_id,
                occurred_at=at + DAY_MS,
                order_id=f"{customer_id}-o0",
                amount="3.00",
                kind="refund",
            )
        )
    out.append(
        event(
            "wechat-interactions",
            event_id=f"{customer_id}-w",
            customer_id=customer_id,
            occurred_at=at + 2 * DAY_MS,
            kind="follow",
        )
    )
    return out


def published(rules: Rules, events: list[InputEvent]) -> tuple[CustomerState, dict[str, Any]]:
    """What the segment agent saves and publishes after the last event (as JSON travels)."""
    state: CustomerState | None = None
    result: StepResult | None = None
    for ev in events:
        result = apply_event(state, ev, rules, DEFAULT_PARAMS)
        state = result.state
    assert result is not None and result.state is not None and result.profile is not None
    # Through the table's bytes, as the worker stores it.
    saved = CustomerState.from_bytes(result.state.to_bytes())
    return saved, orjson.loads(orjson.dumps(result.profile))


def quantile_rules() -> Rules:
    text = resources.files("segmentation").joinpath("default_rules.toml").read_text()
    rules = parse_rules_text(text.replace('method = "fixed"', 'method = "quantile"'), fmt="toml")
    cuts = CutPoints(
        recency=(20.0, 60.0, 120.0, 250.0),
        frequency=(1.5, 2.5, 3.5, 5.5),
        monetary=(40.0, 120.0, 300.0, 700.0),
        version="cut-test",
        computed_at_ms=START_MS,
        population=1_000,
    )
    return rules.with_cutpoints(cuts)


# -- pure logic -------------------------------------------------------------------------------


def test_partition_states_keeps_only_that_partitions_customers() -> None:
    customers = [f"c{i:03d}".encode() for i in range(40)]
    items: list[tuple[bytes, bytes | None]] = [(key, b"state-" + key) for key in customers]
    items += [
        (b"\x00clock:1", b"123"),  # reserved keys of the segment agent
        (b"\x00cutpoints:1", b"{}"),
        (b"\x00erased:abcdef", b"1"),
        (b"c-deleted", None),  # a deleted key some stores still list
    ]
    by_partition = {p: readmodel.partition_states(items, p, PARTITIONS) for p in range(PARTITIONS)}
    for p, states in by_partition.items():
        assert states == [b"state-" + k for k in customers if partition_for(k, PARTITIONS) == p]
    assert sum(len(s) for s in by_partition.values()) == len(customers)
    assert readmodel.partition_states([], 0, PARTITIONS) == []


@pytest.mark.parametrize("scoring", ["fixed", "quantile"])
def test_profile_from_saved_state_is_the_published_profile(scoring: str) -> None:
    rules = default_rules() if scoring == "fixed" else quantile_rules()
    for seed in range(40):
        saved, profile = published(rules, history(f"c{seed}", seed))
        rebuilt = readmodel.profile_from_state(saved.to_bytes(), rules, DEFAULT_PARAMS)
        assert orjson.loads(orjson.dumps(rebuilt)) == profile, seed


def test_profile_from_state_after_a_time_transition() -> None:
    """A customer re-evaluated by the clock (no event) is saved at the boundary's instant."""
    rules = default_rules()
    for seed in range(20):
        saved, _ = published(rules, history(f"t{seed}", seed))
        result = reevaluate(saved, rules, DEFAULT_PARAMS, saved.as_of_ms + 200 * DAY_MS, "time")
        assert result.state is not None and result.profile is not None
        raw = result.state.to_bytes()
        rebuilt = readmodel.profile_from_state(raw, rules, DEFAULT_PARAMS)
        assert orjson.loads(orjson.dumps(rebuilt)) == orjson.loads(orjson.dumps(result.profile))


# -- against a real redis-server -----------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis()
    try:
        server.start()
    except MissingDependency as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def client(redis_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    c = readmodel.connect(redis_server.url)
    await c.flushdb()
    try:
        yield c
    finally:
        await c.aclose()


def profile(customer_id: str, tier: str, stage: str) -> dict[str, Any]:
    return {"customer_id": customer_id, "tier": tier, "stage": stage}


async def members(client: aioredis.Redis, key: str) -> set[str]:
    return {m.decode() if isinstance(m, bytes) else m for m in await client.smembers(key)}


async def test_markers_say_which_partitions_redis_lost(client: aioredis.Redis) -> None:
    assert await readmodel.missing_markers(client, range(PARTITIONS)) == [0, 1, 2, 3]
    for p in (1, 3):
        token = await readmodel.begin_rebuild(client, p)
        assert await readmodel.finish_rebuild(client, p, token)
    assert await readmodel.missing_markers(client, [3, 2, 1, 0, 2]) == [0, 2]
    assert await readmodel.missing_markers(client, []) == []
    await client.flushdb()  # Redis restarted without its data
    assert await readmodel.missing_markers(client, range(PARTITIONS)) == [0, 1, 2, 3]


async def test_a_rebuild_interrupted_by_another_data_loss_leaves_no_marker(
    client: aioredis.Redis,
) -> None:
    token = await readmodel.begin_rebuild(client, 2)
    await client.flushdb()  # lost again while the partition was being rebuilt
    assert not await readmodel.finish_rebuild(client, 2, token)
    assert await readmodel.missing_markers(client, [2]) == [2]
    # A stale token (another rebuild took over) does not finish either.
    first = await readmodel.begin_rebuild(client, 2)
    second = await readmodel.begin_rebuild(client, 2)
    assert not await readmodel.finish_rebuild(client, 2, first)
    assert await readmodel.missing_markers(client, [2]) == [2]
    assert not await readmodel.finish_rebuild(client, 2, second)  # its token was taken
    third = await readmodel.begin_rebuild(client, 2)
    assert await readmodel.finish_rebuild(client, 2, third)
    assert await readmodel.missing_markers(client, [2]) == []


async def test_fill_missing_writes_only_customers_redis_does_not_hold(
    client: aioredis.Redis,
) -> None:
    # Written from the profiles topic since Redis came back: newer than the table snapshot.
    newer = profile("a", "vip", "active")
    await readmodel.write_batch(client, {"a": newer})
    snapshot = {
        "a": profile("a", "potential", "new"),
        "b": profile("b", "active", "active"),
        "c": profile("c", "ordinary", "churned"),
    }
    assert await readmodel.fill_missing(client, snapshot) == 2
    assert await readmodel.read_profile(client, "a") == newer
    assert await readmodel.read_profile(client, "b") == snapshot["b"]
    assert await readmodel.read_profile(client, "c") == snapshot["c"]
    assert await members(client, readmodel.tier_key("vip")) == {"a"}
    assert await members(client, readmodel.tier_key("potential")) == set()
    assert await members(client, readmodel.tier_key("active")) == {"b"}
    assert await members(client, readmodel.stage_key("churned")) == {"c"}
    assert await readmodel.fill_missing(client, snapshot) == 0
    assert await readmodel.fill_missing(client, {}) == 0


# -- the batch writer ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
async def test_batches_leave_each_customer_in_exactly_its_latest_tier_and_stage(
    client: aioredis.Redis, seed: int
) -> None:
    """Random batches of moves and erasures, with custom tier names: after each, Redis holds
    every customer's latest profile and each customer in exactly its tier's and stage's set (the
    model of what the one-script batch writer must leave, as the per-command writer did)."""
    rng = random.Random(seed)
    tiers = ("gold", "silver", "bronze")
    stages = ("new", "active", "at_risk", "churned")
    expected: dict[str, dict[str, Any]] = {}
    customers = [f"c{n}" for n in range(30)] + ["名字-1", "with space"]
    for _ in range(8):
        batch: dict[str, dict[str, Any] | None] = {}
        for cid in rng.sample(customers, 12):
            if cid in expected and rng.random() < 0.2:
                batch[cid] = None
            else:
                batch[cid] = profile(cid, rng.choice(tiers), rng.choice(stages))
        await readmodel.write_batch(client, batch, tiers, stages)
        for cid, doc in batch.items():
            if doc is None:
                expected.pop(cid, None)
            else:
                expected[cid] = doc
        for cid in customers:
            stored = await readmodel.read_profile(client, cid)
            assert stored == expected.get(cid), cid
        for tier in tiers:
            want = {c for c, d in expected.items() if d["tier"] == tier}
            assert await members(client, readmodel.tier_key(tier)) == want, tier
        for stage in stages:
            want = {c for c, d in expected.items() if d["stage"] == stage}
            assert await members(client, readmodel.stage_key(stage)) == want, stage


async def test_the_batch_writer_survives_redis_forgetting_its_scripts(
    client: aioredis.Redis,
) -> None:
    """A Redis restart empties its script cache: the next batch loads the script again."""
    await readmodel.write_batch(client, {"a": profile("a", "vip", "active")})
    await client.script_flush()
    await readmodel.write_batch(client, {"a": profile("a", "ordinary", "at_risk")})
    assert await readmodel.read_profile(client, "a") == profile("a", "ordinary", "at_risk")
    assert await members(client, readmodel.tier_key("vip")) == set()
    assert await members(client, readmodel.stage_key("at_risk")) == {"a"}
    await readmodel.write_batch(client, {})  # nothing to write: no call
