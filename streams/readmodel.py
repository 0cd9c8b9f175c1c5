"""The Redis read model: every customer's current profile and tier/stage membership.

Writes are idempotent snapshots (the latest profile per customer), pipelined per batch, so a
batch replayed after a failure or a restart converges to the same state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import orjson
import redis.asyncio as aioredis

from segmentation.lifecycle import STAGES
from segmentation.rules import TIERS

PREFIX: Final = "tierstream:"


def customer_key(customer_id: str) -> str:
    return f"{PREFIX}customer:{customer_id}"


def tier_key(tier: str) -> str:
    return f"{PREFIX}tier:{tier}"


def stage_key(stage: str) -> str:
    return f"{PREFIX}stage:{stage}"


def connect(
    url: str, *, password: str | None = None, tls: bool = False, ssl_ca_file: str | None = None
) -> aioredis.Redis:
    kwargs: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 5}
    if password:
        kwargs["password"] = password
    if tls or ssl_ca_file:
        # redis-py picks TLS by the URL scheme; ssl_* options on a redis:// URL are a TypeError.
        if url.startswith("redis://"):
            url = "rediss://" + url[len("redis://") :]
        if ssl_ca_file:
            kwargs["ssl_ca_certs"] = ssl_ca_file
    return aioredis.Redis.from_url(url, **kwargs)


async def write_batch(
    client: aioredis.Redis,
    profiles: Mapping[str, dict[str, Any] | None],
    tiers: Iterable[str] = TIERS,
    stages: Iterable[str] = STAGES,
) -> None:
    """Write the latest profile of each customer (None = erased) in one pipelined transaction."""
    tiers, stages = tuple(tiers), tuple(stages)
    pipe = client.pipeline(transaction=True)
    for customer_id, profile in profiles.items():
        for tier in tiers:
            if profile is None or profile["tier"] != tier:
                pipe.srem(tier_key(tier), customer_id)
        for stage in stages:
            if profile is None or profile["stage"] != stage:
                pipe.srem(stage_key(stage), customer_id)
        if profile is None:
            pipe.delete(customer_key(customer_id))
        else:
            pipe.set(customer_key(customer_id), orjson.dumps(profile))
            pipe.sadd(tier_key(profile["tier"]), customer_id)
            pipe.sadd(stage_key(profile["stage"]), customer_id)
    await pipe.execute()


async def read_profile(client: aioredis.Redis, customer_id: str) -> dict[str, Any] | None:
    raw = await client.get(customer_key(customer_id))
    return None if raw is None else orjson.loads(raw)


async def read_counts(
    client: aioredis.Redis, tiers: Iterable[str] = TIERS
) -> dict[str, dict[str, int]]:
    tiers = tuple(tiers)
    pipe = client.pipeline(transaction=False)
    for tier in tiers:
        pipe.scard(tier_key(tier))
    for stage in STAGES:
        pipe.scard(stage_key(stage))
    counts = await pipe.execute()
    return {
        "tiers": dict(zip(tiers, counts[: len(tiers)], strict=True)),
        "stages": dict(zip(STAGES, counts[len(tiers) :], strict=True)),
    }
