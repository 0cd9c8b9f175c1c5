"""Static checks of the deployment files: docker-compose.yml, deploy/Dockerfile, the Prometheus
configuration and alert rules, and the Grafana provisioning and dashboard.

Docker is not needed: what a `docker compose up` on a user's machine would trip over first is
checked here instead (a file missing from the checkout, a port or partition count that does not
match, a metric name the worker does not export). promtool (Debian package `prometheus`)
validates the Prometheus files, unit-tests the alerts and parses every dashboard query; where it
is missing these tests skip, or fail when the CI variable is set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
METRICS_FILE = ROOT / "deploy" / "metrics.txt"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERT_RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
GRAFANA_DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources"
GRAFANA_PROVIDERS = ROOT / "deploy" / "grafana" / "provisioning" / "dashboards"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "tierstream.json"

# Files other changes are adding. Until they land, a reference to one is skipped with this
# reason rather than failed; once present, it is checked like any other.
PENDING = {
    "segmentation/default_rules.toml": "the default rules file is being added in another change",
    "README.md": "the README is being added in another change (pyproject.toml needs it too)",
}

WORKERS = {"worker-1", "worker-2"}
# The design's input and output topics; internal ones come from streams/topics.py.
CONTRACT_TOPICS = {
    "purchases",
    "email-opens",
    "email-clicks",
    "wechat-interactions",
    "suppressions",
    "tier-changes",
    "campaign-triggers",
    "churn-warnings",
    "dead-letters",
}
DEFAULT_PARTITIONS = "8"

PROMTOOL_MISSING = (
    "promtool not found: install the Debian package prometheus (apt-get install prometheus)"
)


# ---------------------------------------------------------------------------------------------
# docker-compose.yml


@cache
def compose() -> dict[str, Any]:
    with COMPOSE_FILE.open(encoding="utf-8") as f:
        document = yaml.safe_load(f)
    assert isinstance(document, dict), "docker-compose.yml is not a mapping"
    return document


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {name: "" if value is None else str(value) for name, value in env.items()}


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source as written, target in the container) of each bind mount of a service."""
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target = rest.split(":")[0]
            if not source.startswith((".", "/", "~")):
                continue  # a named volume
        elif volume.get("type") == "bind":
            source, target = volume["source"], volume["target"]
        else:
            continue
        mounts.append((source, target))
    return mounts


def host_path(service: dict[str, Any], container_path: str) -> Path | None:
    """The path in the checkout that a container sees at container_path, if it is bind-mounted."""
    wanted = PurePosixPath(container_path)
    best: tuple[str, PurePosixPath] | None = None
    for source, target in bind_mounts(service):
        mounted = PurePosixPath(target)
        if (wanted == mounted or mounted in wanted.parents) and (
            best is None or len(mounted.parts) > len(best[1].parts)
        ):
            best = (source, mounted)
    if best is None:
        return None
    source, mounted = best
    return (ROOT / source / wanted.relative_to(mounted)).resolve()


def compose_references() -> list[tuple[str, str, str]]:
    """(service, role, path as written) of every file or directory taken from the checkout."""
    references = []
    for name, service in services().items():
        build = service.get("build")
        if build is not None:
            if isinstance(build, str):
                build = {"context": build}
            context = build.get("context", ".")
            references.append((name, "build context", context))
            dockerfile = os.path.join(context, build.get("dockerfile", "Dockerfile"))
            references.append((name, "dockerfile", dockerfile))
        for source, target in bind_mounts(service):
            references.append((name, f"mounted at {target}", source))
        env_files = service.get("env_file") or []
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            references.append((name, "env_file", env_file))
    return references


def test_compose_file_parses_into_the_expected_services() -> None:
    expected = {"kafka", "topics", "redis", "prometheus", "grafana", *WORKERS}
    assert expected <= set(services()), f"missing services: {expected - set(services())}"


