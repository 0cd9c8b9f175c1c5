"""The state-owning agent: decode, call the pure core, write the customer's one state record,
publish what changed. Nothing in here decides a tier or a stage."""

from __future__ import annotations

import base64
import logging
import time
from typing import Any

import faust
import orjson

from segmentation.errors import InvalidEvent
from segmentation.events import InputEvent, parse_event
from segmentation.state import CustomerState
from segmentation.step import StepResult, apply_event
from segmentation.timeutil import to_rfc3339
from streams import topics as names
from streams.app import Runtime
from streams.partitioning import partition_for

log = logging.getLogger("tierstream.segment")


def _header(headers: Any, name: str) -> bytes | None:
    if not headers:
        return None
    items = headers.items() if isinstance(headers, dict) else headers
    for key, value in items:
        if key == name:
            return bytes(value) if value is not None else b""
    return None


class SegmentProcessor:
    """Per-record handling, separated from the `async for` so tests can drive it directly."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def dead_letter(
        self, message: Any, value: bytes | None, reason: str, detail: str
    ) -> None:
        m = self.rt.metrics
        m.events_rejected.labels(topic=message.topic, reason=reason).inc()
        m.dead_letters.labels(topic=message.topic).inc()
        doc = {
            "source_topic": message.topic,
            "partition": message.partition,
            "offset": message.offset,
            "error": f"{reason}: {detail}",
            "reason": reason,
            "payload": base64.b64encode(value or b"").decode("ascii"),
            "key": base64.b64encode(message.key).decode("ascii") if message.key else None,
            "received_at": to_rfc3339(self.rt.now_ms()),
        }
        await self.rt.out[names.DEAD_LETTERS].send(key=message.key, value=orjson.dumps(doc))

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
        headers = [
            (
                names.FORWARDED_HEADER,
                f"{message.topic}/{message.partition}/{message.offset}".encode(),
            )
        ]
        backfill = _header(message.headers, names.BACKFILL_HEADER)
        if backfill is not None:
            headers.append((names.BACKFILL_HEADER, backfill))
        await self.rt.out[message.topic].send(
            key=key, value=value, partition=expected, headers=headers
        )
        self.rt.metrics.events_forwarded.labels(topic=message.topic).inc()
        return True

    async def handle(self, message: Any, value: bytes | None) -> None:
        rt = self.rt
        topic = message.topic
        rt.metrics.events_consumed.labels(topic=topic).inc()
        if value is None:
            await self.dead_letter(
                message, value, "empty_value", "record has no value (tombstone?)"
            )
            return
        try:
            event = parse_event(
                topic,
                value,
                now_ms=rt.now_ms(),
                base_currency=rt.settings.base_currency,
                max_future_ms=rt.settings.max_future_seconds * 1000,
            )
        except InvalidEvent as exc:
            await self.dead_letter(message, value, exc.reason, exc.detail)
            return
        if await self.forward_if_misrouted(message, value, event.customer_id):
            return
        cause = (
            "backfill" if _header(message.headers, names.BACKFILL_HEADER) is not None else "event"
        )
        await self.apply(event, cause)

    async def apply(self, event: InputEvent, cause: str) -> StepResult:
        rt = self.rt
        key = event.customer_id.encode()
        raw = rt.customers.get(key)
        state = CustomerState.from_bytes(raw) if raw is not None else None
        result = apply_event(state, event, rt.rules, rt.params, cause=cause)
        if result.duplicate:
            return result
        if result.erased:
            if raw is not None:
                del rt.customers[key]
            await rt.out[names.PROFILES].send(key=key, value=None)
            rt.profiles_sent += 1
            rt.metrics.customers_erased.inc()
            return result
        assert result.state is not None
        await rt.out[names.PROFILES].send(key=key, value=orjson.dumps(result.profile))
        rt.profiles_sent += 1
        emitted_ms = rt.now_ms()
        for change in result.changes:
            change["emitted_at"] = to_rfc3339(emitted_ms)
            await rt.out[names.TIER_CHANGES].send(key=key, value=orjson.dumps(change))
            self._count_transition(change)
            if cause != "backfill":
                rt.metrics.processing_latency.observe(
                    max(0.0, time.time() - event.occurred_ms / 1000)
                )
        # State last: if a send above fails the event is dead-lettered and, since its event id
        # is not yet remembered, a replay of the dead letter applies it (change ids dedupe).
        rt.customers[key] = result.state.to_bytes()
        rt.metrics.last_event_time.set(
            max(rt.metrics.last_event_time._value.get(), event.occurred_ms / 1000)
        )
        return result

    def _count_transition(self, change: dict[str, Any]) -> None:
        m = self.rt.metrics.transitions
        cause = change["cause"]
        if change["previous_tier"] != change["tier"]:
            m.labels("tier", str(change["previous_tier"]), change["tier"], cause).inc()
        if change["previous_stage"] != change["stage"]:
            m.labels("stage", str(change["previous_stage"]), change["stage"], cause).inc()


def register_segment_agent(runtime: Runtime) -> faust.types.AgentT:
    processor = SegmentProcessor(runtime)

    async def segment(stream: faust.StreamT) -> None:
        async for event in stream.events():
            message = event.message
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

    runtime.processor = processor
    return runtime.app.agent(runtime.inputs, name="tierstream.segment")(segment)
