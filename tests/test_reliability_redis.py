"""Reliability, scenario 3: Redis outages, end to end (a real worker, the embedded broker and a real
redis-server that the test stops and starts).

- Redis stopped for 20 s mid-stream, then started again: the worker keeps consuming while it is
  down, the backlog gauge rises and drains, write failures are counted, no event is lost, and
  the read model ends equal to what the worker computed (the profiles topic's last value per
  customer), for customers with events after the outage and for those without.
- Redis restarted with data loss while the stream is idle: every customer comes back, rebuilt
  from the worker's table (a partition marker in Redis tells the worker its data was lost).

The embedded redis-server keeps nothing on disk, so every restart here is also a data loss.
Model refits are off so that a profile rebuilt from the table carries the same p_alive as the
profile the worker published.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import redis

from segmentation.bgnbd import DEFAULT_PARAMS
from segmentation.events import parse_event
from segmentation.rules import default_rules
from segmentation.state import CustomerState
from segmentation.step import apply_event
from streams import readmodel
from streams.embedded import EmbeddedStack
from streams.harness import WorkerProcess, read_topic_sync
from streams.topics import PROFILES
from tests.e2e_support import fresh_stack, profile, send, start_worker, wait_consumed

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CUSTOMERS = 300
#: Customers with events after the outage; the others are only in Redis from before it.
ACTIVE_AFTER = 120
OUTAGE_SECONDS = 20.0
START_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
TIMEOUT = 180.0
#: The worker's log line for a partition of the read model rebuilt from its table.
REBUILT = re.compile(r"read model partition \d+ rebuilt: (\d+) of \d+ customers")

Event = tuple[str, dict[str, Any]]


def customer(i: int) -> str:
    return f"r{i:04d}"


@dataclass
class Workload:
    """Every event published so far, in time order (event ids and times never repeat)."""

    rng: random.Random = field(default_factory=lambda: random.Random(3))
    events: list[Event] = field(default_factory=list)
    at_ms: int = START_MS

    def make(
        self,
        n: int,
        customers: Sequence[str],
        *,
        each: bool = False,
        max_step_ms: int = 6 * 3_600_000,
    ) -> list[Event]:
        """`n` events of customers picked at random, or (`each`) in turn, each up to
        `max_step_ms` after the one before."""
        out: list[Event] = []
        for k in range(n):
            i = len(self.events) + len(out)
            self.at_ms += self.rng.randint(1, max_step_ms)
            who = customers[k % len(customers)] if each else self.rng.choice(customers)
            if self.rng.random() < 0.25:
                doc: dict[str, Any] = {
                    "event_id": f"m{i}",
                    "customer_id": who,
                    "occurred_at": self.at_ms,
                    "message_id": f"msg{i}",
                }
                out.append(("email-opens", doc))
            else:
                cents = self.rng.randint(100, 30_000)
                doc = {
                    "event_id": f"p{i}",
                    "customer_id": who,
                    "occurred_at": self.at_ms,
                    "order_id": f"o{i}",
                    "amount": f"{cents // 100}.{cents % 100:02d}",
                }
                out.append(("purchases", doc))
        self.events.extend(out)
        return out


@dataclass
class Env:
    stack: EmbeddedStack
    worker: WorkerProcess
    workload: Workload

    @property
    def published(self) -> int:
        return len(self.workload.events)

    def metric(self, name: str) -> float:
        return self.worker.metrics().get(name, 0.0)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("redis-outage")
    with fresh_stack() as stack:
        worker = start_worker(stack, tmp, "w1", TIERSTREAM_REFIT_SECONDS="0")
        try:
            workload = Workload()
            everyone = [customer(i) for i in range(CUSTOMERS)]
            # Every customer has a profile in Redis before the first outage.
            send(
                stack, workload.make(CUSTOMERS, everyone, each=True) + workload.make(900, everyone)
            )
            wait_consumed(worker, len(workload.events), timeout=TIMEOUT)
            yield Env(stack, worker, workload)
        finally:
            worker.stop()


# -- what the read model must hold -----------------------------------------------------------


def expected_aggregates(events: Sequence[Event]) -> dict[str, dict[str, Any]]:
    """The purchase aggregates of the pure core folded over each customer's events: exact
    whichever way the worker got there (so no event was lost or counted twice)."""
    rules = default_rules()
    states: dict[str, CustomerState | None] = {}
    now_ms = int(time.time() * 1000)
    out: dict[str, dict[str, Any]] = {}
    for topic, doc in events:
        event = parse_event(topic, orjson.dumps(doc), now_ms=now_ms)
        result = apply_event(states.get(event.customer_id), event, rules, DEFAULT_PARAMS)
        states[event.customer_id] = result.state
        assert result.profile is not None
        out[event.customer_id] = aggregates(result.profile)
    return out


def aggregates(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "frequency": p["rfm"]["frequency"],
        "monetary": p["rfm"]["monetary"],
        "first_purchase_at": p["first_purchase_at"],
        "last_purchase_at": p["last_purchase_at"],
        "x": p["btyd"]["x"],
        "t_x": p["btyd"]["t_x"],
        "email_opens_seen": p["engagement"]["email_score"] > 0,
    }


def profile_records(stack: EmbeddedStack) -> list[dict[str, Any]]:
    records = read_topic_sync(stack.bootstrap, PROFILES, timeout=60)
    return sorted(records, key=lambda r: (r["partition"], r["offset"]))


def computed_profiles(stack: EmbeddedStack) -> dict[str, dict[str, Any]]:
    """What the worker computed: the profiles topic's last value per customer."""
    last: dict[str, dict[str, Any]] = {}
    for r in profile_records(stack):
        if r["key"] is None:
            continue
        if r["value"] is None:
            last.pop(r["key"], None)
        else:
            last[r["key"]] = r["value"]
    return last


