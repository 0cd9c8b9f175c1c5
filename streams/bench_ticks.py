"""`tierstream bench-ticks`: the cost of one clock tick against the number of customers held.

Each tick re-evaluates the customers whose boundary passed, through the same code as the agent
(`segmentation.dueindex.due_states` + `segmentation.step.reevaluate`, state decoded from and
encoded to bytes as in the table). The claim measured: the work per tick grows with the due
customers, not with all customers (a heap pop is O(log n)), so 1M customers with 100 due cost
about what 10k customers with 100 due cost."""

from __future__ import annotations

import gc
import platform
import statistics
import time
from typing import Any

from segmentation.bgnbd import DEFAULT_PARAMS
from segmentation.dueindex import DueIndex, due_states
from segmentation.rules import default_rules
from segmentation.state import CustomerState, Order
from segmentation.step import reevaluate
from segmentation.timeutil import DAY_MS

T0 = 1_700_000_000_000
FAR_FUTURE = T0 + 10_000 * DAY_MS


def _state(customer_id: str, bought_ms: int) -> CustomerState:
    state = CustomerState(customer_id=customer_id)
    state.orders = {"o1": Order(bought_ms - 30 * DAY_MS, 5000), "o2": Order(bought_ms, 7000)}
    state.as_of_ms = bought_ms
    return state


def measure(customers: int, due: int, ticks: int = 15) -> dict[str, float]:
    """Seconds per tick (median over `ticks`) with `customers` held, `due` of them due."""
    rules, params = default_rules(), DEFAULT_PARAMS
    index = DueIndex()
    # Customers not due share one encoded state: the table's size is what matters, not content.
    idle = _state("idle", T0).to_bytes()
    table: dict[str, bytes] = {f"c{i}": idle for i in range(customers - due)}
    index.build(0, ((FAR_FUTURE + i, f"c{i}") for i in range(customers - due)))
    timings = []
    for tick in range(ticks):
        at_ms = T0 + (tick + 1) * DAY_MS
        for j in range(due):
            cid = f"due{tick}-{j}"
            state = _state(cid, at_ms - 95 * DAY_MS)
            state.next_due_ms = at_ms - 1
            table[cid] = state.to_bytes()
            index.push(0, at_ms - 1, cid)
        gc.collect()
        started = time.perf_counter()
        done = 0
        for due_ms, state in due_states(
            index,
            0,
            at_ms,
            lambda cid: CustomerState.from_bytes(table[cid]) if cid in table else None,
            lambda s: s.next_due_ms,
        ):
            result = reevaluate(state, rules, params, due_ms, "time")
            table[state.customer_id] = state.to_bytes()
            if state.next_due_ms is not None and state.next_due_ms <= at_ms:
                index.push(0, state.next_due_ms, state.customer_id)
            done += len(result.changes) >= 0
        timings.append(time.perf_counter() - started)
        assert done >= due, f"only {done} of {due} due customers were re-evaluated"
        for j in range(due):
            table.pop(f"due{tick}-{j}", None)
    return {
        "customers": customers,
        "due": due,
        "median_tick_s": statistics.median(timings),
        "p90_tick_s": sorted(timings)[int(0.9 * (len(timings) - 1))],
    }


def run_tick_bench(large: int = 1_000_000, small: int = 10_000, due: int = 100) -> dict[str, Any]:
    small_run = measure(small, due)
    large_run = measure(large, due)
    ratio = large_run["median_tick_s"] / small_run["median_tick_s"]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "small": small_run,
        "large": large_run,
        "large_over_small": ratio,
    }
    print(f"{'customers':>10} {'due':>5} {'median tick':>12} {'p90 tick':>10}")
    for run in (small_run, large_run):
        print(
            f"{run['customers']:>10,} {run['due']:>5} {run['median_tick_s'] * 1000:>10.2f}ms"
            f" {run['p90_tick_s'] * 1000:>8.2f}ms"
        )
    print(f"per-tick cost, {large:,} vs {small:,} customers with {due} due: x{ratio:.2f}")
    return result
