"""Consumer lag: `tierstream_consumer_lag{topic,partition}` for the input partitions this worker
owns, refreshed by a Faust timer.

Lag is the high-water mark (the offset the next record produced to the partition will get) minus
the group's committed offset (the next record the group would read after a restart), in
messages, as kafka-consumer-groups.sh reports it. Before the first commit on a partition the
consumer's fetch position stands in for the committed offset. Label sets of partitions the worker
no longer owns (after a rebalance) are removed, so a sum over workers counts every partition once.

The high-water mark is the larger of two readings, each of which can only be too low:
- the one in the consumer's last fetch response for the partition (stale while the partition is
  paused or not fetched yet), and
- a ListOffsets "latest" request, sent for all owned input partitions once per refresh. On
  Apache Kafka it is exact. On the embedded broker (Tansu) it answers the base offset of the
  partition's last record *batch* + 1 instead of its last offset + 1 (notes/faust-and-tansu.md),
  so there the fetch response's value is the one used; when Tansu's answer is the only one (a
  partition not fetched since it was assigned, or paused during recovery) lag reads too low.
The worker logs once when it sees a broker under-report this way. A reading below the committed
offset is reported as 0.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import Gauge

from segmentation.events import INPUT_TOPICS

if TYPE_CHECKING:
    from streams.app import Runtime

log = logging.getLogger("tierstream.lag")

UNDER_REPORTED_HIGHWATER = (
    "the broker's ListOffsets answer for %s[%d] (%d) is below the high-water mark seen in fetch "
    "responses (%d): it under-reports high-water marks (the embedded Tansu broker answers the "
    "base offset of the last record batch + 1). tierstream_consumer_lag uses the fetch "
    "responses' value, and reads too low for partitions not fetched yet; on Kafka it is exact"
)


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    position: int  # committed offset, or the fetch position before the first commit
    fetched_highwater: int | None  # from the last fetch response
    listed_highwater: int | None  # from ListOffsets

    @property
    def highwater(self) -> int:
        readings = [h for h in (self.fetched_highwater, self.listed_highwater) if h is not None]
        return max(readings) if readings else self.position

    @property
    def lag(self) -> int:
        return max(0, self.highwater - self.position)

    @property
    def broker_under_reports(self) -> bool:
        return (
            self.fetched_highwater is not None
            and self.listed_highwater is not None
            and self.listed_highwater < self.fetched_highwater
        )


@dataclass
class LagMonitor:
    """Samples a Faust consumer and keeps the lag gauge's label sets equal to its assignment."""

    gauge: Gauge
    topics: frozenset[str] = frozenset(INPUT_TOPICS)
    labelled: set[tuple[str, str]] = field(default_factory=set)
    warned_under_report: bool = False

    async def sample(self, consumer: Any) -> list[PartitionLag]:
        """One reading of every owned input partition (none while the consumer is not started,
        or between a revocation and the next assignment)."""
        try:
            assignment: Collection[Any] = consumer.assignment()
        except Exception:  # ConsumerNotStarted, or mid-rebalance
            return []
        tps = sorted(
            (tp for tp in assignment if tp.topic in self.topics),
            key=lambda tp: (tp.topic, tp.partition),
        )
        if not tps:
            return []
        fetched: dict[Any, int | None] = {}
        for tp in tps:
            try:
                fetched[tp] = consumer.highwater(tp)
            except Exception:  # revoked since assignment() (aiokafka asserts)
                fetched[tp] = None
        try:
            listed: Mapping[Any, int] = await consumer.highwaters(*tps)
        except Exception as exc:
            log.debug("ListOffsets for the lag metric failed: %r", exc)
            listed = {}
        # `.get`: Faust's mapping is a defaultdict; indexing it would add keys.
        committed: Mapping[Any, int | None] = getattr(consumer, "_committed_offset", {})
        out = []
        for tp in tps:
            position = committed.get(tp)
            if position is None:
                try:
                    position = await consumer.position(tp)
                except Exception:
                    position = None
            if position is None:
                continue
            hw_fetched, hw_listed = fetched.get(tp), listed.get(tp)
            if hw_fetched is None and hw_listed is None:
                continue
            out.append(
                PartitionLag(
                    tp.topic,
                    tp.partition,
                    int(position),
                    None if hw_fetched is None else int(hw_fetched),
                    None if hw_listed is None else int(hw_listed),
                )
            )
        return out

    def publish(self, readings: Collection[PartitionLag]) -> None:
        """Set the gauge from `readings` and drop the label sets of partitions not in them."""
        current = set()
        for r in readings:
            labels = (r.topic, str(r.partition))
            current.add(labels)
            self.gauge.labels(*labels).set(r.lag)
            if r.broker_under_reports and not self.warned_under_report:
                self.warned_under_report = True
                log.warning(
                    UNDER_REPORTED_HIGHWATER,
                    r.topic,
                    r.partition,
                    r.listed_highwater,
                    r.fetched_highwater,
                )
        for labels in self.labelled - current:
            with contextlib.suppress(KeyError):
                self.gauge.remove(*labels)
        self.labelled = current

    async def update(self, consumer: Any) -> None:
        self.publish(await self.sample(consumer))


def register_lag_monitor(runtime: Runtime, *, interval: float | None = None) -> LagMonitor:
    """A timer on `runtime.app` that refreshes `runtime.metrics.consumer_lag` every `interval`
    seconds (default `TIERSTREAM_LAG_INTERVAL_SECONDS`, 5). It runs on every worker: each one
    reports the partitions it owns."""
    app = runtime.app
    monitor = LagMonitor(runtime.metrics.consumer_lag)
    seconds = interval if interval is not None else runtime.settings.lag_interval_seconds

    @app.timer(interval=seconds, name="tierstream.consumer_lag")
    async def refresh_consumer_lag() -> None:
        try:
            await monitor.update(app.consumer)
        except Exception:  # a metric never takes the worker down
            log.exception("consumer lag refresh failed")

    return monitor