def ends(records: Sequence[dict[str, Any]]) -> dict[int, int]:
    """The next offset of each partition after these records."""
    out: dict[int, int] = {}
    for r in records:
        out[r["partition"]] = max(out.get(r["partition"], 0), r["offset"] + 1)
    return out


def read_model(stack: EmbeddedStack) -> dict[str, Any]:
    """Every customer's profile in Redis, and the tier and stage memberships."""
    client = redis.Redis.from_url(stack.redis_url)
    try:
        ids = [customer(i) for i in range(CUSTOMERS)]
        raws = client.mget([readmodel.customer_key(c) for c in ids])
        profiles = {c: orjson.loads(raw) for c, raw in zip(ids, raws, strict=True) if raw}
        sets = {
            text(key): {text(m) for m in client.smembers(key)}
            for pattern in ("tier:*", "stage:*")
            for key in client.scan_iter(match=readmodel.PREFIX + pattern)
        }
        return {"profiles": profiles, "sets": sets}
    finally:
        client.close()


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def expected_sets(profiles: dict[str, dict[str, Any]]) -> dict[str, set[str]]:
    sets: dict[str, set[str]] = {}
    for c, p in profiles.items():
        sets.setdefault(readmodel.tier_key(p["tier"]), set()).add(c)
        sets.setdefault(readmodel.stage_key(p["stage"]), set()).add(c)
    return sets


