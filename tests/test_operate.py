"""Operating a real worker: its /metrics scrape passes `promtool check metrics` and exports the
contract in deploy/metrics.txt, consumer lag per owned partition, the bearer token on everything
but /health and /metrics, the web port on loopback, the operator CLI (`tierstream customer`,
`tierstream tiers`, tables and --json), and no secrets or customer data in the worker's log.

The worker runs against a Redis that requires a password (given in TIERSTREAM_REDIS_URL) and with
TIERSTREAM_WEB_TOKEN set, as in production.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from faust.types import TP
from prometheus_client import Gauge
from prometheus_client.parser import text_string_to_metric_families

from segmentation.events import INPUT_TOPICS
from streams.embedded import LOOPBACK, EmbeddedRedis, EmbeddedStack
from streams.harness import WorkerProcess
from streams.lag import LagMonitor
from streams.partitioning import partition_for
from streams.replay import send_ticks
from tests.e2e_support import (
    PARTITIONS,
    fresh_stack,
    in_ci,
    send,
    send_raw,
    settle,
    start_worker,
    wait_consumed,
)

ROOT = Path(__file__).resolve().parents[1]
METRICS_FILE = ROOT / "deploy" / "metrics.txt"

TOKEN = "op-token-3f9c1e7a5b2d4c6e8a0b"
REDIS_PASSWORD = "op-redis-pw-8d2e6b4a"
# Distinctive ids and amounts, to look for in the worker's log.
ALICE, BOB, CAROL, DAVE, ERIN = (
    f"cust-{n}-5e1f0c" for n in ("alice", "bob", "carol", "dave", "erin")
)
CUSTOMERS = (ALICE, BOB, CAROL, DAVE, ERIN)
AMOUNT = "1234.56"

# Labelled metrics that this module's traffic does not drive yet (no sample to look at).
PENDING: dict[str, str] = {}


def purchase(event_id: str, customer: str, at: str, order: str, amount: str, **extra: Any) -> Any:
    doc = {"event_id": event_id, "customer_id": customer, "occurred_at": at}
    return ("purchases", {**doc, "order_id": order, "amount": amount, **extra})


GOOD: list[tuple[str, dict[str, Any]]] = [
    (
        "email-opens",
        {"event_id": "o1", "customer_id": ALICE, "occurred_at": "2026-01-05T09:00:00Z",
         "message_id": "m1"},
    ),
    purchase("o2", ALICE, "2026-01-10T10:00:00Z", "a1", AMOUNT),
    purchase("o3", ALICE, "2026-01-14T10:00:00Z", "a2", "80.50"),
    purchase("o4", BOB, "2026-01-11T10:00:00Z", "b1", "30"),
    (
        "suppressions",
        {"event_id": "o5", "customer_id": BOB, "occurred_at": "2026-01-12T11:00:00Z",
         "kind": "unsubscribe", "channel": "email"},
    ),
    purchase("o6", BOB, "2026-01-13T10:00:00Z", "b2", "45"),
    (
        "wechat-interactions",
        {"event_id": "o7", "customer_id": CAROL, "occurred_at": "2026-01-12T10:00:00+08:00",
         "kind": "follow"},
    ),
    purchase("o8", DAVE, "2026-01-12T10:00:00Z", "d1", "20"),
    (
        "suppressions",
        {"event_id": "o9", "customer_id": DAVE, "occurred_at": "2026-01-13T10:00:00Z",
         "kind": "erase", "channel": "all"},
    ),
    (
        "email-clicks",
        {"event_id": "o10", "customer_id": CAROL, "occurred_at": "2026-01-13T10:00:00Z",
         "message_id": "m2"},
    ),
]  # fmt: skip
BAD: list[tuple[str, bytes]] = [
    ("purchases", b'{"event_id": "x1", '),
    ("purchases", orjson.dumps({"event_id": "x2", "customer_id": ERIN, "occurred_at": 1})),
    (
        "purchases",
        orjson.dumps(
            {"event_id": "x3", "customer_id": ERIN, "occurred_at": "2026-01-01T00:00:00Z",
             "order_id": "e0", "amount": AMOUNT, "currency": "EUR"}
        ),
    ),
]  # fmt: skip
# Published to another partition than its key's: forwarded once to the right one.
MISROUTED = purchase("o11", ERIN, "2026-01-15T10:00:00Z", "e1", "15")[1]
# Where the ticks move every partition's clock: ~8 months after the last purchase.
TICK_AT = "2026-09-15T00:00:00Z"


# -- the stack, a password-protected Redis and the worker ----------------------------------------


class PasswordRedis(EmbeddedRedis):
    """The embedded Redis, requiring a password."""

    name = "redis-auth"

    def _command(self, binary: str, workdir: Path) -> list[str]:
        return [*super()._command(binary, workdir), "--requirepass", REDIS_PASSWORD]

    def _check_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        client = redis.Redis(
            host=LOOPBACK, port=self.port, password=REDIS_PASSWORD, socket_timeout=1.0
        )
        try:
            return int(client.info("server")["process_id"]) == proc.pid
        except redis.RedisError:
            return False
        finally:
            client.close()

    @property
    def url(self) -> str:
        return f"redis://:{REDIS_PASSWORD}@{LOOPBACK}:{self.port}/0"


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    with fresh_stack() as s:
        yield s


@pytest.fixture(scope="module")
def secure_redis(stack: EmbeddedStack) -> Iterator[PasswordRedis]:
    server = PasswordRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def worker(
    stack: EmbeddedStack, secure_redis: PasswordRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    w = start_worker(
        stack,
        tmp_path_factory.mktemp("operate"),
        "operate",
        TIERSTREAM_REDIS_URL=secure_redis.url,
        TIERSTREAM_WEB_TOKEN=TOKEN,
        TIERSTREAM_LAG_INTERVAL_SECONDS="1",
    )
    try:
        send(stack, GOOD)
        send(stack, GOOD[1:2])  # redelivered: ignored as a duplicate
        send_raw(stack, [(topic, ERIN.encode(), value) for topic, value in BAD])
        right = partition_for(ERIN.encode(), PARTITIONS)
        asyncio.run(_send_to_partition(stack.bootstrap, MISROUTED, (right + 1) % PARTITIONS))
        wait_consumed(w, len(GOOD) + 1 + len(BAD) + 1)
        # Move every partition's clock: time-caused transitions and churn warnings.
        from segmentation.timeutil import parse_rfc3339

        asyncio.run(send_ticks(stack.bootstrap, parse_rfc3339(TICK_AT)))
        w.wait_for(
            lambda m: any(k.startswith("tierstream_transitions_total{cause=time") for k in m),
            timeout=60,
            what="time-caused transitions after the ticks",
        )
        # The population gauges are refreshed from Redis by a timer (every 10 s).
        w.wait_for(
            lambda m: m.get("tierstream_customers_by_tier", 0) >= 4,
            timeout=60,
            what="customers per tier from the read model",
        )
        settle(w)
        yield w
    finally:
        w.stop()


async def _send_to_partition(bootstrap: str, event: dict[str, Any], partition: int) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        key = str(event["customer_id"]).encode()
        await producer.send_and_wait("purchases", orjson.dumps(event), key=key, partition=partition)
    finally:
        await producer.stop()


def scrape(worker: WorkerProcess) -> str:
    status, body = worker.get("/metrics")
    assert status == 200
    return body.decode()


# -- /metrics: promtool and the contract ---------------------------------------------------------


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool not found: install the Debian package prometheus (make tools)"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def test_scrape_passes_promtool_check_metrics(worker: WorkerProcess) -> None:
    text = scrape(worker)
    done = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "" and done.stderr.strip() == "", done.stdout + done.stderr


def test_scrape_content_type(worker: WorkerProcess) -> None:
    import urllib.request

    with urllib.request.urlopen(worker.url + "/metrics", timeout=5) as response:
        content_type = response.headers["Content-Type"]
    assert content_type.startswith("text/plain; version=0.0.4")


@dataclass(frozen=True)
class Contract:
    name: str
    kind: str
    labels: frozenset[str]


def contract() -> list[Contract]:
    out = []
    for line in METRICS_FILE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, kind, labels = line.split()
        inner = labels.strip("{}")
        out.append(Contract(name, kind, frozenset(x for x in inner.split(",") if x)))
    return out


def _family_name(contract_name: str, kind: str) -> str:
    # The Python parser names counter families without `_total`.
    return contract_name.removesuffix("_total") if kind == "counter" else contract_name


def test_scrape_exports_every_metric_of_the_contract(worker: WorkerProcess) -> None:
    families = {f.name: f for f in text_string_to_metric_families(scrape(worker))}
    problems = []
    for c in contract():
        family = families.get(_family_name(c.name, c.kind))
        if family is None:
            problems.append(f"{c.name}: not in the scrape")
            continue
        if family.type != c.kind:
            problems.append(f"{c.name}: type {family.type}, contract says {c.kind}")
        samples = [
            s
            for s in family.samples
            if s.name in (c.name, f"{c.name}_bucket", f"{c.name}_count", f"{c.name}_sum")
        ]
        if not samples:
            if c.name not in PENDING:
                problems.append(f"{c.name}: no sample after the worker processed events")
            continue
        for s in samples:
            labels = set(s.labels) - {"le"}
            if labels != c.labels:
                problems.append(f"{c.name}: labels {sorted(labels)}, contract {sorted(c.labels)}")
                break
    assert not problems, "\n".join(problems)


def test_every_exported_metric_is_in_the_contract(worker: WorkerProcess) -> None:
    """A metric the worker exports but deploy/metrics.txt does not list is invisible to the
    dashboards' cross-check."""
    listed = {_family_name(c.name, c.kind) for c in contract()}
    exported = {
        f.name
        for f in text_string_to_metric_families(scrape(worker))
        if f.name.startswith("tierstream_")
    }
    # prometheus_client adds a `<name>_created` gauge (start time) to counters and histograms.
    unlisted = {n for n in exported - listed if n.removesuffix("_created") not in listed}
    assert not unlisted, sorted(unlisted)


