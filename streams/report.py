"""The report a marketer reads after a replay: who is where, how they moved, what it set off.

Built from plain data (profile JSON as served by `GET /customers/{id}`, and the messages of the
output topics), so it can be produced from a live cluster, a replay or a test fixture alike.
`build_report` computes the tables; `render_text` and `render_html` only lay them out. The HTML is
one self-contained file: inline CSS and SVG, no scripts, nothing fetched.
"""

from __future__ import annotations

import html
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

TIER_ORDER: Final = ("vip", "active", "potential", "ordinary")
STAGE_ORDER: Final = ("prospect", "new", "active", "at_risk", "churned", "reactivated")
SEGMENT_ORDER: Final = (
    "champions",
    "loyal",
    "potential_loyalist",
    "new_customers",
    "promising",
    "need_attention",
    "about_to_sleep",
    "at_risk",
    "cant_lose",
    "hibernating",
    "lost",
)
LEVEL_ORDER: Final = ("high", "medium", "low")
SEVERITY_ORDER: Final = ("critical", "high", "warning", "medium", "low", "info")
CAUSE_ORDER: Final = ("event", "time", "rules_change", "backfill")
# What a profile or message without the field is filed under, rather than dropping it.
NONE: Final = "(none)"

TIER_COLORS: Final = {
    "vip": "#b8860b",
    "active": "#2e8b57",
    "potential": "#4682b4",
    "ordinary": "#8c8c8c",
}
STAGE_COLORS: Final = {
    "prospect": "#8a6fcf",
    "new": "#1e88e5",
    "active": "#2e8b57",
    "at_risk": "#f0900c",
    "churned": "#c0392b",
    "reactivated": "#17a2a2",
}
SEGMENT_COLORS: Final = {
    "champions": "#1b7a3e",
    "loyal": "#2e9e57",
    "potential_loyalist": "#62b26f",
    "new_customers": "#1e88e5",
    "promising": "#64a8e8",
    "need_attention": "#d4b106",
    "about_to_sleep": "#e6a23c",
    "at_risk": "#f0700c",
    "cant_lose": "#d9480f",
    "hibernating": "#a05252",
    "lost": "#8c2d2d",
}
FALLBACK_COLORS: Final = ("#6c757d", "#5f4b8b", "#3d7ea6", "#9c6644", "#4d8b31", "#b5838d")

# Skip reasons are whatever the campaign policy reports; these decide which column they land in.
_CAPPED_REASONS: Final = ("frequency_cap", "cap", "capped", "cooldown")
_SUPPRESSED_REASONS: Final = (
    "suppressed",
    "suppression",
    "unsubscribe",
    "unsubscribed",
    "complaint",
    "erased",
    "erase",
)


# --------------------------------------------------------------------------------------------
# The computed tables


@dataclass(frozen=True, slots=True)
class RFCell:
    """One cell of the R×F grid."""

    count: int
    mean_monetary: float


@dataclass(frozen=True, slots=True)
class SegmentRow:
    segment: str
    count: int
    total_monetary: float

    @property
    def mean_monetary(self) -> float:
        return self.total_monetary / self.count if self.count else 0.0


@dataclass(frozen=True, slots=True)
class Transition:
    """Moves from `source` to `target` (a tier or a stage), split by cause."""

    source: str
    target: str
    count: int
    by_cause: dict[str, int]


@dataclass(frozen=True, slots=True)
class CampaignRow:
    """A campaign's triggers: `treatment` are sent, `holdout` are the measured control group;
    `capped` and `suppressed` never became triggers."""

    campaign: str
    treatment: int
    holdout: int
    capped: int
    suppressed: int
    other_skips: dict[str, int]
    channels: tuple[str, ...]

    @property
    def triggered(self) -> int:
        return self.treatment + self.holdout

    @property
    def holdout_share(self) -> float:
        return self.holdout / self.triggered if self.triggered else 0.0

    @property
    def other_skipped(self) -> int:
        return sum(self.other_skips.values())


@dataclass(frozen=True, slots=True)
class TopCustomer:
    customer_id: str
    tier: str
    stage: str
    segment: str
    monetary: float
    frequency: int
    recency_days: float | None
    p_alive: float | None


