"""Tests for segmentation.rules: loading, validation errors that name the key, first-match tiers,
explanations, tags and content-hash versions."""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segmentation.errors import RulesError
from segmentation.rules import (
    FEATURES,
    OPS,
    Condition,
    Rules,
    default_rules,
    load_rules,
    parse_rules_text,
)

MINIMAL = """\
rules_version = "t-1"

[[tiers]]
name = "vip"
when = { monetary_gt = 1000, frequency_gt = 5 }

[[tiers]]
name = "ordinary"
when = {}
"""

DEFAULT_RULES_YAML = """\
rules_version: default-2026.11
scoring:
  method: fixed
  recency_days: [30, 90, 180, 365]
  frequency: [2, 3, 5, 10]
  monetary: [25, 60, 150, 500]
engagement:
  half_life_days: 30
  high: 10.0
  medium: 3.0
  weights:
    email_open: 1.0
    email_click: 3.0
    message_reply: 3.0
    moments_like: 1.0
    moments_comment: 2.0
    miniprogram_visit: 2.0
    activity_join: 4.0
    follow: 2.0
    unfollow: 0.0
lifecycle:
  at_risk_after_days: 90
  churned_after_days: 180
tiers:
  - name: vip
    description: spent over 1000, more than 5 orders, bought in the last 180 days
    when: {monetary_gt: 1000, frequency_gt: 5, recency_days_le: 180}
  - name: active
    description: repeat buyer who bought in the last 90 days
    when: {frequency_ge: 2, recency_days_le: 90}
  - name: potential
    description: bought recently or is engaged, but is not (yet) a regular
    when:
      stage_in: [new, reactivated, prospect, active]
      engagement_level_in: [medium, high]
  - name: potential
    description: first purchase in the last 90 days
    when: {stage_eq: new, recency_days_le: 90}
  - name: ordinary
    description: everyone else
    when: {}
tags:
  - name: big_spender
    description: net spend of 500 or more
    when: {monetary_ge: 500}
  - name: email_engaged
    description: email engagement score of 3 or more
    when: {email_score_ge: 3.0}
  - name: wechat_fan
    description: follows the WeChat account and interacts
    when: {wechat_following_eq: true, wechat_score_ge: 3.0}
churn:
  p_alive_below: 0.3
  gap_multiple: 3.0
"""


def features(**overrides: Any) -> dict[str, Any]:
    """The features of a buyer, as evaluate() builds them; override what a test needs."""
    base: dict[str, Any] = {
        "recency_days": 10,
        "frequency": 6,
        "monetary": 1500.0,
        "r": 5,
        "f": 4,
        "m": 5,
        "segment": "champions",
        "engagement_score": 0.0,
        "engagement_level": "low",
        "email_score": 0.0,
        "wechat_score": 0.0,
        "wechat_following": False,
        "p_alive": 0.9,
        "stage": "active",
        "x": 5,
        "t_x": 100,
        "T": 110,
        "days_since_first_purchase": 110,
    }
    base.update(overrides)
    return base


def prospect_features(**overrides: Any) -> dict[str, Any]:
    return features(
        recency_days=None,
        frequency=0,
        monetary=0.0,
        r=None,
        f=None,
        m=None,
        segment=None,
        p_alive=None,
        stage="prospect",
        x=None,
        t_x=None,
        T=None,
        days_since_first_purchase=None,
        **overrides,
    )


def with_tiers(tiers_toml: str, prefix: str = 'rules_version = "t"\n') -> Rules:
    return parse_rules_text(prefix + tiers_toml, fmt="toml")


def rules_error(text: str, fmt: str = "toml") -> str:
    with pytest.raises(RulesError) as info:
        parse_rules_text(text, fmt=fmt)
    return str(info.value)


# -- loading ------------------------------------------------------------------------------------


