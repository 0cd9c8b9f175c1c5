"""The benchmark's three baselines and two prototypes, each run in a child process of its own (so
its RSS and CPU are its own), reading the pre-published workload from the beginning with its own
consumer group:

- ``raw``: an aiokafka ``getmany()`` loop, orjson parse and a dict update per event: the ceiling
  for a Python consumer;
- ``empty_faust``: a Faust agent doing the same per-event work (parse, dict update) and nothing
  else: Faust's own per-event floor;
- ``naive_faust``: a Faust agent doing ``table[customer_id] += amount``, one table write (so one
  changelog send) per event: what a user writes by hand;
- ``batched_core`` (the prototype issue 7 asks for, not a baseline): a Faust agent that takes
  records in micro-batches (``stream.take_events``, up to BATCH_EVENTS or BATCH_WITHIN_S), folds
  each through the real pure core (`parse_event`, `apply_event` with the default rules and
  campaign policy), publishes every tier change and one profile per customer per batch, and
  writes one state record per customer per batch to a Faust table with its changelog (to the
  customer's own partition, with `send_changelog`: a batch spans partitions, and Faust's table
  `__setitem__` would log a key under the partition of whichever record is current). What it
  leaves out, so its rate is a ceiling for this shape rather than a pipeline: the partition clock
  and time-driven re-evaluations, event-time order across topics, dead letters, outputs delivered
  before the state is written, and the Redis read model.
- ``fetch_core`` (the second prototype): the same fold (`CoreFold`), fed whole fetches: a task
  reads with its own aiokafka consumer and hands each fetch to a Faust agent as one event on an
  in-memory channel, so Faust's per-record consumer path is left out and the agent, the table
  and its changelog are kept. What the first prototype leaves out, plus Faust's offset tracking.

Both Faust baselines run with the pipeline's own Faust settings (`streams.app.faust_settings`) and
`FAST_GROUP_SETTINGS`. A child writes its result as JSON to `--result` when it has consumed
`--expected` events; the parent then stops it.

Run by `streams.bench`: ``python -m streams.bench_baselines KIND --broker ... --group ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson

from streams.bench_workload import EVENT_TOPICS

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer

KINDS: Final = ("raw_aiokafka", "empty_faust", "naive_faust", "batched_core", "fetch_core")
BATCH_EVENTS: Final = 2000
BATCH_WITHIN_S: Final = 0.05
BATCHED_OUTPUTS: Final = ("bench-batched-changes", "bench-batched-profiles")
FETCH_OUTPUTS: Final = ("bench-fetch-changes", "bench-fetch-profiles")
#: Fetches handed to the whole-fetch prototype's agent and not yet folded: one being folded, one
#: waiting, so the agent never waits for a fetch and the task does not read far ahead.
FETCHES_IN_FLIGHT: Final = 2
BATCHED_SENDS_ENV: Final = "TIERSTREAM_BENCH_BATCHED_SENDS"
# The prototype parses as the worker does by default (TIERSTREAM_BASE_CURRENCY), the currency of
# the workload's purchases: with another, half the purchases were skipped as foreign instead of
# folded (found 2026-12-07), and the prototype's rate counted work it had not done.
PROTOTYPE_BASE_CURRENCY: Final = "USD"


def proc_status_bytes(pid: int | str, field: str) -> int | None:
    """A `VmHWM`/`VmRSS`-style field of /proc/<pid>/status, in bytes (None off Linux)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            parts = line.split()
            return int(parts[1]) * 1024 if len(parts) >= 2 else None
    return None


def proc_cpu_seconds(pid: int | str) -> float | None:
    """User + system CPU seconds of a process so far, from /proc/<pid>/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Meter:
    """Counts events; at the first it notes the time and CPU, at `expected` it writes the result."""

    def __init__(self, kind: str, expected: int, result: Path) -> None:
        self.kind, self.expected, self.result = kind, expected, result
        self.count = 0
        self.started = 0.0
        self.cpu_started = 0.0
        self.done = False

    def tick(self, n: int = 1) -> None:
        if self.count == 0:
            self.started = time.perf_counter()
            self.cpu_started = _self_cpu()
        self.count += n
        if not self.done and self.count >= self.expected:
            self.done = True
            self.write()

    def write(self) -> None:
        seconds = max(time.perf_counter() - self.started, 1e-9)
        cpu = _self_cpu() - self.cpu_started
        doc = {
            "kind": self.kind,
            "events": self.count,
            "seconds": seconds,
            "events_per_s": self.count / seconds,
            "cpu_seconds": cpu,
            "cpu_us_per_event": cpu / self.count * 1e6,
            "peak_rss_bytes": proc_status_bytes("self", "VmHWM"),
            "pid": os.getpid(),
        }
        tmp = self.result.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(doc))
        tmp.replace(self.result)  # atomic: the parent never reads half a file


# -- child side ---------------------------------------------------------------------------


def _workload_consumer(bootstrap: str, group: str) -> AIOKafkaConsumer:
    """An aiokafka consumer of the four event topics from the beginning, committing on its own,
    with the fast group settings of the embedded stack's tests."""
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(
        *EVENT_TOPICS,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=True,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        rebalance_timeout_ms=4000,
    )