@dataclass(frozen=True)
class Report:
    """Every table of the report, computed; renderers add nothing but layout."""

    as_of: str | None
    customers: int
    buyers: int
    total_monetary: float
    tier_counts: dict[str, int]
    stage_counts: dict[str, int]
    # tier -> stage -> customers; every tier row has every stage column (zeros included).
    tier_stage: dict[str, dict[str, int]]
    segments: list[SegmentRow]
    # (r, f) -> cell, only for cells with customers; r and f are the 1–5 scores.
    rf_grid: dict[tuple[int, int], RFCell]
    engagement_levels: dict[str, int]
    tag_counts: dict[str, int]
    changes: int
    changes_by_cause: dict[str, int]
    tier_transitions: list[Transition]
    stage_transitions: list[Transition]
    campaigns: list[CampaignRow]
    churn_warnings: int
    churn_by_severity: dict[str, int]
    churn_by_tier: dict[str, int]
    top_customers: list[TopCustomer]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def segment_counts(self) -> dict[str, int]:
        return {row.segment: row.count for row in self.segments}

    @property
    def rf_scores(self) -> tuple[list[int], list[int]]:
        """R scores (high first, as the grid is drawn) and F scores (low first)."""
        rs = {r for r, _ in self.rf_grid} | set(range(1, 6))
        fs = {f for _, f in self.rf_grid} | set(range(1, 6))
        return sorted(rs, reverse=True), sorted(fs)

    def to_json_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (for `report.json` next to the HTML)."""
        return {
            "as_of": self.as_of,
            "customers": self.customers,
            "buyers": self.buyers,
            "total_monetary": round(self.total_monetary, 2),
            "tier_counts": self.tier_counts,
            "stage_counts": self.stage_counts,
            "tier_stage": self.tier_stage,
            "segments": [
                {
                    "segment": s.segment,
                    "count": s.count,
                    "total_monetary": round(s.total_monetary, 2),
                }
                for s in self.segments
            ],
            "rf_grid": [
                {"r": r, "f": f, "count": c.count, "mean_monetary": round(c.mean_monetary, 2)}
                for (r, f), c in sorted(self.rf_grid.items())
            ],
            "engagement_levels": self.engagement_levels,
            "tag_counts": self.tag_counts,
            "changes": self.changes,
            "changes_by_cause": self.changes_by_cause,
            "tier_transitions": [_transition_json(t) for t in self.tier_transitions],
            "stage_transitions": [_transition_json(t) for t in self.stage_transitions],
            "campaigns": [
                {
                    "campaign": c.campaign,
                    "triggered": c.triggered,
                    "treatment": c.treatment,
                    "holdout": c.holdout,
                    "capped": c.capped,
                    "suppressed": c.suppressed,
                    "other_skips": c.other_skips,
                    "channels": list(c.channels),
                }
                for c in self.campaigns
            ],
            "churn_warnings": self.churn_warnings,
            "churn_by_severity": self.churn_by_severity,
            "churn_by_tier": self.churn_by_tier,
            "top_customers": [
                {
                    "customer_id": t.customer_id,
                    "tier": t.tier,
                    "stage": t.stage,
                    "segment": t.segment,
                    "monetary": t.monetary,
                    "frequency": t.frequency,
                    "recency_days": t.recency_days,
                    "p_alive": t.p_alive,
                }
                for t in self.top_customers
            ],
            "meta": self.meta,
        }


def _transition_json(t: Transition) -> dict[str, Any]:
    return {"from": t.source, "to": t.target, "count": t.count, "by_cause": t.by_cause}


# --------------------------------------------------------------------------------------------
# Building


def _label(value: object) -> str:
    if value is None or value == "":
        return NONE
    return str(value)


def _number(value: object) -> float | None:
    # Money may arrive as a JSON number or as a decimal string; either is fine for a report.
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    try:
        parsed = float(str(value))
    except ValueError:
        return None
    return parsed if math.isfinite(parsed) else None


def _score(value: object) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number == int(number) else None


def ordered_counts(counts: Mapping[str, int], order: Sequence[str]) -> dict[str, int]:
    """Known keys in their natural order (zeros included, so a chart always shows every tier),
    then the unknown ones by count, largest first, ties by name."""
    result = {key: counts.get(key, 0) for key in order}
    extras = sorted((k for k in counts if k not in result), key=lambda k: (-counts[k], k))
    result.update((key, counts[key]) for key in extras)
    return result


def _order_index(order: Sequence[str]) -> dict[str, int]:
    return {name: i for i, name in enumerate(order)}


def _transitions(
    moves: Mapping[tuple[str, str], Counter[str]], order: Sequence[str]
) -> list[Transition]:
    rank = _order_index((NONE, *order))

    def key(item: tuple[tuple[str, str], Counter[str]]) -> tuple[int, int, str, int, str]:
        (source, target), causes = item
        return (
            -sum(causes.values()),
            rank.get(source, len(rank)),
            source,
            rank.get(target, len(rank)),
            target,
        )

    return [
        Transition(
            source,
            target,
            sum(causes.values()),
            {c: n for c, n in ordered_counts(causes, CAUSE_ORDER).items() if n},
        )
        for (source, target), causes in sorted(moves.items(), key=key)
    ]


def _campaign_rows(
    triggers: Iterable[Mapping[str, Any]], skips: Mapping[str, Mapping[str, int]]
) -> list[CampaignRow]:
    variants: dict[str, Counter[str]] = defaultdict(Counter)
    channels: dict[str, set[str]] = defaultdict(set)
    for trigger in triggers:
        campaign = _label(trigger.get("campaign"))
        variant = "holdout" if trigger.get("variant") == "holdout" else "treatment"
        variants[campaign][variant] += 1
        if trigger.get("channel"):
            channels[campaign].add(str(trigger["channel"]))
    rows = []
    for campaign in sorted(set(variants) | set(skips)):
        capped = suppressed = 0
        other: dict[str, int] = {}
        for reason, count in (skips.get(campaign) or {}).items():
            if reason in _CAPPED_REASONS:
                capped += count
            elif reason in _SUPPRESSED_REASONS:
                suppressed += count
            else:
                other[reason] = other.get(reason, 0) + count
        rows.append(
            CampaignRow(
                campaign=campaign,
                treatment=variants[campaign]["treatment"],
                holdout=variants[campaign]["holdout"],
                capped=capped,
                suppressed=suppressed,
                other_skips=dict(sorted(other.items())),
                channels=tuple(sorted(channels[campaign])),
            )
        )
    rows.sort(
        key=lambda r: (-(r.triggered + r.capped + r.suppressed + r.other_skipped), r.campaign)
    )
    return rows


def build_report(
    profiles: Sequence[Mapping[str, Any]],
    changes: Sequence[Mapping[str, Any]],
    triggers: Sequence[Mapping[str, Any]] | None = None,
    campaign_skips: Mapping[str, Mapping[str, int]] | None = None,
    churn_warnings: Sequence[Mapping[str, Any]] | None = None,
    meta: Mapping[str, Any] | None = None,
    *,
    top: int = 10,
) -> Report:
    """Compute the report's tables.

    `profiles` are profile documents (customer_id, tier, stage, rfm{recency_days, frequency,
    monetary, r, f, m, segment}, engagement{score, level}, p_alive, tags, as_of…); missing parts
    are tolerated (a prospect has no R/F scores and is left out of the grid). `changes` are
    `tier-changes` messages, `triggers` `campaign-triggers` messages, `campaign_skips` maps
    campaign → reason → count for triggers that were not emitted (frequency_cap, suppressed…),
    `churn_warnings` are `churn-warnings` messages.

    `meta` describes the run; recognised keys (all optional): `events_per_topic` (topic → count),
    `duration_s`, `events_per_s`, `as_of`, `currency` (default USD), `source`. Any other scalar
    entries are shown as they are.
    """
    meta_dict = dict(meta or {})
    tiers: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    tier_stage: dict[str, Counter[str]] = defaultdict(Counter)
    segment_count: Counter[str] = Counter()
    segment_money: dict[str, float] = defaultdict(float)
    grid_count: Counter[tuple[int, int]] = Counter()
    grid_money: dict[tuple[int, int], float] = defaultdict(float)
    levels: Counter[str] = Counter()
    tags: Counter[str] = Counter()
    buyers = 0
    total_money = 0.0
    latest_as_of: str | None = None
    ranked: list[TopCustomer] = []

    for profile in profiles:
        tier = _label(profile.get("tier"))
        stage = _label(profile.get("stage"))
        tiers[tier] += 1
        stages[stage] += 1
        tier_stage[tier][stage] += 1
        rfm = profile.get("rfm") or {}
        monetary = _number(rfm.get("monetary")) or 0.0
        frequency = _score(rfm.get("frequency")) or 0
        segment = _label(rfm.get("segment"))
        segment_count[segment] += 1
        segment_money[segment] += monetary
        total_money += monetary
        if frequency > 0:
            buyers += 1
        r, f = _score(rfm.get("r")), _score(rfm.get("f"))
        if r is not None and f is not None:
            grid_count[(r, f)] += 1
            grid_money[(r, f)] += monetary
        engagement = profile.get("engagement") or {}
        levels[_label(engagement.get("level"))] += 1
        for tag in profile.get("tags") or ():
            tags[str(tag)] += 1
        as_of = profile.get("as_of")
        if isinstance(as_of, str) and (latest_as_of is None or as_of > latest_as_of):
            latest_as_of = as_of
        ranked.append(
            TopCustomer(
                customer_id=_label(profile.get("customer_id")),
                tier=tier,
                stage=stage,
                segment=segment,
                monetary=monetary,
                frequency=frequency,
                recency_days=_number(rfm.get("recency_days")),
                p_alive=_number(profile.get("p_alive")),
            )
        )

    tier_moves: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    stage_moves: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    causes: Counter[str] = Counter()
    for change in changes:
        cause = _label(change.get("cause"))
        causes[cause] += 1
        before_tier, after_tier = _label(change.get("previous_tier")), _label(change.get("tier"))
        if before_tier != after_tier:
            tier_moves[(before_tier, after_tier)][cause] += 1
        before_stage, after_stage = (
            _label(change.get("previous_stage")),
            _label(change.get("stage")),
        )
        if before_stage != after_stage:
            stage_moves[(before_stage, after_stage)][cause] += 1

    severities: Counter[str] = Counter()
    churn_tiers: Counter[str] = Counter()
    for warning in churn_warnings or ():
        severities[_label(warning.get("severity"))] += 1
        churn_tiers[_label(warning.get("tier"))] += 1

    tier_counts = ordered_counts(tiers, TIER_ORDER)
    stage_counts = ordered_counts(stages, STAGE_ORDER)
    segments_ordered = ordered_counts(segment_count, SEGMENT_ORDER)
    ranked.sort(key=lambda c: (-c.monetary, c.customer_id))
    as_of = meta_dict.get("as_of")
    return Report(
        as_of=str(as_of) if as_of else latest_as_of,
        customers=len(profiles),
        buyers=buyers,
        total_monetary=total_money,
        tier_counts=tier_counts,
        stage_counts=stage_counts,
        tier_stage={
            tier: {stage: tier_stage[tier].get(stage, 0) for stage in stage_counts}
            for tier in tier_counts
        },
        segments=[
            SegmentRow(name, count, segment_money.get(name, 0.0))
            for name, count in segments_ordered.items()
        ],
        rf_grid={
            cell: RFCell(count, grid_money[cell] / count)
            for cell, count in sorted(grid_count.items())
        },
        engagement_levels=ordered_counts(levels, LEVEL_ORDER),
        tag_counts=dict(sorted(tags.items(), key=lambda kv: (-kv[1], kv[0]))),
        changes=len(changes),
        changes_by_cause=ordered_counts(causes, CAUSE_ORDER),
        tier_transitions=_transitions(tier_moves, TIER_ORDER),
        stage_transitions=_transitions(stage_moves, STAGE_ORDER),
        campaigns=_campaign_rows(triggers or (), campaign_skips or {}),
        churn_warnings=sum(severities.values()),
        churn_by_severity=ordered_counts(
            severities, [s for s in SEVERITY_ORDER if s in severities]
        ),
        churn_by_tier=dict(sorted(churn_tiers.items(), key=lambda kv: (-kv[1], kv[0]))),
        top_customers=[c for c in ranked[:top] if c.monetary > 0],
        meta=meta_dict,
    )


# --------------------------------------------------------------------------------------------
# Shared formatting


def _int(n: int) -> str:
    return f"{n:,}"


def _money(x: float) -> str:
    return f"{x:,.2f}"


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "–"


def _meta_value(meta: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if name in meta and meta[name] is not None:
            return meta[name]
    return None


_TOPICS_KEYS: Final = ("events_per_topic", "per_topic", "published", "events")
_DURATION_KEYS: Final = ("duration_s", "duration_seconds", "seconds", "duration")
_RATE_KEYS: Final = ("events_per_s", "events_per_second", "rate")
_KNOWN_META: Final = frozenset(
    {*_TOPICS_KEYS, *_DURATION_KEYS, *_RATE_KEYS, "as_of", "currency", "source"}
)


@dataclass(frozen=True, slots=True)
class _RunSummary:
    per_topic: dict[str, int]
    total: int | None
    duration_s: float | None
    rate: float | None
    source: str | None
    currency: str
    extra: dict[str, str]


def _run_summary(meta: Mapping[str, Any]) -> _RunSummary:
    topics = _meta_value(meta, *_TOPICS_KEYS)
    per_topic = (
        {str(k): int(v) for k, v in topics.items() if _number(v) is not None}
        if isinstance(topics, Mapping)
        else {}
    )
    duration = _number(_meta_value(meta, *_DURATION_KEYS))
    rate = _number(_meta_value(meta, *_RATE_KEYS))
    total = sum(per_topic.values()) if per_topic else None
    if rate is None and total and duration:
        rate = total / duration
    extra = {
        str(k): str(v)
        for k, v in meta.items()
        if k not in _KNOWN_META and isinstance(v, str | int | float | bool)
    }
    source = meta.get("source")
    return _RunSummary(
        per_topic=per_topic,
        total=total,
        duration_s=duration,
        rate=rate,
        source=str(source) if source else None,
        currency=str(meta.get("currency") or "USD"),
        extra=extra,
    )


# --------------------------------------------------------------------------------------------
# Text

_EIGHTHS: Final = " ▏▎▍▌▋▊▉"
_SHADES: Final = " ░▒▓█"


def text_bar(value: float, maximum: float, width: int = 30) -> str:
    """A bar of `width` cells at most, in eighths of a cell, so small differences still show."""
    if maximum <= 0 or value <= 0:
        return ""
    eighths = max(1, round(8 * width * value / maximum))
    full, rest = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[rest] if rest else "")


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    """Aligned columns; `right` holds the indexes of right-aligned (numeric) columns."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  " + "  ".join(parts).rstrip()

    return [line(headers), "  " + "  ".join("─" * w for w in widths), *(line(r) for r in rows)]


