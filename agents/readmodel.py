"""The read-model agent: profiles topic -> Redis, in pipelined batches.

Redis is not the source of truth. When it is down this agent retries the same batch with backoff
(it lags; the segment agent keeps going), and since the profiles topic holds every update, the
read model catches up from Kafka when Redis is back, with no outbox of its own.

If Redis comes back empty, the customers that had no update since stay missing from the topic's
tail; so a timer looks for partitions whose marker is gone and rebuilds them from the table (see
`streams.readmodel`). On Kafka each worker owns some partitions: the profiles topic and the table
are co-partitioned (same partition count, one consumer group), so the worker that consumes a
partition's profiles also holds that partition's table, and only it rebuilds that partition."""

from __future__ import annotations

import asyncio
import logging
import time
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
#: How often each worker checks that Redis still holds its partitions (their markers).
REPAIR_INTERVAL_SECONDS = 5.0
#: Customers written per step of a rebuild (the batch writer waits at most one step).
REPAIR_CHUNK = 1000


async def write_with_retry(
    runtime: Runtime,
    batch: dict[str, dict[str, Any] | None],
    updates: int,
    *,
    lock: asyncio.Lock | None = None,
) -> None:
    """Write until Redis takes it; `updates` is how many profile records the batch folds.
    `lock` keeps a rebuild's check-then-write steps and this write apart."""
    m = runtime.metrics
    backoff = 0.1
    while True:
        try:
            if lock is None:
                await readmodel.write_batch(runtime.redis, batch, runtime.rules.tier_names)
            else:
                async with lock:
                    await readmodel.write_batch(runtime.redis, batch, runtime.rules.tier_names)
            runtime.profiles_written += updates
            return
        except (RedisError, OSError) as exc:
            m.redis_write_failures.inc()
            log.warning("Redis write failed (%s); retrying in %.1fs", type(exc).__name__, backoff)
            await asyncio.sleep(backoff)
            backoff = min(MAX_BACKOFF_SECONDS, backoff * 2)


class ReadModelRepair:
    """Rebuilds, from the table, the partitions of the read model that Redis lost."""

    def __init__(self, runtime: Runtime, lock: asyncio.Lock) -> None:
        self.rt = runtime
        self.lock = lock

    def ready_partitions(self) -> set[int]:
        """The profile partitions this worker consumes, once their table partitions are
        recovered (the same partitions: co-partitioned); none while a rebalance is running."""
        app = self.rt.app
        if app.rebalancing or app.in_recovery:
            return set()
        return {tp.partition for tp in app.consumer.assignment() if tp.topic == names.PROFILES}

    async def check(self) -> None:
        try:
            lost = await readmodel.missing_markers(self.rt.redis, self.ready_partitions())
        except (RedisError, OSError):
            return  # down: the batch writer counts the failures; checked again next time
        for partition in lost:
            try:
                await self.rebuild(partition)
            except (RedisError, OSError) as exc:
                log.warning(
                    "rebuilding partition %d of the read model failed (%s); retrying later",
                    partition,
                    type(exc).__name__,
                )
                return

    async def rebuild(self, partition: int) -> None:
        rt = self.rt
        token = await readmodel.begin_rebuild(rt.redis, partition)
        if partition not in self.ready_partitions():
            return  # a rebalance started: the next owner rebuilds it
        # One synchronous pass: a consistent snapshot of the partition's states.
        states = readmodel.partition_states(
            list(rt.customers.items()), partition, rt.settings.partitions
        )
        started, filled = time.monotonic(), 0
        for i in range(0, len(states), REPAIR_CHUNK):
            profiles: dict[str, dict[str, Any]] = {}
            for raw in states[i : i + REPAIR_CHUNK]:
                profile = readmodel.profile_from_state(raw, rt.rules, rt.params)
                profiles[profile["customer_id"]] = profile
            async with self.lock:
                filled += await readmodel.fill_missing(rt.redis, profiles, rt.rules.tier_names)
        if await readmodel.finish_rebuild(rt.redis, partition, token):
            log.info(
                "read model partition %d rebuilt: %d of %d customers were missing from Redis "
                "(%.2fs)",
                partition,
                filled,
                len(states),
                time.monotonic() - started,
            )
        else:
            log.warning("Redis lost its data again while partition %d was rebuilt", partition)


def register_readmodel_agent(runtime: Runtime) -> faust.types.AgentT:
    s = runtime.settings
    runtime.redis = readmodel.connect(
        s.redis_url,
        password=s.redis_password.value or None,
        tls=s.redis_tls,
        ssl_ca_file=str(s.redis_ca_file) if s.redis_ca_file else None,
    )

    lock = asyncio.Lock()
    repair = ReadModelRepair(runtime, lock)

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
                await write_with_retry(runtime, latest, len(values), lock=lock)

    @runtime.app.timer(interval=REPAIR_INTERVAL_SECONDS)
    async def repair_read_model() -> None:
        await repair.check()

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