def test_no_customer_id_in_any_label(worker: WorkerProcess) -> None:
    text = scrape(worker)
    for customer in CUSTOMERS:
        assert customer not in text


# -- consumer lag --------------------------------------------------------------------------------


def lag_samples(metrics: Mapping[str, float]) -> dict[tuple[str, int], float]:
    out = {}
    for key, value in metrics.items():
        found = re.fullmatch(r"tierstream_consumer_lag\{partition=(\d+),topic=([\w.-]+)\}", key)
        if found:
            out[(found.group(2), int(found.group(1)))] = value
    return out


ALL_INPUT_PARTITIONS = {(t, p) for t in INPUT_TOPICS for p in range(PARTITIONS)}


def test_lag_is_reported_for_every_owned_input_partition(worker: WorkerProcess) -> None:
    # One worker owns every partition; once its commits are in, nothing is left to read.
    metrics = worker.wait_for(
        lambda m: set(lag_samples(m)) == ALL_INPUT_PARTITIONS and not any(lag_samples(m).values()),
        timeout=30,
        what="lag 0 on every input partition",
    )
    assert set(lag_samples(metrics)) == ALL_INPUT_PARTITIONS


def test_lag_rises_with_a_backlog_and_drains(stack: EmbeddedStack, worker: WorkerProcess) -> None:
    events = [
        purchase(f"lag{i}", f"lag-{i % 300}", f"2026-02-01T{(i // 60) % 24:02}:{i % 60:02}:00Z",
                 f"lag-o{i}", "5")
        for i in range(8000)
    ]  # fmt: skip
    consumed = worker.metrics()["tierstream_events_consumed_total"]
    send(stack, events)
    peak = 0.0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        metrics = worker.metrics()
        peak = max(peak, sum(lag_samples(metrics).values()))
        if metrics.get("tierstream_events_consumed_total", 0) >= consumed + len(events):
            break
        time.sleep(0.25)
    assert peak > 0, "no lag seen while 8,000 records were waiting"
    worker.wait_for(
        lambda m: not any(lag_samples(m).values()) and set(lag_samples(m)) == ALL_INPUT_PARTITIONS,
        timeout=60,
        what="lag back to 0",
    )


