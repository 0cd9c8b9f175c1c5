"""Reliability end to end (issue 6, scenarios 1 and 2): a real `tierstream worker` that is killed
with SIGKILL in the middle of a replay, or fed its whole input a second time, must end with the
same read model and publish no output it would not have published anyway.

1. Crash and restart. A replay of CDNOW purchases (a subset of customers, in event-time order,
   published as live events so campaigns fire), an uninterrupted run as the reference, and two
   runs whose worker is killed (`kill -9` of its process group) mid-replay, after the group has
   committed on every input partition, then restarted: with the same data directory, and with an
   empty one (the state must then come from the changelog alone). After the same final clock move
   (a tick to the end of the history), every customer's Redis profile must equal the reference's,
   field for field: `as_of` is event time (the customer's evaluation instant), not wall time, and
   the BG/NBD refit timer (wall time) is switched off, so no field is exempt. The restarted
   worker re-processes what was consumed but not committed before the kill, so tier-changes and
   campaign-triggers may hold duplicates, but only as repeats of an id (same content but the
   wall-clock `emitted_at`): the set of change_ids, trigger_ids and warning_ids must equal the
   reference's.

   Only the purchases topic is replayed here: Kafka orders records within a topic-partition, so a
   single-topic history folds in the same order in every run, which is what makes a run-to-run
   comparison exact (across topics the interleaving is the fetcher's; see
   test_e2e_determinism.py).

2. Redelivery. The same worker, after it has processed a history of every engagement kind plus
   purchases, (a) receives the whole input published a second time (new offsets, same
   event_ids), and (b) separately, is stopped, its consumer group committed back to offset 0 on
   every partition it consumes, and restarted. Profiles must not move, no new change_id,
   trigger_id or warning_id may appear, and every record of the second pass must be counted as
   ignored (so the test cannot pass by the worker skipping records). The history includes one
   customer with HEAVY_EVENTS events, more than the 256 event ids the state once remembered:
   a republished history overran that window.

A pure-core check for the change-id bug an earlier crash replay found (an event-caused change's
id depended on the partition clock) sits at the end.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

from segmentation.bgnbd import DEFAULT_PARAMS
from segmentation.campaigns import parse_campaign_policy
from segmentation.events import EMAIL_OPENS, INPUT_TOPICS, PURCHASES, InputEvent
from segmentation.rules import default_rules
from segmentation.state import NO_TIME, CustomerState
from segmentation.step import apply_event
from segmentation.timeutil import DAY_MS, HOUR_MS, to_rfc3339
from streams import datasets, readmodel
from streams.embedded import EmbeddedStack
from streams.harness import WorkerProcess, read_topic_sync
from streams.partitioning import partition_for
from streams.replay import encode_key
from streams.topics import TICKS
from tests.e2e_support import PARTITIONS, fresh_stack, profile, send, settle, start_worker
from tests.e2e_support import topic_values as read_values

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TopicEvent = tuple[str, dict[str, Any]]
TP = tuple[str, int]

GROUP = "tierstream"  # TIERSTREAM_APP_ID in e2e_support.start_worker
CRASH_CUSTOMERS = 1_000  # the first CDNOW customer ids: 3,316 purchases
REDELIVERY_CUSTOMERS = 400  # ~1,300 purchases and their generated engagement
END_OF_HISTORY_MS = 899_251_200_000  # 1998-07-01T00:00:00Z: the final clock move
HEAVY = "HEAVY-1"  # more events than the old per-customer event-id window (256) held
HEAVY_EVENTS = 356
# The refit timer (wall clock) would swap BG/NBD parameters at a moment that differs per run.
WORKER_ENV = {"TIERSTREAM_REFIT_SECONDS": "0"}
DONE_TIMEOUT = 240.0


# -- inputs -------------------------------------------------------------------------------------


def cdnow_subset(customers: int) -> list[dict[str, Any]]:
    """The purchases of the first `customers` CDNOW customer ids, in event-time order."""
    keep: set[str] = set()
    out: list[dict[str, Any]] = []
    for event in datasets.cdnow_purchases():
        cid = event["customer_id"]
        if cid not in keep and len(keep) >= customers:
            continue  # the file is ordered by customer
        keep.add(cid)
        out.append(event)
    return datasets.time_ordered(out)


def heavy_customer() -> list[TopicEvent]:
    """A customer with HEAVY_EVENTS email opens and clicks over 1997 and two purchases: more than
    the 256 event ids the state once remembered, which a republished history overflowed."""
    start = 852_076_800_000  # 1997-01-01T00:00:00Z
    events: list[TopicEvent] = []
    for i in range(HEAVY_EVENTS):
        at = start + i * 21 * HOUR_MS
        topic = "email-clicks" if i % 5 == 0 else EMAIL_OPENS
        doc = {
            "event_id": f"heavy-{topic}-{i}",
            "customer_id": HEAVY,
            "occurred_at": at,
            "message_id": f"heavy-m-{i}",
        }
        events.append((topic, doc))
    for i, day in enumerate((40, 200)):
        order = {
            "event_id": f"heavy-order-{i}",
            "customer_id": HEAVY,
            "occurred_at": start + day * DAY_MS + 12 * HOUR_MS,
            "order_id": f"heavy-order-{i}",
            "amount": "42.50",
        }
        events.append((PURCHASES, order))
    return events


def crash_input() -> list[TopicEvent]:
    return [(PURCHASES, e) for e in cdnow_subset(CRASH_CUSTOMERS)]


def redelivery_input() -> list[TopicEvent]:
    purchases = cdnow_subset(REDELIVERY_CUSTOMERS)
    engagement = datasets.generate_engagement(purchases, seed=11, prospects=100)
    return datasets.merge_by_time([(PURCHASES, e) for e in purchases], engagement, heavy_customer())


def offsets_after(events: Sequence[TopicEvent], times: int = 1) -> dict[TP, int]:
    """The next offset of every input topic-partition once `events` are published `times` times
    onto fresh topics (keys hash as the replay's producer hashes them: murmur2)."""
    counts = Counter(
        (topic, partition_for(doc["customer_id"].encode(), PARTITIONS)) for topic, doc in events
    )
    return {tp: n * times for tp, n in counts.items()}


# -- the group's progress -----------------------------------------------------------------------


async def _committed(bootstrap: str, tps: Sequence[TP]) -> dict[TP, int | None]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False
    )
    await consumer.start()
    try:
        return {tp: await consumer.committed(TopicPartition(*tp)) for tp in tps}
    finally:
        await consumer.stop()