def test_default_rules_load_with_the_documented_values() -> None:
    rules = default_rules()
    assert rules.version == "default-2026.11"
    assert rules.scoring.method == "fixed"
    assert rules.scoring.recency_days == (30.0, 90.0, 180.0, 365.0)
    assert rules.scoring.frequency == (2.0, 3.0, 5.0, 10.0)
    assert rules.scoring.monetary == (25.0, 60.0, 150.0, 500.0)
    assert (rules.engagement.half_life_days, rules.engagement.high, rules.engagement.medium) == (
        30.0,
        10.0,
        3.0,
    )
    assert rules.engagement.weights["email_click"] == 3.0
    assert rules.engagement.weights["unfollow"] == 0.0
    assert (rules.lifecycle.at_risk_after_days, rules.lifecycle.churned_after_days) == (90, 180)
    assert rules.lifecycle.at_risk_gap_multiple is None
    assert (rules.churn.p_alive_below, rules.churn.gap_multiple) == (0.3, 3.0)
    assert [r.name for r in rules.tiers] == ["vip", "active", "potential", "potential", "ordinary"]
    assert rules.tiers[-1].conditions == ()
    assert [r.name for r in rules.tags] == ["big_spender", "email_engaged", "wechat_fan"]


def test_loading_the_shipped_file_by_path_gives_the_defaults(tmp_path: Path) -> None:
    text = resources.files("segmentation").joinpath("default_rules.toml").read_text()
    path = tmp_path / "rules.toml"
    path.write_text(text, encoding="utf-8")
    assert load_rules(path) == default_rules()


def test_a_yaml_rules_file_is_equivalent_to_the_toml_one(tmp_path: Path) -> None:
    assert parse_rules_text(DEFAULT_RULES_YAML, fmt="yaml") == default_rules()
    for suffix in (".yaml", ".yml", ".YAML"):
        path = tmp_path / f"rules{suffix}"
        path.write_text(DEFAULT_RULES_YAML, encoding="utf-8")
        assert load_rules(path) == default_rules()


def test_unset_sections_take_their_defaults() -> None:
    rules = parse_rules_text(MINIMAL, fmt="toml")
    defaults = default_rules()
    assert rules.scoring == defaults.scoring
    assert rules.lifecycle == defaults.lifecycle
    assert rules.churn == defaults.churn
    assert rules.engagement.weights == {}
    assert rules.tags == ()


# -- versions -----------------------------------------------------------------------------------


def test_without_rules_version_the_content_hash_versions_the_rules() -> None:
    text = MINIMAL.replace('rules_version = "t-1"\n', "")
    expected = "sha256-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    assert parse_rules_text(text, fmt="toml").version == expected
    assert parse_rules_text(text, fmt="toml").version == expected  # stable for the same text
    changed = text.replace("1000", "1001")
    assert parse_rules_text(changed, fmt="toml").version != expected
    assert parse_rules_text(text + "\n", fmt="toml").version != expected


def test_an_explicit_rules_version_wins_over_the_hash() -> None:
    assert parse_rules_text(MINIMAL, fmt="toml").version == "t-1"


@pytest.mark.parametrize("version", ["3", '""', "true"])
def test_a_non_text_or_empty_rules_version_is_refused(version: str) -> None:
    assert "rules_version" in rules_error(
        MINIMAL.replace('rules_version = "t-1"', f"rules_version = {version}")
    )