@pytest.mark.parametrize(
    ("service", "role", "path"),
    compose_references(),
    ids=[f"{service}:{path}" for service, _, path in compose_references()],
)
def test_compose_references_exist_in_the_checkout(service: str, role: str, path: str) -> None:
    # An absolute or home path would work on one machine only.
    assert not path.startswith(("/", "~")), f"{service} ({role}): {path} is outside the checkout"
    relative = os.path.normpath(path)
    if not (ROOT / relative).exists():
        if relative in PENDING:
            pytest.skip(
                f"{relative} ({service}, {role}) is not in the checkout yet: {PENDING[relative]}"
            )
        pytest.fail(f"{service} ({role}): {path} does not exist in the checkout")


def worker_environments() -> dict[str, dict[str, str]]:
    return {
        name: environment(service)
        for name, service in services().items()
        if "TIERSTREAM_WEB_PORT" in environment(service)
    }


def test_workers_are_configured_for_the_compose_network() -> None:
    workers = worker_environments()
    assert set(workers) == WORKERS
    volumes = set()
    for name, env in workers.items():
        service = services()[name]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert env["TIERSTREAM_BROKER"] == "kafka://kafka:9092", name
        redis = re.fullmatch(r"redis://:(.+)@redis:6379/0", env["TIERSTREAM_REDIS_URL"])
        assert redis, f"{name}: TIERSTREAM_REDIS_URL must carry the password and name redis"
        assert "TIERSTREAM_REDIS_PASSWORD" in redis.group(1)
        # Loopback inside a container is unreachable for Prometheus.
        assert env["TIERSTREAM_WEB_HOST"] == "0.0.0.0", name
        rules = host_path(service, env["TIERSTREAM_RULES"])
        assert rules == ROOT / "segmentation" / "default_rules.toml", name
        # Each worker keeps its state on a named volume of its own.
        data = [
            volume.split(":")[0]
            for volume in service.get("volumes", [])
            if isinstance(volume, str) and volume.split(":")[1] == env["TIERSTREAM_DATA_DIR"]
        ]
        assert len(data) == 1 and data[0] in compose()["volumes"], name
        volumes.add(data[0])
    assert len(volumes) == len(workers), "workers share a data volume"


def topics_script() -> str:
    command = services()["topics"]["command"]
    return command if isinstance(command, str) else "\n".join(command)


CREATE_TOPIC = re.compile(r"^\s*create_topic\s+(\S+)\s+(\S+)(.*)$", re.MULTILINE)


def test_topics_job_creates_every_topic_with_the_same_partition_variable() -> None:
    from streams import topics

    calls = {
        name: (partitions, options)
        for name, partitions, options in CREATE_TOPIC.findall(topics_script())
    }
    assert set(calls) >= CONTRACT_TOPICS, f"not created: {CONTRACT_TOPICS - set(calls)}"
    assert set(calls) == set(topics.ALL_TOPICS), (
        "the topics job and streams/topics.py disagree: "
        f"{sorted(set(calls) ^ set(topics.ALL_TOPICS))}"
    )
    partitions = {partitions for partitions, _ in calls.values()}
    assert len(partitions) == 1, f"topics created with different partition arguments: {calls}"
    assert "TIERSTREAM_PARTITIONS" in partitions.pop()
    for value in re.findall(r"--partitions[ =](\S+)", topics_script()):
        assert not value.strip("'\"").isdigit(), f"hard-coded --partitions {value}"
    # The read model's source topic keeps the latest profile per customer indefinitely.
    assert "cleanup.policy=compact" in calls[topics.PROFILES][1]