async def _raw(bootstrap: str, group: str, meter: Meter) -> None:
    consumer = _workload_consumer(bootstrap, group)
    await consumer.start()
    counts: dict[str, int] = {}
    try:
        while not meter.done:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batch.values():
                for record in records:
                    doc = orjson.loads(record.value)
                    cid = doc["customer_id"]
                    counts[cid] = counts.get(cid, 0) + 1
                meter.tick(len(records))
    finally:
        await consumer.stop()


def _faust_app(kind: str, broker: str, group: str, partitions: int, data_dir: str) -> Any:
    """A Faust app with the pipeline's settings (as `tierstream worker` would build them)."""
    import faust

    from streams.app import faust_settings
    from streams.embedded import FAST_GROUP_SETTINGS, free_port
    from streams.settings import load_settings

    env = {
        **os.environ,
        "TIERSTREAM_BROKER": broker,
        "TIERSTREAM_APP_ID": group,
        "TIERSTREAM_PARTITIONS": str(partitions),
        "TIERSTREAM_DATA_DIR": data_dir,
        "TIERSTREAM_WEB_PORT": str(free_port()),
        "TIERSTREAM_FAST_GROUP_JOIN": "true",
    }
    conf = faust_settings(load_settings(env))
    conf.update(FAST_GROUP_SETTINGS)
    return faust.App(group, **conf)


def _run_faust(
    kind: str, broker: str, group: str, partitions: int, data_dir: str, meter: Meter
) -> None:
    import faust
    from faust.worker import Worker

    from streams.app import RAW

    asyncio.set_event_loop(asyncio.new_event_loop())
    app = _faust_app(kind, broker, group, partitions, data_dir)
    topic = app.topic(*EVENT_TOPICS, **RAW, partitions=partitions)
    if kind == "empty_faust":
        counts: dict[str, int] = {}

        async def count(stream: faust.StreamT) -> None:
            async for event in stream.events():
                doc = orjson.loads(event.value)
                cid = doc["customer_id"]
                counts[cid] = counts.get(cid, 0) + 1
                meter.tick()

        app.agent(topic, name="bench.empty")(count)
    elif kind == "batched_core":
        _register_batched_core(app, topic, partitions, meter)
    elif kind == "fetch_core":
        from streams.settings import bootstrap_servers

        _register_fetch_core(app, bootstrap_servers(broker), group, partitions, meter)
    else:
        totals = app.Table(
            "naive-totals",
            default=float,
            key_type=str,
            value_type=float,
            partitions=partitions,
        )

        async def naive(stream: faust.StreamT) -> None:
            async for event in stream.events():
                doc = orjson.loads(event.value)
                amount = doc.get("amount")
                totals[doc["customer_id"]] += float(amount) if amount is not None else 1.0
                meter.tick()

        app.agent(topic, name="bench.naive")(naive)
    worker = Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