def committed(stack: EmbeddedStack, tps: Sequence[TP]) -> dict[TP, int | None]:
    return asyncio.run(_committed(stack.bootstrap, tps))


class _FaustNamedRoundRobin(RoundRobinPartitionAssignor):
    name = "faust"


async def _reset_group(bootstrap: str, tps: Sequence[TP]) -> None:
    """Commit offset 0 on `tps` for the (empty) group, as `kafka-consumer-groups.sh
    --reset-offsets --to-earliest` does. As a member of the group: the embedded broker answers a
    commit from outside the group (generation -1, which Apache Kafka accepts from an empty group)
    with UnknownMemberId, and aiokafka's admin client has no DeleteGroups. The embedded broker
    also keeps an empty group's protocol (Faust's assignor, "faust"), hence the name."""
    consumer = AIOKafkaConsumer(
        *sorted({topic for topic, _ in tps}),
        bootstrap_servers=bootstrap,
        group_id=GROUP,
        enable_auto_commit=False,
        session_timeout_ms=6_000,
        rebalance_timeout_ms=4_000,
        heartbeat_interval_ms=1_000,
        partition_assignment_strategy=(_FaustNamedRoundRobin,),
    )
    await consumer.start()
    try:
        wanted = {TopicPartition(*tp) for tp in tps}
        deadline = time.monotonic() + 60
        while not wanted <= consumer.assignment():
            if time.monotonic() > deadline:
                raise TimeoutError(f"not assigned {sorted(wanted - consumer.assignment())}")
            consumer.pause(*consumer.assignment())
            await consumer.getmany(timeout_ms=200)
        await consumer.commit(dict.fromkeys(wanted, 0))
    finally:
        await consumer.stop()


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    worker: WorkerProcess | None = None,
    interval: float = 0.5,
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if worker is not None and worker.proc is not None and worker.proc.poll() is not None:
            raise RuntimeError(f"worker died while waiting for {what}: {worker.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def wait_committed(
    stack: EmbeddedStack, worker: WorkerProcess, targets: Mapping[TP, int], what: str
) -> None:
    """Until the group has committed at least `targets` on every listed partition: everything
    before those offsets is processed."""
    last: dict[TP, int | None] = {}

    def reached() -> bool:
        last.update(committed(stack, list(targets)))
        return all((last[tp] or 0) >= n for tp, n in targets.items())

    try:
        wait_until(reached, timeout=DONE_TIMEOUT, what=what, worker=worker, interval=1.0)
    except TimeoutError as exc:
        short = {f"{t}[{p}]": (last.get((t, p)), n) for (t, p), n in targets.items()}
        raise TimeoutError(f"{exc}; (committed, wanted): {short}") from None