def test_partition_count_is_one_setting_everywhere() -> None:
    values = {
        "topics job": environment(services()["topics"])["TIERSTREAM_PARTITIONS"],
        # Topics a producer creates implicitly must match too.
        "kafka num.partitions": environment(services()["kafka"])["KAFKA_NUM_PARTITIONS"],
        **{name: env["TIERSTREAM_PARTITIONS"] for name, env in worker_environments().items()},
    }
    assert len(set(values.values())) == 1, f"partition counts differ: {values}"
    default = re.fullmatch(r"\$\{TIERSTREAM_PARTITIONS:-(\d+)\}", values["topics job"])
    assert default, "the partition count must come from ${TIERSTREAM_PARTITIONS:-default}"
    assert default.group(1) == DEFAULT_PARTITIONS


# ---------------------------------------------------------------------------------------------
# deploy/Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    instructions, current = [], ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        keyword, _, arguments = (current + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        current = ""
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def test_dockerfile_builds_the_worker_image() -> None:
    stage = final_stage()
    assert stage[0][1].split()[0] == "python:3.11-slim"
    users = [arguments for keyword, arguments in stage if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the worker must not run as root"
    last = {keyword: arguments for keyword, arguments in stage}
    assert json.loads(last["ENTRYPOINT"]) == ["tierstream"]
    assert json.loads(last["CMD"]) == ["worker"]
    ports = {
        port.split("/")[0]
        for keyword, arguments in stage
        if keyword == "EXPOSE"
        for port in arguments.split()
    }
    web_ports = {env["TIERSTREAM_WEB_PORT"] for env in worker_environments().values()}
    assert ports == web_ports, f"EXPOSE {sorted(ports)}, workers' TIERSTREAM_WEB_PORT {web_ports}"
    runs = " ".join(
        arguments for keyword, arguments in dockerfile_instructions() if keyword == "RUN"
    )
    assert re.search(r"pip install (?:-\S+ )*\.(?:\s|$)", runs), "the image installs the project"
    with (ROOT / "pyproject.toml").open("rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert "tierstream" in scripts, "ENTRYPOINT tierstream needs the console script"


def dockerfile_copy_sources() -> list[str]:
    sources = []
    for keyword, arguments in dockerfile_instructions():
        if keyword in {"COPY", "ADD"}:
            words = [word for word in arguments.split() if not word.startswith("--")]
            if not any(word.startswith("--from") for word in arguments.split()):
                sources.extend(words[:-1])
    return sources


@pytest.mark.parametrize("source", dockerfile_copy_sources())
def test_dockerfile_copies_only_files_of_the_build_context(source: str) -> None:
    context = services()["worker-1"]["build"]["context"]
    relative = os.path.normpath(os.path.join(context, source))
    if not (ROOT / relative).exists():
        if relative in PENDING:
            pytest.skip(
                f"{relative} (COPY in deploy/Dockerfile) is not in the checkout yet: "
                f"{PENDING[relative]}"
            )
        pytest.fail(f"deploy/Dockerfile copies {source}, which is not in the build context")


# ---------------------------------------------------------------------------------------------
# Prometheus


@cache
def prometheus_config() -> dict[str, Any]:
    with PROMETHEUS_CONFIG.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


@cache
def alert_rules() -> dict[str, Any]:
    with ALERT_RULES.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def test_prometheus_scrapes_each_worker_on_its_web_port() -> None:
    jobs = {job["job_name"]: job for job in prometheus_config()["scrape_configs"]}
    # The alerts and the dashboard select job="tierstream".
    job = jobs["tierstream"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {target for static in job["static_configs"] for target in static["targets"]}
    expected = {
        f"{name}:{env['TIERSTREAM_WEB_PORT']}" for name, env in worker_environments().items()
    }
    assert targets == expected, f"scraped: {sorted(targets)}, workers: {sorted(expected)}"


def test_prometheus_container_reads_these_files() -> None:
    service = services()["prometheus"]
    flags = dict(arg.split("=", 1) for arg in service["command"] if "=" in arg)
    config_in_container = flags["--config.file"]
    assert host_path(service, config_in_container) == PROMETHEUS_CONFIG.resolve(), (
        f"{config_in_container} in the prometheus container is not {PROMETHEUS_CONFIG}"
    )
    rule_files = prometheus_config()["rule_files"]
    container_dir = PurePosixPath(config_in_container).parent
    seen = {host_path(service, str(container_dir / rule_file)) for rule_file in rule_files}
    assert seen == {ALERT_RULES.resolve()}, f"rule files seen by Prometheus: {seen}"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if "CI" in os.environ:
            pytest.fail(PROMTOOL_MISSING)
        pytest.skip(PROMTOOL_MISSING)
    return path


def run_promtool(*args: str, cwd: Path = ROOT) -> str:
    result = subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def test_promtool_check_config() -> None:
    run_promtool("check", "config", str(PROMETHEUS_CONFIG.relative_to(ROOT)))


def test_promtool_check_rules() -> None:
    run_promtool("check", "rules", str(ALERT_RULES.relative_to(ROOT)))


# Synthetic series for `promtool test rules`, one scenario per alert (plus the cases that must
# stay quiet). The alerts run without their annotations: promtool would otherwise compare the
# rendered prose too, and the templates are already checked by `promtool check rules`.
ALERT_TESTS = """
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'up{job="tierstream", instance="w1"}'
        values: '1 1 0x10'
      - series: 'up{job="tierstream", instance="w2"}'
        values: '1x12'
    alert_rule_test:
      - eval_time: 3m      # down for one minute only
        alertname: TierstreamWorkerDown
        exp_alerts: []
      - eval_time: 6m
        alertname: TierstreamWorkerDown
        exp_alerts:
          - exp_labels: {severity: critical, job: tierstream, instance: "w1"}

  - interval: 1m
    input_series:
      # Growing on purchases; during a rebalance two workers report the same partition.
      - series: 'tierstream_consumer_lag{instance="w1", topic="purchases", partition="0"}'
        values: '0+100x60'
      - series: 'tierstream_consumer_lag{instance="w2", topic="purchases", partition="0"}'
        values: '0+100x60'
      # Large but steady: the workers keep pace.
      - series: 'tierstream_consumer_lag{instance="w1", topic="email-opens", partition="1"}'
        values: '5000x60'
    alert_rule_test:
      - eval_time: 20m
        alertname: TierstreamConsumerLagGrowing
        exp_alerts: []
      - eval_time: 45m
        alertname: TierstreamConsumerLagGrowing
        exp_alerts:
          - exp_labels: {severity: warning, topic: purchases}

  - interval: 1m
    input_series:
      - series: 'tierstream_consumer_lag{instance="w1", topic="suppressions", partition="3"}'
        values: '10x40'
      - series: 'tierstream_events_consumed_total{instance="w1", topic="suppressions"}'
        values: '0+1x10 10x30'
      # Behind a little, but consuming.
      - series: 'tierstream_consumer_lag{instance="w1", topic="purchases", partition="0"}'
        values: '10x40'
      - series: 'tierstream_events_consumed_total{instance="w1", topic="purchases"}'
        values: '0+100x40'
    alert_rule_test:
      - eval_time: 35m
        alertname: TierstreamConsumerStalled
        exp_alerts:
          - exp_labels: {severity: critical, topic: suppressions}

  - interval: 1m
    input_series:
      - series: 'tierstream_events_consumed_total{instance="w1", topic="purchases"}'
        values: '0+10x10 100x40'
    alert_rule_test:
      - eval_time: 20m
        alertname: TierstreamNoEventsConsumed
        exp_alerts: []
      - eval_time: 35m
        alertname: TierstreamNoEventsConsumed
        exp_alerts:
          - exp_labels: {severity: warning}

  - interval: 1m
    input_series:
      - series: 'tierstream_events_consumed_total{instance="w1", topic="purchases"}'
        values: '0+100x40'
      - series: 'tierstream_dead_letters_total{instance="w1", topic="purchases"}'
        values: '0+5x40'
      # One bad event: a high ratio at low volume, below the floor.
      - series: 'tierstream_events_consumed_total{instance="w1", topic="email-clicks"}'
        values: '0+1x40'
      - series: 'tierstream_dead_letters_total{instance="w1", topic="email-clicks"}'
        values: '0 1x40'
    alert_rule_test:
      - eval_time: 30m
        alertname: TierstreamDeadLetters
        exp_alerts:
          - exp_labels: {severity: warning, topic: purchases}

  - interval: 1m
    input_series:
      - series: 'tierstream_redis_write_failures_total{instance="w2"}'
        values: '0x5 1+1x20'
      - series: 'tierstream_redis_backlog{instance="w2"}'
        values: '0+1000x40'
      # Large but not growing: written as fast as it fills.
      - series: 'tierstream_redis_backlog{instance="w1"}'
        values: '20000x40'
    alert_rule_test:
      - eval_time: 8m
        alertname: TierstreamRedisWriteFailures
        exp_alerts: []
      - eval_time: 15m
        alertname: TierstreamRedisWriteFailures
        exp_alerts:
          - exp_labels: {severity: warning, instance: "w2"}
      - eval_time: 35m
        alertname: TierstreamRedisBacklogGrowing
        exp_alerts:
          - exp_labels: {severity: warning, instance: "w2"}

  - interval: 1m
    input_series:
      # One warning a minute for a day, then twenty a minute.
      - series: 'tierstream_churn_warnings_total{instance="w1", severity="high"}'
        values: '0+1x1439 1440+20x60'
    alert_rule_test:
      - eval_time: 24h
        alertname: TierstreamChurnWarningSpike
        exp_alerts: []
      - eval_time: 25h
        alertname: TierstreamChurnWarningSpike
        exp_alerts:
          - exp_labels: {severity: warning}

  - interval: 1m
    input_series:
      # Every time-caused change published 10-60 s after its boundary.
      - series: 'tierstream_time_transition_lag_seconds_bucket{instance="w1", le="1"}'
        values: '0x40'
      - series: 'tierstream_time_transition_lag_seconds_bucket{instance="w1", le="10"}'
        values: '0x40'
      - series: 'tierstream_time_transition_lag_seconds_bucket{instance="w1", le="60"}'
        values: '0+10x40'
      - series: 'tierstream_time_transition_lag_seconds_bucket{instance="w1", le="+Inf"}'
        values: '0+10x40'
    alert_rule_test:
      - eval_time: 30m
        alertname: TierstreamTimeTransitionsLate
        exp_alerts:
          - exp_labels: {severity: warning}

  - interval: 1m
    input_series:
      # No time-caused change at all: no data, no alert.
      - series: 'tierstream_time_transition_lag_seconds_bucket{instance="w1", le="60"}'
        values: '0x40'
      - series: 'tierstream_time_transition_lag_seconds_bucket{instance="w1", le="+Inf"}'
        values: '0x40'
    alert_rule_test:
      - eval_time: 30m
        alertname: TierstreamTimeTransitionsLate
        exp_alerts: []

  - interval: 1m
    input_series:
      # Recovery left 3 keys unrecovered on w1; w2 is fine.
      - series: 'tierstream_changelog_unrecovered_keys{instance="w1", table="customers"}'
        values: '0 0 3x10'
      - series: 'tierstream_changelog_unrecovered_keys{instance="w2", table="customers"}'
        values: '0x12'
    alert_rule_test:
      - eval_time: 10m
        alertname: TierstreamUnrecoveredState
        exp_alerts:
          - exp_labels: {severity: critical, instance: w1}
"""


def alerts() -> Iterator[dict[str, Any]]:
    for group in alert_rules()["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                yield rule


def test_alert_rules_fire_when_they_should(tmp_path: Path) -> None:
    tests = yaml.safe_load(ALERT_TESTS)
    tested = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"]}
    assert tested == {rule["alert"] for rule in alerts()}, "every alert needs a scenario here"
    rules = alert_rules()
    quiet = {
        "groups": [
            {
                **group,
                "rules": [
                    {k: v for k, v in rule.items() if k != "annotations"} for rule in group["rules"]
                ],
            }
            for group in rules["groups"]
        ]
    }
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(quiet, sort_keys=False), encoding="utf-8")
    tests["rule_files"] = ["rules.yml"]
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False), encoding="utf-8")
    run_promtool("test", "rules", "tests.yml", cwd=tmp_path)


# ---------------------------------------------------------------------------------------------
# Grafana


@cache
def dashboard() -> dict[str, Any]:
    with DASHBOARD.open(encoding="utf-8") as f:
        return json.load(f)


def panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])  # inside collapsed rows


