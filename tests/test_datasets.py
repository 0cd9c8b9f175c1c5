"""The demo's data: the CDNOW history, the engagement generator and replay files."""

from __future__ import annotations

import gzip
import itertools
import random
import re
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from segmentation.events import INPUT_TOPICS, WECHAT_KINDS, parse_event
from streams import datasets
from streams.datasets import (
    DatasetError,
    TopicEvent,
    cdnow_path,
    cdnow_purchases,
    dump_events_jsonl,
    event_time_ms,
    generate_engagement,
    load_events_file,
    merge_by_time,
    time_ordered,
)

RFC3339_WITH_OFFSET = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"
)
REQUIRED = {
    "email-opens": {"event_id", "customer_id", "occurred_at", "message_id"},
    "email-clicks": {"event_id", "customer_id", "occurred_at", "message_id"},
    "wechat-interactions": {"event_id", "customer_id", "occurred_at", "kind"},
}
ALLOWED = {
    "email-opens": REQUIRED["email-opens"] | {"campaign_id"},
    "email-clicks": REQUIRED["email-clicks"] | {"url", "campaign_id"},
    "wechat-interactions": REQUIRED["wechat-interactions"],
}
PERIOD_START = datetime(1997, 1, 1, tzinfo=UTC).timestamp() * 1000
PERIOD_END = datetime(1998, 7, 1, tzinfo=UTC).timestamp() * 1000


@pytest.fixture(scope="module")
def purchases() -> list[dict[str, Any]]:
    return list(cdnow_purchases())


@pytest.fixture(scope="module")
def engagement(purchases: list[dict[str, Any]]) -> list[TopicEvent]:
    return generate_engagement(time_ordered(purchases), seed=7)


def _subset(purchases: list[dict[str, Any]], customers: int) -> list[dict[str, Any]]:
    keep = {f"{n:05d}" for n in range(1, customers + 1)}
    return [p for p in purchases if p["customer_id"] in keep]


# -- CDNOW ------------------------------------------------------------------------------------


def test_cdnow_file_is_found_without_importing_lifetimes() -> None:
    path = cdnow_path()
    assert path.name == "CDNOW_master.txt"
    assert path.parent.name == "datasets"
    assert path.is_file()


def test_cdnow_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetError, match="pip install lifetimes"):
        cdnow_path()


def test_cdnow_counts(purchases: list[dict[str, Any]]) -> None:
    assert len(purchases) == 69_659 == datasets.CDNOW_ROWS
    assert len({p["customer_id"] for p in purchases}) == 23_570 == datasets.CDNOW_CUSTOMERS
    assert len({p["event_id"] for p in purchases}) == 69_659
    assert len({p["order_id"] for p in purchases}) == 69_659


def test_cdnow_first_rows_are_exact(purchases: list[dict[str, Any]]) -> None:
    assert purchases[0] == {
        "event_id": "cdnow-1",
        "customer_id": "00001",
        "occurred_at": "1997-01-01T12:00:00+00:00",
        "order_id": "cdnow-1",
        "amount": "11.77",
        "currency": "USD",
        "kind": "purchase",
        "channel": "cdnow",
    }
    assert [(p["customer_id"], p["amount"]) for p in purchases[1:3]] == [
        ("00002", "12.00"),
        ("00002", "77.00"),
    ]
    assert purchases[-1]["event_id"] == "cdnow-69659"
    assert purchases[-1]["customer_id"] == "23570"
    assert purchases[-1]["amount"] == "42.96"


def test_cdnow_amounts_are_exact_decimal_strings(purchases: list[dict[str, Any]]) -> None:
    assert all(
        isinstance(p["amount"], str) and re.fullmatch(r"\d+\.\d\d", p["amount"]) for p in purchases
    )
    # The whole history's revenue, to the cent: no float ever touched an amount.
    assert sum(Decimal(p["amount"]) for p in purchases) == Decimal("2500315.63")
    assert sum(p["amount"] == "0.00" for p in purchases) == 80


