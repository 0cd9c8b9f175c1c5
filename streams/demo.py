"""`tierstream demo`: the CDNOW purchase history plus generated engagement, replayed through a
real worker on the embedded stack, ending in a report a marketer reads (terminal and HTML)."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import redis

from streams import datasets, readmodel
from streams.embedded import (
    EMBEDDED_BROKER_LIMITS,
    EmbeddedStack,
    EmbeddedStartupError,
    MissingDependency,
    create_topics,
)
from streams.harness import WorkerProcess, caught_up, read_topic_sync
from streams.replay import Progress, publish, send_ticks
from streams.report import build_report, render_html, render_text
from streams.settings import bootstrap_servers, load_settings
from streams.topics import ALL_TOPICS, CAMPAIGN_TRIGGERS, CHURN_WARNINGS, TIER_CHANGES

END_OF_HISTORY_MS = 899_251_200_000  # 1998-07-01T00:00:00Z


def settle(worker: WorkerProcess) -> None:
    """Until the worker has gone quiet: no new profile updates for two seconds."""
    last = -1.0
    while True:
        time.sleep(2)
        sent = worker.metrics().get("tierstream_transitions_total", 0.0)
        if sent == last and caught_up(worker.metrics()):
            return
        last = sent


def read_profiles(redis_url: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=readmodel.customer_key("*"), count=5000))
        profiles = []
        for start in range(0, len(keys), 5000):
            for raw in client.mget(keys[start : start + 5000]):
                if raw is not None:
                    profiles.append(orjson.loads(raw))
        return profiles
    finally:
        client.close()


def wait_processed(worker: WorkerProcess, expected: int, label: str) -> float:
    """Show progress until the worker has consumed `expected` events and the read model caught
    up; returns when the last event was consumed (monotonic seconds)."""
    bar = Progress(expected, label)
    deadline = time.monotonic() + 3600
    consumed = 0.0
    while time.monotonic() < deadline:
        sample = worker.metrics()
        consumed = sample.get("tierstream_events_consumed_total", 0.0) - sample.get(
            "tierstream_events_forwarded_total", 0.0
        )
        bar.update(int(consumed))
        if consumed >= expected:
            finished = time.monotonic()
            bar.close(int(consumed))
            worker.wait_for(
                lambda m: caught_up(m),
                timeout=600,
                what="the Redis read model to catch up",
            )
            return finished
        if worker.proc is not None and worker.proc.poll() is not None:
            raise RuntimeError(f"worker died: {worker.log_tail()}")
        time.sleep(0.5)
    raise TimeoutError(f"processed {consumed:.0f} of {expected} events in an hour")


def run_demo(out_dir: Path, seed: int = 7, partitions: int = 4) -> int:
    settings = load_settings()
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tierstream-demo-"))
    stack: EmbeddedStack | None = None
    if settings.broker is None:
        print("starting the embedded stack (Tansu broker + Redis on loopback)...", flush=True)
        print(EMBEDDED_BROKER_LIMITS, file=sys.stderr)
        stack = EmbeddedStack()
        try:
            stack.start()
        except (MissingDependency, EmbeddedStartupError) as exc:
            print(f"tierstream demo: {exc}", file=sys.stderr)
            return 1
        broker_url, redis_url = stack.broker_url, stack.redis_url
    else:
        broker_url, redis_url = settings.broker, settings.redis_url
    bootstrap = bootstrap_servers(broker_url)
    worker = WorkerProcess(
        {
            "TIERSTREAM_BROKER": broker_url,
            "TIERSTREAM_REDIS_URL": redis_url,
            "TIERSTREAM_PARTITIONS": str(partitions),
            "TIERSTREAM_DATA_DIR": str(work / "data"),
            # Its own consumer group and tables, so a demo against a shared broker starts clean.
            "TIERSTREAM_APP_ID": f"tierstream-demo-{int(time.time())}",
            # A replay of 1997-98: the clock is event time, and the demo shows the campaigns the
            # history would have fired (a real backfill does not fire them by default).
            "TIERSTREAM_LIVE_CLOCK": "false",
            "TIERSTREAM_CAMPAIGNS_ON_BACKFILL": "true",
        },
        work / "worker.log",
    )
    try:
        asyncio.run(create_topics(bootstrap, ALL_TOPICS, partitions))
        print("building the input: CDNOW purchases + generated email/WeChat engagement...")
        events = datasets.cdnow_demo_events(seed=seed)
        print(f"starting a worker (log: {worker.log_path})...", flush=True)
        worker.start()
        started = time.monotonic()
        stats = asyncio.run(publish(bootstrap, events, backfill=True, label="publish "))
        finished = wait_processed(worker, len(events), "process ")
        seconds = finished - started
        rate = len(events) / seconds
        print(f"processed {len(events):,} events in {seconds:.1f}s = {rate:,.0f} events/s")
        # The history ends on 30 June 1998: move every partition's clock there, so customers
        # whose boundaries passed by then (at risk, churned...) are where they would be.
        asyncio.run(send_ticks(bootstrap, END_OF_HISTORY_MS))
        settle(worker)
        metrics = worker.metrics()
        profiles = read_profiles(redis_url)
        changes = [r["value"] for r in read_topic_sync(bootstrap, TIER_CHANGES) if r["value"]]
        triggers = [r["value"] for r in read_topic_sync(bootstrap, CAMPAIGN_TRIGGERS) if r["value"]]
        warnings = [r["value"] for r in read_topic_sync(bootstrap, CHURN_WARNINGS) if r["value"]]
        skips: dict[str, dict[str, int]] = {}
        for key, value in metrics.items():
            if key.startswith("tierstream_campaign_triggers_suppressed_total{"):
                labels = dict(kv.split("=", 1) for kv in key[key.index("{") + 1 : -1].split(","))
                skips.setdefault(labels["campaign"], {})[labels["reason"]] = int(value)
        report = build_report(
            profiles,
            changes,
            triggers=triggers,
            campaign_skips=skips,
            churn_warnings=warnings,
            meta={
                "per_topic": stats.per_topic,
                "seconds": seconds,
                "events_per_second": rate,
                "source": "CDNOW (69,659 purchases, 1997-01..1998-06) + generated engagement",
                "currency": "USD",
                "dead_letters": int(metrics.get("tierstream_dead_letters_total", 0)),
            },
        )
        print()
        print(render_text(report))
        html_path = out_dir / "tierstream-demo.html"
        html_path.write_text(render_html(report), encoding="utf-8")
        (out_dir / "tierstream-demo.json").write_bytes(
            orjson.dumps(report.to_json_dict(), option=orjson.OPT_INDENT_2)
        )
        print(f"\nHTML report: {html_path.resolve()}")
        return 0
    finally:
        worker.stop()
        if stack is not None:
            stack.stop()