def query_panels() -> list[dict[str, Any]]:
    return [panel for panel in panels() if panel["type"] != "row"]


def read_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard() -> None:
    grafana = services()["grafana"]
    for directory in (GRAFANA_DATASOURCES, GRAFANA_PROVIDERS):
        inside = f"/etc/grafana/provisioning/{directory.name}"
        assert host_path(grafana, inside) == directory.resolve(), f"{inside} not mounted"
    (datasource,) = read_yaml(GRAFANA_DATASOURCES / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus"
    url = re.fullmatch(r"http://([\w-]+):(\d+)/?", datasource["url"])
    assert url and url.group(1) == "prometheus" and url.group(1) in services()
    # The dashboard's data source variable defaults to this one.
    (variable,) = [v for v in dashboard()["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    assert variable["current"]["value"] == datasource["uid"]
    (provider,) = read_yaml(GRAFANA_PROVIDERS / "tierstream.yml")["providers"]
    assert host_path(grafana, provider["options"]["path"]) == DASHBOARD.parent.resolve()


def test_dashboard_is_a_valid_grafana_dashboard() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in query_panels():
        where = f"panel {panel['title']!r}"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, where
        assert panel["datasource"]["uid"] == "${datasource}", where
        assert panel["targets"], f"{where} has no query"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), where
        for target in panel["targets"]:
            assert target["expr"].strip(), where
            assert target["datasource"]["uid"] == "${datasource}", where


# ---------------------------------------------------------------------------------------------
# Metric names: alerts and dashboard against deploy/metrics.txt


@cache
def exported_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (type, labels), from deploy/metrics.txt."""
    metrics = {}
    for number, raw in enumerate(METRICS_FILE.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"(\w+) (counter|gauge|histogram) \{([\w,]*)\}", line)
        assert match, f"deploy/metrics.txt:{number}: expected 'name type {{labels}}': {raw!r}"
        name, kind, labels = match.groups()
        assert name not in metrics, f"deploy/metrics.txt:{number}: {name} listed twice"
        metrics[name] = (kind, frozenset(label for label in labels.split(",") if label))
    return metrics


# Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"instance", "job"})


@cache
def queryable_series() -> dict[str, frozenset[str]]:
    """Every series name a query may use, with its own labels."""
    series = {"up": frozenset()}
    for name, (kind, labels) in exported_metrics().items():
        if kind == "histogram":
            series[f"{name}_bucket"] = labels | {"le"}
            series[f"{name}_sum"] = labels
            series[f"{name}_count"] = labels
        else:
            series[name] = labels
    return series


def test_metrics_file_follows_prometheus_conventions() -> None:
    for name, (kind, labels) in exported_metrics().items():
        assert name.startswith("tierstream_"), name
        assert name.endswith("_total") == (kind == "counter"), f"{name}: _total iff counter"
        assert not any("customer" in label for label in labels), f"{name}: no customer label"


def test_metrics_file_matches_the_worker_registry() -> None:
    pytest.importorskip("prometheus_client")
    from streams import metrics as worker_metrics
    from streams.recovery_check import RecoveryCheck

    created = worker_metrics.create()
    # The recovery check registers its own metrics in the worker's registry.
    check = RecoveryCheck(None, type("T", (), {"name": "customers"})(), created.registry)
    collectors = [
        getattr(created, f) for f in worker_metrics.Metrics.__dataclass_fields__ if f != "registry"
    ]
    collectors += [check.tail_records, check.reapplied, check.unrecovered, check.errors]
    registered = {}
    for collector in collectors:
        # Label names are only on the (private) attributes until a child exists. Counters keep
        # their name without "_total" and are exposed with it.
        kind = collector._type
        name = collector._name + ("_total" if kind == "counter" else "")
        registered[name] = (kind, frozenset(collector._labelnames))
    assert registered == dict(exported_metrics()), (
        "streams/metrics.py and deploy/metrics.txt disagree: "
        f"{sorted(set(registered.items()) ^ set(exported_metrics().items()))}"
    )


GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
AGGREGATION = re.compile(
    r"\b(?:sum|min|max|avg|group|stddev|stdvar|count_values|count|topk|bottomk|quantile)"
    r"\s*(?:(by|without)\s*\(([^)]*)\))?\s*\("
)
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "atan2",
    "inf",
    "nan",
}


def without_strings(expr: str) -> str:
    return re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)


def series_names(expr: str) -> set[str]:
    text = without_strings(expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges, subqueries, Grafana's $__rate_interval
    text = GROUPING.sub(" ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)\s*(\()?", text):
        name, call = match.groups()
        if call is None and name.lower() not in PROMQL_WORDS:
            names.add(name)
    return names


def labels_used(expr: str) -> set[str]:
    """Labels matched on or grouped by anywhere in expr."""
    text = without_strings(expr)
    used = set()
    for block in re.findall(r"\{([^{}]*)\}", text):
        used.update(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", block))
    for _, labels in GROUPING.findall(text):
        used.update(label.strip() for label in labels.split(",") if label.strip())
    return used


def labels_of(expr: str) -> frozenset[str]:
    series = queryable_series()
    return frozenset().union(*(series[name] for name in series_names(expr) if name in series))


def result_labels(expr: str) -> frozenset[str]:
    """Labels the result of expr keeps (prefix-form aggregations: `sum by (x) (...)`)."""
    text = without_strings(expr)
    available = labels_of(expr) | TARGET_LABELS
    kept = available
    for modifier, labels in AGGREGATION.findall(text):
        listed = frozenset(label.strip() for label in labels.split(",") if label.strip())
        if modifier == "by":
            kept &= listed
        elif modifier == "without":
            kept &= available - listed
        else:
            kept = frozenset()
    if "histogram_quantile" in text:
        kept -= {"le"}
    return kept


def grafana_to_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced by values Prometheus can parse."""
    for variable, value in (
        ("$__rate_interval", "5m"),
        ("$__interval", "1m"),
        ("$__range", "1h"),
        ("$instance", ".*"),
    ):
        expr = expr.replace(variable, value)
    return expr


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(where, PromQL, legend) of every query in the dashboard, variables included."""
    queries = []
    for panel in query_panels():
        for target in panel["targets"]:
            queries.append(
                (
                    f"panel {panel['title']!r} {target['refId']}",
                    target["expr"],
                    target.get("legendFormat", ""),
                )
            )
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        inner = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert inner, f"variable {variable['name']}: unexpected query {query!r}"
        assert inner.group(2) in labels_of(inner.group(1)) | TARGET_LABELS
        queries.append((f"variable {variable['name']}", inner.group(1), ""))
    return queries


def alert_queries() -> list[tuple[str, str, str]]:
    """(where, PromQL, annotation text) of every alert."""
    return [
        (f"alert {rule['alert']}", rule["expr"], json.dumps(rule.get("annotations", {})))
        for rule in alerts()
    ]


def test_queries_use_only_exported_metrics_and_their_labels() -> None:
    series = queryable_series()
    problems = []
    for where, expr, _ in dashboard_queries() + alert_queries():
        names = series_names(expr)
        if not names:
            problems.append(f"{where}: no metric found in {expr!r}")
        for name in sorted(names - set(series)):
            problems.append(f"{where}: {name} is not in deploy/metrics.txt")
        unknown = labels_used(expr) - labels_of(expr) - TARGET_LABELS
        if unknown:
            problems.append(f"{where}: labels {sorted(unknown)} are not on {sorted(names)}")
    assert not problems, "\n".join(problems)


def test_legends_and_annotations_name_labels_the_result_keeps() -> None:
    problems = []
    for where, expr, legend in dashboard_queries():
        for label in set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend)) - result_labels(expr):
            problems.append(f"{where}: legend shows {{{{{label}}}}}, which the query drops")
    for where, expr, annotation_text in alert_queries():
        for label in set(re.findall(r"\$labels\.(\w+)", annotation_text)) - result_labels(expr):
            problems.append(f"{where}: annotation uses $labels.{label}, which the query drops")
    assert not problems, "\n".join(problems)


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{number}", "expr": grafana_to_promql(expr)}
                    for number, (_, expr, _) in enumerate(dashboard_queries())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    run_promtool("check", "rules", str(path))


# What the dashboard must show: (series, labels its panel breaks it down by).
DASHBOARD_AREAS = {
    "throughput per topic": ("tierstream_events_consumed_total", {"topic"}),
    "processing latency": ("tierstream_processing_latency_seconds_bucket", set()),
    "consumer lag": ("tierstream_consumer_lag", {"topic"}),
    "customers per tier": ("tierstream_customers_by_tier", {"tier"}),
    "customers per stage": ("tierstream_customers_by_stage", {"stage"}),
    "transitions per from/to": ("tierstream_transitions_total", {"from_state", "to_state"}),
    "campaign triggers sent": ("tierstream_campaign_triggers_total", {"campaign"}),
    "campaign triggers suppressed": (
        "tierstream_campaign_triggers_suppressed_total",
        {"campaign", "reason"},
    ),
    "dead letters": ("tierstream_dead_letters_total", {"topic"}),
    "Redis backlog": ("tierstream_redis_backlog", set()),
    "Redis write failures": ("tierstream_redis_write_failures_total", set()),
    "time-transition lag": ("tierstream_time_transition_lag_seconds_bucket", set()),
    "last processed event time": ("tierstream_last_event_time_seconds", set()),
}
QUANTILES = {"0.5", "0.95", "0.99"}


@pytest.mark.parametrize("area", DASHBOARD_AREAS)
def test_dashboard_has_a_panel_for(area: str) -> None:
    wanted, breakdown = DASHBOARD_AREAS[area]
    for panel in query_panels():
        exprs = [target["expr"] for target in panel["targets"]]
        if not any(wanted in series_names(expr) for expr in exprs):
            continue
        if not breakdown <= set().union(*(result_labels(expr) for expr in exprs)):
            continue
        if wanted.endswith("_bucket"):
            shown = {
                quantile
                for expr in exprs
                for quantile in re.findall(r"histogram_quantile\(\s*([\d.]+)", expr)
            }
            if not shown >= QUANTILES:
                continue
        return
    pytest.fail(
        f"no panel shows {area} ({wanted} by {sorted(breakdown) or 'total'}"
        + (", p50/p95/p99)" if wanted.endswith("_bucket") else ")")
    )


def test_dashboard_shows_every_exported_metric() -> None:
    shown = set().union(*(series_names(expr) for _, expr, _ in dashboard_queries()))
    missing = [
        name
        for name, (kind, _) in exported_metrics().items()
        if not (
            {f"{name}_bucket", f"{name}_count"} & shown if kind == "histogram" else name in shown
        )
    ]
    assert not missing, f"metrics exported but not on the dashboard: {missing}"