@dataclass
class FakeConsumer:
    """What LagMonitor reads from Faust's consumer."""

    owned: set[TP]
    fetched: dict[TP, int | None] = field(default_factory=dict)
    listed: dict[TP, int] = field(default_factory=dict)
    positions: dict[TP, int] = field(default_factory=dict)
    _committed_offset: defaultdict[TP, int | None] = field(
        default_factory=lambda: defaultdict(lambda: None)
    )
    started: bool = True

    def assignment(self) -> set[TP]:
        if not self.started:
            raise RuntimeError("Consumer thread not yet started")
        return set(self.owned)

    def highwater(self, tp: TP) -> int | None:
        assert tp in self.owned, "Partition is not assigned"
        return self.fetched.get(tp)

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.listed[tp] for tp in tps if tp in self.listed}

    async def position(self, tp: TP) -> int | None:
        return self.positions.get(tp)


def gauge_samples(gauge: Gauge) -> dict[tuple[str, str], float]:
    return {
        (s.labels["topic"], s.labels["partition"]): s.value
        for metric in gauge.collect()
        for s in metric.samples
    }


async def test_lag_monitor_uses_the_best_highwater_and_follows_the_assignment(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from prometheus_client import CollectorRegistry

    gauge = Gauge("lag", "lag", ["topic", "partition"], registry=CollectorRegistry())
    p0, p1, p2 = TP("purchases", 0), TP("purchases", 1), TP("email-opens", 2)
    changelog = TP("tierstream-customers-changelog", 0)
    consumer = FakeConsumer(owned={p0, p1, p2, changelog})
    consumer.fetched = {p0: 120, p1: None, p2: 7, changelog: 999}
    consumer.listed = {p0: 100, p1: 50, p2: 9, changelog: 999}  # p0: under-reported (Tansu)
    consumer._committed_offset[p0] = 90
    consumer._committed_offset[p2] = 12  # ahead of both readings
    consumer.positions = {p1: 20}  # nothing committed on p1 yet
    monitor = LagMonitor(gauge)
    with caplog.at_level(logging.WARNING, logger="tierstream.lag"):
        await monitor.update(consumer)
        await monitor.update(consumer)
    assert gauge_samples(gauge) == {
        ("purchases", "0"): 30.0,  # max(120 fetched, 100 listed) - 90 committed
        ("purchases", "1"): 30.0,  # 50 listed - 20 position
        ("email-opens", "2"): 0.0,  # never below zero
    }
    warnings = [r for r in caplog.records if "under-reports" in r.getMessage()]
    assert len(warnings) == 1 and "purchases[0]" in warnings[0].getMessage()
    # The default dict was only read, not grown.
    assert set(consumer._committed_offset) == {p0, p2}

    # A rebalance takes p0 and p2 away: their label sets go.
    consumer.owned = {p1}
    await monitor.update(consumer)
    assert set(gauge_samples(gauge)) == {("purchases", "1")}

    # A stopped consumer owns nothing.
    consumer.started = False
    await monitor.update(consumer)
    assert gauge_samples(gauge) == {}


# -- security: token, binding ------------------------------------------------------------------


@pytest.mark.parametrize("path", [f"/customers/{ALICE}", "/tiers"])
def test_guarded_paths_need_the_token(worker: WorkerProcess, path: str) -> None:
    assert worker.get(path)[0] == 401
    assert worker.get(path, token="wrong-" + TOKEN)[0] == 401
    assert worker.get(path, token=TOKEN[:-1])[0] == 401
    assert worker.get(path, token=TOKEN)[0] == 200


def test_unknown_customer_with_the_token_is_404(worker: WorkerProcess) -> None:
    assert worker.get("/customers/nobody")[0] == 401
    assert worker.get("/customers/nobody", token=TOKEN)[0] == 404
    # erased: gone from the read model.
    assert worker.get(f"/customers/{DAVE}", token=TOKEN)[0] == 404


def _get(url: str, headers: Mapping[str, str]) -> tuple[int, Any, bytes]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers=dict(headers))
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_refusal_says_how_to_authenticate(worker: WorkerProcess) -> None:
    status, headers, body = _get(worker.url + "/tiers", {})
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert orjson.loads(body) == {"error": "missing or wrong bearer token"}
    for header in (f"Basic {TOKEN}", TOKEN, f"Bearer{TOKEN}", "Bearer", "Bearer é"):
        assert _get(worker.url + "/tiers", {"Authorization": header})[0] == 401, header
    assert _get(worker.url + "/tiers", {"Authorization": f"bearer  {TOKEN} "})[0] == 200