def test_cdnow_times_are_noon_utc_within_the_period(purchases: list[dict[str, Any]]) -> None:
    assert all(p["occurred_at"].endswith("T12:00:00+00:00") for p in purchases)
    days = sorted({p["occurred_at"][:10] for p in purchases})
    assert days[0] == "1997-01-01"
    assert days[-1] == "1998-06-30"
    assert len(days) == 546


def test_cdnow_events_pass_the_input_validator(purchases: list[dict[str, Any]]) -> None:
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    for event in purchases[:2000]:
        parsed = parse_event("purchases", orjson.dumps(event), now_ms=now_ms)
        assert parsed.customer_id == event["customer_id"]


def test_cdnow_malformed_row_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "cdnow.txt"
    bad.write_text(" customer_id date n v\r\n 00001 19970101 1 11.77\r\n 00002 1997011 1 x\r\n")
    with pytest.raises(DatasetError, match=r"cdnow.txt:3"):
        list(cdnow_purchases(bad))


# -- ordering ---------------------------------------------------------------------------------


def test_time_ordered_is_sorted_and_stable(purchases: list[dict[str, Any]]) -> None:
    ordered = time_ordered(purchases)
    assert len(ordered) == len(purchases)
    times = [p["occurred_at"] for p in ordered]
    assert times == sorted(times)
    rows = [int(p["event_id"].removeprefix("cdnow-")) for p in ordered]
    # Stable: on the same day, rows keep file order.
    for (t1, r1), (t2, r2) in itertools.pairwise(zip(times, rows, strict=True)):
        assert t1 < t2 or r1 < r2
    assert ordered[0]["customer_id"] == "00001"


def test_time_ordered_compares_instants_not_strings() -> None:
    events = [
        {"id": "a", "occurred_at": "2024-01-01T10:00:00+02:00"},  # 08:00Z
        {"id": "b", "occurred_at": "2024-01-01T09:00:00+00:00"},  # 09:00Z
        {"id": "c", "occurred_at": 1_704_097_800_000},  # 08:30Z as epoch ms
        {"id": "d", "occurred_at": "2024-01-01T08:00:00Z"},  # 08:00Z, ties with a
    ]
    assert [e["id"] for e in time_ordered(events)] == ["a", "d", "c", "b"]


def test_merge_by_time_is_stable_across_streams() -> None:
    first = [("purchases", {"k": 1, "occurred_at": "1997-01-01T12:00:00+00:00"})]
    second = [
        ("email-opens", {"k": 2, "occurred_at": "1997-01-01T12:00:00+00:00"}),
        ("email-opens", {"k": 3, "occurred_at": "1997-01-01T11:00:00+00:00"}),
    ]
    merged = merge_by_time(first, second)
    assert [e["k"] for _, e in merged] == [3, 1, 2]
    assert [e["k"] for _, e in merge_by_time(second, first)] == [3, 2, 1]
    assert merge_by_time() == []


# -- engagement -------------------------------------------------------------------------------


def test_engagement_volume_is_moderate(engagement: list[TopicEvent]) -> None:
    assert 100_000 <= len(engagement) <= 150_000
    per_topic = Counter(topic for topic, _ in engagement)
    assert set(per_topic) == {"email-opens", "email-clicks", "wechat-interactions"}
    # Clicks are a fraction of opens, as with real newsletters.
    assert 0.1 < per_topic["email-clicks"] / per_topic["email-opens"] < 0.35


def test_engagement_events_are_valid(engagement: list[TopicEvent]) -> None:
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    for topic, event in engagement:
        assert topic in INPUT_TOPICS
        assert REQUIRED[topic] <= event.keys() <= ALLOWED[topic], event
        assert all(isinstance(v, str) and v for v in event.values()), event
        assert RFC3339_WITH_OFFSET.match(event["occurred_at"]), event
        if topic == "wechat-interactions":
            assert event["kind"] in WECHAT_KINDS
        parsed = parse_event(topic, orjson.dumps(event), now_ms=now_ms)
        assert PERIOD_START <= parsed.occurred_ms < PERIOD_END


