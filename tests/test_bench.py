"""`tierstream bench` end to end at a tiny size: every phase runs (baselines, the real worker,
the sample check, state size, latency, two workers), and the JSON holds every figure the design
names. No timing thresholds: the figures live in the benchmark's output, not in the tests."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.bench import compare_profiles, rate_by_fifth, render_table, run_bench
from streams.bench_workload import EVENT_TOPICS, generate, percentile
from streams.embedded import MissingDependency, _redis_server_binary

REQUIRED = (
    "pipeline.events_per_s",
    "pipeline.p50_latency_s",
    "pipeline.p99_latency_s",
    "pipeline.state_bytes_per_customer",
    "pipeline.peak_rss_bytes",
    "baselines.raw_aiokafka.events_per_s",
    "baselines.empty_faust.events_per_s",
    "baselines.naive_faust.events_per_s",
    "baselines.batched_core.events_per_s",
    "ratios.batched_core_over_raw_aiokafka",
    "baselines.fetch_core.events_per_s",
    "ratios.fetch_core_over_raw_aiokafka",
    "ratios.pipeline_over_naive",
    "ratios.pipeline_over_empty_faust",
    "ratios.pipeline_over_raw_aiokafka",
    "scaling.events_per_s",
    "scaling.ratio_over_one",
    "machine.nproc",
)


def _get(doc: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        assert isinstance(doc, dict) and part in doc, f"missing {dotted}"
        doc = doc[part]
    return doc


def test_workload_is_seeded_valid_and_covers_every_customer() -> None:
    from segmentation.events import parse_event

    a = generate(50, 400, seed=3, now_ms=1_780_000_000_000)
    b = generate(50, 400, seed=3, now_ms=1_780_000_000_000)
    assert a.values == b.values and len(a) == 400
    assert set(a.customer_of) == set(range(50))
    assert set(a.per_topic) == set(EVENT_TOPICS) and all(a.per_topic.values())
    for topic, key, value in a.records():
        event = parse_event(topic, value, now_ms=1_780_000_000_000)
        assert event.customer_id.encode() == key
        assert 1_780_000_000_000 - 181 * 86_400_000 < event.occurred_ms < 1_780_000_000_000


def test_the_prototype_folds_every_workload_event_as_the_worker_would() -> None:
    """The prototype baseline parses with the worker's default base currency: with another one
    it skipped the workload's foreign-currency purchases as invalid and measured less work."""
    from segmentation.events import parse_event
    from streams.bench_baselines import PROTOTYPE_BASE_CURRENCY
    from streams.settings import load_settings

    assert load_settings({}).base_currency == PROTOTYPE_BASE_CURRENCY
    work = generate(50, 400, seed=5, now_ms=1_780_000_000_000)
    assert any(b'"currency"' in value for value in work.values)
    for topic, _key, value in work.records():
        parse_event(topic, value, now_ms=1_780_000_000_000, base_currency=PROTOTYPE_BASE_CURRENCY)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([7.0], 99) == 7.0


