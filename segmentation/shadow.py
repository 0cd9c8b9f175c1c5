"""Shadow evaluation of a new rules file: who would move from what to what, published nowhere.

An operator runs new rules beside the live ones first; this compares, for every customer at
their own as-of time, the tier and stage under both, and summarises the moves with examples.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from segmentation.bgnbd import BgNbdParams
from segmentation.evaluate import evaluate
from segmentation.rules import Rules
from segmentation.state import CustomerState

EXAMPLES_PER_MOVE = 5


def shadow_diff(
    states: Iterable[CustomerState], current: Rules, shadow: Rules, params: BgNbdParams
) -> dict[str, Any]:
    tier_moves: Counter[str] = Counter()
    stage_moves: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    customers = 0
    for state in states:
        customers += 1
        now = state.as_of_ms
        live = evaluate(state, current, params, now)
        new = evaluate(state, shadow, params, now)
        if live.tier != new.tier:
            move = f"{live.tier}->{new.tier}"
            tier_moves[move] += 1
            bucket = examples.setdefault(move, [])
            if len(bucket) < EXAMPLES_PER_MOVE:
                bucket.append(state.customer_id)
        if live.stage.stage != new.stage.stage:
            stage_moves[f"{live.stage.stage}->{new.stage.stage}"] += 1
    return {
        "rules_version": current.version,
        "shadow_rules_version": shadow.version,
        "customers": customers,
        "would_move": sum(tier_moves.values()),
        "tier_moves": dict(tier_moves.most_common()),
        "stage_moves": dict(stage_moves.most_common()),
        "examples": examples,
    }
