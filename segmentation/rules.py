"""The operator's rules file: RFM thresholds, engagement weights, lifecycle thresholds and the
ordered tier and tag rules, with the explanation of every decision.

A rule is an ordered list of conditions `<feature>_<op> = value`; all must hold; the first tier
rule that holds wins. Evaluation keeps every condition's inputs so "why is this customer VIP?"
(and "why not?") has a precise answer.
"""

from __future__ import annotations

import hashlib
import operator
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Final, TypeVar

import yaml

from segmentation.errors import RulesError
from segmentation.quantiles import CutPoints

OPS: Final = ("not_in", "lt", "le", "gt", "ge", "eq", "ne", "in")
TIERS: Final = ("vip", "active", "potential", "ordinary")
FEATURES: Final = frozenset(
    {
        "recency_days",
        "frequency",
        "monetary",
        "r",
        "f",
        "m",
        "segment",
        "engagement_score",
        "engagement_level",
        "email_score",
        "wechat_score",
        "wechat_following",
        "p_alive",
        "stage",
        "x",
        "t_x",
        "T",
        "days_since_first_purchase",
    }
)


def _contains(actual: Any, value: Any) -> bool:
    return actual in value


def _not_contains(actual: Any, value: Any) -> bool:
    return actual not in value


# The comparison of each operator, looked up once per condition rather than on every test: the
# rules run several times per event (tiers, tags, for every re-evaluation).
_TESTS: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
    "eq": operator.eq,
    "ne": operator.ne,
    "in": _contains,
    "not_in": _not_contains,
}


def _never(actual: Any, value: Any) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class Condition:
    feature: str
    op: str
    value: Any
    key: str = field(init=False, repr=False, compare=False)
    _test: Callable[[Any, Any], Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.feature}_{self.op}")
        object.__setattr__(self, "_test", _TESTS.get(self.op, _never))

    def holds(self, actual: Any) -> bool:
        if actual is None:
            return False
        try:
            return bool(self._test(actual, self.value))
        except TypeError:
            return False


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    description: str
    conditions: tuple[Condition, ...]

    def evaluate(self, features: Mapping[str, Any]) -> tuple[bool, list[dict[str, Any]]]:
        trace = []
        ok = True
        for cond in self.conditions:
            actual = features.get(cond.feature)
            holds = cond.holds(actual)
            ok = ok and holds
            trace.append(
                {"condition": cond.key, "threshold": cond.value, "value": actual, "ok": holds}
            )
        return ok, trace

    def matches(self, features: Mapping[str, Any]) -> bool:
        """`evaluate(features)[0]` without the trace, stopping at the first condition that fails."""
        return all(cond.holds(features.get(cond.feature)) for cond in self.conditions)


def _tier_label(index: int, rule: Rule) -> str:
    """How a tier rule is named in explanations and tier changes: "tiers[i]:name"."""
    return f"tiers[{index}]:{rule.name}"


@dataclass(frozen=True, slots=True)
class Scoring:
    method: str
    recency_days: tuple[float, ...]
    frequency: tuple[float, ...]
    monetary: tuple[float, ...]
    hysteresis: float = 0.05


@dataclass(frozen=True, slots=True)
class Engagement:
    half_life_days: float
    high: float
    medium: float
    weights: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class Lifecycle:
    at_risk_after_days: float
    churned_after_days: float
    at_risk_gap_multiple: float | None = None
    churned_gap_multiple: float | None = None


@dataclass(frozen=True, slots=True)
class Churn:
    p_alive_below: float
    gap_multiple: float