class CoreFold:
    """The prototypes' shared work: fold a batch of raw event records through the real pure core
    (`parse_event`, `apply_event` with the default rules and campaign policy), keep one state
    per customer in a Faust table, and write one state record per customer per batch to the
    table's changelog, to the customer's own partition with `send_changelog` (a batch spans
    partitions, and the table's `__setitem__` would log a key under the partition of whichever
    record is current). Returns the batch's outputs for the caller to publish: every tier
    change, and one profile per customer."""

    def __init__(self, app: Any, table_name: str, partitions: int) -> None:
        import faust

        from segmentation.campaigns import parse_campaign_policy
        from segmentation.rules import default_rules
        from streams.app import RAW

        self.rules = default_rules()
        self.policy = parse_campaign_policy(self.rules.campaigns)
        self.table = app.Table(
            table_name,
            key_type=bytes,
            value_type=bytes,
            schema=faust.Schema(**RAW),
            partitions=partitions,
        )

    def fold(
        self, records: Iterable[tuple[str, int, bytes]], now_ms: int
    ) -> tuple[list[tuple[bytes, bytes, int]], list[tuple[bytes, bytes, int]]]:
        """`records`: (topic, partition, value). Returns (changes, profiles), each a list of
        (key, value, partition)."""
        from segmentation.bgnbd import DEFAULT_PARAMS
        from segmentation.events import InvalidEvent, parse_event
        from segmentation.state import CustomerState
        from segmentation.step import apply_event

        table = self.table
        # customer key -> (partition, state); the latest profile per customer
        states: dict[bytes, tuple[int, CustomerState | None]] = {}
        latest: dict[bytes, tuple[int, dict[str, Any]]] = {}
        changes: list[tuple[bytes, bytes, int]] = []
        for topic, partition, value in records:
            try:
                parsed = parse_event(
                    topic,
                    value,
                    now_ms=now_ms,
                    base_currency=PROTOTYPE_BASE_CURRENCY,
                    max_future_ms=86_400_000,
                )
            except InvalidEvent:
                continue  # dead-lettered by the pipeline; the workload has none (tested)
            key = parsed.customer_id.encode()
            held = states.get(key)
            if held is None:
                raw = table.data.get(key)
                held = (partition, CustomerState.from_bytes(raw) if raw else None)
            result = apply_event(held[1], parsed, self.rules, DEFAULT_PARAMS, policy=self.policy)
            states[key] = (partition, result.state)
            for change in result.changes:
                changes.append((key, orjson.dumps(change), partition))
            if result.profile is not None:
                latest[key] = (partition, result.profile)
        for key, (partition, state) in states.items():
            if state is not None:
                encoded = state.to_bytes()
                table.data[key] = encoded
                table.send_changelog(partition, key, encoded)
        profiles = [
            (key, orjson.dumps(profile), partition) for key, (partition, profile) in latest.items()
        ]
        return changes, profiles


def _register_batched_core(app: Any, topic: Any, partitions: int, meter: Meter) -> None:
    import faust

    from streams.app import RAW

    core = CoreFold(app, "batched-customers", partitions)
    changes_name, profiles_name = BATCHED_OUTPUTS
    changes, profiles = (app.topic(name, **RAW, partitions=partitions) for name in BATCHED_OUTPUTS)
    # "topic": Faust's Topic.send, as the pipeline sends; "producer": the app's producer
    # directly (no Faust message objects, callbacks or codecs), to see what that path costs.
    direct = os.environ.get(BATCHED_SENDS_ENV, "topic") == "producer"

    async def send(topic: Any, name: str, key: bytes, value: bytes, partition: int) -> None:
        if direct:
            await app.producer.send(name, key, value, partition, None, None)
        else:
            await topic.send(key=key, value=value, partition=partition)

    async def batched(stream: faust.StreamT) -> None:
        # take_events is on faust.Stream, missing from the StreamT protocol.
        batches = stream.take_events(BATCH_EVENTS, within=BATCH_WITHIN_S)  # type: ignore[attr-defined]
        async for events in batches:
            records = (
                (event.message.topic, event.message.partition, event.value) for event in events
            )
            out_changes, out_profiles = core.fold(records, int(time.time() * 1000))
            for key, value, partition in out_changes:
                await send(changes, changes_name, key, value, partition)
            for key, value, partition in out_profiles:
                await send(profiles, profiles_name, key, value, partition)
            meter.tick(len(events))

    app.agent(topic, name="bench.batched")(batched)


