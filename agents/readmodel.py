"""The read model's feed: profiles topic -> Redis, a whole fetch per script call.

Redis is not the source of truth. When it is down the feed retries the same batch with backoff
(it lags; the segment agent keeps going), and since the profiles topic holds every update, the
read model catches up from Kafka when Redis is back, with no outbox of its own.

If Redis comes back empty, the customers that had no update since stay missing from the topic's
tail; so a timer looks for partitions whose marker is gone and rebuilds them from the table (see
`streams.readmodel`). On Kafka each worker owns some partitions: the profiles topic and the table
are co-partitioned with the inputs (same partition count), and the feed reads the profile
partitions of the input partitions Faust assigned to its worker, so the worker that writes a
partition's profiles also holds that partition's table, and only it rebuilds that partition."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from segmentation.events import INPUT_TOPICS
from streams import readmodel
from streams import topics as names
from streams.app import Runtime, aiokafka_security
from streams.settings import bootstrap_servers

log = logging.getLogger("tierstream.readmodel")

BATCH_SIZE = 1000
BATCH_WITHIN_SECONDS = 0.2
MAX_BACKOFF_SECONDS = 5.0
#: How often each worker checks that Redis still holds its partitions (their markers).
REPAIR_INTERVAL_SECONDS = 5.0
#: Customers written per step of a rebuild (the batch writer waits at most one step).
REPAIR_CHUNK = 1000
#: How long a rebalance waits for the read model's write in flight (see `ProfileFeed.revoke`).
REVOKE_WAIT_SECONDS = 3.0
INPUT_SET = frozenset(INPUT_TOPICS)


async def write_with_retry(
    runtime: Runtime,
    batch: dict[str, readmodel.Profile],
    updates: int,
    *,
    lock: asyncio.Lock | None = None,
    abandoned: Callable[[], bool] = lambda: False,
) -> bool:
    """Write until Redis takes it, or until `abandoned()` says another worker owns part of the
    batch now (it writes them: returns False); `updates` is how many profile records the batch
    folds. `lock` keeps a rebuild's check-then-write steps and this write apart."""
    m = runtime.metrics
    backoff = 0.1
    while True:
        if abandoned():
            # This worker's backlog counter no longer waits for them.
            runtime.profiles_written += updates
            return False
        try:
            if lock is None:
                await readmodel.write_batch(runtime.redis, batch, runtime.rules.tier_names)
            else:
                async with lock:
                    await readmodel.write_batch(runtime.redis, batch, runtime.rules.tier_names)
            runtime.profiles_written += updates
            return True
        except (RedisError, OSError) as exc:
            m.redis_write_failures.inc()
            log.warning("Redis write failed (%s); retrying in %.1fs", type(exc).__name__, backoff)
            # In slices, so a revoke (`abandoned`) does not wait out a long backoff.
            waited = 0.0
            while waited < backoff and not abandoned():
                await asyncio.sleep(min(0.1, backoff - waited))
                waited += 0.1
            backoff = min(MAX_BACKOFF_SECONDS, backoff * 2)


def input_partitions(app: Any) -> set[int]:
    """The input partitions Faust assigned to this worker (its table's active partitions, and
    the profile partitions it writes); not the standby replicas of other workers' tables."""
    return {tp.partition for tp in app.consumer.assignment() if tp.topic in INPUT_SET}


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
        return input_partitions(app)

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


def latest_profiles(records: Iterable[Any]) -> dict[str, readmodel.Profile]:
    """The last profile of each customer among the records (`key`, `value`, `headers`), in
    their order (a value of None: the customer was erased). A record with the tier and stage
    headers (the segment agent sets them) is kept as published, undecoded; one without them
    (published before they existed) is decoded. Records without a key are skipped."""
    latest: dict[str, readmodel.Profile] = {}
    for record in records:
        key, value = record.key, record.value
        if not key:
            continue
        profile: readmodel.Profile = None
        if value:
            found = dict(record.headers or ())
            tier, stage = found.get(names.TIER_HEADER), found.get(names.STAGE_HEADER)
            if tier is not None and stage is not None:
                profile = readmodel.EncodedProfile(tier.decode(), stage.decode(), value)
            else:
                profile = orjson.loads(value)
        latest[key.decode("utf-8", "replace")] = profile
    return latest