# -- parse errors name the key ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ('[scoring]\nmethod = "kmeans"\n', "scoring.method"),
        ("[scoring]\nrecency_days = [90, 30, 180, 365]\n", "scoring.recency_days"),
        ("[scoring]\nfrequency = [2, 3, 5]\n", "scoring.frequency"),
        ("[scoring]\nmonetary = [25, 60, 150, 100]\n", "scoring.monetary"),
        ('[scoring]\nmonetary = [25, 60, "150", 500]\n', "scoring.monetary"),
        ("[scoring]\nfrequency = [true, 3, 5, 10]\n", "scoring.frequency"),
        ('[scoring]\nhysteresis = "a bit"\n', "scoring.hysteresis"),
        ("[engagement]\nhalf_life_days = 0\n", "engagement.half_life_days"),
        ('[engagement]\nhigh = "ten"\n', "engagement.high"),
        ("[engagement]\nhigh = 2.0\nmedium = 3.0\n", "engagement.medium"),
        ('[engagement.weights]\nemail_open = "one"\n', "engagement.weights.email_open"),
        ("[lifecycle]\nat_risk_after_days = 200\n", "lifecycle.at_risk_after_days"),
        ("[lifecycle]\nat_risk_after_days = 0\n", "lifecycle.at_risk_after_days"),
        ('[lifecycle]\nat_risk_gap_multiple = "x"\n', "lifecycle.at_risk_gap_multiple"),
        ("[churn]\np_alive_below = true\n", "churn.p_alive_below"),
        ('campaigns = "all"\n', "campaigns"),
    ],
)
def test_bad_settings_name_their_key(section: str, expected: str) -> None:
    # Top-level keys must precede the tables, so put the section after the version line.
    text = MINIMAL.replace('rules_version = "t-1"\n', 'rules_version = "t-1"\n' + section)
    if not section.startswith("["):
        text = section + MINIMAL
    assert expected in rules_error(text)


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ("{ lifetime_value_gt = 5 }", "unknown feature 'lifetime_value'"),
        ("{ monetary_between = [1, 2] }", "monetary_between"),
        ("{ monetary = 5 }", "'monetary'"),
        ("{ stage_like = 'new' }", "stage_like"),
        ("{ stage_in = 'new' }", "'stage_in' needs a list"),
        ("{ segment_not_in = 'lost' }", "'segment_not_in' needs a list"),
    ],
)
def test_bad_conditions_name_the_rule_and_the_key(when: str, expected: str) -> None:
    message = rules_error(
        'rules_version = "t"\n'
        f'[[tiers]]\nname = "a"\nwhen = {{ frequency_ge = 1 }}\n'
        f'[[tiers]]\nname = "b"\nwhen = {when}\n'
        '[[tiers]]\nname = "c"\nwhen = {}\n'
    )
    assert expected in message
    assert "tiers[1]" in message


def test_a_bad_tag_condition_names_the_tag_list() -> None:
    message = rules_error(MINIMAL + '[[tags]]\nname = "t"\nwhen = { shoe_size_ge = 44 }\n')
    assert "tags[0]" in message
    assert "shoe_size" in message


def test_the_last_tier_rule_must_be_a_catch_all() -> None:
    text = MINIMAL.replace('name = "ordinary"\nwhen = {}', 'name = "ordinary"\nwhen = { r_ge = 1 }')
    message = rules_error(text)
    assert "'ordinary'" in message
    assert "empty 'when'" in message


def test_a_missing_when_counts_as_a_catch_all() -> None:
    text = MINIMAL.replace('name = "ordinary"\nwhen = {}', 'name = "x"')
    rules = parse_rules_text(text, fmt="toml")
    assert rules.tiers[-1].name == "x"
    assert rules.tier_for(prospect_features())[0] == "x"


def test_no_tier_rules_is_an_error() -> None:
    assert "at least one rule" in rules_error('rules_version = "t"\n')


@pytest.mark.parametrize(
    ("item", "expected"),
    [('description = "no name"\nwhen = {}', "tiers[1] needs a string 'name'")],
)
def test_a_tier_without_a_name_is_named_by_position(item: str, expected: str) -> None:
    text = MINIMAL.replace('[[tiers]]\nname = "ordinary"\nwhen = {}', f"[[tiers]]\n{item}")
    assert expected in rules_error(text)


def test_bad_toml_says_so() -> None:
    assert "not valid TOML" in rules_error('rules_version = "t"\n[[tiers]\nname = "x"\n')


def test_bad_yaml_says_so() -> None:
    assert "not valid YAML" in rules_error("tiers: [\n  - name: x\n", fmt="yaml")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", ""])
def test_a_yaml_file_that_is_not_a_mapping_is_refused(text: str) -> None:
    assert "top level" in rules_error(text, fmt="yaml")


@pytest.mark.parametrize(
    ("prefix", "key"),
    [
        ('scoring = "fixed"\n', "scoring"),
        ("lifecycle = 90\n", "lifecycle"),
        ("engagement = [1]\n", "engagement"),
        ("churn = 0.3\n", "churn"),
    ],
)
def test_a_section_that_is_not_a_table_names_the_key(prefix: str, key: str) -> None:
    assert key in rules_error(prefix + MINIMAL)


@pytest.mark.parametrize(
    ("text", "fmt"),
    [
        (MINIMAL.replace("monetary_gt = 1000", 'monetary_gt = "1000"'), "toml"),
        (
            "tiers:\n  - {name: vip, when: {monetary_gt: 1e3}}\n  - {name: ordinary, when: {}}\n",
            "yaml",
        ),
    ],
)
def test_a_text_threshold_for_a_numeric_comparison_is_refused(text: str, fmt: str) -> None:
    assert "monetary_gt" in rules_error(text, fmt=fmt)