def _register_fetch_core(
    app: Any, bootstrap: str, group: str, partitions: int, meter: Meter
) -> None:
    """The leaner path from consumer to agent: a task reads whole fetches with its own aiokafka
    consumer (`getmany`, up to BATCH_EVENTS records or BATCH_WITHIN_S) and hands each fetch to a
    Faust agent as ONE event on an in-memory channel, so Faust's per-record machinery (message
    objects, the drain loop, acks, per-event sleep(0)) runs once per fetch, not once per record.
    The agent folds the fetch as `batched_core` does (`CoreFold`: Faust table and changelog) and
    produces its outputs through the app's producer. Offsets are the task's consumer's, committed
    automatically: unlike the pipeline, a crash may lose or repeat a fetch, so this measures the
    shape's ceiling, not a delivery guarantee (that would need the agent to commit what it
    folded, after its outputs and changelog are delivered)."""
    import faust

    core = CoreFold(app, "fetch-customers", partitions)
    changes_name, profiles_name = FETCH_OUTPUTS
    # In memory: values are handed over as they are, no codec (faust.Channel.prepare_value).
    fetches = app.channel()
    # The channel's queue holds up to stream_buffer_maxsize events, here fetches of up to
    # BATCH_EVENTS records each, so without a bound the task could read far ahead of the agent.
    # The bound did not change the peak RSS (308 MiB before, 307 after, against ~180 for the
    # micro-batched prototype; benches of 2026-12-07): that excess is not this queue.
    in_flight = asyncio.Semaphore(FETCHES_IN_FLIGHT)

    async def fetch() -> None:
        # Not the Faust app's group: that one speaks Faust's assignor protocol.
        consumer = _workload_consumer(bootstrap, f"{group}-fetch")
        await consumer.start()
        try:
            while not meter.done:
                batch = await consumer.getmany(
                    timeout_ms=int(BATCH_WITHIN_S * 1000), max_records=BATCH_EVENTS
                )
                records = [(r.topic, r.partition, r.value) for rs in batch.values() for r in rs]
                if records:
                    await in_flight.acquire()  # released when the agent has folded a fetch
                    await fetches.send(value=records)
        finally:
            await consumer.stop()

    async def fold_fetches(stream: faust.StreamT) -> None:
        send = app.producer.send
        async for records in stream:
            out_changes, out_profiles = core.fold(records, int(time.time() * 1000))
            for key, value, partition in out_changes:
                await send(changes_name, key, value, partition, None, None)
            for key, value, partition in out_profiles:
                await send(profiles_name, key, value, partition, None, None)
            in_flight.release()
            meter.tick(len(records))

    app.task(fetch)
    app.agent(fetches, name="bench.fetch")(fold_fetches)


def child_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams.bench_baselines")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--broker", required=True, help="kafka://host:port (Faust form)")
    parser.add_argument("--group", required=True, help="consumer group / Faust app id")
    parser.add_argument("--expected", type=int, required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args(argv)
    from streams.settings import bootstrap_servers

    meter = Meter(args.kind, args.expected, Path(args.result))
    outputs = {"batched_core": BATCHED_OUTPUTS, "fetch_core": FETCH_OUTPUTS}.get(args.kind)
    if outputs:
        from streams.embedded import create_topics

        asyncio.run(create_topics(bootstrap_servers(args.broker), list(outputs), args.partitions))
    if args.kind == "raw_aiokafka":
        asyncio.run(_raw(bootstrap_servers(args.broker), args.group, meter))
    else:
        _run_faust(args.kind, args.broker, args.group, args.partitions, args.data_dir, meter)
    return 0


# -- parent side --------------------------------------------------------------------------


class BaselineError(RuntimeError):
    pass


def run_baseline(
    kind: str,
    *,
    broker: str,
    group: str,
    expected: int,
    partitions: int,
    workdir: Path,
    env: Mapping[str, str] | None = None,
    stall_timeout: float = 180.0,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run one baseline child until it reports `expected` events; returns its result, plus the
    broker-independent figures the parent sees (wall time including start-up)."""
    workdir.mkdir(parents=True, exist_ok=True)
    result = workdir / f"{kind}.json"
    log_path = workdir / f"{kind}.log"
    result.unlink(missing_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streams.bench_baselines",
                kind,
                "--broker",
                broker,
                "--group",
                group,
                "--expected",
                str(expected),
                "--partitions",
                str(partitions),
                "--data-dir",
                str(workdir / f"{kind}-data"),
                "--result",
                str(result),
            ],
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = time.monotonic()
    # Generous: the slowest baseline (the naive agent) makes ~2,000 events/s on one core.
    deadline = started + (timeout if timeout is not None else 300.0 + expected / 200)
    try:
        last_cpu, last_change = 0.0, time.monotonic()
        while not result.exists():
            if time.monotonic() > deadline:
                raise BaselineError(
                    f"baseline {kind} did not consume {expected:,} events in "
                    f"{deadline - started:.0f}s: {_tail(log_path)}"
                )
            if proc.poll() is not None:
                raise BaselineError(
                    f"baseline {kind} exited with {proc.returncode}: {_tail(log_path)}"
                )
            cpu = proc_cpu_seconds(proc.pid) or 0.0
            if cpu > last_cpu + 0.05:
                last_cpu, last_change = cpu, time.monotonic()
            elif time.monotonic() - last_change > stall_timeout:
                raise BaselineError(
                    f"baseline {kind} made no progress for {stall_timeout:.0f}s: {_tail(log_path)}"
                )
            time.sleep(0.2)
        doc: dict[str, Any] = orjson.loads(result.read_bytes())
        doc["wall_seconds_with_startup"] = time.monotonic() - started
        return doc
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_bytes()[-chars:].decode(errors="replace")
    except OSError:
        return "(no log)"


if __name__ == "__main__":
    sys.exit(child_main())