class ProfileFeed:
    """Reads the profiles topic in whole fetches with its own Kafka consumer and writes each
    fetch to Redis in one script call.

    Why not a Faust agent: the read model needs nothing of Faust's per-record path (no table,
    no order, no per-record ack), and that path is most of what the bench's counting agent
    costs per record; here it was paid once per profile, on the core the segment agent needs
    (README, Performance: before and after).

    Which partitions: the worker's own. The profiles topic is co-partitioned with the inputs
    and the table, so the feed follows the input partitions Faust assigned to this worker, and
    the partition whose table this worker holds is the one whose profiles it writes (the repair
    relies on that). Its offsets are committed, after each fetch is in Redis, under its own
    group id (`<app id>-readmodel`; it does not join a group, so it cannot take part in Faust's):
    a new owner of a partition starts where the last write ended, at least once, and a profile
    written twice is the same snapshot.

    A revoked partition is dropped before the rebalance goes on (`revoke`): a write of its
    profiles in flight finishes first, and one still retrying against a Redis that is down is
    abandoned uncommitted, for the next owner. So no worker writes a partition's older profiles
    after its next owner wrote newer ones."""

    def __init__(self, runtime: Runtime, lock: asyncio.Lock) -> None:
        self.rt = runtime
        self.lock = lock  # shared with the repair (see `write_with_retry`)
        self.busy = asyncio.Lock()  # held while a fetch is read and written
        self.owned: set[int] = set()  # partitions this feed may write
        self.assigned: set[int] = set()  # partitions its consumer reads
        self.consumer: Any = None

    def wanted(self) -> set[int]:
        """The input partitions Faust assigned to this worker; during a rebalance, what is owned
        and not revoked."""
        app = self.rt.app
        if app.rebalancing:
            return set(self.owned)
        return input_partitions(app)

    def make_consumer(self) -> AIOKafkaConsumer:
        s = self.rt.settings
        assert s.broker is not None
        return AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers(s.broker),
            group_id=f"{s.app_id}-readmodel",
            client_id=f"{s.app_id}-readmodel",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # The embedded broker holds a fetch for its whole wait when nothing is there.
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            **aiokafka_security(s),
        )

    async def run(self) -> None:
        # Faust creates the topics its agents read; this one is read here, so declared here.
        await self.rt.out[names.PROFILES].maybe_declare()
        self.consumer = consumer = self.make_consumer()
        await consumer.start()
        try:
            while True:
                try:
                    async with self.busy:
                        await self.step(consumer)
                except Exception:  # a broker hiccup must not stop the read model for good
                    log.exception("the read model's feed failed; retrying in 1 s")
                    self.assigned = set()  # assign again: positions from the committed offsets
                    await asyncio.sleep(1.0)
                if not self.assigned:
                    await asyncio.sleep(BATCH_WITHIN_SECONDS)
        finally:
            self.consumer = None
            await consumer.stop()

    async def step(self, consumer: Any) -> None:
        """Follow the assignment, then read one fetch and write it."""
        wanted = self.wanted()
        if wanted != self.assigned:
            # Positions restart from the committed offsets: at least once.
            consumer.assign([TopicPartition(names.PROFILES, p) for p in sorted(wanted)])
            self.assigned = wanted
        self.owned = wanted
        if not wanted:
            return
        fetched = await consumer.getmany(
            timeout_ms=int(BATCH_WITHIN_SECONDS * 1000), max_records=BATCH_SIZE
        )
        if fetched:
            await self.write_fetch(fetched)

    async def write_fetch(self, fetched: dict[Any, list[Any]]) -> None:
        """Write one fetch to Redis, then commit its offsets."""
        parts = {tp.partition for tp in fetched}
        records = [r for rs in fetched.values() for r in rs]
        written = await write_with_retry(
            self.rt,
            latest_profiles(records),
            len(records),
            lock=self.lock,
            abandoned=lambda: not parts <= self.owned,
        )
        if not written or self.consumer is None:
            return
        offsets = {
            TopicPartition(tp.topic, tp.partition): rs[-1].offset + 1
            for tp, rs in fetched.items()
            if rs
        }
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:
            # Written but not committed: the next owner writes these snapshots again.
            log.warning("committing the read model's offsets failed (%s)", type(exc).__name__)

    async def revoke(self, partitions: set[int]) -> None:
        """Stop writing `partitions` before the rebalance goes on (see the class)."""
        self.owned -= partitions
        try:
            await asyncio.wait_for(self.busy.acquire(), timeout=REVOKE_WAIT_SECONDS)
        except TimeoutError:
            log.warning(
                "the read model's write did not finish within %.0fs of a rebalance",
                REVOKE_WAIT_SECONDS,
            )
            return
        self.busy.release()


def register_readmodel_agent(runtime: Runtime) -> ProfileFeed:
    s = runtime.settings
    runtime.redis = readmodel.connect(
        s.redis_url,
        password=s.redis_password.value or None,
        tls=s.redis_tls,
        ssl_ca_file=str(s.redis_ca_file) if s.redis_ca_file else None,
    )

    lock = asyncio.Lock()
    repair = ReadModelRepair(runtime, lock)
    feed = ProfileFeed(runtime, lock)

    @runtime.app.task
    async def feed_read_model() -> None:
        await feed.run()

    async def on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        await feed.revoke({tp.partition for tp in revoked if tp.topic in INPUT_SET})

    runtime.app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]

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

    return feed