def wait_read_model_complete(env: Env, what: str) -> dict[str, Any]:
    """Until Redis holds a profile for every customer and the backlog is drained."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        model = read_model(env.stack)
        backlog = env.metric("tierstream_redis_backlog")
        if len(model["profiles"]) == CUSTOMERS and backlog == 0:
            return model
        if time.monotonic() > deadline:
            missing = CUSTOMERS - len(model["profiles"])
            raise TimeoutError(
                f"{what}: {missing} customers missing from Redis, backlog {backlog}\n"
                f"{env.worker.log_tail()}"
            )
        time.sleep(1.0)


def assert_read_model_matches(env: Env, model: dict[str, Any]) -> None:
    computed = computed_profiles(env.stack)
    assert len(computed) == CUSTOMERS
    wrong = sorted(c for c in computed if model["profiles"].get(c) != computed[c])
    assert not wrong, f"{len(wrong)} profiles differ from the worker's, e.g. {wrong[:5]}"
    # Only the tier and stage sets that have members (an emptied set is no key in Redis).
    assert {k: v for k, v in model["sets"].items() if v} == expected_sets(computed)
    expected = expected_aggregates(env.workload.events)
    assert {c: aggregates(p) for c, p in model["profiles"].items()} == expected


# -- the scenarios -----------------------------------------------------------------------------


def rebuilt_customers(worker: WorkerProcess, since: int) -> int:
    """Customers the worker wrote back from its table since byte `since` of its log."""
    text = worker.log_path.read_bytes()[since:].decode(errors="replace")
    return sum(int(n) for n in REBUILT.findall(text))


def test_redis_stopped_20s_mid_stream_nothing_lost_and_read_model_converges(env: Env) -> None:
    stack, worker = env.stack, env.worker
    active = [customer(i) for i in range(ACTIVE_AFTER)]
    before = worker.metrics()
    failures_before = before.get("tierstream_redis_write_failures_total", 0.0)
    assert before.get("tierstream_redis_backlog") == 0
    log_offset = worker.log_path.stat().st_size
    profiles_end = ends(profile_records(stack))

    stack.redis.stop()
    stopped_at = time.monotonic()
    consumed = [before["tierstream_events_consumed_total"]]
    backlog = [0.0]
    # Two waves of events while Redis is down: each is consumed and folded (no record held),
    # and each one's profile updates wait for Redis: the backlog grows.
    for _ in range(2):
        # Close in event time: few customers cross a time boundary (which publishes a profile).
        send(stack, env.workload.make(250, active, max_step_ms=60_000))
        sample = worker.wait_for(
            lambda m: (
                m.get("tierstream_events_consumed_total", 0) >= env.published
                and m.get("tierstream_events_held", 1) == 0
                and m.get("tierstream_redis_backlog", 0) > backlog[-1]
            ),
            timeout=TIMEOUT,
            what="events consumed and the backlog growing while Redis is down",
        )
        consumed.append(sample["tierstream_events_consumed_total"])
        backlog.append(sample["tierstream_redis_backlog"])
    assert consumed[0] < consumed[1] < consumed[2], consumed
    assert 0 < backlog[1] < backlog[2], backlog
    status, body = worker.get("/health")
    assert status == 200 and orjson.loads(body)["redis"] == "unavailable"
    assert profile(worker, customer(0))[0] == 503

    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped_at)))
    during = worker.metrics()
    assert during.get("tierstream_redis_backlog", 0.0) >= backlog[-1]
    assert during.get("tierstream_redis_write_failures_total", 0.0) > failures_before
    assert worker.proc is not None and worker.proc.poll() is None

    stack.redis.start()  # same port, empty: nothing was persisted
    send(stack, env.workload.make(100, active, max_step_ms=60_000))
    wait_consumed(worker, env.published, timeout=TIMEOUT)
    model = wait_read_model_complete(env, "after the 20 s outage")
    assert_read_model_matches(env, model)
    assert worker.metrics().get("tierstream_redis_backlog") == 0
    # Customers with no profile update since the outage came back from the table: the topic
    # has nothing newer that would have restored them.
    updated = {
        r["key"] for r in profile_records(stack) if r["offset"] >= profiles_end[r["partition"]]
    }
    quiet = sorted(set(model["profiles"]) - updated)
    assert len(quiet) >= (CUSTOMERS - ACTIVE_AFTER) // 2, len(quiet)
    assert rebuilt_customers(worker, log_offset) >= len(quiet)
    status, served = profile(worker, quiet[-1])
    assert status == 200 and served == model["profiles"][quiet[-1]]


def test_redis_restarted_empty_while_idle_every_customer_comes_back(env: Env) -> None:
    stack, worker = env.stack, env.worker
    if not stack.redis.running:  # the test above failed half-way
        stack.redis.start()
    wait_consumed(worker, env.published, timeout=TIMEOUT)
    before = wait_read_model_complete(env, "before the restart")
    consumed = worker.metrics()["tierstream_events_consumed_total"]
    log_offset = worker.log_path.stat().st_size

    stack.redis.restart()  # loses everything; no event follows

    model = wait_read_model_complete(env, "after Redis came back empty")
    # Every customer was written back from the table (none had an event to bring it back).
    assert rebuilt_customers(worker, log_offset) >= CUSTOMERS
    assert model == before
    assert_read_model_matches(env, model)
    assert worker.metrics()["tierstream_events_consumed_total"] == consumed
    for i in (0, CUSTOMERS // 2, CUSTOMERS - 1):
        status, served = profile(worker, customer(i))
        assert status == 200 and served == model["profiles"][customer(i)]
