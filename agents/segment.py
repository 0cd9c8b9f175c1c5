"""The state-owning agent: decode, call the pure core, write the customer's one state record,
publish what changed. Nothing in here decides a tier, a stage or a campaign.

It also runs the partition clock: every input record first advances its partition's clock to
its event time (ticks carry wall time in live mode), which re-evaluates exactly the customers
whose next boundary passed, at the boundary's own instant.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import faust
import orjson
from aiokafka.consumer.fetcher import FetchResult
from faust.types import TP

from segmentation.dueindex import due_states
from segmentation.errors import InvalidEvent
from segmentation.events import INPUT_TOPICS, SUPPRESSIONS, InputEvent, parse_event
from segmentation.jsonbytes import dumps
from segmentation.quantiles import CutPoints
from segmentation.state import NO_TIME, CustomerState
from segmentation.step import StepResult, apply_event, reevaluate
from segmentation.timeutil import to_rfc3339
from streams import topics as names
from streams.app import Runtime
from streams.deadletter import build_dead_letter, max_request_bytes
from streams.ordering import InOrderAcks, PartitionOrder
from streams.partitioning import partition_for
from streams.readmodel import profile_headers
from streams.writebehind import WriteBehind

log = logging.getLogger("tierstream.segment")

# Reserved table keys (customer ids cannot hold control characters, so these never collide).
CLOCK_KEY = b"\x00clock:%d"
CUTPOINTS_KEY = b"\x00cutpoints:%d"
ERASED_PREFIX = b"\x00erased:"
# Per input topic-partition: every record at or before this offset was folded. A redelivery
# (a crash between fold and commit, a consumer group reset to the start) is recognised by its
# offset whatever the event-id window holds.
APPLIED_KEY = b"\x00applied:%s:%d"
APPLIED_SAVE_EVERY = 1000  # records, or...
APPLIED_SAVE_SECONDS = 1.0  # ...seconds, whichever comes first: one table write, not one per record
FLUSH = orjson.dumps({"flush": True})


@dataclass(slots=True)
class Pending:
    """A valid input record held for its event-time turn."""

    message: Any
    value: bytes
    event: InputEvent
    backfill: bool


def erased_key(customer_id: str) -> bytes:
    """The marker an erasure leaves: a digest, so the id itself is not kept."""
    return (
        ERASED_PREFIX + hashlib.blake2b(customer_id.encode(), digest_size=16).hexdigest().encode()
    )


def _header(headers: Any, name: str) -> bytes | None:
    if not headers:
        return None
    items = headers.items() if isinstance(headers, dict) else headers
    for key, value in items:
        if key == name:
            return bytes(value) if value is not None else b""
    return None


def aiokafka_client(consumer: Any) -> Any:
    """The aiokafka consumer under Faust's (its consumer thread owns it: plain attribute reads
    only). Private to Faust: callers treat any error as "not reachable"."""
    return consumer._thread._ensure_consumer()


def fetched_not_received(consumer: Any, tp: TP, seen: int) -> bool:
    """Whether this worker's Kafka client holds records of `tp` after offset `seen` that have
    not reached the agent: drained from the client (its position is past them) but still in
    Faust's queues, or still in the client's fetch buffer.

    The fetch response's high-water mark alone misses these where a broker under-reports it:
    the embedded broker answers the base offset of the partition's last record batch + 1, so
    once the agent has the first record of that batch the rest looks absent, and a topic
    whose remaining records queue behind another topic's would be taken for quiet (its records
    then fold late, at another instant). On Kafka the high-water mark covers them; this check
    is true there too. Reads the aiokafka client's state (Faust's consumer thread owns it:
    plain attribute reads), and says False where that is not reachable."""
    try:
        client = aiokafka_client(consumer)
        state = client._subscription.subscription.assignment.state_value(tp)
        if state is not None and state.has_valid_position and state.position > seen + 1:
            return True
        return isinstance(client._fetcher._records.get(tp), FetchResult)
    except Exception:  # another client or version: the high-water mark alone decides
        return False


class SegmentProcessor:
    """Per-record handling, separated from the `async for` so tests can drive it directly."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.orders: dict[int, PartitionOrder[Pending]] = {}
        self.acks: InOrderAcks[Any] = InOrderAcks()
        self.to_ack: list[Any] = []  # Faust events whose offsets may now be committed
        self.applied: dict[tuple[str, int], int] = {}
        self.applied_saved: dict[tuple[str, int], tuple[int, float]] = {}
        self.flush_requested: set[int] = set()
        self.children: dict[tuple[Any, ...], Any] = {}  # see `child`
        # The last offset received per input topic-partition, to tell a quiet topic from a
        # backlogged one (see `behind`).
        self.received: dict[tuple[str, int], int] = {}
        # Per partition, the latest step of each customer touched by the current batch (None:
        # erased): the read model needs only the last profile, so one is rendered and published
        # per customer per batch, not one per event.
        self.profiles: dict[int, dict[bytes, StepResult | None]] = {}
        s = runtime.settings
        self.writes = WriteBehind(
            runtime.customers, max_records=s.flush_records, max_seconds=s.flush_ms / 1000
        )

    # -- acknowledgement ---------------------------------------------------------------------
    def done(self, message: Any) -> None:
        """The record is folded (or dead-lettered, forwarded, skipped): it is acknowledged once
        its batch's outputs are delivered and its state written (streams/writebehind.py)."""
        self.writes.folded(message.partition, message)

    async def flush(self, partition: int, *, force: bool = False) -> None:
        """Seal the partition's batch if it is due, and write the sealed batches whose outputs
        are delivered (must run in a record of `partition`). `force` seals whatever is open and
        waits for every delivery: a flush record, when the partition may be quiet."""
        writes = self.writes
        if force or writes.due(partition):
            await self.send_profiles(partition)
            self.put_clock(partition)
            writes.seal(partition)
        written = await writes.flush(partition) if force else writes.collect(partition)
        if not written:
            return
        for message in written:
            self.finished(message)
        self.save_applied(partition)

    def put_clock(self, partition: int) -> None:
        """Persist the partition clock with the batch, as its last write. A restarted worker
        resumes from this clock and refolds what came after the batch: had the clock been
        written before some of the batch's states (a kill part-way through the flush), the
        events of those customers would be folded again behind a clock already past them,
        evaluated at the wrong instant, and their changes published under other ids."""
        rt = self.rt
        clock = rt.clocks.get(partition, NO_TIME)
        if clock != NO_TIME and clock != rt.clock_persisted.get(partition, NO_TIME):
            self.writes.put(partition, CLOCK_KEY % partition, str(clock).encode())
            rt.clock_persisted[partition] = clock

    def queue_profile(self, partition: int, key: bytes, step: StepResult | None) -> None:
        batch = self.profiles.setdefault(partition, {})
        if key not in batch:
            self.rt.profiles_pending += 1
        batch[key] = step

    async def send_profiles(self, partition: int) -> None:
        """Publish the batch's profiles; the batch's state waits for their delivery too."""
        batch = self.profiles.pop(partition, None)
        if not batch:
            return
        self.rt.profiles_pending -= len(batch)
        for key, step in batch.items():
            profile = step.profile if step is not None else None
            value = headers = None
            if profile is not None:
                value, headers = dumps(profile), profile_headers(profile)
            # The profiles topic is co-partitioned with the inputs (the read model relies on
            # it), so the partition is known: no key hashing in the producer's partitioner.
            await self.send(
                partition,
                names.PROFILES,
                key=key,
                value=value,
                partition=partition,
                headers=headers,
            )
            self.rt.profiles_sent += 1

    async def send(
        self,
        batch: int,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Publish, and let the batch of partition `batch` wait for the delivery."""
        self.writes.sent(batch, await self.rt.produce(topic, key, value, partition, headers))

    def finished(self, message: Any) -> None:
        """The record is done (folded, dead-lettered, forwarded or skipped)."""
        key = (message.topic, message.partition)
        ready = self.acks.processed(key, message.offset)
        self.to_ack.extend(ready)
        if ready and message.topic != names.TICKS:
            self.applied[key] = max(self.applied.get(key, -1), self.acks.done_through[key])

    def save_applied(self, partition: int) -> None:
        """Persist the folded offsets of this partition's input topics now and then (must run
        while a record of `partition` is being processed: it writes the table)."""
        now = time.monotonic()
        for topic in INPUT_TOPICS:
            key = (topic, partition)
            done = self.applied.get(key)
            if done is None:
                continue
            saved, at = self.applied_saved.get(key, (-1, 0.0))
            if done > saved and (
                done - saved >= APPLIED_SAVE_EVERY or now - at >= APPLIED_SAVE_SECONDS
            ):
                self.rt.customers[APPLIED_KEY % (topic.encode(), partition)] = str(done).encode()
                self.applied_saved[key] = (done, now)

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions revoked: what is held here is redelivered to their next owner."""
        gone = set(partitions)
        for partition in gone:
            self.orders.pop(partition, None)
            self.flush_requested.discard(partition)
        for key in [k for k in self.applied if k[1] in gone]:
            self.applied.pop(key, None)
            self.applied_saved.pop(key, None)
        for key in [k for k in self.received if k[1] in gone]:
            del self.received[key]
        self.acks.forget([tp for tp in self.acks.topic_partitions() if tp[1] in gone])
        self.writes.discard(gone)
        for partition in gone:
            self.rt.profiles_pending -= len(self.profiles.pop(partition, {}))
        self.to_ack = [e for e in self.to_ack if e.message.partition not in gone]
        self.rt.metrics.events_held.set(self.held())

    def revoked(self, partitions: Iterable[int]) -> None:
        """Another worker may own these partitions now: forget what is held and batched here
        (it is redelivered), and their due index and clock, rebuilt from the table when they
        come back. A clock kept in memory would be past the records of the discarded batch, and
        folding them again behind it evaluates them at the wrong instant (other change ids)."""
        gone = set(partitions)
        rt = self.rt
        rt.due.drop(gone)
        for partition in gone:
            rt.clocks.pop(partition, None)
            rt.clock_persisted.pop(partition, None)
        self.forget(gone)

    def flushes_needed(self) -> list[int]:
        """The partitions to send a flush record to (the agent's timer does): records held for
        a topic that has since gone quiet, a batch that waited its time out, or a delivered
        batch not yet written. Each is counted as requested until its flush record comes."""
        now = self.rt.now_ms()
        due = set(self.writes.overdue())
        for partition, order in list(self.orders.items()):
            if order.release_possible(
                now, self.behind_on(partition), self.polled_since_on(partition)
            ):
                due.add(partition)
        wanted = sorted(due - self.flush_requested)
        self.flush_requested.update(wanted)
        return wanted

    def held(self) -> int:
        return sum(len(order) for order in self.orders.values())

    # -- bad input ---------------------------------------------------------------------------
    async def dead_letter(
        self, message: Any, value: bytes | None, reason: str, detail: str
    ) -> None:
        # The document and its size rule (a payload too big to publish is cut, and says so):
        # streams/deadletter.py.
        letter = build_dead_letter(
            source_topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            reason=reason,
            detail=detail,
            payload=value,
            key=message.key,
            received_at=to_rfc3339(self.rt.now_ms()),
            max_request_bytes=max_request_bytes(self.rt.app),
        )
        await self.send(message.partition, names.DEAD_LETTERS, key=letter.key, value=letter.value)
        # Counted once handed to the producer: a letter that could not be sent is not counted
        # (the caller logs it), so the counters equal the letters published.
        m = self.rt.metrics
        m.events_rejected.labels(topic=message.topic, reason=reason).inc()
        m.dead_letters.labels(topic=message.topic).inc()

    async def forward_if_misrouted(self, message: Any, value: bytes, customer_id: str) -> bool:
        """Re-publish a record that sits on another partition than its customer's (a producer
        with another partitioner, or no key) once, to the right one. Returns True if forwarded."""
        key = customer_id.encode()
        expected = partition_for(key, self.rt.settings.partitions)
        if message.partition == expected:
            return False
        if _header(message.headers, names.FORWARDED_HEADER) is not None:
            # Already forwarded once and still "wrong": the topic's partition count differs from
            # TIERSTREAM_PARTITIONS. Process here rather than loop; the log says why.
            log.error(
                "record on %s[%d] forwarded but still misrouted: check TIERSTREAM_PARTITIONS",
                message.topic,
                message.partition,
            )
            return False
        origin = f"{message.topic}/{message.partition}/{message.offset}".encode()
        headers = [(names.FORWARDED_HEADER, origin)]
        backfill = _header(message.headers, names.BACKFILL_HEADER)
        if backfill is not None:
            headers.append((names.BACKFILL_HEADER, backfill))
        await self.send(
            message.partition,
            message.topic,
            key=key,
            value=value,
            partition=expected,
            headers=headers,
        )
        self.rt.metrics.events_forwarded.labels(topic=message.topic).inc()
        return True

    # -- records -----------------------------------------------------------------------------
    async def handle(self, message: Any, value: bytes | None) -> None:
        rt = self.rt
        topic, partition = message.topic, message.partition
        backfill = _header(message.headers, names.BACKFILL_HEADER) is not None
        if topic == names.TICKS:
            self.flush_requested.discard(partition)
            flush = await self.handle_tick(partition, value, backfill)
            self.done(message)
            await self.flush(partition, force=flush)
            return
        self.child(rt.metrics.events_consumed, topic).inc()
        self._ensure_index(partition)
        order = self.order(partition)
        order.note_arrival(topic, rt.now_ms())
        self.received[(topic, partition)] = message.offset
        if message.offset <= self.applied.get((topic, partition), -1):
            # Folded before (redelivered after a crash or a group reset): nothing to do.
            rt.metrics.events_ignored.labels(topic=topic, reason="redelivered").inc()
            self.done(message)
            await self.flush(partition)
            return
        event = await self.decode(message, value)
        if (
            event is None
            or value is None
            or await self.forward_if_misrouted(message, value, event.customer_id)
        ):
            self.done(message)
        else:
            order.hold(
                topic,
                event.occurred_ms,
                message.offset,
                Pending(message, value, event, backfill),
                rt.now_ms(),
            )
        await self.release(partition)
        await self.flush(partition)

    async def decode(self, message: Any, value: bytes | None) -> InputEvent | None:
        """The validated event, or None once the record is in dead-letters."""
        rt = self.rt
        if value is None:
            await self.dead_letter(
                message, value, "empty_value", "record has no value (tombstone?)"
            )
            return None
        try:
            return parse_event(
                message.topic,
                value,
                now_ms=rt.now_ms(),
                base_currency=rt.settings.base_currency,
                max_future_ms=rt.settings.max_future_seconds * 1000,
            )
        except InvalidEvent as exc:
            await self.dead_letter(message, value, exc.reason, exc.detail)
            return None

    def behind_on(self, partition: int) -> Callable[[str], bool]:
        """Whether records of a topic on this partition exist that have not reached the agent
        yet: in the broker (the high-water mark of the consumer's last fetch is past the last
        one received) or in this worker's Kafka client (`fetched_not_received`). Such a topic
        is backlogged, not quiet, and must not be skipped."""
        consumer = getattr(self.rt.app, "consumer", None)

        def behind(topic: str) -> bool:
            if consumer is None:
                return False
            tp = TP(topic, partition)
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # not fetched yet, or no consumer (tests): time alone decides
                return False
            seen = self.received.get((topic, partition))
            if seen is None:
                committed = getattr(consumer, "_committed_offset", {}).get(tp)
                seen = (committed or 0) - 1
            if highwater is not None and highwater > seen + 1:
                return True
            return fetched_not_received(consumer, tp, seen)

        return behind

    def polled_since_on(self, partition: int) -> Callable[[str, int], bool]:
        """Whether the Kafka client has had a fetch answer for a topic on this partition since
        a wall time (ms): after a pause, a quiet topic's high-water mark is only trusted once it
        is newer than the records that ended the pause (`PartitionOrder.resumed_ms`). aiokafka
        stamps each partition with the wall time of its last fetch answer; where that is not
        reachable (tests, another client), True: the high-water mark alone decides, as before."""
        consumer = getattr(self.rt.app, "consumer", None)

        def polled_since(topic: str, since_ms: int) -> bool:
            if consumer is None:
                return True
            try:
                polled = aiokafka_client(consumer).last_poll_timestamp(TP(topic, partition))
            except Exception:  # not assigned here, or no aiokafka client
                return True
            return polled is None or polled >= since_ms

        return polled_since

    def order(self, partition: int) -> PartitionOrder[Pending]:
        order = self.orders.get(partition)
        if order is None:
            s = self.rt.settings
            order = self.orders[partition] = PartitionOrder(
                INPUT_TOPICS,
                idle_ms=s.order_idle_ms,
                max_held=s.order_max_held,
                now_ms=self.rt.now_ms(),
            )
        return order

    async def release(self, partition: int, *, until_ms: int | None = None) -> None:
        """Fold, in event-time order, every held record whose turn has come."""
        rt = self.rt
        released = self.order(partition).release(
            rt.now_ms(),
            until_ms=until_ms,
            behind=self.behind_on(partition),
            polled_since=self.polled_since_on(partition),
        )
        if released.forced:
            rt.metrics.order_forced.inc(released.forced)
        for pending in released.items:
            try:
                await self.fold(pending, partition)
            except Exception as exc:  # the worker never dies on input
                log.exception(
                    "unexpected error on %s[%d]@%d",
                    pending.message.topic,
                    partition,
                    pending.message.offset,
                )
                await self.dead_letter(
                    pending.message, pending.value, "internal_error", repr(exc)[:500]
                )
            self.done(pending.message)
        rt.metrics.events_held.set(self.held())

    async def fold(self, pending: Pending, partition: int) -> None:
        rt, event = self.rt, pending.event
        cause = "backfill" if pending.backfill else "event"
        if event.occurred_ms < rt.clocks.get(partition, NO_TIME):
            rt.metrics.events_late.labels(topic=event.topic).inc()
        await self.retier_some(partition)
        await self.advance(partition, event.occurred_ms, "backfill" if pending.backfill else "time")
        await self.apply(event, cause, partition)

    async def handle_tick(self, partition: int, value: bytes | None, backfill: bool) -> bool:
        """A tick moves the clock: `{"t": ms, "live": true}` from the live-mode timer (wall
        time), `{"t": ms}` from `tierstream advance` (an explicit event time: every record held
        up to it is folded first), `{"flush": true}` from the idle timer (release, and write
        the batch). Returns whether the batch is to be written now."""
        try:
            doc = orjson.loads(value or b"{}")
            flush = bool(doc.get("flush"))
            at_ms, live = (0, False) if flush else (int(doc["t"]), bool(doc.get("live", False)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            log.warning("ignoring a malformed tick on partition %d", partition)
            return False
        self._ensure_index(partition)
        if flush:
            await self.release(partition)
            return True
        await self.release(partition, until_ms=None if live else at_ms)
        oldest = self.order(partition).oldest_ms()
        if live and oldest is not None:
            # Wall time does not overtake records still held for their turn.
            at_ms = min(at_ms, oldest - 1)
        await self.retier_some(partition)
        await self.advance(partition, at_ms, "backfill" if backfill else "time", live=live)
        return not live

    # -- rules changes -----------------------------------------------------------------------
    async def retier_some(self, partition: int, chunk: int = 500) -> None:
        """Re-evaluate, a chunk per record so the partition keeps flowing, the customers last
        decided under other rules; what moves is published with cause=rules_change."""
        rt = self.rt
        self._ensure_index(partition)
        pending = rt.retier.get(partition)
        if not pending:
            return
        batch, rt.retier[partition] = pending[:chunk], pending[chunk:]
        if rt.rules.cutpoints is not None:
            # Kept in the table (a timer cannot write it) so a restart resumes with them.
            self.writes.put(
                partition, CUTPOINTS_KEY % partition, dumps(rt.rules.cutpoints.to_dict())
            )
        clock = rt.clocks.get(partition, NO_TIME)
        for customer_id in batch:
            key = customer_id.encode()
            raw = self.writes.get(key)
            if raw is None:
                continue
            state = CustomerState.from_bytes(raw)
            if state.rules_version == rt.rules.version:
                continue  # an event got there first
            result = reevaluate(
                state,
                rt.rules,
                rt.params,
                max(state.as_of_ms, clock),
                "rules_change",
                None,
                rt.policy_for("rules_change"),
            )
            await self.publish(key, result, partition, "rules_change")
        if not rt.retier[partition]:
            log.info(
                "partition %d: every customer re-tiered under rules %s", partition, rt.rules.version
            )

    # -- the clock ---------------------------------------------------------------------------
    def _ensure_index(self, partition: int) -> None:
        """Rebuild the partition's due index from its table partition (after an assignment)."""
        rt = self.rt
        if rt.due.built(partition):
            return
        saved_cuts = rt.customers.get(CUTPOINTS_KEY % partition)
        if saved_cuts is not None and rt.rules.scoring.method == "quantile":
            cuts = CutPoints.from_dict(orjson.loads(saved_cuts))
            current = rt.rules.cutpoints
            if current is None or cuts.computed_at_ms > current.computed_at_ms:
                # The cut points in force before a restart, so scores do not fall back to the
                # fixed thresholds until the next refresh.
                rt.rules = rt.rules.with_cutpoints(cuts)
        started = time.monotonic()
        entries = []
        stale = []
        for key, raw in rt.customers.items():
            if key.startswith(b"\x00") or raw is None:
                continue
            if partition_for(key, rt.settings.partitions) != partition:
                continue
            doc = orjson.loads(raw)
            due = doc.get("d")
            if due is not None:
                entries.append((int(due), key.decode()))
            decided = doc.get("p")
            if decided is not None and decided[2] != rt.rules.version:
                stale.append(key.decode())
        rt.due.build(partition, entries)
        rt.retier[partition] = stale
        for topic in INPUT_TOPICS:
            saved = rt.customers.get(APPLIED_KEY % (topic.encode(), partition))
            if saved is not None:
                key = (topic, partition)
                self.applied[key] = max(self.applied.get(key, -1), int(saved))
                self.applied_saved[key] = (int(saved), time.monotonic())
        stored = rt.customers.get(CLOCK_KEY % partition)
        clock = int(stored) if stored is not None else NO_TIME
        rt.clocks[partition] = max(rt.clocks.get(partition, NO_TIME), clock)
        rt.clock_persisted[partition] = clock
        log.info(
            "partition %d: due index rebuilt with %d customers (%d to re-tier under rules %s) "
            "in %.2fs, clock at %s",
            partition,
            len(entries),
            len(stale),
            rt.rules.version,
            time.monotonic() - started,
            to_rfc3339(clock) if clock != NO_TIME else "-",
        )

    async def advance(self, partition: int, at_ms: int, cause: str, *, live: bool = False) -> None:
        """Move the partition's clock to `at_ms` and re-evaluate every customer whose next
        boundary is at or before it, each at its boundary's own instant."""
        rt = self.rt
        self._ensure_index(partition)
        if at_ms <= rt.clocks.get(partition, NO_TIME):
            return
        rt.clocks[partition] = at_ms
        for due_ms, state in due_states(
            rt.due, partition, at_ms, self.load_state, lambda s: s.next_due_ms
        ):
            key = state.customer_id.encode()
            result = reevaluate(
                state, rt.rules, rt.params, due_ms, cause, None, rt.policy_for(cause)
            )
            await self.publish(key, result, partition, cause)
            if live and result.changes:
                rt.metrics.time_transition_lag.observe(max(0.0, (rt.now_ms() - due_ms) / 1000))

    def load_state(self, customer_id: str) -> CustomerState | None:
        raw = self.writes.get(customer_id.encode())
        return CustomerState.from_bytes(raw) if raw is not None else None

    # -- state and outputs -------------------------------------------------------------------
    async def apply(self, event: InputEvent, cause: str, partition: int) -> StepResult | None:
        rt = self.rt
        key = event.customer_id.encode()
        if self.writes.get(erased_key(event.customer_id)) is not None:
            # Erased on request: nothing about this customer is kept or published again.
            rt.metrics.events_ignored.labels(topic=event.topic, reason="erased").inc()
            return None
        raw = self.writes.get(key)
        state = CustomerState.from_bytes(raw) if raw is not None else None
        if event.topic == SUPPRESSIONS and event.kind == "erase":
            await self.erase(key, event, raw is not None, partition)
            return None
        result = apply_event(
            state,
            event,
            rt.rules,
            rt.params,
            cause=cause,
            as_of_ms=rt.clocks.get(partition, NO_TIME),
            policy=rt.policy_for(cause),
        )
        if result.duplicate:
            rt.metrics.events_ignored.labels(topic=event.topic, reason="duplicate").inc()
            return result
        await self.publish(key, result, partition, cause, event.occurred_ms)
        return result

    async def erase(self, key: bytes, event: InputEvent, existed: bool, partition: int) -> None:
        rt = self.rt
        if existed:
            self.writes.put(partition, key, None)
        self.writes.put(partition, erased_key(event.customer_id), str(event.occurred_ms).encode())
        self.queue_profile(partition, key, None)
        rt.metrics.customers_erased.inc()

    async def publish(
        self,
        key: bytes,
        result: StepResult,
        partition: int,
        cause: str,
        event_ms: int | None = None,
    ) -> None:
        """Send the profile and every change, trigger and warning, and put the state in the
        partition's batch, written once these are delivered (streams/writebehind.py)."""
        rt = self.rt
        m = rt.metrics
        assert result.state is not None
        self.queue_profile(partition, key, result)
        emitted = to_rfc3339(rt.now_ms())
        for change in result.changes:
            change["emitted_at"] = emitted
            await self.send(partition, names.TIER_CHANGES, key=key, value=dumps(change))
            self._count_transition(change)
            if event_ms is not None and cause == "event":
                m.processing_latency.observe(max(0.0, time.time() - event_ms / 1000))
        for trigger in result.triggers:
            await self.send(partition, names.CAMPAIGN_TRIGGERS, key=key, value=dumps(trigger))
            self.child(m.campaign_triggers, trigger["campaign"], trigger["variant"]).inc()
        for campaign, reason in result.skipped:
            self.child(m.campaign_triggers_suppressed, campaign, reason).inc()
        for warning in result.warnings:
            await self.send(partition, names.CHURN_WARNINGS, key=key, value=dumps(warning))
            self.child(m.churn_warnings, warning["severity"]).inc()
        self.writes.put(partition, key, result.state.to_bytes())
        if result.state.next_due_ms is not None:
            rt.due.push(partition, result.state.next_due_ms, result.state.customer_id)
        if event_ms is not None:
            rt.latest_event_ms = max(rt.latest_event_ms, event_ms)
            m.last_event_time.set(rt.latest_event_ms / 1000)

    def _count_transition(self, change: dict[str, Any]) -> None:
        m = self.rt.metrics.transitions
        cause = change["cause"]
        if change["previous_tier"] != change["tier"]:
            previous = str(change["previous_tier"] or "none")
            self.child(m, "tier", previous, change["tier"], cause).inc()
        if change["previous_stage"] != change["stage"]:
            previous = str(change["previous_stage"] or "none")
            self.child(m, "stage", previous, change["stage"], cause).inc()

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, remembered: prometheus_client looks a child up under a lock
        on every call, several times per event. The label values are bounded sets (topics,
        tiers, stages, causes, campaigns), so the cache is too."""
        key = (metric, *labels)
        found = self.children.get(key)
        if found is None:
            found = self.children[key] = metric.labels(*labels)
        return found


def register_segment_agent(runtime: Runtime) -> faust.types.AgentT:
    processor = SegmentProcessor(runtime)
    runtime.processor = processor

    async def segment(stream: faust.StreamT) -> None:
        # Acks are ours: a record held for its event-time turn is not committed until folded.
        manual = stream.noack()  # type: ignore[attr-defined]
        async for event in manual.events():
            message = event.message
            processor.acks.arrived((message.topic, message.partition), message.offset, event)
            try:
                await processor.handle(message, event.value)
            except Exception as exc:  # the worker never dies on input
                log.exception(
                    "unexpected error on %s[%d]@%d",
                    message.topic,
                    message.partition,
                    message.offset,
                )
                try:
                    await processor.dead_letter(
                        message, event.value, "internal_error", repr(exc)[:500]
                    )
                except Exception:
                    log.exception(
                        "could not dead-letter %s[%d]@%d",
                        message.topic,
                        message.partition,
                        message.offset,
                    )
                processor.done(message)
            ready, processor.to_ack = processor.to_ack, []
            for done in ready:
                await manual.ack(done)

    async def on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        processor.revoked({tp.partition for tp in revoked})

    runtime.app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]

    if runtime.settings.live_clock:

        @runtime.app.timer(interval=runtime.settings.tick_seconds)
        async def tick() -> None:
            """Live mode: a tick per owned partition carries wall time through the stream (a
            timer may not write tables, the agent may)."""
            now = orjson.dumps({"t": runtime.now_ms(), "live": True})
            owned = {
                tp.partition for tp in runtime.app.consumer.assignment() if tp.topic == names.TICKS
            }
            for partition in sorted(owned):
                await runtime.out[names.TICKS].send(key=None, value=now, partition=partition)

    s = runtime.settings
    # Always on, even with batches of one record: a sealed batch is written at its partition's
    # next record, and a partition that went quiet needs this timer's flush record for it.
    waits = [ms for ms in (s.order_idle_ms, s.flush_ms) if ms > 0]
    interval = min(1.0, max(0.02, min(waits, default=100) / 4000))

    @runtime.app.timer(interval=interval)
    async def release_idle() -> None:
        """Records held for a topic that has since gone quiet, a batch that waited its time
        out, or a delivered batch not yet written, on a partition with no more traffic: a
        flush record through the partition's stream folds and writes them (only a stream may
        write the table)."""
        for partition in processor.flushes_needed():
            await runtime.out[names.TICKS].send(key=None, value=FLUSH, partition=partition)

    return runtime.app.agent(runtime.inputs, name="tierstream.segment")(segment)