def test_engagement_ids_unique_and_time_sorted(engagement: list[TopicEvent]) -> None:
    ids = [event["event_id"] for _, event in engagement]
    assert len(ids) == len(set(ids))
    times = [event_time_ms(event) for _, event in engagement]
    assert times == sorted(times)


def test_engagement_population(
    purchases: list[dict[str, Any]], engagement: list[TopicEvent]
) -> None:
    buyers = {p["customer_id"] for p in purchases}
    engaged = {event["customer_id"] for _, event in engagement}
    prospects = {c for c in engaged if c not in buyers}
    assert len(prospects) == 3_000
    assert all(re.fullmatch(r"P\d{5}", c) for c in prospects)
    # Most buyers engage at least once; the rest are the silent majority of any mailing list.
    assert 0.7 * len(buyers) < len(engaged - prospects) <= len(buyers)
    followers = {
        e["customer_id"]
        for t, e in engagement
        if t == "wechat-interactions" and e["kind"] == "follow" and e["customer_id"] in buyers
    }
    assert 0.27 < len(followers) / len(buyers) < 0.33
    kinds = Counter(e["kind"] for t, e in engagement if t == "wechat-interactions")
    assert set(kinds) == WECHAT_KINDS


def test_engagement_is_causal(engagement: list[TopicEvent]) -> None:
    # A click follows an open of the same message; an interaction follows a follow.
    opened: dict[str, int] = {}
    following: dict[str, bool] = {}
    for topic, event in engagement:
        if topic == "email-opens":
            opened.setdefault(event["message_id"], event_time_ms(event))
        elif topic == "email-clicks":
            assert opened[event["message_id"]] <= event_time_ms(event)
        else:
            cid, kind = event["customer_id"], event["kind"]
            if kind == "follow":
                assert not following.get(cid)
                following[cid] = True
            elif kind == "unfollow":
                assert following.pop(cid)
            else:
                assert following.get(cid), event