async def _send_end_ticks(bootstrap: str) -> dict[TP, int]:
    """A tick to the end of the history on every partition (as `tierstream advance` sends it);
    returns the offset after each, to wait for (the worker also puts records on this topic)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        value = orjson.dumps({"t": END_OF_HISTORY_MS})
        after: dict[TP, int] = {}
        for p in range(PARTITIONS):
            sent = await producer.send_and_wait(TICKS, value, partition=p)
            after[(TICKS, p)] = sent.offset + 1
        return after
    finally:
        await producer.stop()


def finish(stack: EmbeddedStack, worker: WorkerProcess, targets: Mapping[TP, int]) -> None:
    """Wait until the input is processed, move every partition's clock to the end of the history,
    and wait until that and the read model are done too."""
    wait_committed(stack, worker, targets, "the input processed")
    ticks = asyncio.run(_send_end_ticks(stack.bootstrap))
    wait_committed(stack, worker, ticks, "the final tick processed")
    worker.wait_for(
        lambda m: m.get("tierstream_events_held", 0) == 0, timeout=60, what="nothing held"
    )
    settle(worker, 2.0)


# -- what a run leaves behind -------------------------------------------------------------------


@dataclass
class Outcome:
    profiles: dict[str, dict[str, Any]]
    members: dict[str, frozenset[str]]  # Redis tier and stage sets
    changes: list[dict[str, Any]]
    triggers: list[dict[str, Any]]
    warnings: list[dict[str, Any]]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def read_outcome(stack: EmbeddedStack) -> Outcome:
    client = redis.Redis.from_url(stack.redis_url)
    try:
        keys = sorted(client.scan_iter(match=readmodel.customer_key("*"), count=1000))
        profiles: dict[str, dict[str, Any]] = {}
        for i in range(0, len(keys), 1000):
            chunk = keys[i : i + 1000]
            for raw in client.mget(chunk):
                if raw is not None:
                    doc = orjson.loads(raw)
                    profiles[doc["customer_id"]] = doc
        members: dict[str, frozenset[str]] = {}
        for pattern in ("tier:*", "stage:*"):
            for key in client.scan_iter(match=readmodel.PREFIX + pattern):
                members[_text(key)] = frozenset(_text(m) for m in client.smembers(key))
    finally:
        client.close()
    return Outcome(
        profiles=profiles,
        members={k: v for k, v in members.items() if v},
        changes=read_values(stack, "tier-changes"),
        triggers=read_values(stack, "campaign-triggers"),
        warnings=read_values(stack, "churn-warnings"),
    )


def _without_wall_clock(message: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != "emitted_at"}


def duplicates_with_other_content(
    messages: Sequence[Mapping[str, Any]], id_field: str
) -> list[str]:
    """Ids published more than once with different content (wall-clock emitted_at aside)."""
    seen: dict[str, dict[str, Any]] = {}
    bad: list[str] = []
    for m in messages:
        body = _without_wall_clock(m)
        first = seen.setdefault(m[id_field], body)
        if first != body:
            bad.append(m[id_field])
    return bad


def profile_diff(
    expected: Mapping[str, dict[str, Any]], actual: Mapping[str, dict[str, Any]]
) -> list[str]:
    """Customers whose profile differs, each with the top-level fields that differ."""
    out = []
    for cid in sorted(set(expected) | set(actual)):
        a, b = expected.get(cid), actual.get(cid)
        if a == b:
            continue
        if a is None or b is None:
            out.append(f"{cid}: {'missing' if b is None else 'unexpected'}")
            continue
        fields = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        detail = {k: (a.get(k), b.get(k)) for k in fields if k != "explanation"}
        out.append(f"{cid}: {fields} {detail}")
    return out


def _brief(message: Mapping[str, Any]) -> dict[str, Any]:
    keep = "customer_id previous_tier tier previous_stage stage campaign cause event_id occurred_at"
    return {k: message[k] for k in keep.split() if k in message}


def assert_same_outcome(reference: Outcome, run: Outcome, context: str) -> None:
    problems: list[str] = []
    diff = profile_diff(reference.profiles, run.profiles)
    if diff:
        problems.append(
            f"{len(diff)} of {len(reference.profiles)} profiles differ, e.g.\n  "
            + "\n  ".join(diff[:5])
        )
    if reference.members != run.members:
        wrong = [
            k
            for k in set(reference.members) | set(run.members)
            if reference.members.get(k) != run.members.get(k)
        ]
        problems.append(f"Redis tier/stage sets differ: {sorted(wrong)}")
    for name, field in (
        ("changes", "change_id"),
        ("triggers", "trigger_id"),
        ("warnings", "warning_id"),
    ):
        ref_msgs: list[dict[str, Any]] = getattr(reference, name)
        run_msgs: list[dict[str, Any]] = getattr(run, name)
        ref_ids, run_ids = {m[field] for m in ref_msgs}, {m[field] for m in run_msgs}
        if ref_ids != run_ids:
            extra = [_brief(m) for m in run_msgs if m[field] in run_ids - ref_ids]
            missing = [_brief(m) for m in ref_msgs if m[field] in ref_ids - run_ids]
            problems.append(
                f"{name}: {len(extra)} {field}s not in the reference, {len(missing)} missing"
                + "".join(f"\n    extra {m}" for m in extra[:10])
                + "".join(f"\n    missing {m}" for m in missing[:10])
            )
        changed = duplicates_with_other_content(ref_msgs + run_msgs, field)
        if changed:
            problems.append(f"{name}: {len(changed)} {field}s repeated with other content")
    assert not problems, f"{context}:\n" + "\n".join(problems)


def ignored(worker: WorkerProcess) -> float:
    m = worker.metrics()
    return sum(v for k, v in m.items() if k.startswith("tierstream_events_ignored_total{"))


# -- scenario 1: crash and restart --------------------------------------------------------------


def uninterrupted(tmp: Path, events: Sequence[TopicEvent]) -> Outcome:
    with fresh_stack() as stack:
        worker = start_worker(stack, tmp, "reference", **WORKER_ENV)
        try:
            send(stack, events)
            finish(stack, worker, offsets_after(events))
            outcome = read_outcome(stack)
            # The HTTP view serves the same documents as Redis.
            for cid in sorted(outcome.profiles)[:3]:
                assert profile(worker, cid) == (200, outcome.profiles[cid])
            return outcome
        finally:
            worker.stop()


@pytest.fixture(scope="module")
def crash_events() -> list[TopicEvent]:
    return crash_input()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, crash_events: list[TopicEvent]) -> Outcome:
    outcome = uninterrupted(tmp_path_factory.mktemp("reference"), crash_events)
    assert len(outcome.profiles) == CRASH_CUSTOMERS
    assert len(outcome.changes) > CRASH_CUSTOMERS
    assert outcome.triggers, "no campaign fired: the comparison of trigger ids would be empty"
    assert len({c["change_id"] for c in outcome.changes}) == len(outcome.changes)
    return outcome


def rocksdb_available() -> bool:
    return importlib.util.find_spec("rocksdict") is not None


async def _publish_paced(
    bootstrap: str, events: Sequence[TopicEvent], chunk: int, pause: float
) -> None:
    """Publish like a live source: `chunk` records, a pause, the next chunk..."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1)
    await producer.start()
    try:
        for start in range(0, len(events), chunk):
            sent = [
                await producer.send(topic, orjson.dumps(doc), key=encode_key(doc))
                for topic, doc in events[start : start + chunk]
            ]
            await asyncio.gather(*sent)
            await asyncio.sleep(pause)
        await producer.flush()
    finally:
        await producer.stop()