def _text_distribution(title: str, counts: Mapping[str, int], total: int) -> list[str]:
    peak = max(counts.values(), default=0)
    rows = [[name, _int(n), _pct(n, total), text_bar(n, peak)] for name, n in counts.items()]
    return [title, *text_table(["", "customers", "share", ""], rows, {1, 2}), ""]


def _text_transitions(title: str, moves: Sequence[Transition], limit: int = 15) -> list[str]:
    if not moves:
        return [title, "  (no transitions)", ""]
    causes = sorted(
        {c for t in moves for c in t.by_cause},
        key=lambda c: (CAUSE_ORDER.index(c) if c in CAUSE_ORDER else len(CAUSE_ORDER), c),
    )
    peak = moves[0].count
    rows = [
        [f"{t.source} → {t.target}", _int(t.count)]
        + [_int(t.by_cause.get(c, 0)) if t.by_cause.get(c) else "·" for c in causes]
        + [text_bar(t.count, peak, 20)]
        for t in moves[:limit]
    ]
    lines = [
        title,
        *text_table(["from → to", "total", *causes, ""], rows, set(range(1, 2 + len(causes)))),
    ]
    if len(moves) > limit:
        rest = sum(t.count for t in moves[limit:])
        lines.append(f"  … {len(moves) - limit} more kinds of move ({_int(rest)} transitions)")
    return [*lines, ""]