# -- conditions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
def test_a_missing_feature_value_never_matches_whatever_the_op(op: str) -> None:
    value: Any = (1, 2) if op in ("in", "not_in") else 5
    assert Condition("recency_days", op, value).holds(None) is False


@pytest.mark.parametrize(
    ("op", "threshold", "actual", "expected"),
    [
        ("lt", 90, 89, True),
        ("lt", 90, 90, False),
        ("le", 90, 90, True),
        ("le", 90, 91, False),
        ("gt", 5, 6, True),
        ("gt", 5, 5, False),
        ("ge", 5, 5, True),
        ("ge", 5, 4, False),
        ("eq", "new", "new", True),
        ("eq", "new", "active", False),
        ("ne", "new", "active", True),
        ("ne", "new", "new", False),
        ("in", ("new", "active"), "active", True),
        ("in", ("new", "active"), "churned", False),
        ("not_in", ("lost", "hibernating"), "champions", True),
        ("not_in", ("lost", "hibernating"), "lost", False),
        ("gt", "1000", 5000.0, False),  # incomparable types never match (and never raise)
    ],
)
def test_each_op(op: str, threshold: Any, actual: Any, expected: bool) -> None:
    assert Condition("x", op, threshold).holds(actual) is expected


FEATURE_VALUES = st.one_of(
    st.none(),
    st.integers(-5, 400),
    st.floats(-1.0, 5000.0, allow_nan=False),
    st.sampled_from(["new", "active", "at_risk", "champions", "lost", "high", "low"]),
    st.booleans(),
)


@given(st.dictionaries(st.sampled_from(sorted(FEATURES)), FEATURE_VALUES))
def test_matches_is_evaluate_without_the_trace(features: dict[str, Any]) -> None:
    """`Rule.matches` (tags, no explanation) agrees with `Rule.evaluate` on every rule."""
    rules = default_rules()
    for rule in (*rules.tiers, *rules.tags):
        assert rule.matches(features) is rule.evaluate(features)[0]


def test_a_rule_over_a_missing_feature_does_not_match_a_prospect() -> None:
    rules = with_tiers(
        '[[tiers]]\nname = "lapsed"\nwhen = { recency_days_ne = 0 }\n'
        '[[tiers]]\nname = "not_lost"\nwhen = { segment_not_in = ["lost"] }\n'
        '[[tiers]]\nname = "ordinary"\nwhen = {}\n'
    )
    assert rules.tier_for(prospect_features())[0] == "ordinary"
    assert rules.tier_for(features(recency_days=3, segment="loyal"))[0] == "lapsed"
    assert rules.tier_for(features(recency_days=0, segment="loyal"))[0] == "not_lost"


def test_in_and_not_in_rules() -> None:
    rules = with_tiers(
        '[[tiers]]\nname = "winback"\nwhen = { stage_in = ["at_risk", "churned"] }\n'
        '[[tiers]]\nname = "keep"\nwhen = { segment_not_in = ["lost", "hibernating"] }\n'
        '[[tiers]]\nname = "ordinary"\nwhen = {}\n'
    )
    assert rules.tiers[0].conditions[0].value == ("at_risk", "churned")
    assert rules.tier_for(features(stage="churned", segment="lost"))[0] == "winback"
    assert rules.tier_for(features(stage="active", segment="loyal"))[0] == "keep"
    assert rules.tier_for(features(stage="active", segment="hibernating"))[0] == "ordinary"


# -- tiers: first match, explanation ------------------------------------------------------------


def test_first_matching_rule_wins() -> None:
    vip_and_active = features(monetary=1500.0, frequency=6, recency_days=10)
    assert default_rules().tier_for(vip_and_active)[0] == "vip"
    swapped = with_tiers(
        '[[tiers]]\nname = "active"\nwhen = { frequency_ge = 2, recency_days_le = 90 }\n'
        '[[tiers]]\nname = "vip"\nwhen = { monetary_gt = 1000, frequency_gt = 5 }\n'
        '[[tiers]]\nname = "ordinary"\nwhen = {}\n'
    )
    assert swapped.tier_for(vip_and_active)[0] == "active"