def publish_in_background(
    stack: EmbeddedStack, events: Sequence[TopicEvent], chunk: int = 50, pause: float = 0.1
) -> threading.Thread:
    thread = threading.Thread(
        target=lambda: asyncio.run(_publish_paced(stack.bootstrap, events, chunk, pause)),
        name="paced-publisher",
        daemon=True,
    )
    thread.start()
    return thread


@pytest.mark.parametrize("data_dir", ["same", "empty"])
def test_a_worker_killed_mid_replay_ends_as_an_uninterrupted_run(
    tmp_path: Path, crash_events: list[TopicEvent], reference: Outcome, data_dir: str
) -> None:
    total = len(crash_events)
    purchases_tps = [(PURCHASES, p) for p in range(PARTITIONS)]
    env = dict(WORKER_ENV)
    if data_dir == "same" and rocksdb_available():
        # A local store that survives the process, so "same data directory" means something; the
        # memory store (the default, and the only one without rocksdict) always rebuilds from the
        # changelog.
        env["TIERSTREAM_STORE"] = "rocksdb"
    head = total * 2 // 5
    with fresh_stack() as stack:
        worker = start_worker(stack, tmp_path, "crash", **env)
        try:
            # The first part at once, until the group has committed on every partition (a
            # partition without a commit restarts from its beginning: a weaker crash)...
            send(stack, crash_events[:head])
            wait_until(
                lambda: all(committed(stack, purchases_tps).values()),
                timeout=120,
                what="a commit on every partition",
                worker=worker,
            )
            # ...then the rest at a live pace, and the kill while records flow: some consumed
            # records are not committed yet and must come again after the restart.
            publisher = publish_in_background(stack, crash_events[head:])
            sample: dict[str, float] = {}

            def in_flight() -> bool:
                consumed = worker.consumed()
                done = sum(v or 0 for v in committed(stack, purchases_tps).values())
                sample.update(consumed=consumed, committed=done)
                return consumed >= head + (total - head) // 4 and consumed > done

            wait_until(
                in_flight, timeout=120, what="records in flight", worker=worker, interval=0.05
            )
            worker.stop(kill=True)
            assert worker.proc is not None and worker.proc.returncode == -9
            at_kill = sum(v or 0 for v in committed(stack, purchases_tps).values())
            publisher.join(timeout=120)
            assert not publisher.is_alive()
        finally:
            worker.stop(kill=True)

        restarted_env = dict(env)
        if data_dir == "same":
            restarted_env["TIERSTREAM_DATA_DIR"] = str(tmp_path / "crash-data")
        else:
            assert not (tmp_path / "restarted-data").exists()
        restarted = start_worker(stack, tmp_path, "restarted", **restarted_env)
        try:
            finish(stack, restarted, offsets_after(crash_events))
            outcome = read_outcome(stack)
            metrics = restarted.metrics()
        finally:
            restarted.stop()

        again = metrics.get("tierstream_events_consumed_total", 0)
        context = (
            f"killed after consuming about {sample['consumed']:.0f} of {total} records, "
            f"{at_kill} committed; restarted with the {data_dir} data directory "
            f"({restarted_env.get('TIERSTREAM_STORE', 'memory')} store), which consumed "
            f"{again:.0f} (about {again - (total - sample['consumed']):.0f} of them a second time)"
        )
        # Every record not committed before the kill reached the restarted worker.
        assert again >= total - at_kill, context
        assert metrics.get("tierstream_dead_letters_total", 0) == 0, context
        try:
            assert_same_outcome(reference, outcome, context)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{changelog_story(stack, reference, outcome)}") from None
    print(context)