@dataclass(frozen=True, slots=True)
class Rules:
    version: str
    scoring: Scoring
    engagement: Engagement
    lifecycle: Lifecycle
    churn: Churn
    tiers: tuple[Rule, ...]
    tags: tuple[Rule, ...]
    campaigns: Mapping[str, Any] = field(default_factory=dict)
    # Population quintile cut points in force when scoring.method = "quantile" (None until
    # enough customers are known: fixed thresholds meanwhile). Part of the version.
    cutpoints: CutPoints | None = None

    def with_cutpoints(self, cutpoints: CutPoints) -> Rules:
        base = self.version.split("+cut-")[0]
        return replace(self, version=f"{base}+{cutpoints.version}", cutpoints=cutpoints)

    def tier_for(self, features: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """The first tier rule that holds, with why it holds and why the ones before it did not."""
        rejected: list[dict[str, Any]] = []
        for index, rule in enumerate(self.tiers):
            ok, trace = rule.evaluate(features)
            if ok:
                return rule.name, {
                    "rule": _tier_label(index, rule),
                    "description": rule.description,
                    "conditions": trace,
                    "not_matched": rejected,
                }
            rejected.append(
                {
                    "rule": _tier_label(index, rule),
                    "failed": [c for c in trace if not c["ok"]],
                }
            )
        # Unreachable with a validated rules file (the last rule must always hold).
        return TIERS[-1], {"rule": "fallback", "conditions": [], "not_matched": rejected}

    def tier_rule(self, features: Mapping[str, Any]) -> tuple[str, str]:
        """`tier_for`'s tier and rule label without the explanation: the first tier rule that
        holds, each tested only until a condition fails (every evaluation needs the tier, a
        profile or a change message also the why)."""
        for index, rule in enumerate(self.tiers):
            if rule.matches(features):
                return rule.name, _tier_label(index, rule)
        return TIERS[-1], "fallback"

    @property
    def tier_names(self) -> tuple[str, ...]:
        """The tiers these rules can assign, in rule order (the defaults first, so a read model
        that once held them still clears them)."""
        return tuple(dict.fromkeys((*TIERS, *(rule.name for rule in self.tiers))))

    def tags_for(self, features: Mapping[str, Any]) -> list[str]:
        return [rule.name for rule in self.tags if rule.matches(features)]


def _number(
    section: Mapping[str, Any], key: str, where: str, default: float | None = None
) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RulesError(f"{where}.{key} must be a number, got {value!r}")
    return float(value)


def _thresholds(section: Mapping[str, Any], key: str, default: list[float]) -> tuple[float, ...]:
    value = section.get(key, default)
    if (
        not isinstance(value, list)
        or len(value) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        or sorted(value) != list(value)
    ):
        raise RulesError(f"scoring.{key} must be 4 ascending numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _condition(key: str, value: Any, where: str) -> Condition:
    for op in OPS:
        suffix = f"_{op}"
        if key.endswith(suffix):
            feature = key[: -len(suffix)]
            break
    else:
        raise RulesError(f"{where}: condition '{key}' must end in one of _{', _'.join(OPS)}")
    if feature not in FEATURES:
        raise RulesError(f"{where}: unknown feature '{feature}' in '{key}'")
    if op in ("in", "not_in"):
        if not isinstance(value, list):
            raise RulesError(f"{where}: '{key}' needs a list")
        value = tuple(value)
    _check_value_type(feature, op, key, value, where)
    return Condition(feature, op, value)


def _rules(raw: Any, where: str) -> tuple[Rule, ...]:
    if not isinstance(raw, list):
        raise RulesError(f"{where} must be a list of tables")
    out = []
    for index, item in enumerate(raw):
        here = f"{where}[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise RulesError(f"{here} needs a string 'name'")
        when = item.get("when", {})
        if not isinstance(when, dict):
            raise RulesError(f"{here}.when must be a table")
        conditions = tuple(_condition(k, v, here) for k, v in when.items())
        out.append(Rule(item["name"], str(item.get("description", "")), conditions))
    return tuple(out)


def _table(doc: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise RulesError(f"{where}{key} must be a table, got {value!r}")
    return value


NUMERIC_FEATURES: Final = FEATURES - {"segment", "engagement_level", "stage", "wechat_following"}


def _check_value_type(feature: str, op: str, key: str, value: Any, where: str) -> None:
    kind = (
        "number"
        if feature in NUMERIC_FEATURES
        else "boolean"
        if feature == "wechat_following"
        else "string"
    )
    if op in ("lt", "le", "gt", "ge") and kind != "number":
        raise RulesError(f"{where}: '{key}' compares a {kind} feature by order")
    items = value if op in ("in", "not_in") else (value,)
    ok = {
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "string": lambda v: isinstance(v, str),
    }[kind]
    if not all(ok(v) for v in items):
        raise RulesError(f"{where}: '{key}' needs {kind} values, got {value!r}")


def parse_rules(doc: Mapping[str, Any], *, fallback_version: str) -> Rules:
    """Validate a parsed rules document; RulesError names the bad key."""
    scoring_raw = _table(doc, "scoring", "")
    method = scoring_raw.get("method", "fixed")
    if method not in ("fixed", "quantile"):
        raise RulesError(f"scoring.method must be 'fixed' or 'quantile', got {method!r}")
    scoring = Scoring(
        method=method,
        recency_days=_thresholds(scoring_raw, "recency_days", [30, 90, 180, 365]),
        frequency=_thresholds(scoring_raw, "frequency", [2, 3, 5, 10]),
        monetary=_thresholds(scoring_raw, "monetary", [25, 60, 150, 500]),
        hysteresis=_number(scoring_raw, "hysteresis", "scoring", 0.05),
    )
    eng_raw = _table(doc, "engagement", "")
    weights_raw = _table(eng_raw, "weights", "engagement.")
    weights = {k: _number(weights_raw, k, "engagement.weights") for k in weights_raw}
    engagement = Engagement(
        half_life_days=_number(eng_raw, "half_life_days", "engagement", 30),
        high=_number(eng_raw, "high", "engagement", 10),
        medium=_number(eng_raw, "medium", "engagement", 3),
        weights=weights,
    )
    if engagement.half_life_days <= 0:
        raise RulesError("engagement.half_life_days must be positive")
    if engagement.medium > engagement.high:
        raise RulesError("engagement.medium must not exceed engagement.high")
    life_raw = _table(doc, "lifecycle", "")
    lifecycle = Lifecycle(
        at_risk_after_days=_number(life_raw, "at_risk_after_days", "lifecycle", 90),
        churned_after_days=_number(life_raw, "churned_after_days", "lifecycle", 180),
        at_risk_gap_multiple=(
            _number(life_raw, "at_risk_gap_multiple", "lifecycle")
            if "at_risk_gap_multiple" in life_raw
            else None
        ),
        churned_gap_multiple=(
            _number(life_raw, "churned_gap_multiple", "lifecycle")
            if "churned_gap_multiple" in life_raw
            else None
        ),
    )
    if not 0 < lifecycle.at_risk_after_days < lifecycle.churned_after_days:
        raise RulesError(
            "lifecycle.at_risk_after_days must be positive and below churned_after_days"
        )
    churn_raw = _table(doc, "churn", "")
    churn = Churn(
        p_alive_below=_number(churn_raw, "p_alive_below", "churn", 0.3),
        gap_multiple=_number(churn_raw, "gap_multiple", "churn", 3.0),
    )
    tiers = _rules(doc.get("tiers", []), "tiers")
    if not tiers:
        raise RulesError("tiers must list at least one rule")
    if tiers[-1].conditions:
        raise RulesError(f"tiers: the last rule ('{tiers[-1].name}') must have an empty 'when'")
    version = doc.get("rules_version", fallback_version)
    if not isinstance(version, str) or not version:
        raise RulesError("rules_version must be a non-empty string")
    campaigns = doc.get("campaigns", {})
    if not isinstance(campaigns, dict):
        raise RulesError("campaigns must be a table")
    return Rules(
        version=version,
        scoring=scoring,
        engagement=engagement,
        lifecycle=lifecycle,
        churn=churn,
        tiers=tiers,
        tags=_rules(doc.get("tags", []), "tags"),
        campaigns=campaigns,
    )


def parse_rules_text(text: str, *, fmt: str) -> Rules:
    """Rules from TOML or YAML text; without a `rules_version` the content hash versions it."""
    try:
        doc = tomllib.loads(text) if fmt == "toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise RulesError(f"rules file is not valid {fmt.upper()}: {exc}") from None
    if not isinstance(doc, dict):
        raise RulesError("rules file must be a table/mapping at the top level")
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return parse_rules(doc, fallback_version=f"sha256-{digest}")


def load_rules(path: Path | None = None) -> Rules:
    """The rules at `path`, or the shipped defaults."""
    if path is None:
        text = resources.files("segmentation").joinpath("default_rules.toml").read_text()
        return parse_rules_text(text, fmt="toml")
    fmt = "yaml" if path.suffix.lower() in (".yaml", ".yml") else "toml"
    return parse_rules_text(path.read_text(encoding="utf-8"), fmt=fmt)


def default_rules() -> Rules:
    return load_rules(None)


_T = TypeVar("_T")
# id(rules) -> (rules, name -> value); the rules object is kept so an id is never reused.
_DERIVED: dict[int, tuple[Rules, dict[str, Any]]] = {}


def derived(rules: Rules, name: str, compute: Callable[[], _T]) -> _T:
    """`compute()`, cached per rules object and name: what follows from the rules alone (the
    boundaries a condition can flip at, the explanation of the scoring) is needed for every
    evaluation, and rules change only on a reload or a cut-point refresh (a new object)."""
    cached = _DERIVED.get(id(rules))
    if cached is None or cached[0] is not rules:
        if len(_DERIVED) >= 16:
            _DERIVED.clear()
        cached = _DERIVED[id(rules)] = (rules, {})
    found = cached[1]
    if name not in found:
        found[name] = compute()
    value: _T = found[name]
    return value