def test_compare_profiles_reports_differences_within_tolerance() -> None:
    base = {"tier": "vip", "rfm": {"monetary": 10.0}, "engagement": {"score": 1.0}}
    assert compare_profiles(base, base) == []
    close = {"tier": "vip", "rfm": {"monetary": 10.001}, "engagement": {"score": 1.00001}}
    assert compare_profiles(close, base) == []
    other = {"tier": "active", "rfm": {"monetary": 10.0}, "engagement": {"score": 1.0}}
    assert compare_profiles(other, base) == ["tier: pipeline 'active' != core 'vip'"]


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bench_end_to_end_tiny(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        _redis_server_binary()
    except MissingDependency as exc:
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"CI is set, so not skipping: {exc}", pytrace=False)
        pytest.skip(str(exc))
    # The bench starts its own embedded stack unless told otherwise.
    for name in ("TIERSTREAM_BROKER", "TIERSTREAM_REDIS_URL", "TIERSTREAM_RULES"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "bench.json"
    code = run_bench(
        customers=2_000,
        events=10_000,
        out=str(out),
        workers=2,
        partitions=4,
        latency_seconds=3.0,
        sample=100,
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]
    doc = orjson.loads(out.read_bytes())
    for key in REQUIRED:
        value = _get(doc, key)
        assert isinstance(value, int | float) and not isinstance(value, bool), key
        assert math.isfinite(value) and value > 0, f"{key} = {value!r}"
    pipeline = doc["pipeline"]
    assert pipeline["sample_checked"] == 100
    assert pipeline["sample_mismatches"] == 0, pipeline["sample_mismatch_examples"]
    assert pipeline["latency"]["missing"] == 0
    assert pipeline["dead_letters"] == 0
    assert pipeline["customers"] >= 2_000  # every customer has a state record
    assert doc["workload"]["events"] == 10_000
    assert doc["date"] and doc["machine"]["cpu_model"]
    # The table is what a person reads: the figures and the ratios are in it.
    assert "raw aiokafka" in printed.out and "pipeline / naive Faust" in printed.out
    assert "prototype: micro-batched" in printed.out
    assert "prototype: whole fetches" in printed.out
    assert render_table(doc) in printed.out
    for phase in ("baseline", "pipeline", "latency", "state bytes", "scaling", "peak RSS"):
        assert phase in printed.err


def test_the_prototypes_fold_matches_the_pure_core_per_customer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`CoreFold` (both prototypes' work) over a workload in fetch-sized batches ends with every
    customer's state as the pure core folded over that customer's events alone, sends one
    changelog record per customer per batch (the customer's latest state in it), and returns
    one profile per customer per batch and every tier change."""
    import faust

    from segmentation.bgnbd import DEFAULT_PARAMS
    from segmentation.campaigns import parse_campaign_policy
    from segmentation.events import parse_event
    from segmentation.rules import default_rules
    from segmentation.state import CustomerState
    from segmentation.step import apply_event
    from streams.bench_baselines import PROTOTYPE_BASE_CURRENCY, CoreFold

    now_ms = 1_780_000_000_000
    work = generate(40, 600, seed=11, now_ms=now_ms)
    records = [(topic, 0, value) for topic, _key, value in work.records()]
    app = faust.App("test-corefold", broker="kafka://127.0.0.1:1", store="memory://")
    core = CoreFold(app, "corefold-customers", 4)
    logged: list[tuple[int, bytes, bytes]] = []
    monkeypatch.setattr(core.table, "send_changelog", lambda p, k, v: logged.append((p, k, v)))
    changes: list[tuple[bytes, bytes, int]] = []
    batches = [records[i : i + 97] for i in range(0, len(records), 97)]
    expected_logged = 0
    for batch in batches:
        out_changes, out_profiles = core.fold(batch, now_ms)
        changes += out_changes
        keys = {k for k, _v, _p in out_profiles}
        assert len(keys) == len(out_profiles)  # one profile per customer per batch
        expected_logged += len({parse_event(t, v, now_ms=now_ms).customer_id for t, _p, v in batch})
    assert len(logged) == expected_logged

    rules = default_rules()
    policy = parse_campaign_policy(rules.campaigns)
    states: dict[bytes, CustomerState | None] = {}
    reference_changes = 0
    for topic, _p, value in records:
        ev = parse_event(topic, value, now_ms=now_ms, base_currency=PROTOTYPE_BASE_CURRENCY)
        key = ev.customer_id.encode()
        result = apply_event(states.get(key), ev, rules, DEFAULT_PARAMS, policy=policy)
        states[key] = result.state
        reference_changes += len(result.changes)
    assert len(changes) == reference_changes
    assert set(core.table.data.keys()) == {k for k, s in states.items() if s is not None}
    for key, state in states.items():
        assert state is not None
        assert core.table.data[key] == state.to_bytes(), key
    last_logged = {k: v for _p, k, v in logged}
    assert last_logged == dict(core.table.data)


def test_rate_by_fifth_reads_the_rate_of_each_fifth_of_the_input_from_the_samples() -> None:
    # Nothing until t=1, then 100 events/s for the first half and 50/s for the rest.
    steady = [(0.0, 0.0), (1.0, 0.0)] + [(1.0 + i, 100.0 * i) for i in range(1, 6)]
    assert rate_by_fifth(steady, 500) == pytest.approx([100.0] * 5)
    slowing = [(0.0, 0.0), (2.0, 0.0), (3.0, 100.0), (4.0, 200.0), (5.0, 250.0)]
    slowing += [(6.0, 300.0), (7.0, 350.0), (8.0, 400.0), (9.0, 450.0), (10.0, 500.0)]
    assert rate_by_fifth(slowing, 500) == pytest.approx([100.0, 100.0, 50.0, 50.0, 50.0])
    # A fifth the samples never reach (a run cut short) has no rate.
    assert rate_by_fifth(slowing[:6], 500) == pytest.approx([100.0, 100.0, 50.0, None, None])
    assert rate_by_fifth([], 500) == [None] * 5