def changelog_story(stack: EmbeddedStack, reference: Outcome, run: Outcome) -> str:
    """For the customers of the reference's changes missing from the run: every standing the
    changelog recorded for them (partition, offset, tier, stage, as-of): a standing recorded
    without its change published means the output was lost while the state was kept."""
    run_ids = {c["change_id"] for c in run.changes}
    customers = sorted(
        {c["customer_id"] for c in reference.changes if c["change_id"] not in run_ids}
    )[:5]
    if not customers:
        return ""
    records = read_topic_sync(stack.bootstrap, "tierstream-customers-changelog", timeout=60)
    lines = ["changelog of those customers (partition, offset, tier, stage, as_of):"]
    for cid in customers:
        story = []
        for r in records:
            if r["key"] == cid and r["value"] is not None:
                state = CustomerState.from_dict(r["value"])
                as_of = to_rfc3339(state.as_of_ms)
                story.append((r["partition"], r["offset"], state.tier, state.stage, as_of))
        published = [
            (c["previous_stage"], c["stage"], c["occurred_at"])
            for c in run.changes
            if c["customer_id"] == cid
        ]
        lines.append(f"  {cid}: {story[-6:]}\n    published: {published}")
    return "\n".join(lines)


# -- scenario 2: redelivery ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def redelivery_events() -> list[TopicEvent]:
    events = redelivery_input()
    per_customer = Counter(doc["customer_id"] for _, doc in events)
    assert per_customer[HEAVY] > 256
    assert {topic for topic, _ in events} == {
        PURCHASES,
        EMAIL_OPENS,
        "email-clicks",
        "wechat-interactions",
    }
    return events


