"""Population models refreshed on a schedule from the worker's table: the BG/NBD parameters.

Each worker fits on the customers of its own partitions (a hash sample of the population), off
the event loop, and swaps the versioned parameters in; evaluations from then on use them, and
the profile's explanation names the version. Before there is enough data the fit returns the
defaults (`segmentation.bgnbd.DEFAULT_PARAMS`)."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

import numpy as np
import orjson

from segmentation.bgnbd import BgNbdParams, fit
from segmentation.evaluate import btyd_stats
from segmentation.quantiles import (
    CutPoints,
    QuantileSketch,
    cut_points_from_sketches,
    merge_sketches,
)
from segmentation.state import NO_TIME, CustomerState
from segmentation.timeutil import DAY_MS
from streams.app import Runtime
from streams.partitioning import partition_for

MIN_QUANTILE_POPULATION = 100

log = logging.getLogger("tierstream.models")


def population_btyd(runtime: Runtime) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, t_x, T) in days of every local customer with a purchase, all observed to the same end:
    the latest as-of time in the table (event time, so a replay fits what live traffic would).

    A customer's own as-of is their last evaluation, which for one not re-evaluated since their
    last purchase is that purchase: measured there, T equalled t_x for every such customer, the
    fit saw nobody drop out (a -> 0, refused as unidentified) and kept the defaults (CDNOW: all
    23,570 customers had T = t_x)."""
    purchases: list[list[int]] = []
    end_ms = NO_TIME
    for key, raw in list(runtime.customers.items()):
        if raw is None or key.startswith(b"\x00"):
            continue
        state = CustomerState.from_dict(orjson.loads(raw))
        end_ms = max(end_ms, state.as_of_ms)
        purchases.append(state.purchase_times())
    # The end is known only after the whole table: a second pass over what the first kept.
    stats = [s for times in purchases if (s := btyd_stats(times, end_ms)) is not None]
    columns = zip(*stats, strict=True) if stats else ((), (), ())
    x, t_x, big_t = (np.array(column, float) for column in columns)
    return x, t_x, big_t


def refit_params(runtime: Runtime, version: str) -> BgNbdParams:
    x, t_x, big_t = population_btyd(runtime)
    return fit(x, t_x, big_t, version=version, previous=runtime.params)


def register_model_refits(runtime: Runtime) -> None:
    interval = runtime.settings.refit_seconds
    if interval <= 0:
        return

    @runtime.app.timer(interval=interval)
    async def refit() -> None:
        started = time.monotonic()
        stamp = datetime.now(tz=UTC).strftime("%Y%m%dT%H%M%SZ")
        params = await asyncio.to_thread(refit_params, runtime, f"fit-{stamp}")
        runtime.params = params
        runtime.metrics.model_info.clear()
        runtime.metrics.model_info.labels(params_version=params.version).set(params.fitted_on)
        log.info(
            "BG/NBD parameters %s (r=%.4f alpha=%.4f a=%.4f b=%.4f, %d customers) in %.1fs",
            params.version,
            params.r,
            params.alpha,
            params.a,
            params.b,
            params.fitted_on,
            time.monotonic() - started,
        )


def local_cutpoints(runtime: Runtime, version: str, now_ms: int) -> CutPoints | None:
    """Quintile cut points of this worker's customers: a sketch per partition of each current
    value (recency in days at the customer's as-of, orders, net spend), merged. None while fewer
    than MIN_QUANTILE_POPULATION customers have bought (fixed thresholds hold meanwhile)."""
    per_partition: dict[int, tuple[QuantileSketch, QuantileSketch, QuantileSketch]] = {}
    for key, raw in list(runtime.customers.items()):
        if raw is None or key.startswith(b"\x00"):
            continue
        state = CustomerState.from_dict(orjson.loads(raw))
        times = state.purchase_times()
        if not times:
            continue
        partition = partition_for(key, runtime.settings.partitions)
        sketches = per_partition.setdefault(
            partition, (QuantileSketch(), QuantileSketch(), QuantileSketch())
        )
        sketches[0].update((state.as_of_ms - times[-1]) // DAY_MS)
        sketches[1].update(len(times))
        sketches[2].update(state.monetary_cents() / 100)
    if sum(s[0].n for s in per_partition.values()) < MIN_QUANTILE_POPULATION:
        return None
    merged = [merge_sketches(s[i].to_bytes() for s in per_partition.values()) for i in range(3)]
    return cut_points_from_sketches(merged[0], merged[1], merged[2], version, now_ms)


def register_cutpoint_refresh(runtime: Runtime) -> None:
    """With scoring.method = "quantile": new cut points on a schedule; when they move, every
    customer is re-scored (with hysteresis) and the moves are published (cause=rules_change,
    rules_version "<rules>+cut-<time>")."""
    if runtime.rules.scoring.method != "quantile":
        return

    @runtime.app.timer(interval=runtime.settings.cutpoints_seconds)
    async def refresh_cutpoints() -> None:
        stamp = datetime.now(tz=UTC).strftime("%Y%m%dT%H%M%SZ")
        cuts = await asyncio.to_thread(local_cutpoints, runtime, f"cut-{stamp}", runtime.now_ms())
        current = runtime.rules.cutpoints
        if cuts is None or (
            current is not None
            and (cuts.recency, cuts.frequency, cuts.monetary)
            == (current.recency, current.frequency, current.monetary)
        ):
            return
        runtime.rules = runtime.rules.with_cutpoints(cuts)
        runtime.metrics.rules_info.clear()
        runtime.metrics.rules_info.labels(rules_version=runtime.rules.version).set(1)
        # Re-score everyone: the agent works through these a chunk per record it handles.
        for partition in list(runtime.due_partitions()):
            runtime.retier[partition] = [
                key.decode()
                for key in list(runtime.customers.keys())
                if not key.startswith(b"\x00")
                and partition_for(key, runtime.settings.partitions) == partition
            ]
        log.info(
            "RFM cut points %s from %d customers: R %s F %s M %s",
            cuts.version,
            cuts.population,
            cuts.recency,
            cuts.frequency,
            cuts.monetary,
        )
