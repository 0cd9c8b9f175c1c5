"""Running workers as child processes and reading what they publish: shared by `tierstream demo`,
`tierstream bench` and the end-to-end tests, so all three exercise the real `tierstream worker`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from streams.embedded import free_port


def caught_up(metrics: Mapping[str, float]) -> bool:
    """Nothing left in the worker: no record held for its event-time turn (tierstream_events_held)
    and no profile update waiting for Redis (tierstream_redis_backlog)."""
    return (
        metrics.get("tierstream_events_held", 1) == 0
        and metrics.get("tierstream_redis_backlog", 1) == 0
    )


class WorkerProcess:
    """`tierstream worker` in a child process, with its own web port and log file."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        *,
        web_port: int | None = None,
    ) -> None:
        self.web_port = web_port or free_port()
        self.log_path = log_path
        self.env = {
            **os.environ,
            "TIERSTREAM_FAST_GROUP_JOIN": "true",
            **env,
            "TIERSTREAM_WEB_PORT": str(self.web_port),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self, *, ready_timeout: float = 90.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.log_tail()}")
            if self.get("/health")[0] == 200 and self.assigned():
                return
            time.sleep(0.3)
        raise RuntimeError(f"worker not ready after {ready_timeout:.0f}s: {self.log_tail()}")

    def assigned(self) -> bool:
        """The worker has joined its group and finished recovery (Faust logs 'Worker ready')."""
        try:
            return b"Worker ready" in self.log_path.read_bytes()
        except OSError:
            return False

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-chars:].decode(errors="replace")
        except OSError:
            return "(no log)"

    def get(self, path: str, token: str | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError):
            return 0, b""

    def metrics(self) -> dict[str, float]:
        """Samples of /metrics summed over label sets, keyed by sample name and by
        `name{label=value,...}`."""
        status, body = self.get("/metrics")
        if status != 200:
            return {}
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}"] = sample.value
        return out

    def consumed(self) -> float:
        return self.metrics().get("tierstream_events_consumed_total", 0.0)

    def wait_for(
        self, condition: Callable[[dict[str, float]], bool], *, timeout: float, what: str
    ) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while True:
            sample = self.metrics()
            if sample and condition(sample):
                return sample
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker died while waiting for {what}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}; last metrics: {_brief(sample)}")
            time.sleep(0.5)

    def stop(self, *, kill: bool = False, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def _brief(sample: Mapping[str, float]) -> str:
    keys = (
        "tierstream_events_consumed_total",
        "tierstream_dead_letters_total",
        "tierstream_redis_backlog",
        "tierstream_events_held",
    )
    return ", ".join(f"{k}={sample.get(k)}" for k in keys)


async def read_topic(bootstrap: str, topic: str, *, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Every record of `topic` from the beginning to the end offsets seen at the start, decoded
    as JSON (a tombstone is None), with key/partition/offset."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        await consumer.topics()  # fetches cluster metadata
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        # The embedded broker can under-report end offsets (see notes): read until quiet too.
        idle_rounds = 0
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            got = 0
            for tp, records in batch.items():
                for r in records:
                    got += 1
                    out.append(
                        {
                            "key": r.key.decode() if r.key else None,
                            "partition": tp.partition,
                            "offset": r.offset,
                            "value": orjson.loads(r.value) if r.value else None,
                            "headers": dict(r.headers or ()),
                        }
                    )
            positions = {tp: await consumer.position(tp) for tp in tps}
            reached_end = all(positions[tp] >= end[tp] for tp in tps)
            idle_rounds = idle_rounds + 1 if got == 0 else 0
            if reached_end and idle_rounds >= 2:
                break
        return out
    finally:
        await consumer.stop()


def read_topic_sync(bootstrap: str, topic: str, *, timeout: float = 30.0) -> list[dict[str, Any]]:
    return asyncio.run(read_topic(bootstrap, topic, timeout=timeout))
