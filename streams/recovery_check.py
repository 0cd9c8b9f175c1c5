"""Checking Faust's table recovery against the changelog's real end (and repairing it).

Why: Faust restores a table by reading each of its changelog partitions up to the high-water mark
that ListOffsets reports, then declares the table ready and resumes the streams. The embedded
broker (Tansu) answers ListOffsets "latest" with the base offset of the partition's last record
batch + 1, not with the last offset + 1 (see notes/faust-and-tansu.md), and a table writer's
changelog is produced in batches. Recovery therefore stops up to one batch short. Records of
that last batch that happen to arrive in the same fetch are queued, but Faust applies them only
at the *next* rebalance; the stream resumes without them, and every event of those customers
is then folded into stale state and written back: state lost, silently.

What: after every recovery, before the stream partitions resume (Faust awaits
`app.on_rebalance_complete` first), `RecoveryCheck` reads each active changelog partition of the
table from the offset Faust waited for to its real end (Fetch responses carry the right high
watermark on Tansu, and we read until the position reaches it and the partition is quiet), and
compares the last value of every key in that tail with what the table holds. What differs is
re-applied through the table's own `apply_changelog_batch` (so a RocksDB store also records the
offset), logged and counted:

- `tierstream_changelog_tail_records_total{table}`: records found past the high-water mark
  that Faust's recovery used (0 on Apache Kafka; > 0 is the Tansu gap).
- `tierstream_changelog_tail_reapplied_total{table}`: keys whose restored state was missing or
  stale and that were re-applied (the state that would otherwise have been lost).
- `tierstream_changelog_unrecovered_keys{table}`: keys known to be wrong after the check
  (re-applying disabled or failed). Alert on > 0.
- `tierstream_changelog_recovery_check_errors_total{table}`: checks that could not finish.

On Apache Kafka the tail is empty and the check costs one short fetch per rebalance.

`changelog_ends()` is the same probe from outside a worker (tests, operators).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger("tierstream.recovery")

#: How long a check may take before it gives up (logged as an error, counted).
DEFAULT_TIMEOUT_SECONDS = 30.0
#: A partition whose position has reached the fetch high watermark is also polled until it has
#: been quiet this long, in case a broker's high watermark lags too.
QUIET_SECONDS = 0.3


@dataclass(frozen=True)
class PartitionEnd:
    """One changelog partition: the end ListOffsets reports and the end a reader reaches."""

    partition: int
    reported_end: int
    true_end: int

    @property
    def gap(self) -> int:
        return max(0, self.true_end - self.reported_end)


@dataclass
class CheckResult:
    """What one check found, per changelog partition (for logs and tests)."""

    tail_records: dict[int, int] = field(default_factory=dict)
    reapplied_keys: dict[int, int] = field(default_factory=dict)
    unrecovered_keys: dict[int, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def total_tail(self) -> int:
        return sum(self.tail_records.values())

    @property
    def total_reapplied(self) -> int:
        return sum(self.reapplied_keys.values())

    @property
    def total_unrecovered(self) -> int:
        return sum(self.unrecovered_keys.values())


async def read_to_end(
    consumer: AIOKafkaConsumer,
    starts: Mapping[TopicPartition, int],
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> dict[TopicPartition, list[ConsumerRecord]]:
    """Every record from `starts[tp]` to the real end of each partition, not trusting
    ListOffsets: a partition is done when the consumer's position has reached the high watermark
    of a Fetch response and it has then been quiet for QUIET_SECONDS. Raises TimeoutError."""
    out: dict[TopicPartition, list[ConsumerRecord]] = {tp: [] for tp in starts}
    if not starts:
        return out
    consumer.assign(list(starts))
    for tp, offset in starts.items():
        consumer.seek(tp, max(0, offset))
    pending = set(starts)
    quiet_since: dict[TopicPartition, float] = {}
    deadline = time.monotonic() + timeout
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"changelog not read to its end within {timeout:.0f}s: "
                + ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(pending))
            )
        batch = await consumer.getmany(*pending, timeout_ms=100, max_records=10_000)
        now = time.monotonic()
        for tp, records in batch.items():
            out[tp].extend(records)
            if records:
                quiet_since.pop(tp, None)
        for tp in list(pending):
            if batch.get(tp):
                continue
            highwater = consumer.highwater(tp)
            position = await consumer.position(tp)
            if highwater is None or position < highwater:
                continue
            since = quiet_since.setdefault(tp, now)
            if now - since >= QUIET_SECONDS:
                pending.discard(tp)
    return out


async def partition_ends(
    bootstrap: str | Sequence[str],
    topics: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    **consumer_options: Any,
) -> dict[TopicPartition, PartitionEnd]:
    """For every partition of `topics`: the end ListOffsets reports and the real end (offset of
    the last record + 1, found by reading). On Kafka they are equal; on Tansu the reported one
    can be up to a record batch short."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        client_id="tierstream-end-probe",
        **consumer_options,
    )
    await consumer.start()
    try:
        await consumer.topics()
        tps = [
            TopicPartition(topic, p)
            for topic in dict.fromkeys(topics)
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        reported = await consumer.end_offsets(tps) if tps else {}
        # The last reported record is read too, so an empty tail still proves where the end is.
        starts = {tp: max(0, reported[tp] - 1) for tp in tps}
        tails = await read_to_end(consumer, starts, timeout=timeout)
        return {
            tp: PartitionEnd(
                tp.partition,
                reported[tp],
                max(reported[tp], tails[tp][-1].offset + 1 if tails[tp] else 0),
            )
            for tp in tps
        }
    finally:
        await consumer.stop()


async def changelog_ends(
    bootstrap: str | Sequence[str],
    topic: str,
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    **consumer_options: Any,
) -> dict[int, PartitionEnd]:
    """`partition_ends` of one topic, by partition number."""
    ends = await partition_ends(bootstrap, [topic], timeout=timeout, **consumer_options)
    return {tp.partition: end for tp, end in ends.items()}


@dataclass
class _Changelog:
    """What `Table.apply_changelog_batch` needs of an event: key, value and the message."""

    key: bytes | None
    value: bytes | None
    message: Any


def _as_event(record: ConsumerRecord) -> _Changelog:
    from faust.types import Message

    message = Message(
        record.topic,
        record.partition,
        record.offset,
        record.timestamp / 1000.0,
        record.timestamp_type,
        list(record.headers or ()),
        record.key,
        record.value,
        None,
    )
    return _Changelog(record.key, record.value, message)


class RecoveryCheck:
    """Connected to `app.on_rebalance_complete` by `install()`; see the module docstring."""

    def __init__(
        self,
        app: Any,
        table: Any,
        registry: CollectorRegistry,
        *,
        reapply: bool = True,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        consumer_factory: Callable[[], AIOKafkaConsumer] | None = None,
    ) -> None:
        self.app = app
        self.consumer_factory = consumer_factory or self._consumer
        self.table = table
        self.reapply = reapply
        self.timeout = timeout
        self.last: CheckResult | None = None
        p = "tierstream_changelog_"
        self.tail_records = Counter(
            p + "tail_records_total",
            "Changelog records found past the high-water mark table recovery read to",
            ["table"],
            registry=registry,
        )
        self.reapplied = Counter(
            p + "tail_reapplied_total",
            "Table keys whose restored state was missing or stale and was re-applied",
            ["table"],
            registry=registry,
        )
        self.unrecovered = Gauge(
            p + "unrecovered_keys",
            "Table keys known to differ from their changelog after recovery (alert on > 0)",
            ["table"],
            registry=registry,
        )
        self.errors = Counter(
            p + "recovery_check_errors_total",
            "Post-recovery changelog checks that could not finish",
            ["table"],
            registry=registry,
        )
        name = str(table.name)
        for metric in (self.tail_records, self.reapplied, self.errors):
            metric.labels(table=name)
        self.unrecovered.labels(table=name).set(0)

    def install(self) -> RecoveryCheck:
        self.app.on_rebalance_complete.connect(self.on_rebalance_complete)
        return self

    # -- the check ---------------------------------------------------------------------------

    def _active_changelog_tps(self) -> dict[TopicPartition, int]:
        """Active changelog partitions of the table -> the offset recovery waited for."""
        recovery = self.app.tables.recovery
        topic = self.table.changelog_topic.get_topic_name()
        highwaters: Mapping[Any, int] = getattr(recovery, "active_highwaters", {}) or {}
        out: dict[TopicPartition, int] = {}
        for tp in list(recovery.active_tps):
            if tp.topic != topic:
                continue
            # Faust keeps "ListOffsets end - 1", i.e. the last offset it waited for (-1: empty).
            waited_for = highwaters.get(tp)
            out[TopicPartition(tp.topic, tp.partition)] = (
                int(waited_for) + 1 if waited_for is not None else 0
            )
        return out

    def _consumer(self) -> AIOKafkaConsumer:
        from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth, server_list

        conf = self.app.conf
        return AIOKafkaConsumer(
            bootstrap_servers=server_list(conf.broker, 9092),
            enable_auto_commit=False,
            fetch_max_wait_ms=100,
            client_id=f"{conf.id}-recovery-check",
            **credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context),
        )

    async def check(self) -> CheckResult:
        """Read every active changelog partition's tail, compare, re-apply what is missing."""
        result = CheckResult()
        starts = self._active_changelog_tps()
        if not starts:
            return result
        consumer = self.consumer_factory()
        await consumer.start()
        try:
            tails = await read_to_end(consumer, starts, timeout=self.timeout)
        finally:
            await consumer.stop()
        for tp, records in sorted(tails.items()):
            result.tail_records[tp.partition] = len(records)
            if not records:
                continue
            latest: dict[bytes, ConsumerRecord] = {}
            for record in records:
                if record.key is not None:
                    latest[record.key] = record
            stale = [r for key, r in latest.items() if self._restored(key) != r.value]
            if not stale:
                continue
            if self.reapply:
                stale.sort(key=lambda r: r.offset)
                self.table.apply_changelog_batch([_as_event(r) for r in stale])
                still = [r for r in stale if self._restored(r.key) != r.value]
                result.reapplied_keys[tp.partition] = len(stale) - len(still)
                result.unrecovered_keys[tp.partition] = len(still)
            else:
                result.unrecovered_keys[tp.partition] = len(stale)
        return result

    def _restored(self, key: bytes) -> bytes | None:
        value = self.table.get(key)
        return None if value is None else bytes(value)

    async def on_rebalance_complete(self, sender: Any = None, **kwargs: Any) -> None:
        """Runs after table recovery and before the streams resume. Never raises: a failed
        check is an ERROR log and a metric, not a crashed worker."""
        name = str(self.table.name)
        started = time.monotonic()
        try:
            result = await self.check()
        except Exception as exc:
            self.errors.labels(table=name).inc()
            self.last = CheckResult(error=repr(exc))
            log.error(
                "could not verify the recovery of table %s against its changelog (%r): state "
                "restored from the changelog may be incomplete",
                name,
                exc,
            )
            return
        self.last = result
        self.tail_records.labels(table=name).inc(result.total_tail)
        self.reapplied.labels(table=name).inc(result.total_reapplied)
        self.unrecovered.labels(table=name).set(result.total_unrecovered)
        if result.total_unrecovered:
            log.error(
                "table %s: %d keys differ from their changelog after recovery (per partition: "
                "%s): their state is missing; %s",
                name,
                result.total_unrecovered,
                result.unrecovered_keys,
                "re-applying failed" if self.reapply else "re-applying is disabled",
            )
        if result.total_reapplied:
            log.warning(
                "table %s: recovery stopped short of the changelog's end (the broker reported a "
                "high-water mark below its last record: Tansu's ListOffsets gap); re-applied "
                "%d missing keys from %d tail records (per partition: %s) in %.2fs",
                name,
                result.total_reapplied,
                result.total_tail,
                result.reapplied_keys,
                time.monotonic() - started,
            )
        elif result.total_tail:
            log.info(
                "table %s: %d changelog records past the reported high-water mark were already "
                "restored",
                name,
                result.total_tail,
            )


def install(
    app: Any, table: Any, registry: CollectorRegistry, *, reapply: bool = True
) -> RecoveryCheck:
    """Check (and repair) `table` after every recovery of this worker."""
    return RecoveryCheck(app, table, registry, reapply=reapply).install()
