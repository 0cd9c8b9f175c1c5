"""Readable terminal renderings of a profile and of the tier counts (the operator CLI)."""

from __future__ import annotations

from typing import Any


def _table(rows: list[tuple[str, str]]) -> str:
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.3f}"
    return str(value)


def render_profile(p: dict[str, Any]) -> str:
    rfm, btyd, eng = p.get("rfm", {}), p.get("btyd", {}), p.get("engagement", {})
    exp = p.get("explanation", {})
    lines = [
        f"customer {p['customer_id']}: tier {p['tier'].upper()}, stage {p['stage']}"
        + (f"  [{', '.join(p.get('tags') or [])}]" if p.get("tags") else ""),
        "",
        _table(
            [
                ("recency (days)", _fmt(rfm.get("recency_days"))),
                ("frequency (orders)", _fmt(rfm.get("frequency"))),
                ("monetary", _fmt(rfm.get("monetary"))),
                (
                    "R / F / M",
                    f"{_fmt(rfm.get('r'))} / {_fmt(rfm.get('f'))} / {_fmt(rfm.get('m'))}",
                ),
                ("RFM segment", _fmt(rfm.get("segment"))),
                (
                    "x, t_x, T (days)",
                    f"{_fmt(btyd.get('x'))}, {_fmt(btyd.get('t_x'))}, {_fmt(btyd.get('T'))}",
                ),
                ("P(alive)", _fmt(p.get("p_alive"))),
                ("engagement", f"{_fmt(eng.get('score'))} ({eng.get('level', '-')})"),
                ("first purchase", _fmt(p.get("first_purchase_at"))),
                ("last purchase", _fmt(p.get("last_purchase_at"))),
                ("as of", _fmt(p.get("as_of"))),
                ("rules version", _fmt(p.get("rules_version"))),
            ]
        ),
    ]
    tier = exp.get("tier", {})
    if tier:
        lines += ["", f"why {p['tier']}: rule {tier.get('rule')} — {tier.get('description', '')}"]
        for cond in tier.get("conditions", []):
            mark = "✓" if cond["ok"] else "✗"
            lines.append(
                f"  {mark} {cond['condition']} {cond['threshold']!r} (is {cond['value']!r})"
            )
        for miss in tier.get("not_matched", []):
            failed = ", ".join(
                f"{c['condition']} {c['threshold']!r} (is {c['value']!r})" for c in miss["failed"]
            )
            lines.append(f"  not {miss['rule']}: {failed}")
    stage = exp.get("stage", {})
    if stage:
        lines += ["", f"why {p['stage']}: {stage.get('reason')}"]
        if stage.get("next_boundary_at"):
            lines.append(f"  next stage boundary at {stage['next_boundary_at']}")
    return "\n".join(lines)


def _counts_table(title: str, counts: dict[str, int]) -> list[str]:
    total = sum(counts.values())
    rows = [(title, "customers", "share")]
    rows += [(name, f"{n:,}", f"{n / total:.1%}" if total else "-") for name, n in counts.items()]
    rows.append(("total", f"{total:,}", "100.0%" if total else "-"))
    name_w = max(len(r[0]) for r in rows)
    count_w = max(len(r[1]) for r in rows)
    share_w = max(len(r[2]) for r in rows)
    lines = [f"  {a.ljust(name_w)}  {b.rjust(count_w)}  {c.rjust(share_w)}" for a, b, c in rows]
    rule = f"  {'-' * name_w}  {'-' * count_w}  {'-' * share_w}"
    return [lines[0], rule, *lines[1:-1], rule, lines[-1]]


def render_tiers(body: dict[str, Any]) -> str:
    """Customers per tier and per lifecycle stage, with shares and totals (every customer has
    one tier and one stage, so both totals are the number of customers in the read model)."""
    tiers: dict[str, int] = body.get("tiers") or {}
    stages: dict[str, int] = body.get("stages") or {}
    lines = [f"rules {body.get('rules_version', '-')}", ""]
    lines += _counts_table("tier", tiers)
    lines.append("")
    lines += _counts_table("stage", stages)
    return "\n".join(lines)