@pytest.mark.parametrize(
    "path",
    ["/", "/table/", "/table/customers/", f"/table/customers/{ALICE}/", "/router/",
     f"/metrics/../customers/{ALICE}"],
)  # fmt: skip
def test_faust_pages_need_the_token_too(worker: WorkerProcess, path: str) -> None:
    assert worker.get(path)[0] == 401


def test_health_and_metrics_stay_open(worker: WorkerProcess) -> None:
    status, body = worker.get("/health")
    assert status == 200 and orjson.loads(body)["redis"] == "ok"  # the password works
    assert worker.get("/metrics")[0] == 200


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on `port` (Linux /proc/net/tcp{,6})."""
    out = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            address, _, hexport = local.partition(":")
            if state != "0A" or int(hexport, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # /proc prints each 32-bit word in host (little-endian) order.
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            out.add(str(ipaddress.ip_address(words if width == 32 else words[:4])))
    return out


def non_loopback_ipv4() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for a UDP connect
            address: str = s.getsockname()[0]
        except OSError:
            return None
    return None if ipaddress.ip_address(address).is_loopback else address


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp")
def test_web_port_listens_on_loopback_only(worker: WorkerProcess) -> None:
    assert listening_addresses(worker.web_port) == {"127.0.0.1"}
    address = non_loopback_ipv4()
    if address is not None:
        with pytest.raises(OSError):
            socket.create_connection((address, worker.web_port), timeout=2).close()


# -- the operator CLI ----------------------------------------------------------------------------


def cli(
    *args: str, token_env: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERSTREAM_")}
    if token_env is not None:
        env["TIERSTREAM_WEB_TOKEN"] = token_env
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        check=check,
        timeout=60,
    )


def test_cli_customer_needs_the_token(worker: WorkerProcess) -> None:
    refused = cli("customer", ALICE, "--url", worker.url, check=False)
    assert refused.returncode == 2 and "bearer token" in refused.stderr
    by_flag = cli("customer", ALICE, "--url", worker.url, "--token", TOKEN).stdout
    by_env = cli("customer", ALICE, "--url", worker.url, token_env=TOKEN).stdout
    assert by_flag == by_env
    assert f"customer {ALICE}: tier" in by_flag and "1,315.06" in by_flag
    as_json = orjson.loads(
        cli("customer", ALICE, "--url", worker.url, "--json", token_env=TOKEN).stdout
    )
    assert as_json["customer_id"] == ALICE and as_json["rfm"]["frequency"] == 2
    missing = cli("customer", "nobody", "--url", worker.url, token_env=TOKEN, check=False)
    assert missing.returncode == 1 and "unknown customer" in missing.stderr


def test_cli_tiers_table_and_json(worker: WorkerProcess) -> None:
    refused = cli("tiers", "--url", worker.url, check=False)
    assert refused.returncode == 2 and "bearer token" in refused.stderr
    as_json = orjson.loads(cli("tiers", "--url", worker.url, "--json", token_env=TOKEN).stdout)
    status, body = worker.get("/tiers", token=TOKEN)
    assert status == 200 and as_json == orjson.loads(body)
    tiers, stages = as_json["tiers"], as_json["stages"]
    total = sum(tiers.values())
    assert total == sum(stages.values()) >= 4  # alice, bob, carol, erin (+ the lag test's)
    table = cli("tiers", "--url", worker.url, token_env=TOKEN).stdout
    assert f"rules {as_json['rules_version']}" in table
    for name, count in [*tiers.items(), *stages.items()]:
        assert re.search(rf"^\s+{re.escape(name)}\s+{count:,}\b", table, re.M), (name, table)
    assert re.search(rf"^\s+total\s+{total:,}\b", table, re.M), table


def test_cli_says_when_the_worker_is_unreachable() -> None:
    done = cli("tiers", "--url", "http://127.0.0.1:9", check=False)
    assert done.returncode == 2 and "cannot reach" in done.stderr


# -- logs ----------------------------------------------------------------------------------------


def test_no_secret_or_customer_data_in_the_log(
    worker: WorkerProcess, secure_redis: PasswordRedis
) -> None:
    log = worker.log_path.read_text(errors="replace")
    assert "Worker ready" in log
    # The Redis URL is logged without its password.
    assert f"redis=redis://127.0.0.1:{secure_redis.port}/0" in log
    for secret in (REDIS_PASSWORD, TOKEN):
        assert secret not in log
    for customer in CUSTOMERS:
        assert customer not in log
    assert AMOUNT not in log and "1315.06" not in log