def render_text(report: Report) -> str:
    """A terminal report: aligned tables and unicode bars, about 100 columns wide."""
    run = _run_summary(report.meta)
    out: list[str] = []
    title = "tierstream — segmentation report"
    if report.as_of:
        title += f" as of {report.as_of}"
    out += [title, "═" * len(title)]
    if run.source:
        out.append(f"Source: {run.source}")
    if run.total is not None or run.duration_s is not None:
        pieces = []
        if run.total is not None:
            pieces.append(f"{_int(run.total)} events")
        if run.duration_s is not None:
            pieces.append(f"in {run.duration_s:,.1f} s")
        if run.rate is not None:
            pieces.append(f"({run.rate:,.0f} events/s)")
        out.append("Replayed " + " ".join(pieces))
    if run.per_topic:
        out.append("  " + " · ".join(f"{t} {_int(n)}" for t, n in run.per_topic.items()))
    for key, value in run.extra.items():
        out.append(f"{key}: {value}")
    prospects = report.customers - report.buyers
    out += [
        f"Customers: {_int(report.customers)} ({_int(report.buyers)} buyers, "
        f"{_int(prospects)} without purchases); net spend {_money(report.total_monetary)} "
        f"{run.currency}",
        "",
    ]

    out += _text_distribution("Tiers", report.tier_counts, report.customers)
    out += _text_distribution("Lifecycle stages", report.stage_counts, report.customers)

    stages = list(report.stage_counts)
    rows = [
        [
            tier,
            *(_int(by_stage[s]) if by_stage[s] else "·" for s in stages),
            _int(sum(by_stage.values())),
        ]
        for tier, by_stage in report.tier_stage.items()
    ]
    rows.append(["total", *(_int(report.stage_counts[s]) for s in stages), _int(report.customers)])
    out += [
        "Tier × stage",
        *text_table(["", *stages, "total"], rows, set(range(1, len(stages) + 2))),
        "",
    ]

    peak = max((s.count for s in report.segments), default=0)
    seg_rows = [
        [
            s.segment,
            _int(s.count),
            _pct(s.count, report.customers),
            _money(s.mean_monetary),
            text_bar(s.count, peak, 24),
        ]
        for s in report.segments
    ]
    out += [
        "RFM segments",
        *text_table(
            ["", "customers", "share", f"avg spend {run.currency}", ""], seg_rows, {1, 2, 3}
        ),
        "",
    ]

    out += _text_rf_grid(report)
    out += _text_distribution("Engagement level", report.engagement_levels, report.customers)
    if report.tag_counts:
        out += _text_distribution("Tags", report.tag_counts, report.customers)

    out.append(f"Changes published: {_int(report.changes)}")
    if report.changes_by_cause:
        out.append(
            "  by cause: "
            + " · ".join(f"{c} {_int(n)}" for c, n in report.changes_by_cause.items() if n)
        )
    out.append("")
    out += _text_transitions("Tier transitions", report.tier_transitions)
    out += _text_transitions("Stage transitions", report.stage_transitions)

    if report.campaigns:
        camp_rows = [
            [
                c.campaign,
                ",".join(c.channels) or "–",
                _int(c.triggered),
                _int(c.treatment),
                _int(c.holdout),
                _pct(c.holdout, c.triggered),
                _int(c.capped),
                _int(c.suppressed),
                _int(c.other_skipped),
            ]
            for c in report.campaigns
        ]
        out += [
            "Campaigns",
            *text_table(
                [
                    "campaign",
                    "channel",
                    "triggered",
                    "sent",
                    "held out",
                    "holdout %",
                    "capped",
                    "suppressed",
                    "other skips",
                ],
                camp_rows,
                set(range(2, 9)),
            ),
            "",
        ]
    else:
        out += ["Campaigns", "  (no campaign triggers)", ""]

    out.append(f"Churn warnings: {_int(report.churn_warnings)}")
    if report.churn_warnings:
        sev = report.churn_by_severity
        peak = max(sev.values())
        out += text_table(
            ["severity", "warnings", ""],
            [[s, _int(n), text_bar(n, peak, 20)] for s, n in sev.items()],
            {1},
        )
        out.append(
            "  by tier: "
            + " · ".join(f"{t} {_int(n)}" for t, n in report.churn_by_tier.items() if n)
        )
    out.append("")

    if report.top_customers:
        top_rows = [
            [
                c.customer_id,
                c.tier,
                c.stage,
                c.segment,
                _money(c.monetary),
                _int(c.frequency),
                "–" if c.recency_days is None else f"{c.recency_days:,.0f}",
                "–" if c.p_alive is None else f"{c.p_alive:.2f}",
            ]
            for c in report.top_customers
        ]
        out += [
            f"Top {len(report.top_customers)} customers by spend",
            *text_table(
                [
                    "customer",
                    "tier",
                    "stage",
                    "segment",
                    f"spend {run.currency}",
                    "orders",
                    "days since",
                    "P(alive)",
                ],
                top_rows,
                {4, 5, 6, 7},
            ),
            "",
        ]
    return "\n".join(out).rstrip() + "\n"


