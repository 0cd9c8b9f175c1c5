"""Reliability of the per-customer state against the order and the producers of its input.

- Out of order and late: real CDNOW purchases plus generated email and WeChat engagement for a
  subset of customers, replayed once in event-time order and once shuffled within each day with
  ~2% of the events delayed by 1-6 weeks, each through its own broker and worker, both clocks then
  moved to the same end time: every customer ends in the same decisions, and each run's profiles
  are what the pure core computes from the whole history.
- Producers from other ecosystems: each customer's events published half with confluent-kafka
  (librdkafka's default partitioner, CRC32-based, not murmur2) and half with aiokafka,
  interleaved: every profile is what the pure core computes, and nothing is dead-lettered.

The independent expectation (`expected`) folds every customer's events with the pure core, in
time order, with no clock loop. A profile is the customer's standing as of its last evaluation
(`as_of`: the last event or passed boundary, which legitimately differs between arrival orders),
so it is checked two ways: the whole profile equals the core's profile at that same `as_of`, and
its decisions (tier, stage, RFM scores and segment, engagement level, tags) equal the core's at
the end time, which holds only if no boundary between `as_of` and the end was missed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from segmentation.bgnbd import DEFAULT_PARAMS
from segmentation.evaluate import evaluate, profile_of
from segmentation.events import parse_event
from segmentation.rules import default_rules
from segmentation.state import CustomerState
from segmentation.step import apply_event
from segmentation.timeutil import DAY_MS, parse_rfc3339
from streams import datasets
from streams.demo import read_profiles
from streams.embedded import EmbeddedStack
from streams.harness import WorkerProcess, caught_up
from streams.replay import TopicEvent, encode_key, send_ticks
from tests.e2e_support import fresh_stack, send, start_worker, topic_values, wait_consumed

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

END_OF_HISTORY_MS = 899_251_200_000  # 1998-07-01T00:00:00Z
RULES = default_rules()
SEED = 20260506
# The worker's settings for a deterministic comparison: no wall-clock BG/NBD refit mid-run.
WORKER_ENV = {"TIERSTREAM_REFIT_SECONDS": "0"}


# -- the workload -------------------------------------------------------------------------------


def workload(every: int, prospects: int) -> list[TopicEvent]:
    """The CDNOW purchases of every `every`-th customer plus their generated engagement (and
    `prospects` engaged people who never buy), in event-time order."""
    purchases = datasets.time_ordered(
        e for e in datasets.cdnow_purchases() if int(e["customer_id"]) % every == 0
    )
    engagement = datasets.generate_engagement(purchases, seed=SEED % 1000, prospects=prospects)
    return datasets.merge_by_time([("purchases", e) for e in purchases], engagement)


def shuffled_within_days(
    events: Sequence[TopicEvent], rng: random.Random, delayed_share: float = 0.02
) -> tuple[list[TopicEvent], int]:
    """Day by day, each day's events in a random order across topics and customers; a
    `delayed_share` of them published 1-6 weeks late. Also returns how many were delayed."""
    keyed = []
    delayed = 0
    for topic, event in events:
        day = datasets.event_time_ms(event) // DAY_MS
        if rng.random() < delayed_share:
            day += rng.randint(7, 42)
            delayed += 1
        keyed.append((day, rng.random(), (topic, event)))
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [item for _, _, item in keyed], delayed


# -- the independent expectation ----------------------------------------------------------------


def expected(events: Sequence[TopicEvent]) -> dict[str, CustomerState]:
    """Every customer's state from the pure core: the events parsed as the worker parses them
    and folded in event-time order."""
    now_ms = int(time.time() * 1000)
    states: dict[str, CustomerState] = {}
    for topic, doc in sorted(events, key=lambda item: datasets.event_time_ms(item[1])):
        event = parse_event(topic, orjson.dumps(doc), now_ms=now_ms)
        result = apply_event(states.get(event.customer_id), event, RULES, DEFAULT_PARAMS)
        assert result.state is not None
        states[event.customer_id] = result.state
    return states


def decisions(profile: dict[str, Any]) -> dict[str, Any]:
    """What a profile decides (all of it valid until the next boundary, not only at `as_of`)."""
    rfm = profile["rfm"]
    return {
        "tier": profile["tier"],
        "stage": profile["stage"],
        "tags": profile["tags"],
        "scores": (rfm["r"], rfm["f"], rfm["m"], rfm["segment"]),
        "purchases": (rfm["frequency"], rfm["monetary"], profile["btyd"]["x"]),
        "purchase_days": (profile["btyd"]["t_x"], profile["first_purchase_at"]),
        "last_purchase_at": profile["last_purchase_at"],
        "engagement_level": profile["engagement"]["level"],
        "rules_version": profile["rules_version"],
    }


def core_profile(state: CustomerState, at_ms: int) -> dict[str, Any]:
    ev = evaluate(state, RULES, DEFAULT_PARAMS, at_ms)
    return orjson.loads(orjson.dumps(profile_of(state, ev, RULES, DEFAULT_PARAMS)))


def check_profiles(
    profiles: dict[str, dict[str, Any]], states: dict[str, CustomerState], end_ms: int
) -> None:
    """Every customer has a profile, equal to the core's at its own as-of, deciding what the
    core decides at `end_ms`."""
    assert profiles.keys() == states.keys()
    wrong_at_as_of, wrong_at_end = [], []
    for customer, profile in profiles.items():
        as_of = parse_rfc3339(profile["as_of"])
        assert as_of <= end_ms, customer
        at_as_of = core_profile(states[customer], as_of)
        if {k: profile.get(k) for k in at_as_of} != at_as_of:
            wrong_at_as_of.append((customer, profile, at_as_of))
        if decisions(profile) != decisions(core_profile(states[customer], end_ms)):
            wrong_at_end.append((customer, decisions(profile), profile["as_of"]))
    assert not wrong_at_as_of, (len(wrong_at_as_of), wrong_at_as_of[:2])
    assert not wrong_at_end, (len(wrong_at_end), wrong_at_end[:5])


# -- running a worker ---------------------------------------------------------------------------


def move_clock_and_settle(stack: EmbeddedStack, worker: WorkerProcess, at_ms: int) -> None:
    """Tick every partition to `at_ms`, then wait until the worker is quiet: no new transition
    and nothing pending for three samples in a row."""
    asyncio.run(send_ticks(stack.bootstrap, at_ms))
    quiet, last = 0, -1.0
    deadline = time.monotonic() + 300
    while quiet < 3:
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(1.0)
        sample = worker.metrics()
        transitions = sample.get("tierstream_transitions_total", 0.0)
        quiet = quiet + 1 if transitions == last and sample and caught_up(sample) else 0
        last = transitions


def profiles_by_customer(stack: EmbeddedStack) -> dict[str, dict[str, Any]]:
    return {p["customer_id"]: p for p in read_profiles(stack.redis_url)}


def run_once(events: Sequence[TopicEvent], tmp: Path, name: str) -> dict[str, dict[str, Any]]:
    """A fresh broker, Redis and worker; publish `events` in the given order; clock to the end."""
    with fresh_stack() as stack:
        worker = start_worker(stack, tmp, name, **WORKER_ENV)
        try:
            send(stack, events)
            wait_consumed(worker, len(events), timeout=600)
            move_clock_and_settle(stack, worker, END_OF_HISTORY_MS)
            assert not topic_values(stack, "dead-letters")
            return profiles_by_customer(stack)
        finally:
            worker.stop()


# -- scenario: out of order and late ------------------------------------------------------------


def test_shuffled_and_late_events_end_in_the_ordered_replays_profiles(tmp_path: Path) -> None:
    events = workload(every=25, prospects=40)
    shuffled, delayed = shuffled_within_days(events, random.Random(SEED))
    assert shuffled != events and delayed > 0.01 * len(events)
    states = expected(events)

    ordered_profiles = run_once(events, tmp_path, "ordered")
    shuffled_profiles = run_once(shuffled, tmp_path, "shuffled")

    check_profiles(ordered_profiles, states, END_OF_HISTORY_MS)
    check_profiles(shuffled_profiles, states, END_OF_HISTORY_MS)
    differ = [
        c
        for c in ordered_profiles
        if decisions(ordered_profiles[c]) != decisions(shuffled_profiles[c])
    ]
    assert not differ, differ[:5]
    # The history exercises what the clock must keep right: customers across tiers and stages,
    # and engagement that decayed to every level.
    finals = list(ordered_profiles.values())
    assert len({p["tier"] for p in finals}) >= 3
    assert {"churned", "active", "prospect"} <= {p["stage"] for p in finals}
    assert {"low", "medium"} <= {p["engagement"]["level"] for p in finals}


# -- scenario: producers from other ecosystems --------------------------------------------------


async def publish_interleaved(bootstrap: str, events: Sequence[TopicEvent]) -> tuple[int, int]:
    """Each customer's events alternately through confluent-kafka (librdkafka's default
    partitioner) and aiokafka (murmur2), interleaved in one time-ordered stream. Returns how many
    each producer sent."""
    confluent_kafka = pytest.importorskip("confluent_kafka")
    from aiokafka import AIOKafkaProducer

    rd = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    aio = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await aio.start()
    seen: dict[str, int] = {}
    counts = [0, 0]
    try:
        pending = []
        for topic, event in events:
            customer = event["customer_id"]
            turn = seen.get(customer, 0)
            seen[customer] = turn + 1
            value, key = orjson.dumps(event), encode_key(event)
            if turn % 2 == 0:
                rd.produce(topic, value=value, key=key)
                rd.poll(0)
            else:
                pending.append(await aio.send(topic, value, key=key))
            counts[turn % 2] += 1
        await asyncio.gather(*pending)
        await aio.flush()
        assert await asyncio.to_thread(rd.flush, 60) == 0
    finally:
        await aio.stop()
    return counts[0], counts[1]


def test_confluent_kafka_and_aiokafka_producers_interleaved(tmp_path: Path) -> None:
    pytest.importorskip("confluent_kafka")
    events = workload(every=97, prospects=15)
    states = expected(events)
    with fresh_stack() as stack:
        worker = start_worker(stack, tmp_path, "producers", **WORKER_ENV)
        try:
            by_confluent, by_aiokafka = asyncio.run(publish_interleaved(stack.bootstrap, events))
            assert by_confluent > 0 and by_aiokafka > 0
            wait_consumed(worker, len(events), timeout=600)
            metrics = worker.metrics()
            move_clock_and_settle(stack, worker, END_OF_HISTORY_MS)
            profiles = profiles_by_customer(stack)
            dead = topic_values(stack, "dead-letters")
        finally:
            worker.stop()
    # librdkafka's CRC32 partitioner put some records on another partition than murmur2: those
    # were forwarded once, and counted once.
    assert metrics.get("tierstream_events_forwarded_total", 0) > 0
    assert metrics.get("tierstream_events_ignored_total{reason=duplicate,topic=purchases}", 0) == 0
    assert not dead, dead[:3]
    check_profiles(profiles, states, END_OF_HISTORY_MS)