def first_pass(
    stack: EmbeddedStack, tmp: Path, events: Sequence[TopicEvent]
) -> tuple[WorkerProcess, Outcome]:
    worker = start_worker(stack, tmp, "worker", **WORKER_ENV)
    try:
        send(stack, events)
        finish(stack, worker, offsets_after(events))
        outcome = read_outcome(stack)
    except BaseException:
        worker.stop()
        raise
    assert HEAVY in outcome.profiles
    assert outcome.changes and outcome.triggers
    return worker, outcome


def test_the_whole_input_published_twice_changes_nothing(
    tmp_path: Path, redelivery_events: list[TopicEvent]
) -> None:
    total = len(redelivery_events)
    with fresh_stack() as stack:
        worker, before = first_pass(stack, tmp_path, redelivery_events)
        try:
            ignored_before = ignored(worker)
            send(stack, redelivery_events)
            finish(stack, worker, offsets_after(redelivery_events, times=2))
            after = read_outcome(stack)
            ignored_now = ignored(worker) - ignored_before
            metrics = worker.metrics()
        finally:
            worker.stop()
    context = (
        f"the whole input ({total} records, customer {HEAVY} with "
        f"{Counter(d['customer_id'] for _, d in redelivery_events)[HEAVY]} events, over the "
        f"old event-id window of 256) published a second time; {ignored_now:.0f} of the "
        f"second {total} counted as ignored"
    )
    assert metrics.get("tierstream_dead_letters_total", 0) == 0, context
    assert_same_outcome(before, after, context)
    assert ignored_now == total, context