def _text_rf_grid(report: Report) -> list[str]:
    rs, fs = report.rf_scores
    if not report.rf_grid:
        return ["R × F grid", "  (no scored customers)", ""]
    peak = max(c.count for c in report.rf_grid.values())
    cell_w = 19
    lines = [
        "R × F grid: customers and mean spend per cell (R recency, F frequency; 5 = best)",
        ("       " + "".join(f"F={f}".center(cell_w - 2) + "  " for f in fs)).rstrip(),
    ]
    for r in rs:
        cells = []
        for f in fs:
            cell = report.rf_grid.get((r, f))
            if cell is None:
                cells.append("·".center(cell_w - 2) + "  ")
                continue
            # Two shade cells make density readable at a glance; numbers carry the detail.
            shade = _SHADES[min(len(_SHADES) - 1, math.ceil(4 * cell.count / peak))] * 2
            cells.append(f"{shade}{_int(cell.count):>7} {cell.mean_monetary:>7,.0f}".ljust(cell_w))
        lines.append(f"  R={r}  " + "".join(cells).rstrip())
    return [*lines, ""]


# --------------------------------------------------------------------------------------------
# HTML

_CSS: Final = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;
 margin:0;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.sub{color:#666;margin:0 0 16px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{background:#fff;border:1px solid #e2e4e8;border-radius:8px;padding:10px 14px;min-width:140px}
.card b{display:block;font-size:20px}.card span{color:#666;font-size:12px}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:16px}
section.panel{background:#fff;border:1px solid #e2e4e8;border-radius:8px;padding:12px 16px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:4px 10px;border-bottom:1px solid #eee;text-align:left}
td.n,th.n{text-align:right}th{font-weight:600;color:#444;background:#fafafa}
.muted{color:#888}svg{max-width:100%;height:auto;display:block}
svg text{font:12px system-ui,sans-serif;fill:#333}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _color(name: str, palette: Mapping[str, str], index: int) -> str:
    return palette.get(name, FALLBACK_COLORS[index % len(FALLBACK_COLORS)])


def _label_width(labels: Iterable[str]) -> int:
    # No text metrics without a browser: ~7 px per character at 12 px is close enough for
    # labels, and the clamp keeps a long campaign name from squeezing the bars away.
    longest = max((len(label) for label in labels), default=0)
    return max(60, min(240, 7 * longest + 14))


def svg_bar_chart(
    items: Sequence[tuple[str, int]],
    palette: Mapping[str, str],
    *,
    title: str,
    total: int | None = None,
    width: int = 520,
) -> str:
    """Horizontal bars, one per item, labelled with count and share."""
    row, value_w = 24, 110
    label_w = _label_width(name for name, _ in items)
    height = row * max(1, len(items)) + 8
    peak = max((n for _, n in items), default=0)
    bar_w = width - label_w - value_w
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{_e(title)}">',
        f"<title>{_e(title)}</title>",
    ]
    for i, (name, n) in enumerate(items):
        y = 4 + i * row
        # A non-zero count always gets a visible sliver, however small next to the peak.
        w = max(1.0, bar_w * n / peak) if n > 0 and peak > 0 else 0.0
        share = f" ({_pct(n, total)})" if total else ""
        parts += [
            f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end">{_e(name)}</text>',
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" rx="3" '
            f'fill="{_e(_color(name, palette, i))}"><title>{_e(name)}: {_e(_int(n))}{_e(share)}'
            f"</title></rect>",
            f'<text x="{label_w + w + 6:.1f}" y="{y + 16}">{_e(_int(n))}{_e(share)}</text>',
        ]
    parts.append("</svg>")
    return "".join(parts)


def _heat(fraction: float) -> str:
    # From near-white to deep teal; perceptually even enough for five-by-five cells.
    low, high = (240, 247, 246), (0, 92, 99)
    t = max(0.0, min(1.0, fraction)) ** 0.6
    r, g, b = (round(lo + (hi - lo) * t) for lo, hi in zip(low, high, strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def svg_rf_heatmap(report: Report, currency: str = "USD") -> str:
    """The R×F grid as a heat map: darker = more customers; each cell shows count and mean spend."""
    rs, fs = report.rf_scores
    cell_w, cell_h, left, top = 96, 56, 54, 28
    width, height = left + cell_w * len(fs) + 8, top + cell_h * len(rs) + 30
    peak = max((c.count for c in report.rf_grid.values()), default=0)
    title = "R × F grid: customers and mean spend per cell"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{_e(title)}">',
        f"<title>{_e(title)}</title>",
    ]
    for j, f in enumerate(fs):
        parts.append(
            f'<text x="{left + j * cell_w + cell_w / 2}" y="{top - 10}" '
            f'text-anchor="middle">F={_e(f)}</text>'
        )
    for i, r in enumerate(rs):
        y = top + i * cell_h
        parts.append(
            f'<text x="{left - 10}" y="{y + cell_h / 2 + 4}" text-anchor="end">R={_e(r)}</text>'
        )
        for j, f in enumerate(fs):
            x = left + j * cell_w
            cell = report.rf_grid.get((r, f))
            count = cell.count if cell else 0
            fill = _heat(count / peak) if peak and count else "#f4f4f4"
            dark = bool(peak and count / peak > 0.45)
            ink = "#fff" if dark else "#222"
            tip = (
                f"R={r} F={f}: {_int(count)} customers, mean spend "
                f"{_money(cell.mean_monetary)} {currency}"
                if cell
                else f"R={r} F={f}: no customers"
            )
            parts.append(
                f'<rect x="{x + 1}" y="{y + 1}" width="{cell_w - 2}" height="{cell_h - 2}" '
                f'rx="4" fill="{fill}"><title>{_e(tip)}</title></rect>'
            )
            if cell:
                parts += [
                    f'<text x="{x + cell_w / 2}" y="{y + 24}" text-anchor="middle" '
                    f'style="fill:{ink};font-weight:600">{_e(_int(count))}</text>',
                    f'<text x="{x + cell_w / 2}" y="{y + 42}" text-anchor="middle" '
                    f'style="fill:{ink}">avg {_e(f"{cell.mean_monetary:,.0f}")}</text>',
                ]
    parts.append(
        f'<text x="{left}" y="{height - 8}" class="muted">R: recency score (5 = most recent) · '
        f"F: frequency score (5 = most orders)</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def svg_flow(
    moves: Sequence[Transition], order: Sequence[str], palette: Mapping[str, str], *, title: str
) -> str:
    """A Sankey-style diagram: states before on the left, after on the right, bands sized by the
    number of moves between them."""
    if not moves:
        return ""
    width, node_w, gap, inner_h = 620, 14, 10, 300
    rank = _order_index((NONE, *order))
    total = sum(t.count for t in moves)
    out_totals: Counter[str] = Counter()
    in_totals: Counter[str] = Counter()
    for t in moves:
        out_totals[t.source] += t.count
        in_totals[t.target] += t.count

    def ordered(names: Iterable[str]) -> list[str]:
        return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))

    sources, targets = ordered(out_totals), ordered(in_totals)
    scale = (inner_h - gap * (max(len(sources), len(targets)) - 1)) / total
    height = inner_h + 40

    def layout(names: list[str], totals: Counter[str]) -> dict[str, float]:
        tops, y = {}, 20.0
        for name in names:
            tops[name] = y
            y += totals[name] * scale + gap
        return tops

    src_top, dst_top = layout(sources, out_totals), layout(targets, in_totals)
    label_w = _label_width(
        [f"{n} ({_int(out_totals[n])})" for n in sources]
        + [f"{n} ({_int(in_totals[n])})" for n in targets]
    )
    x0, x1 = label_w, width - label_w
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{_e(title)}">',
        f"<title>{_e(title)}</title>",
        f'<text x="{x0}" y="12" text-anchor="middle" class="muted">before</text>',
        f'<text x="{x1}" y="12" text-anchor="middle" class="muted">after</text>',
    ]
    src_off: dict[str, float] = dict(src_top)
    dst_off: dict[str, float] = dict(dst_top)
    ordered_moves = sorted(
        moves,
        key=lambda t: (rank.get(t.source, len(rank)), t.source, rank.get(t.target, len(rank))),
    )
    for t in ordered_moves:
        h = t.count * scale
        ya, yb = src_off[t.source], dst_off[t.target]
        src_off[t.source] += h
        dst_off[t.target] += h
        a, b = x0 + node_w, x1
        mid = (a + b) / 2
        color = _color(t.target, palette, rank.get(t.target, 0))
        path = (
            f"M{a:.1f},{ya:.1f} C{mid:.1f},{ya:.1f} {mid:.1f},{yb:.1f} {b:.1f},{yb:.1f} "
            f"L{b:.1f},{yb + h:.1f} C{mid:.1f},{yb + h:.1f} {mid:.1f},{ya + h:.1f} "
            f"{a:.1f},{ya + h:.1f} Z"
        )
        tip = f"{t.source} → {t.target}: {_int(t.count)}"
        parts.append(
            f'<path d="{path}" fill="{_e(color)}" fill-opacity="0.35" stroke="none">'
            f"<title>{_e(tip)}</title></path>"
        )
    for side, names, tops, totals in (
        ("left", sources, src_top, out_totals),
        ("right", targets, dst_top, in_totals),
    ):
        x = x0 if side == "left" else x1
        for i, name in enumerate(names):
            h = max(1.0, totals[name] * scale)
            y = tops[name]
            parts.append(
                f'<rect x="{x}" y="{y:.1f}" width="{node_w}" height="{h:.1f}" '
                f'fill="{_e(_color(name, palette, i))}"><title>{_e(name)}: '
                f"{_e(_int(totals[name]))}</title></rect>"
            )
            label = f"{name} ({_int(totals[name])})"
            if side == "left":
                parts.append(
                    f'<text x="{x - 6}" y="{y + h / 2 + 4:.1f}" text-anchor="end">'
                    f"{_e(label)}</text>"
                )
            else:
                parts.append(
                    f'<text x="{x + node_w + 6}" y="{y + h / 2 + 4:.1f}">{_e(label)}</text>'
                )
    parts.append("</svg>")
    return "".join(parts)


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[object]], numeric: set[int]) -> str:
    head = "".join(
        f'<th class="n">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{_e(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_tier_stage(report: Report) -> str:
    stages = list(report.stage_counts)
    peak = max((n for row in report.tier_stage.values() for n in row.values()), default=0)
    head = "<th></th>" + "".join(f'<th class="n">{_e(s)}</th>' for s in stages)
    head += '<th class="n">total</th>'
    rows = []
    for tier, by_stage in report.tier_stage.items():
        cells = []
        for s in stages:
            n = by_stage[s]
            style = f' style="background:{_heat(n / peak)}' if peak and n else ""
            if style:
                style += ';color:#fff"' if n / peak > 0.45 else '"'
            cells.append(f'<td class="n"{style}>{_e(_int(n)) if n else "·"}</td>')
        rows.append(
            f"<tr><th>{_e(tier)}</th>{''.join(cells)}"
            f'<td class="n"><b>{_e(_int(sum(by_stage.values())))}</b></td></tr>'
        )
    totals = "".join(
        f'<td class="n"><b>{_e(_int(report.stage_counts[s]))}</b></td>' for s in stages
    )
    rows.append(
        f'<tr><th>total</th>{totals}<td class="n"><b>{_e(_int(report.customers))}</b></td></tr>'
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _html_transitions(moves: Sequence[Transition], limit: int = 20) -> str:
    if not moves:
        return '<p class="muted">No transitions.</p>'
    causes = sorted(
        {c for t in moves for c in t.by_cause},
        key=lambda c: (CAUSE_ORDER.index(c) if c in CAUSE_ORDER else len(CAUSE_ORDER), c),
    )
    rows = [
        [t.source, t.target, _int(t.count), *(_int(t.by_cause.get(c, 0)) for c in causes)]
        for t in moves[:limit]
    ]
    table = _html_table(["from", "to", "total", *causes], rows, set(range(2, 3 + len(causes))))
    if len(moves) > limit:
        rest = sum(t.count for t in moves[limit:])
        table += (
            f'<p class="muted">… and {_e(len(moves) - limit)} more kinds of move '
            f"({_e(_int(rest))} transitions).</p>"
        )
    return table


def render_html(report: Report) -> str:
    """One self-contained HTML page (inline CSS and SVG; no scripts, fonts or links to fetch)."""
    run = _run_summary(report.meta)
    title = "tierstream — segmentation report"
    cards: list[tuple[str, str]] = [
        ("customers", _int(report.customers)),
        ("buyers", _int(report.buyers)),
        (f"net spend ({run.currency})", _money(report.total_monetary)),
        ("tier/stage changes", _int(report.changes)),
        ("campaign triggers", _int(sum(c.triggered for c in report.campaigns))),
        ("churn warnings", _int(report.churn_warnings)),
    ]
    if run.total is not None:
        cards.insert(0, ("events replayed", _int(run.total)))
    if run.rate is not None:
        cards.insert(1, ("events / s", f"{run.rate:,.0f}"))
    sub = []
    if report.as_of:
        sub.append(f"as of {report.as_of}")
    if run.source:
        sub.append(f"source: {run.source}")
    if run.duration_s is not None:
        sub.append(f"replayed in {run.duration_s:,.1f} s")
    sub += [f"{k}: {v}" for k, v in run.extra.items()]

    body: list[str] = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">{_e(" · ".join(sub))}</p>' if sub else "",
        '<div class="cards">'
        + "".join(f'<div class="card"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for k, v in cards)
        + "</div>",
    ]
    if run.per_topic:
        body.append(
            '<p class="muted">Events published: '
            + _e(" · ".join(f"{t} {_int(n)}" for t, n in run.per_topic.items()))
            + "</p>"
        )
    body += [
        '<div class="grid2">',
        '<section class="panel"><h2>Tiers</h2>',
        svg_bar_chart(
            list(report.tier_counts.items()),
            TIER_COLORS,
            title="Customers per tier",
            total=report.customers,
        ),
        "</section>",
        '<section class="panel"><h2>Lifecycle stages</h2>',
        svg_bar_chart(
            list(report.stage_counts.items()),
            STAGE_COLORS,
            title="Customers per lifecycle stage",
            total=report.customers,
        ),
        "</section>",
        "</div>",
        '<section class="panel"><h2>Tier × stage</h2>',
        _html_tier_stage(report),
        "</section>",
        '<div class="grid2">',
        '<section class="panel"><h2>RFM segments</h2>',
        svg_bar_chart(
            [(s.segment, s.count) for s in report.segments],
            SEGMENT_COLORS,
            title="Customers per RFM segment",
            total=report.customers,
        ),
        _html_table(
            [
                "segment",
                "customers",
                "share",
                f"avg spend ({run.currency})",
                f"total spend ({run.currency})",
            ],
            [
                [
                    s.segment,
                    _int(s.count),
                    _pct(s.count, report.customers),
                    _money(s.mean_monetary),
                    _money(s.total_monetary),
                ]
                for s in report.segments
            ],
            {1, 2, 3, 4},
        ),
        "</section>",
        '<section class="panel"><h2>R × F grid</h2>',
        svg_rf_heatmap(report, run.currency)
        if report.rf_grid
        else '<p class="muted">No scored customers.</p>',
        "</section>",
        "</div>",
        '<div class="grid2">',
        '<section class="panel"><h2>Engagement level</h2>',
        svg_bar_chart(
            list(report.engagement_levels.items()),
            {"high": "#2e8b57", "medium": "#e6a23c", "low": "#b0b0b0"},
            title="Customers per engagement level",
            total=report.customers,
        ),
        "</section>",
    ]
    if report.tag_counts:
        body += [
            '<section class="panel"><h2>Tags</h2>',
            svg_bar_chart(
                list(report.tag_counts.items()),
                {},
                title="Customers per tag",
                total=report.customers,
            ),
            "</section>",
        ]
    body.append("</div>")

    causes = " · ".join(f"{c} {_int(n)}" for c, n in report.changes_by_cause.items() if n)
    body += [
        f'<h2>Transitions</h2><p class="muted">{_e(_int(report.changes))} change messages'
        + (f" — by cause: {_e(causes)}" if causes else "")
        + "</p>",
        '<div class="grid2">',
        '<section class="panel"><h2>Tier transitions</h2>',
        svg_flow(report.tier_transitions, TIER_ORDER, TIER_COLORS, title="Tier transitions"),
        _html_transitions(report.tier_transitions),
        "</section>",
        '<section class="panel"><h2>Stage transitions</h2>',
        svg_flow(report.stage_transitions, STAGE_ORDER, STAGE_COLORS, title="Stage transitions"),
        _html_transitions(report.stage_transitions),
        "</section>",
        "</div>",
    ]

    body.append('<section class="panel"><h2>Campaigns</h2>')
    if report.campaigns:
        body += [
            svg_bar_chart(
                [(c.campaign, c.triggered) for c in report.campaigns],
                {},
                title="Campaign triggers per campaign",
            ),
            _html_table(
                [
                    "campaign",
                    "channel",
                    "triggered",
                    "sent",
                    "held out",
                    "holdout %",
                    "capped",
                    "suppressed",
                    "other skips",
                ],
                [
                    [
                        c.campaign,
                        ", ".join(c.channels) or "–",
                        _int(c.triggered),
                        _int(c.treatment),
                        _int(c.holdout),
                        _pct(c.holdout, c.triggered),
                        _int(c.capped),
                        _int(c.suppressed),
                        ", ".join(f"{k} {_int(v)}" for k, v in c.other_skips.items()) or "0",
                    ]
                    for c in report.campaigns
                ],
                {2, 3, 4, 5, 6, 7},
            ),
        ]
    else:
        body.append('<p class="muted">No campaign triggers.</p>')
    body.append("</section>")

    body.append(
        f'<section class="panel"><h2>Churn warnings</h2><p>{_e(_int(report.churn_warnings))} '
        "warnings</p>"
    )
    if report.churn_warnings:
        sev = report.churn_by_severity
        body += [
            svg_bar_chart(
                list(sev.items()),
                {
                    "critical": "#8c2d2d",
                    "high": "#c0392b",
                    "warning": "#f0900c",
                    "medium": "#e6a23c",
                    "low": "#d4b106",
                    "info": "#7a9cc6",
                },
                title="Churn warnings by severity",
                total=report.churn_warnings,
            ),
            _html_table(
                ["tier", "warnings"],
                [[t, _int(n)] for t, n in report.churn_by_tier.items() if n],
                {1},
            ),
        ]
    body.append("</section>")

    if report.top_customers:
        body += [
            f'<section class="panel"><h2>Top {len(report.top_customers)} customers by spend</h2>',
            _html_table(
                [
                    "customer",
                    "tier",
                    "stage",
                    "segment",
                    f"spend ({run.currency})",
                    "orders",
                    "days since last order",
                    "P(alive)",
                ],
                [
                    [
                        c.customer_id,
                        c.tier,
                        c.stage,
                        c.segment,
                        _money(c.monetary),
                        _int(c.frequency),
                        "–" if c.recency_days is None else f"{c.recency_days:,.0f}",
                        "–" if c.p_alive is None else f"{c.p_alive:.2f}",
                    ]
                    for c in report.top_customers
                ],
                {4, 5, 6, 7},
            ),
            "</section>",
        ]

    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )
