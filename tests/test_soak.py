"""Soak: a sustained live load at 80% of one worker's measured maximum, for SOAK_SECONDS (default
600): the worker's memory stays flat after warm-up, its lag does not grow, and nothing valid ends
in dead-letters.

Run with `make soak` (`pytest -m soak`); the default `pytest` run deselects it (addopts).

1. Calibrate (see `calibrate`): a burst of SOAK_BURST events (default 30,000) published at once
   creates a fixed population of customers and gives a first estimate; then live probes of
   SOAK_PROBE_SECONDS (60) each find the highest rate at which neither the segment agent's lag
   nor the Redis read model's backlog grows. That rate is the maximum.
2. Offer 80% of that rate for SOAK_SECONDS, event times = wall time (live mode), all four input
   topics, published every OFFER_TICK_SECONDS, 0.5% exact redeliveries; every SAMPLE_SECONDS
   sample the worker's RSS (/proc/<pid>/status VmRSS), its lag (events offered minus events
   processed), its `tierstream_consumer_lag` and its `tierstream_redis_backlog`.
3. Let it drain (every event folded, every profile written to Redis), then assert:
   - memory flat: the mean RSS of the last third is at most MEMORY_GROWTH_LIMIT (10%) above the
     mean of the second third (the first third is warm-up: allocator arenas, Faust buffers,
     the table's first writes). The legitimate growth of this workload is small (new orders,
     per-customer windows of recent event ids filling, both bounded by a few MB), while a leak
     of only ~100 bytes per event would add tens of MB per third at these rates;
   - lag bounded: the largest lag of the last third is at most 1.5x the largest of the second
     third, or LAG_FLOOR_SECONDS (5 s) of offered load, whichever is larger (a backlog growing
     at a steady deficit is ~1.5x larger in the last third than in the second; jitter of a few
     seconds of traffic on a shared machine is not growth), and it drains to zero at the end;
     the same for the Redis read model's backlog (profiles not yet written);
   - dead-letters empty, and every offered event processed.
The figures go to `soak.json` in the test's tmp dir, and are printed.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson
import pytest

from streams.bench_baselines import proc_cpu_seconds
from streams.embedded import EmbeddedStack
from streams.harness import WorkerProcess, caught_up
from tests.e2e_support import fresh_stack, start_worker, topic_values

pytestmark = pytest.mark.soak
T = TypeVar("T")

SOAK_SECONDS: Final = float(os.environ.get("SOAK_SECONDS", "600"))
BURST: Final = int(os.environ.get("SOAK_BURST", "30000"))
PROBE_SECONDS: Final = float(os.environ.get("SOAK_PROBE_SECONDS", "60"))
PROBE_SAMPLE_SECONDS: Final = 2.0
#: A probe's rate is sustained when neither backlog grows faster than this share of it.
PROBE_GROWTH_SHARE: Final = 0.03
#: The first probe, as a share of the burst's rate. The burst creates the customers (an event
#: that creates one costs more than one that updates it), yet a burst is folded in full write
#: batches and live traffic is not: the live maximum was 1,722 against a burst of 1,634 in one
#: run, but 701 against 985 (0.71) and 767 against 859 (0.89) in the fresh-clone runs of
#: 2026-12-07, and in the CI run that followed no probe held down to 752 against 1,183 (< 0.64),
#: five probes from 1.0 of the burst. So the first probe starts lower, and there are enough probes
#: to walk down from it to half the burst's rate (0.8 / 1.12**5 = 0.45).
START_SHARE: Final = 0.8
PROBE_STEP: Final = 1.12
MAX_PROBES: Final = 8
LOAD_SHARE: Final = 0.8
#: The fixed population. Every customer's history grows through the run, and the cost of an
#: event grows with its customer's history (decoding and encoding the state, its orders and its
#: window of recent event ids: 80 us of core work at 10 events, 133 us at 600), so a small
#: population measures that growth, not whether the worker keeps up: with 2,000 customers,
#: each had ~600 events by the end, and a rate held in the calibration was not held ten minutes
#: later. 20,000 customers end with ~70 each, a shop's busiest rather than an impossible one.
CUSTOMERS: Final = int(os.environ.get("SOAK_CUSTOMERS", "20000"))
SAMPLE_SECONDS: Final = max(1.0, min(5.0, SOAK_SECONDS / 30))
MEMORY_GROWTH_LIMIT: Final = 0.10
LAG_GROWTH_LIMIT: Final = 1.5
LAG_FLOOR_SECONDS: Final = 5.0
DUPLICATE_SHARE: Final = 0.005
#: The live load is published a tick's worth at a time, as a shop's producer batches with its
#: linger: ~10 events per topic-partition per record batch at these rates. The embedded broker
#: lists every record batch a partition holds on each fetch of it, so its fetches cost more as
#: batches accumulate, and steeply past ~10,000 per partition (1 ms at 1,000 batches, 7 ms at
#: 10,000, 130-1,800 ms at 20,000: README, Known limits). At the 50 ms ticks of the earlier soaks a
#: batch held ~2 events, the input partitions passed 10,000 batches within the run, and the
#: broker's CPU and the worker's backlogs grew with them.
OFFER_TICK_SECONDS: Final = 0.25
# (topic, share): engagement dominates, as in a real shop.
TOPIC_MIX: Final = (
    ("purchases", 0.10),
    ("email-opens", 0.40),
    ("email-clicks", 0.15),
    ("wechat-interactions", 0.35),
)
WECHAT_KINDS: Final = ("message_reply", "moments_like", "moments_comment", "miniprogram_visit")


class Events:
    """Valid live events (event time = now) over a fixed population, encoded; a small share are
    exact redeliveries of a recent event (which must count once, and never be dead-lettered)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.count = 0
        self.recent: list[tuple[str, bytes, bytes]] = []
        self.topics = [t for t, _ in TOPIC_MIX]
        self.weights = [w for _, w in TOPIC_MIX]
        self.first_pass = [f"soak-{i:05d}" for i in range(CUSTOMERS)]
        self.rng.shuffle(self.first_pass)

    def next(self) -> tuple[str, bytes, bytes]:
        rng = self.rng
        if self.recent and rng.random() < DUPLICATE_SHARE:
            return rng.choice(self.recent)
        self.count += 1
        n = self.count
        # The first CUSTOMERS events (the burst) create every customer once, in a random order.
        if n <= CUSTOMERS:
            customer = self.first_pass[n - 1]
        else:
            customer = f"soak-{rng.randrange(CUSTOMERS):05d}"
        topic = rng.choices(self.topics, self.weights)[0]
        doc: dict[str, Any] = {
            "event_id": f"soak-e{n}",
            "customer_id": customer,
            "occurred_at": int(time.time() * 1000),
        }
        if topic == "purchases":
            doc.update(order_id=f"soak-o{n}", amount=f"{rng.uniform(5, 300):.2f}")
        elif topic == "wechat-interactions":
            doc["kind"] = rng.choice(WECHAT_KINDS)
        else:
            doc["message_id"] = f"m{n % 500}"
        record = (topic, customer.encode(), orjson.dumps(doc))
        self.recent.append(record)
        if len(self.recent) > 1000:
            del self.recent[:500]
        return record


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat)."""
    seconds = proc_cpu_seconds(pid)
    assert seconds is not None, f"process {pid} has exited"
    return seconds


def outputs(metrics: dict[str, float]) -> float:
    """Tier/stage transitions, campaign triggers (sent and suppressed) and churn warnings."""
    return sum(
        metrics.get(name, 0.0)
        for name in (
            "tierstream_transitions_total",
            "tierstream_campaign_triggers_total",
            "tierstream_campaign_triggers_suppressed_total",
            "tierstream_churn_warnings_total",
        )
    )


def processed(metrics: dict[str, float]) -> float:
    """Events folded into state: consumed, minus those forwarded to their right partition
    (consumed again there) and those still held for their event-time turn (consumed from the
    broker, not yet processed: counting them overstated a backlogged worker's rate by the
    records it had fetched ahead, and hid a lag that had moved into the worker's memory)."""
    return (
        metrics.get("tierstream_events_consumed_total", 0.0)
        - metrics.get("tierstream_events_forwarded_total", 0.0)
        - metrics.get("tierstream_events_held", 0.0)
    )


async def offer(
    bootstrap: str,
    events: Events,
    rate: float,
    seconds: float,
    on_sample: Callable[[float, int], None] | None = None,
    sample_seconds: float = SAMPLE_SECONDS,
) -> int:
    """Publish at `rate` events/s for `seconds` (as fast as possible when rate is 0 and
    `seconds` is a count); call `on_sample(elapsed, produced)` every `sample_seconds` from a
    thread, so a slow scrape does not stall the pace. Returns how many were published."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1)
    await producer.start()
    sent = 0
    pending: list[asyncio.Future[Any]] = []
    sampling: asyncio.Task[None] | None = None
    try:
        started = time.monotonic()
        if on_sample is not None:
            sample_cb = on_sample

            async def sampler() -> None:
                while True:
                    await asyncio.sleep(sample_seconds)
                    await asyncio.to_thread(sample_cb, time.monotonic() - started, sent)

            sampling = asyncio.create_task(sampler())
        while True:
            elapsed = time.monotonic() - started
            if rate > 0 and elapsed >= seconds:
                break
            target = int(rate * elapsed) if rate > 0 else int(seconds)
            if rate <= 0 and sent >= target:
                break
            while sent < target:
                topic, key, value = events.next()
                pending.append(await producer.send(topic, value, key=key))
                sent += 1
                if len(pending) >= 2000:
                    await asyncio.gather(*pending)
                    pending.clear()
            if pending and rate > 0:
                await asyncio.gather(*pending)
                pending.clear()
            await asyncio.sleep(OFFER_TICK_SECONDS if rate > 0 else 0)
        await asyncio.gather(*pending)
        await producer.flush()
    finally:
        if sampling is not None:
            sampling.cancel()
        await producer.stop()
    return sent


def burst_rate(stack: EmbeddedStack, worker: WorkerProcess, events: Events) -> float:
    """Events folded per second while the worker works through BURST events published at once,
    between 10% and 90% of them (leaving out start-up and the tail). Over fresh customers."""
    before = processed(worker.metrics())
    asyncio.run(offer(stack.bootstrap, events, 0.0, BURST))
    samples: list[tuple[float, float]] = []
    deadline = time.monotonic() + 1800
    while True:
        done = processed(worker.metrics()) - before
        samples.append((time.monotonic(), done))
        if done >= BURST:
            break
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.5)
    lo = next(s for s in samples if s[1] >= 0.1 * BURST)
    hi = next(s for s in samples if s[1] >= 0.9 * BURST)
    return (hi[1] - lo[1]) / max(hi[0] - lo[0], 1e-3)


def drained(metrics: dict[str, float], before: float, offered: int) -> bool:
    """Every offered event folded, and every profile it caused written to Redis."""
    return processed(metrics) - before >= offered and caught_up(metrics)


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares growth per second of (t, value) points."""
    if len(points) < 3:
        return 0.0
    return statistics.linear_regression([t for t, _ in points], [v for _, v in points]).slope


def probe(
    stack: EmbeddedStack, worker: WorkerProcess, events: Events, rate: float
) -> dict[str, float]:
    """Offer `rate` events/s live for PROBE_SECONDS and measure how fast the worker's two
    backlogs grow once it has settled (after the first third): the events offered and not yet
    folded, and the profiles not yet written to Redis. Then let it drain."""
    before = processed(worker.metrics())
    points: list[tuple[float, float, float]] = []

    def mark(elapsed: float, produced: int) -> None:
        m = worker.metrics()
        lag = produced - (processed(m) - before)
        points.append((elapsed, lag, m.get("tierstream_redis_backlog", 0.0)))

    offered = asyncio.run(
        offer(stack.bootstrap, events, rate, PROBE_SECONDS, mark, PROBE_SAMPLE_SECONDS)
    )
    settled = [p for p in points if p[0] >= PROBE_SECONDS / 3]
    lag_growth = slope([(t, lag) for t, lag, _ in settled])
    redis_growth = slope([(t, backlog) for t, _, backlog in settled])
    limit = PROBE_GROWTH_SHARE * rate
    worker.wait_for(
        lambda m: drained(m, before, offered),
        timeout=1800,
        what=f"the probe at {rate:.0f} events/s processed and written to Redis",
    )
    return {
        "offered_events_per_s": rate,
        "lag_growth_events_per_s": lag_growth,
        "redis_backlog_growth_per_s": redis_growth,
        "lag_max_events": max((lag for _, lag, _ in points), default=0.0),
        "redis_backlog_max": max((b for _, _, b in points), default=0.0),
        "sustained": float(lag_growth <= limit and redis_growth <= limit),
    }


def search_maximum(
    estimate: float, probe_at: Callable[[float], dict[str, float]]
) -> list[dict[str, float]]:
    """The probes of `calibrate`'s search, in order: the first at START_SHARE of `estimate`, then
    up by PROBE_STEP after a sustained probe and down after one that was not, until a sustained
    rate and one at most a step above it that was not have both been seen, or MAX_PROBES ran
    out. `probe_at(rate)` runs one probe and returns its figures."""
    probes: list[dict[str, float]] = []
    rate = START_SHARE * estimate
    for _ in range(MAX_PROBES):
        result = probe_at(rate)
        probes.append(result)
        held = [p["offered_events_per_s"] for p in probes if p["sustained"]]
        failed = [p["offered_events_per_s"] for p in probes if not p["sustained"]]
        if held and failed and min(failed) <= max(held) * PROBE_STEP * 1.01:
            break
        rate = rate * PROBE_STEP if result["sustained"] else rate / PROBE_STEP
    return probes


def calibrate(stack: EmbeddedStack, worker: WorkerProcess, events: Events) -> dict[str, Any]:
    """The worker's maximum in the soak's own regime: the highest live rate at which neither of
    its backlogs grows, the segment agent's (events offered, not yet folded) nor the read
    model's (profiles not yet written to Redis).

    A burst of BURST events published at once (which also creates every customer) gives a first
    estimate, but overstates: a burst is folded in full write batches, while live traffic closes
    them by time. The calibration of the previous sessions took, after the burst, the events
    offered at 1.5x that estimate over the time until all were folded and written to Redis; that
    still overstated, because while the read model catches up after the load it writes one
    profile for many updates of a customer, which it cannot do while keeping up live (80% of it
    built a Redis backlog of 60k / 147k / 222k profiles by third, soaks of 2026-12-06). So the
    worker is probed instead: PROBE_SECONDS of live traffic at a rate, sustained if neither
    backlog grows by more than PROBE_GROWTH_SHARE of the rate per second after the first third;
    up from START_SHARE of the estimate while sustained, down while not, until a sustained rate
    and the next one up that is not have both been seen (or MAX_PROBES ran out). The maximum is
    the highest sustained rate."""
    estimate = burst_rate(stack, worker, events)

    def probe_at(rate: float) -> dict[str, float]:
        result = probe(stack, worker, events, rate)
        print(f"soak calibration probe: {result}", flush=True)
        return result

    probes = search_maximum(estimate, probe_at)
    held = [p["offered_events_per_s"] for p in probes if p["sustained"]]
    lowest = min(p["offered_events_per_s"] for p in probes)
    assert held, f"no live rate was sustained, down to {lowest:.0f} events/s: {probes}"
    return {
        "burst_events": BURST,
        "burst_events_per_s": estimate,
        "probe_seconds": PROBE_SECONDS,
        "probes": probes,
        "max_events_per_s": max(held),
    }


def thirds(values: list[T]) -> tuple[list[T], list[T], list[T]]:
    n = len(values)
    return values[: n // 3], values[n // 3 : 2 * n // 3], values[2 * n // 3 :]


def max_by_third(samples: list[dict[str, float]], key: str) -> list[float]:
    return [max(s[key] for s in part) for part in thirds(samples)]


def rate_by_third(samples: list[dict[str, float]], counter: str) -> list[float]:
    """The growth per second of a cumulative sample over each third of the run."""
    rates = []
    for part in thirds(samples):
        first, last = part[0], part[-1]
        rates.append((last[counter] - first[counter]) / max(last["t"] - first["t"], 1e-3))
    return rates


@pytest.fixture(autouse=True)
def only_when_asked_for(request: pytest.FixtureRequest) -> None:
    """A `-m` on the command line replaces the default `-m 'not soak'`: a quick `-m 'not e2e'`
    run must not start a ten-minute soak, so it runs only when the expression names it."""
    expression = str(request.config.getoption("markexpr") or "")
    if "soak" not in expression.replace("not soak", ""):
        pytest.skip("the soak test runs with `make soak` (pytest -m soak)")


def test_sustained_load_at_80_percent_of_max(tmp_path: Path) -> None:
    assert BURST >= CUSTOMERS, "the burst creates the population: SOAK_BURST >= SOAK_CUSTOMERS"
    events = Events(seed=6)
    with fresh_stack() as stack:
        worker = start_worker(
            stack,
            tmp_path,
            "soak",
            TIERSTREAM_LIVE_CLOCK="true",
            TIERSTREAM_APP_ID="tierstream-soak",
        )
        try:
            assert worker.proc is not None
            pid = worker.proc.pid
            broker_pid = stack.broker.pid
            assert broker_pid is not None
            calibration = calibrate(stack, worker, events)
            rate = LOAD_SHARE * calibration["max_events_per_s"]
            base = processed(worker.metrics())
            offered_before = events.count
            samples: list[dict[str, float]] = []

            def sample(elapsed: float, produced: int) -> None:
                m = worker.metrics()
                done = processed(m) - base
                samples.append(
                    {
                        "t": round(elapsed, 2),
                        "rss_bytes": rss_bytes(pid),
                        "produced": produced,
                        "processed": done,
                        "lag_events": produced - done,
                        "consumer_lag": m.get("tierstream_consumer_lag", 0.0),
                        "held": m.get("tierstream_events_held", 0.0),
                        "redis_backlog": m.get("tierstream_redis_backlog", 0.0),
                        "outputs": outputs(m),
                        # Who used the two cores: the worker, the broker (the load generator
                        # and Redis are the rest).
                        "worker_cpu_s": cpu_seconds(pid),
                        "broker_cpu_s": cpu_seconds(broker_pid),
                        "broker_rss_bytes": rss_bytes(broker_pid),
                    }
                )

            soak_started = time.monotonic()
            produced = asyncio.run(offer(stack.bootstrap, events, rate, SOAK_SECONDS, sample))
            soak_seconds = time.monotonic() - soak_started
            final = worker.wait_for(
                lambda m: drained(m, base, produced),
                timeout=max(120.0, SOAK_SECONDS),
                what=f"the {produced} offered events processed and written to Redis",
            )
            drain_seconds = time.monotonic() - soak_started - soak_seconds
            dead = topic_values(stack, "dead-letters")
            final_rss = rss_bytes(pid)
        finally:
            worker.stop()

    assert len(samples) >= 9, samples
    rss = [s["rss_bytes"] for s in samples]
    lag = [s["lag_events"] for s in samples]
    rss_warm, rss_mid, rss_last = thirds(rss)
    _, lag_mid, lag_last = thirds(lag)
    lag_floor = LAG_FLOOR_SECONDS * rate
    figures: dict[str, Any] = {
        **calibration,
        "offered_events_per_s": rate,
        "soak_seconds": soak_seconds,
        "produced": produced,
        "achieved_events_per_s": produced / soak_seconds,
        "drain_seconds_after_load": drain_seconds,
        "duplicates_offered": produced - (events.count - offered_before),
        "rss_mean_bytes_by_third": [statistics.fmean(x) for x in (rss_warm, rss_mid, rss_last)],
        "rss_growth_last_vs_second_third": statistics.fmean(rss_last) / statistics.fmean(rss_mid)
        - 1,
        "rss_final_bytes": final_rss,
        "lag_max_events_by_third": max_by_third(samples, "lag_events"),
        "lag_floor_events": lag_floor,
        "consumer_lag_max": max(s["consumer_lag"] for s in samples),
        "dead_letters": len(dead),
        "redis_backlog_max_by_third": max_by_third(samples, "redis_backlog"),
        "worker_cpu_by_third": rate_by_third(samples, "worker_cpu_s"),
        "broker_cpu_by_third": rate_by_third(samples, "broker_cpu_s"),
        "broker_rss_max_bytes_by_third": max_by_third(samples, "broker_rss_bytes"),
        "outputs_per_s_by_third": rate_by_third(samples, "outputs"),
        "dead_letters_total_metric": final.get("tierstream_dead_letters_total", 0.0),
        "duplicates_ignored": final.get("tierstream_events_ignored_total", 0.0),
        "samples": samples,
    }
    out = tmp_path / "soak.json"
    out.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    summary = {k: v for k, v in figures.items() if k != "samples"}
    print(f"\nsoak figures ({out}):\n{orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode()}")

    assert not dead, dead[:3]
    assert figures["dead_letters_total_metric"] == 0
    assert figures["rss_growth_last_vs_second_third"] <= MEMORY_GROWTH_LIMIT, summary
    assert max(lag_last) <= max(LAG_GROWTH_LIMIT * max(lag_mid), lag_floor), summary
    _, redis_mid, redis_last = figures["redis_backlog_max_by_third"]
    assert redis_last <= max(LAG_GROWTH_LIMIT * redis_mid, lag_floor), summary
