"""The scheduled BG/NBD refit reads (x, t_x, T) from the worker's table, every customer observed to
the latest as-of in it, and fits by maximum likelihood, versioned; with too little data it keeps
the defaults."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from segmentation.bgnbd import DEFAULT_PARAMS
from segmentation.events import parse_event
from segmentation.rules import default_rules
from segmentation.state import CustomerState, Order
from segmentation.step import apply_event
from segmentation.timeutil import DAY_MS
from streams import datasets
from streams.models import population_btyd, refit_params

NOW_MS = 1_795_000_000_000


def table_of(purchases: list[dict[str, Any]]) -> dict[bytes, bytes]:
    import orjson

    rules = default_rules()
    states: dict[str, CustomerState] = {}
    for doc in purchases:
        event = parse_event("purchases", orjson.dumps(doc), now_ms=NOW_MS)
        states[event.customer_id] = apply_event(
            states.get(event.customer_id), event, rules, DEFAULT_PARAMS
        ).state  # type: ignore[assignment]
    table = {cid.encode(): s.to_bytes() for cid, s in states.items()}
    table[b"\x00clock:0"] = b"1"  # reserved keys are skipped
    return table


@pytest.fixture(scope="module")
def cdnow_table() -> dict[bytes, bytes]:
    return table_of(datasets.time_ordered(datasets.cdnow_purchases()))


def test_refit_on_the_cdnow_table(cdnow_table: dict[bytes, bytes]) -> None:
    runtime = SimpleNamespace(customers=cdnow_table, params=DEFAULT_PARAMS)
    x, t_x, big_t = population_btyd(runtime)  # type: ignore[arg-type]
    assert len(x) == 23_570
    assert (x >= 0).all() and (t_x <= big_t).all()
    params = refit_params(runtime, "fit-test")  # type: ignore[arg-type]
    assert params.version == "fit-test" and params.fitted_on == 23_570
    assert params.time_unit_days == 1.0
    # A real fit of this population, not the defaults handed back.
    assert (params.r, params.alpha, params.a, params.b) != (
        DEFAULT_PARAMS.r,
        DEFAULT_PARAMS.alpha,
        DEFAULT_PARAMS.a,
        DEFAULT_PARAMS.b,
    )
    assert all(v > 0 for v in (params.r, params.alpha, params.a, params.b))
    # Every customer is observed to the end of the data (June 1998), so many show a gap.
    assert (big_t > t_x).mean() > 0.9
    fitted = f"r={params.r:.3f} alpha={params.alpha:.2f} a={params.a:.3f} b={params.b:.3f}"
    print(f"CDNOW BG/NBD (days): {fitted}")


def test_too_little_data_keeps_the_defaults(cdnow_table: dict[bytes, bytes]) -> None:
    few = dict(list(cdnow_table.items())[:100])
    runtime = SimpleNamespace(customers=few, params=DEFAULT_PARAMS)
    assert refit_params(runtime, "fit-small") == DEFAULT_PARAMS  # type: ignore[arg-type]


def test_every_customer_is_observed_to_the_latest_as_of_in_the_table() -> None:
    """A customer not re-evaluated since their last purchase has that purchase as their own
    as-of. Measured there, T equals t_x and the fit sees nobody drop out (on CDNOW it refused
    the result and kept the defaults): T runs to the latest as-of of the table."""
    day0 = 10_000 * DAY_MS
    old = CustomerState(customer_id="old")
    old.orders = {"a": Order(day0, 1000), "b": Order(day0 + 10 * DAY_MS, 1000)}
    old.as_of_ms = day0 + 10 * DAY_MS
    recent = CustomerState(customer_id="recent")
    recent.orders = {"c": Order(day0 + 95 * DAY_MS, 500)}
    recent.as_of_ms = day0 + 100 * DAY_MS
    table = {b"old": old.to_bytes(), b"recent": recent.to_bytes(), b"\x00clock:0": b"1"}
    runtime = SimpleNamespace(customers=table, params=DEFAULT_PARAMS)
    x, t_x, big_t = population_btyd(runtime)  # type: ignore[arg-type]
    rows = sorted(zip(x.tolist(), t_x.tolist(), big_t.tolist(), strict=True))
    assert rows == [(0.0, 0.0, 5.0), (1.0, 10.0, 100.0)]
