"""The read-model agent: profiles topic -> Redis, in pipelined batches.

Redis is not the source of truth. When it is down this agent retries the same batch with backoff
(it lags; the segment agent keeps going), and since the profiles topic holds every update, the
read model catches up from Kafka when Redis is back, with no outbox of its own."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
import orjson
from redis.exceptions import RedisError

from streams import readmodel
from streams import topics as names
from streams.app import Runtime

log = logging.getLogger("tierstream.readmodel")

BATCH_SIZE = 1000
BATCH_WITHIN_SECONDS = 0.2
MAX_BACKOFF_SECONDS = 5.0


async def write_with_retry(
    runtime: Runtime, batch: dict[str, dict[str, Any] | None], updates: int
) -> None:
    """Write until Redis takes it; `updates` is how many profile records the batch folds."""
    m = runtime.metrics
    backoff = 0.1
    while True:
        try:
            await readmodel.write_batch(runtime.redis, batch, runtime.rules.tier_names)
            runtime.profiles_written += updates
            return
        except (RedisError, OSError) as exc:
            m.redis_write_failures.inc()
            log.warning("Redis write failed (%s); retrying in %.1fs", type(exc).__name__, backoff)
            await asyncio.sleep(backoff)
            backoff = min(MAX_BACKOFF_SECONDS, backoff * 2)


def register_readmodel_agent(runtime: Runtime) -> faust.types.AgentT:
    s = runtime.settings
    runtime.redis = readmodel.connect(
        s.redis_url,
        password=s.redis_password.value or None,
        tls=s.redis_tls,
        ssl_ca_file=str(s.redis_ca_file) if s.redis_ca_file else None,
    )

    async def write_profiles(stream: faust.StreamT) -> None:
        batches = stream.take_events(  # type: ignore[attr-defined]
            BATCH_SIZE, within=BATCH_WITHIN_SECONDS
        )
        async for values in batches:
            latest: dict[str, dict[str, Any] | None] = {}
            for event in values:
                key = event.key
                if not key:
                    continue
                customer_id = key.decode("utf-8", "replace")
                latest[customer_id] = orjson.loads(event.value) if event.value else None
            if latest:
                await write_with_retry(runtime, latest, len(values))

    @runtime.app.timer(interval=10.0)
    async def refresh_population_gauges() -> None:
        try:
            counts = await readmodel.read_counts(runtime.redis, runtime.rules.tier_names)
        except (RedisError, OSError):
            return
        for tier, n in counts["tiers"].items():
            runtime.metrics.customers_by_tier.labels(tier=tier).set(n)
        for stage, n in counts["stages"].items():
            runtime.metrics.customers_by_stage.labels(stage=stage).set(n)

    return runtime.app.agent(runtime.out[names.PROFILES], name="tierstream.readmodel")(
        write_profiles
    )