def test_a_consumer_group_reset_to_the_start_changes_nothing(
    tmp_path: Path, redelivery_events: list[TopicEvent]
) -> None:
    total = len(redelivery_events)
    targets = offsets_after(redelivery_events)
    everything = [
        *((t, p) for t in INPUT_TOPICS for p in range(PARTITIONS)),
        *((TICKS, p) for p in range(PARTITIONS)),
    ]
    with fresh_stack() as stack:
        worker, before = first_pass(stack, tmp_path, redelivery_events)
        worker.stop()  # SIGTERM: leaves the group, which may then be committed from outside
        assert worker.proc is not None and worker.proc.returncode is not None
        asyncio.run(_reset_group(stack.bootstrap, everything))
        assert set(committed(stack, everything).values()) <= {0, None}

        restarted = start_worker(
            stack,
            tmp_path,
            "after-reset",
            TIERSTREAM_DATA_DIR=str(tmp_path / "worker-data"),
            **WORKER_ENV,
        )
        try:
            restarted.wait_for(
                lambda m: m.get("tierstream_events_consumed_total", 0) >= total,
                timeout=DONE_TIMEOUT,
                what="the whole input consumed again",
            )
            finish(stack, restarted, targets)
            after = read_outcome(stack)
            again = ignored(restarted)
            metrics = restarted.metrics()
        finally:
            restarted.stop()
    context = (
        f"group {GROUP!r} committed back to offset 0 and its worker restarted on the same data "
        f"directory: {metrics.get('tierstream_events_consumed_total')} records consumed again, "
        f"{again:.0f} of {total} counted as ignored; customer {HEAVY} has more events than the "
        f"old event-id window (256)"
    )
    assert metrics.get("tierstream_dead_letters_total", 0) == 0, context
    assert_same_outcome(before, after, context)
    assert again == total, context


# -- the pure core: output ids do not depend on the partition clock ----------------------------

RULES = default_rules()
POLICY = parse_campaign_policy(RULES.campaigns)
T0 = 852_120_000_000  # 1997-01-01T12:00:00Z


def _order(n: int, at: int) -> InputEvent:
    return InputEvent(
        topic=PURCHASES,
        event_id=f"p{n}",
        customer_id="c-1",
        occurred_ms=at,
        kind="purchase",
        order_id=f"o{n}",
        amount_cents=5_000,
    )


@pytest.mark.parametrize("clock_ahead_ms", [1, HOUR_MS, 6 * HOUR_MS])
def test_an_event_caused_change_keeps_its_ids_whatever_the_partition_clock(
    clock_ahead_ms: int,
) -> None:
    """The same event causing the same transition gets the same change_id and trigger_ids
    whether the partition clock stood at the event (first run) or past it (after a restart the
    clock is re-advanced by other redelivered records, and persisted only now and then)."""

    def run(clock: Callable[[int], int]) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        state = None
        for event in (_order(1, T0), _order(2, T0 + DAY_MS)):
            result = apply_event(
                state,
                event,
                RULES,
                DEFAULT_PARAMS,
                as_of_ms=clock(event.occurred_ms),
                policy=POLICY,
            )
            state = result.state
            for c in result.changes:
                transition = (c["previous_tier"], c["previous_stage"], c["tier"], c["stage"])
                out.append(("change", c["change_id"], *transition))
            out.extend(("trigger", t["trigger_id"], t["campaign"]) for t in result.triggers)
        return out

    at_the_event = run(lambda at: NO_TIME)
    clock_ahead = run(lambda at: at + clock_ahead_ms)
    assert any(kind == "trigger" for kind, *_ in at_the_event)  # the welcome campaign
    assert [kind for kind, *_ in at_the_event].count("change") == 2
    assert clock_ahead == at_the_event