def test_engagement_rises_around_purchases(
    purchases: list[dict[str, Any]], engagement: list[TopicEvent]
) -> None:
    # Opens within a week of a purchase should far outnumber opens 60–120 days after the last one,
    # even though the later window is longer.
    last: dict[str, int] = {}
    purchase_days: set[tuple[str, int]] = set()
    for p in purchases:
        t = event_time_ms(p)
        last[p["customer_id"]] = max(last.get(p["customer_id"], 0), t)
        purchase_days.add((p["customer_id"], t // 86_400_000))
    close = later = 0
    for topic, event in engagement:
        cid = event["customer_id"]
        if topic != "email-opens" or cid not in last:
            continue
        t = event_time_ms(event)
        day = t // 86_400_000
        if any((cid, day + d) in purchase_days for d in range(-7, 8)):
            close += 1
        elif 60 <= (t - last[cid]) / 86_400_000 < 120:
            later += 1
    assert close > 1.5 * later


def test_engagement_is_deterministic_per_seed(purchases: list[dict[str, Any]]) -> None:
    sample = _subset(purchases, 1_500)
    first = generate_engagement(sample, seed=7, prospects=200)
    again = generate_engagement(sample, seed=7, prospects=200)
    assert first == again
    other = generate_engagement(sample, seed=8, prospects=200)
    assert other != first
    # Same population either way: only the draws differ.
    assert 0.8 < len(other) / len(first) < 1.25


def test_engagement_does_not_depend_on_purchase_order(purchases: list[dict[str, Any]]) -> None:
    sample = _subset(purchases, 800)
    shuffled = list(sample)
    random.Random(1).shuffle(shuffled)
    assert generate_engagement(sample, seed=3, prospects=50) == generate_engagement(
        shuffled, seed=3, prospects=50
    )


def test_engagement_respects_an_explicit_period(purchases: list[dict[str, Any]]) -> None:
    start = datetime(1997, 2, 1, tzinfo=UTC)
    end = datetime(1997, 4, 1, tzinfo=UTC)
    events = generate_engagement(
        _subset(purchases, 500), seed=1, prospects=20, start=start, end=end
    )
    assert events
    assert all(
        start.timestamp() * 1000 <= event_time_ms(e) < end.timestamp() * 1000 for _, e in events
    )
    with pytest.raises(ValueError, match="timezone-aware"):
        generate_engagement([], start=datetime(1997, 1, 1), end=end)  # noqa: DTZ001
    with pytest.raises(ValueError, match="no purchases"):
        generate_engagement([])


def test_demo_events_merge_everything_in_time_order() -> None:
    events = datasets.cdnow_demo_events(seed=7)
    per_topic = Counter(topic for topic, _ in events)
    assert per_topic["purchases"] == 69_659
    assert 100_000 <= len(events) - 69_659 <= 150_000
    times = [event_time_ms(e) for _, e in events]
    assert times == sorted(times)


# -- replay files -----------------------------------------------------------------------------


def test_load_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text(
        '{"topic": "purchases", "event_id": "o1", "customer_id": "007", "amount": "9.90",'
        ' "occurred_at": "2024-05-01T10:00:00+02:00", "order_id": "o1"}\n'
        "\n"
        '{"topic": "email-opens", "event_id": "e1", "customer_id": "007",'
        ' "occurred_at": 1714550400000, "message_id": "m1"}\n'
    )
    assert list(load_events_file(path)) == [
        (
            "purchases",
            {
                "event_id": "o1",
                "customer_id": "007",
                "amount": "9.90",
                "occurred_at": "2024-05-01T10:00:00+02:00",
                "order_id": "o1",
            },
        ),
        (
            "email-opens",
            {
                "event_id": "e1",
                "customer_id": "007",
                "occurred_at": 1714550400000,
                "message_id": "m1",
            },
        ),
    ]


def test_load_csv_keeps_text_and_drops_empty_cells(tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    path.write_text(
        "topic,event_id,customer_id,occurred_at,order_id,amount,message_id,kind\n"
        "purchases,o1,00042,2024-05-01T10:00:00Z,o1,19.90,,\n"
        "wechat-interactions,w1,00042,1714550400000,,,,moments_like\n"
    )
    assert list(load_events_file(path)) == [
        (
            "purchases",
            {
                "event_id": "o1",
                "customer_id": "00042",
                "occurred_at": "2024-05-01T10:00:00Z",
                "order_id": "o1",
                "amount": "19.90",
            },
        ),
        (
            "wechat-interactions",
            {
                "event_id": "w1",
                "customer_id": "00042",
                "occurred_at": 1714550400000,
                "kind": "moments_like",
            },
        ),
    ]


def test_dump_and_reload_gzip_and_sniffed_format(tmp_path: Path) -> None:
    events = [
        ("purchases", {"event_id": "a", "customer_id": "1", "occurred_at": "2024-01-01T00:00:00Z"}),
        ("suppressions", {"event_id": "b", "customer_id": "1", "kind": "unsubscribe"}),
    ]
    plain = tmp_path / "events.jsonl"
    assert dump_events_jsonl(events, plain) == 2
    assert list(load_events_file(plain)) == events
    packed = tmp_path / "events.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert list(load_events_file(packed)) == events
    unnamed = tmp_path / "events.txt"
    unnamed.write_bytes(plain.read_bytes())
    assert list(load_events_file(unnamed)) == events


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.jsonl", '{"event_id": "x"}\n', r"a.jsonl:1: missing 'topic'"),
        ("b.jsonl", '\n{"topic": "orders"}\n', r"b.jsonl:2: topic 'orders' is not an input topic"),
        ("c.jsonl", "{not json\n", r"c.jsonl:1: not valid JSON"),
        ("d.jsonl", "[1, 2]\n", r"d.jsonl:1: each line must be a JSON object"),
        ("e.csv", "event_id,customer_id\nx,1\n", r"e.csv:1: the CSV header needs a 'topic'"),
        ("f.csv", "topic,event_id\npurchases,x\ntier-changes,y\n", r"f.csv:3: topic"),
    ],
)
def test_load_errors_name_file_and_line(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        list(load_events_file(path))


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        list(load_events_file(tmp_path / "nope.jsonl"))
