"""The marketer's report: tables computed from a small hand-made world, and both renderings."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import orjson
import pytest

from streams.report import (
    NONE,
    RFCell,
    Transition,
    build_report,
    render_html,
    render_text,
    text_bar,
)

EVIL = "<script>alert('x')</script>"


def profile(
    customer_id: str,
    tier: str,
    stage: str,
    *,
    r: int | None,
    f: int | None,
    monetary: float | str,
    frequency: int,
    segment: str | None,
    level: str,
    tags: list[str] | None = None,
    p_alive: float = 0.5,
) -> dict[str, Any]:
    return {
        "customer_id": customer_id,
        "tier": tier,
        "stage": stage,
        "rfm": {
            "recency_days": 10,
            "frequency": frequency,
            "monetary": monetary,
            "r": r,
            "f": f,
            "m": 3,
            "segment": segment,
        },
        "engagement": {"score": 1.0, "level": level},
        "p_alive": p_alive,
        "tags": tags or [],
        "as_of": "1998-06-30T12:00:00+00:00",
    }


PROFILES = [
    profile("c1", "vip", "active", r=5, f=5, monetary=500, frequency=12, segment="champions",
            level="high", tags=["big_spender", "email_engaged"], p_alive=0.97),
    profile("c2", "vip", "at_risk", r=2, f=5, monetary="300.50", frequency=9, segment="cant_lose",
            level="medium", tags=["big_spender"]),
    profile("c3", "active", "active", r=5, f=3, monetary=100, frequency=3,
            segment="potential_loyalist", level="medium"),
    profile("c4", "potential", "new", r=5, f=1, monetary=20, frequency=1,
            segment="new_customers", level="low"),
    profile("P1", "ordinary", "prospect", r=None, f=None, monetary=0, frequency=0, segment=None,
            level="high", tags=["wechat_fan"]),
    profile(EVIL, "ordinary", "churned", r=1, f=1, monetary=40, frequency=1, segment="lost",
            level="low"),
    profile("c5", "active", "reactivated", r=5, f=3, monetary=120, frequency=4,
            segment="potential_loyalist", level="low"),
]  # fmt: skip


def change(
    previous_tier: str | None,
    tier: str,
    previous_stage: str | None,
    stage: str,
    cause: str,
) -> dict[str, Any]:
    return {
        "previous_tier": previous_tier,
        "tier": tier,
        "previous_stage": previous_stage,
        "stage": stage,
        "cause": cause,
        "occurred_at": "1998-01-01T00:00:00+00:00",
    }


CHANGES = [
    change(None, "vip", None, "new", "event"),
    change("vip", "vip", "new", "active", "event"),
    change("active", "vip", "active", "active", "event"),
    change("vip", "vip", "active", "at_risk", "time"),
    change("ordinary", "active", "churned", "reactivated", "event"),
    change(None, "potential", "prospect", "new", "backfill"),
    change("potential", "active", "active", "active", "rules_change"),
]
TRIGGERS = [
    {"campaign": "vip_welcome", "variant": "treatment", "channel": "email"},
    {"campaign": "vip_welcome", "variant": "treatment", "channel": "email"},
    {"campaign": "vip_welcome", "variant": "holdout", "channel": "email"},
    {"campaign": "vip_welcome", "variant": "treatment", "channel": "wechat"},
    {"campaign": "winback", "variant": "treatment", "channel": "wechat"},
]
SKIPS = {
    "vip_welcome": {"frequency_cap": 2, "suppressed": 1},
    "winback": {"quiet_hours": 4},
    "welcome": {"suppressed": 5},
}
WARNINGS = [
    {"customer_id": "c2", "severity": "low", "tier": "vip"},
    {"customer_id": "c2", "severity": "high", "tier": "vip"},
    {"customer_id": EVIL, "severity": "high", "tier": "ordinary"},
]
META = {
    "events_per_topic": {"purchases": 120, "email-opens": 60},
    "duration_s": 2.0,
    "as_of": "1998-07-01T00:00:00+00:00",
    "source": "hand-made",
}


@pytest.fixture
def report() -> Any:
    return build_report(PROFILES, CHANGES, TRIGGERS, SKIPS, WARNINGS, META)


def test_distributions(report: Any) -> None:
    assert report.customers == 7
    assert report.buyers == 6
    assert report.total_monetary == pytest.approx(1080.5)
    assert report.tier_counts == {"vip": 2, "active": 2, "potential": 1, "ordinary": 2}
    assert report.stage_counts == {
        "prospect": 1,
        "new": 1,
        "active": 2,
        "at_risk": 1,
        "churned": 1,
        "reactivated": 1,
    }
    assert report.tier_stage["vip"] == {
        "prospect": 0,
        "new": 0,
        "active": 1,
        "at_risk": 1,
        "churned": 0,
        "reactivated": 0,
    }
    assert report.tier_stage["ordinary"]["prospect"] == 1
    assert report.tier_stage["active"]["reactivated"] == 1
    assert report.engagement_levels == {"high": 2, "medium": 2, "low": 3}
    assert report.tag_counts == {"big_spender": 2, "email_engaged": 1, "wechat_fan": 1}
    assert report.as_of == "1998-07-01T00:00:00+00:00"


def test_segments_and_grid(report: Any) -> None:
    counts = report.segment_counts
    assert counts["potential_loyalist"] == 2
    assert counts["champions"] == counts["cant_lose"] == counts["lost"] == 1
    assert counts["loyal"] == 0  # every classic segment is listed, even when empty
    assert counts[NONE] == 1  # the prospect
    assert list(counts)[:3] == ["champions", "loyal", "potential_loyalist"]
    by_name = {s.segment: s for s in report.segments}
    assert by_name["potential_loyalist"].mean_monetary == pytest.approx(110.0)
    assert report.rf_grid == {
        (1, 1): RFCell(1, 40.0),
        (2, 5): RFCell(1, 300.5),
        (5, 1): RFCell(1, 20.0),
        (5, 3): RFCell(2, 110.0),
        (5, 5): RFCell(1, 500.0),
    }
    assert report.rf_scores == ([5, 4, 3, 2, 1], [1, 2, 3, 4, 5])


def test_transitions(report: Any) -> None:
    assert report.changes == 7
    assert report.changes_by_cause == {"event": 4, "time": 1, "rules_change": 1, "backfill": 1}
    tiers = {(t.source, t.target): t for t in report.tier_transitions}
    assert set(tiers) == {
        (NONE, "vip"),
        ("active", "vip"),
        ("ordinary", "active"),
        (NONE, "potential"),
        ("potential", "active"),
    }
    assert tiers[("potential", "active")] == Transition(
        "potential", "active", 1, {"rules_change": 1}
    )
    stages = {(t.source, t.target): t.count for t in report.stage_transitions}
    assert stages == {
        (NONE, "new"): 1,
        ("new", "active"): 1,
        ("active", "at_risk"): 1,
        ("churned", "reactivated"): 1,
        ("prospect", "new"): 1,
    }
    at_risk = next(t for t in report.stage_transitions if t.target == "at_risk")
    assert at_risk.by_cause["time"] == 1


def test_transitions_sort_by_volume() -> None:
    changes = [change("a", "b", "s", "s", "event")] + [change("c", "d", "s", "s", "time")] * 3
    moves = build_report([], changes).tier_transitions
    assert [(t.source, t.target, t.count) for t in moves] == [("c", "d", 3), ("a", "b", 1)]


def test_campaigns(report: Any) -> None:
    rows = {row.campaign: row for row in report.campaigns}
    assert [row.campaign for row in report.campaigns] == ["vip_welcome", "welcome", "winback"]
    vip = rows["vip_welcome"]
    assert (vip.triggered, vip.treatment, vip.holdout, vip.capped, vip.suppressed) == (
        4,
        3,
        1,
        2,
        1,
    )
    assert vip.holdout_share == pytest.approx(0.25)
    assert vip.channels == ("email", "wechat")
    assert rows["welcome"].triggered == 0
    assert rows["welcome"].suppressed == 5
    assert rows["winback"].other_skips == {"quiet_hours": 4}
    assert rows["winback"].capped == 0


def test_churn_and_top_customers(report: Any) -> None:
    assert report.churn_warnings == 3
    assert report.churn_by_severity == {"high": 2, "low": 1}
    assert report.churn_by_tier == {"vip": 2, "ordinary": 1}
    top = report.top_customers
    assert [c.customer_id for c in top] == ["c1", "c2", "c5", "c3", EVIL, "c4"]
    assert (top[0].tier, top[0].stage, top[0].monetary, top[0].p_alive) == (
        "vip",
        "active",
        500.0,
        0.97,
    )
    assert len(build_report(PROFILES, [], top=3).top_customers) == 3


def test_report_is_json_ready(report: Any) -> None:
    doc = orjson.loads(orjson.dumps(report.to_json_dict()))
    assert doc["tier_counts"]["vip"] == 2
    assert {"r": 5, "f": 3, "count": 2, "mean_monetary": 110.0} in doc["rf_grid"]


def test_empty_world_renders() -> None:
    empty = build_report([], [])
    assert empty.customers == 0
    assert empty.tier_counts == {"vip": 0, "active": 0, "potential": 0, "ordinary": 0}
    assert "(no transitions)" in render_text(empty)
    page = render_html(empty)
    _check_well_formed(page)


def test_profiles_with_missing_parts() -> None:
    odd = [{"customer_id": "x"}, {"customer_id": "y", "tier": "gold", "rfm": None, "tags": None}]
    report = build_report(odd, [{"tier": "gold"}])
    assert report.tier_counts["gold"] == 1
    assert report.tier_counts[NONE] == 1
    assert report.rf_grid == {}
    assert report.tier_transitions[0].source == NONE
    render_text(report)
    _check_well_formed(render_html(report))


# -- rendering --------------------------------------------------------------------------------


def test_text_bar_resolution() -> None:
    assert text_bar(0, 10) == ""
    assert text_bar(10, 10, width=4) == "████"
    assert text_bar(5, 10, width=3) == "█▌"
    assert text_bar(1, 1000, width=10) == "▏"  # tiny but visible


def test_render_text(report: Any) -> None:
    text = render_text(report)
    lines = text.splitlines()
    assert lines[0] == "tierstream — segmentation report as of 1998-07-01T00:00:00+00:00"
    assert "Replayed 180 events in 2.0 s (90 events/s)" in text
    tier_lines = lines[lines.index("Tiers") + 3 : lines.index("Tiers") + 7]
    assert [line.split()[:3] for line in tier_lines] == [
        ["vip", "2", "28.6%"],
        ["active", "2", "28.6%"],
        ["potential", "1", "14.3%"],
        ["ordinary", "2", "28.6%"],
    ]
    # Columns line up: every count ends in the same column.
    assert len({line.index("%") for line in tier_lines}) == 1
    assert "vip_welcome" in text
    assert "churned → reactivated" in text
    assert "R=5" in text and "F=3" in text


class _Strict(HTMLParser):
    VOID = frozenset({"meta", "br", "hr", "img", "input", "link"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs

    def handle_endtag(self, tag: str) -> None:
        assert self.stack, f"</{tag}> without an open tag"
        assert self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1]}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _check_well_formed(page: str) -> _Strict:
    parser = _Strict()
    parser.feed(page)
    parser.close()
    assert parser.stack == [], f"unclosed: {parser.stack}"
    return parser


def test_render_html_is_self_contained_and_well_formed(report: Any) -> None:
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>")
    parser = _check_well_formed(page)
    assert parser.tags.count("svg") >= 5  # tiers, stages, segments, grid, flows…
    assert "script" not in parser.tags
    # Nothing to fetch: no src/href, no CSS imports or urls.
    assert not [name for name, _ in parser.attrs if name in ("src", "href")]
    assert "@import" not in page and "url(" not in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    text = "".join(parser.text)
    assert "vip_welcome" in text
    assert "champions" in text


def test_render_html_escapes_data(report: Any) -> None:
    page = render_html(report)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    hostile = build_report(
        [profile('"><svg onload=1>', '<b>"t"</b>', "s&s", r=1, f=1, monetary=1, frequency=1,
                 segment="<i>", level="low", tags=["<u>"])],
        [change("<a>", "<b>", None, "x", "<c>")],
        [{"campaign": "<img src=x>", "variant": "treatment", "channel": "<e>"}],
        {"<img src=x>": {"<r>": 1}},
        [{"severity": "<sev>", "tier": "<t>"}],
        {"source": "<src>", "note": "<n>", "currency": "<cur>"},
    )  # fmt: skip
    page = render_html(hostile)
    parser = _check_well_formed(page)
    assert "onload" not in [name for name, _ in parser.attrs]
    # <b> is the report's own markup; the hostile one must appear only escaped.
    assert '<b>"t"</b>' not in page
    assert "&lt;b&gt;&quot;t&quot;&lt;/b&gt;" in page
    assert not {"i", "u", "img", "a", "c", "e", "r", "sev", "t", "src", "n", "cur"} & set(
        parser.tags
    )