@pytest.mark.parametrize(
    ("overrides", "tier"),
    [
        ({}, "vip"),
        ({"monetary": 1000.0}, "active"),  # monetary_gt is strict
        ({"frequency": 5}, "active"),
        ({"recency_days": 181, "stage": "at_risk"}, "ordinary"),
        ({"recency_days": 120, "stage": "at_risk", "frequency": 2}, "ordinary"),
        ({"frequency": 1, "stage": "new", "recency_days": 90}, "potential"),
        ({"frequency": 1, "stage": "new", "recency_days": 91}, "ordinary"),
        ({"frequency": 1, "stage": "at_risk", "engagement_level": "high"}, "ordinary"),
    ],
)
def test_default_tiers(overrides: dict[str, Any], tier: str) -> None:
    assert default_rules().tier_for(features(**overrides))[0] == tier


def test_an_engaged_prospect_is_potential() -> None:
    tier, why = default_rules().tier_for(prospect_features(engagement_level="medium"))
    assert (tier, why["rule"]) == ("potential", "tiers[2]:potential")
    assert default_rules().tier_for(prospect_features())[0] == "ordinary"


def test_the_explanation_lists_matched_conditions_and_earlier_failures() -> None:
    tier, why = default_rules().tier_for(features(monetary=500.0, frequency=6, recency_days=10))
    assert tier == "active"
    assert why["rule"] == "tiers[1]:active"
    assert why["description"] == "repeat buyer who bought in the last 90 days"
    assert why["conditions"] == [
        {"condition": "frequency_ge", "threshold": 2, "value": 6, "ok": True},
        {"condition": "recency_days_le", "threshold": 90, "value": 10, "ok": True},
    ]
    # Only the failed conditions of the rules before it, with the values that failed them.
    assert why["not_matched"] == [
        {
            "rule": "tiers[0]:vip",
            "failed": [
                {"condition": "monetary_gt", "threshold": 1000, "value": 500.0, "ok": False}
            ],
        }
    ]


def test_the_catch_all_explanation_lists_every_earlier_failure() -> None:
    tier, why = default_rules().tier_for(prospect_features())
    assert (tier, why["rule"], why["conditions"]) == ("ordinary", "tiers[4]:ordinary", [])
    assert [r["rule"] for r in why["not_matched"]] == [
        "tiers[0]:vip",
        "tiers[1]:active",
        "tiers[2]:potential",
        "tiers[3]:potential",
    ]
    assert why["not_matched"][0]["failed"] == [
        {"condition": "monetary_gt", "threshold": 1000, "value": 0.0, "ok": False},
        {"condition": "frequency_gt", "threshold": 5, "value": 0, "ok": False},
        {"condition": "recency_days_le", "threshold": 180, "value": None, "ok": False},
    ]
    assert why["not_matched"][2]["failed"] == [
        {
            "condition": "engagement_level_in",
            "threshold": ("medium", "high"),
            "value": "low",
            "ok": False,
        }
    ]


# -- tags ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "tags"),
    [
        ({}, ["big_spender"]),
        ({"monetary": 499.99}, []),
        ({"monetary": 500.0, "email_score": 3.0}, ["big_spender", "email_engaged"]),
        ({"monetary": 10.0, "wechat_following": True, "wechat_score": 3.0}, ["wechat_fan"]),
        ({"monetary": 10.0, "wechat_following": False, "wechat_score": 9.0}, []),
        ({"monetary": 10.0, "wechat_following": True, "wechat_score": 2.9}, []),
        (
            {"monetary": 600.0, "email_score": 4.0, "wechat_following": True, "wechat_score": 5.0},
            ["big_spender", "email_engaged", "wechat_fan"],
        ),
    ],
)
def test_default_tags(overrides: dict[str, Any], tags: list[str]) -> None:
    assert default_rules().tags_for(features(**overrides)) == tags


def test_tags_follow_file_order_and_are_independent_of_tiers() -> None:
    rules = with_tiers(
        MINIMAL.replace('rules_version = "t-1"\n', "")
        + '[[tags]]\nname = "z_last"\nwhen = { frequency_ge = 1 }\n'
        + '[[tags]]\nname = "a_first"\nwhen = { frequency_ge = 1 }\n'
    )
    assert rules.tags_for(features()) == ["z_last", "a_first"]
    assert rules.tags_for(prospect_features()) == []
