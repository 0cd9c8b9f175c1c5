"""The published contract (schemas/*.schema.json, schemas/asyncapi.yaml) and the code agree.

- every schema is a valid JSON Schema draft 2020-12 document and the AsyncAPI document lists
  every topic of `streams.topics.ALL_TOPICS` with resolvable references;
- inputs: hand-written valid events are accepted by both the schema and `parse_event`, invalid
  ones are rejected by both (with the reason code the code is expected to give), and a
  hypothesis property checks that whatever the schema rejects, `parse_event` rejects too;
- enums, lengths and bounds in the schemas are the code's constants;
- outputs: what the pure core (and the agent's glue) publishes validates against the output
  schemas, and every field it publishes is documented there.

Known differences between schema and code, so the property only checks one direction:

The code is stricter than the schema (JSON Schema cannot express these), by design:
  * `occurred_at` more than TIERSTREAM_MAX_FUTURE_SECONDS ahead of the worker's clock
    (`future_timestamp`): a schema has no clock;
  * a `currency` other than the configured base currency (`foreign_currency`);
  * an `amount` string above 1000000000 (`invalid_amount`): `maximum` only applies to numbers;
  * calendar-invalid RFC 3339 strings (Feb 30, leap second 60) and string timestamps before 1990
    (`bad_timestamp`): the pattern checks the shape only, and `format` is an annotation unless
    the validator asserts formats;
  * a JSON number with a zero fraction (`1.7e12`) or an integer beyond 64 bits as `occurred_at`
    (`wrong_type`): JSON Schema calls both integers, orjson decodes them as floats;
  * a number outside the double range anywhere in the record, even in an unknown field
    (`invalid_json`): orjson refuses the whole document.

The code is more lenient than the schema (the schema is the contract shops should follow;
`test_code_rejects_what_the_contract_forbids` lists these cases as expected failures until
`segmentation/events.py` is tightened):
  * `occurred_at` strings that Python's `datetime.fromisoformat` accepts but RFC 3339 does not
    (no seconds, basic format, `+0100` / `+01` offsets, week dates, comma fractions, an empty
    fraction, surrounding spaces, any separator character instead of `T`);
  * `amount` strings that the code's decimal syntax accepts but the contract's plain decimal
    pattern does not (`+5`, `1e3`, ` 12.5`, `-0`, `.5`, `5.`);
  * a `currency` whose Unicode upper case is the base currency (`uſd`).

`now_ms` is fixed (2026-11-25T00:00:00Z): nothing here reads the wall clock.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import dataclasses
import json
import re
import string
import tomllib
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from functools import cache
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any, get_args

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from segmentation import campaigns, events, lifecycle, rfm, rules, step
from segmentation.bgnbd import DEFAULT_PARAMS, expected_days_between_purchases
from segmentation.errors import InvalidEvent
from segmentation.evaluate import evaluate
from segmentation.events import (
    INPUT_TOPICS,
    MAX_AMOUNT,
    MAX_ID_LENGTH,
    MIN_EVENT_TIME_MS,
    PURCHASE_KINDS,
    SUPPRESSION_CHANNELS,
    SUPPRESSION_KINDS,
    WECHAT_KINDS,
    InputEvent,
    parse_event,
)
from segmentation.rules import Rules, default_rules
from segmentation.state import CustomerState
from segmentation.step import StepResult, apply_event, reevaluate
from segmentation.timeutil import DAY_MS, parse_rfc3339, to_rfc3339
from streams import topics

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
NOW_MS = 1_795_564_800_000  # 2026-11-25T00:00:00Z, the fixed "wall clock" of these tests
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_NAMES = (*INPUT_TOPICS, *topics.OUTPUT_TOPICS, "profile")
# Unicode category Cc: C0 controls, DEL and C1 controls.
CONTROL_CHARS = "".join(chr(c) for c in (*range(0x20), *range(0x7F, 0xA0)))

JSON = Any  # a decoded JSON value


# ------------------------------------------------------------------------------------ helpers


@cache
def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / f"{name}.schema.json").read_text("utf-8"))
    return loaded


@cache
def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)


def schema_errors(name: str, instance: JSON) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator(name).iter_errors(instance)
    ]


def assert_valid(name: str, instance: JSON) -> None:
    errors = schema_errors(name, instance)
    assert not errors, f"{name} schema rejects {instance!r}:\n" + "\n".join(errors)


def encode(doc: JSON) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def parse(topic: str, doc: JSON) -> InputEvent:
    return parse_event(topic, encode(doc), now_ms=NOW_MS)


def resolve_pointer(document: Any, pointer: str) -> Any:
    """The value at a JSON pointer ('' or '/a/b')."""
    target = document
    for raw in pointer.split("/")[1:] if pointer else []:
        part = raw.replace("~1", "/").replace("~0", "~")
        target = target[int(part)] if isinstance(target, list) else target[part]
    return target


def deref(subschema: Mapping[str, Any], root: Mapping[str, Any]) -> dict[str, Any]:
    """`subschema` with its local `$ref` (chain) merged in; sibling keywords win."""
    out = dict(subschema)
    while "$ref" in out:
        ref = out.pop("$ref")
        assert ref.startswith("#"), f"only local references are expected, got {ref}"
        out = {**resolve_pointer(root, ref[1:]), **out}
    return out


def branch_is_valid(instance: JSON, branch: Mapping[str, Any], root: Mapping[str, Any]) -> bool:
    return Draft202012Validator({**branch, "$defs": root.get("$defs", {})}).is_valid(instance)


def undocumented(
    instance: JSON, subschema: Mapping[str, Any], root: Mapping[str, Any], path: str = "$"
) -> list[str]:
    """Paths of object keys in `instance` that the schema does not describe."""
    node = deref(subschema, root)
    found: list[str] = []
    for combinator in ("anyOf", "oneOf", "allOf"):
        matching = [b for b in node.get(combinator, []) if branch_is_valid(instance, b, root)]
        for branch in matching[:1]:
            found += undocumented(instance, branch, root, path)
    if isinstance(instance, dict):
        properties = node.get("properties", {})
        extra = node.get("additionalProperties")
        for key, value in instance.items():
            if key in properties:
                found += undocumented(value, properties[key], root, f"{path}.{key}")
            elif isinstance(extra, dict):
                found += undocumented(value, extra, root, f"{path}.{key}")
            elif "properties" in node:
                found.append(f"{path}.{key}")
    if isinstance(instance, list) and isinstance(node.get("items"), dict):
        for index, item in enumerate(instance):
            found += undocumented(item, node["items"], root, f"{path}[{index}]")
    return found


def assert_output(name: str, message: Mapping[str, Any]) -> None:
    """Valid against the topic's schema, and nothing in it undocumented."""
    decoded = json.loads(json.dumps(message))  # exactly what a consumer sees
    assert_valid(name, decoded)
    assert undocumented(decoded, schema(name), schema(name)) == [], name


def enum_of(name: str, *pointer: str) -> set[Any]:
    """The enum's values; null (where allowed, meaning "the default") left out."""
    node = deref(resolve_pointer(schema(name), "/" + "/".join(pointer)), schema(name))
    return set(node["enum"]) - {None}


def tier_enum(name: str) -> set[str]:
    node = deref(schema(name)["$defs"]["tier"], schema(name))
    (named,) = [branch for branch in node["anyOf"] if "enum" in branch]
    return set(named["enum"])


# ----------------------------------------------------------------- schema and document validity


def test_schema_files_are_exactly_the_topics_and_the_profile() -> None:
    on_disk = {p.name.removesuffix(".schema.json") for p in SCHEMAS.glob("*.schema.json")}
    assert on_disk == set(SCHEMA_NAMES)
    assert set(SCHEMA_NAMES) - {"profile"} == set(INPUT_TOPICS) | set(topics.OUTPUT_TOPICS)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_is_valid_draft_2020_12_and_readable(name: str) -> None:
    doc = schema(name)
    Draft202012Validator.check_schema(doc)
    assert doc["$schema"] == DRAFT_2020_12
    assert doc["$id"].endswith(f"/{name}.schema.json")
    assert doc["title"].strip() and doc["description"].strip()
    assert doc["type"] == "object"
    for field, spec in doc["properties"].items():
        described = deref(spec, doc)
        assert described.get("description", "").strip(), f"{name}.{field} has no description"
    for example in doc.get("examples", []):
        assert_valid(name, example)


def test_schema_ids_are_unique() -> None:
    ids = [schema(name)["$id"] for name in SCHEMA_NAMES]
    assert len(set(ids)) == len(ids)


@cache
def asyncapi() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text("utf-8"))
    return loaded


def all_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from all_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from all_refs(item)


def test_asyncapi_parses_and_lists_every_topic() -> None:
    doc = asyncapi()
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] and doc["info"]["version"]
    assert doc["defaultContentType"] == "application/json"
    assert any(server["protocol"] == "kafka" for server in doc["servers"].values())
    addresses = [channel["address"] for channel in doc["channels"].values()]
    assert sorted(addresses) == sorted(topics.ALL_TOPICS)
    for channel_id, channel in doc["channels"].items():
        assert channel_id == channel["address"]
        assert channel["messages"], channel_id
        assert channel.get("description"), channel_id


def test_asyncapi_references_resolve() -> None:
    doc = asyncapi()
    refs = list(all_refs(doc))
    assert refs
    for ref in refs:
        location, _, fragment = ref.partition("#")
        if location:
            target = (SCHEMAS / location).resolve()
            assert target.parent == SCHEMAS.resolve() and target.is_file(), ref
            resolve_pointer(json.loads(target.read_text("utf-8")), fragment)
        else:
            resolve_pointer(doc, fragment)


def _message(ref_or_message: Mapping[str, Any]) -> dict[str, Any]:
    doc = asyncapi()
    node = dict(ref_or_message)
    while "$ref" in node:
        node = dict(resolve_pointer(doc, node["$ref"].partition("#")[2]))
    return node


@pytest.mark.parametrize("topic", topics.ALL_TOPICS)
def test_asyncapi_channel_payload_and_key(topic: str) -> None:
    if topic == topics.TICKS:
        pytest.skip("internal clock ticks: an inline payload, no key (checked below)")
    doc = asyncapi()
    channel = doc["channels"][topic]
    (message_ref,) = channel["messages"].values()
    message = _message(message_ref)
    assert message["contentType"] == "application/json"
    payload = message["payload"]
    assert payload["schemaFormat"] == "application/schema+json;version=draft-2020-12"
    expected = "profile" if topic == topics.PROFILES else topic
    assert payload["schema"]["$ref"] == f"./{expected}.schema.json"
    bindings = _message(message["bindings"])
    key = bindings["kafka"]["key"]
    assert key["type"] == "string"
    expected_key = "original record's key" if topic == topics.DEAD_LETTERS else "customer_id"
    assert expected_key in key["description"]


def test_asyncapi_operations_send_inputs_and_receive_outputs() -> None:
    doc = asyncapi()
    actions: dict[str, set[str]] = {}
    for name, operation in doc["operations"].items():
        channel = operation["channel"]["$ref"]
        assert channel.startswith("#/channels/"), name
        topic = doc["channels"][channel.removeprefix("#/channels/")]["address"]
        actions.setdefault(topic, set()).add(operation["action"])
        for message in operation["messages"]:
            assert message["$ref"].startswith(f"{channel}/messages/"), name
    assert {t: actions.get(t) for t in INPUT_TOPICS} == {t: {"send"} for t in INPUT_TOPICS}
    outputs = topics.OUTPUT_TOPICS
    assert {t: actions.get(t) for t in outputs} == {t: {"receive"} for t in outputs}
    for internal in topics.INTERNAL_TOPICS:
        assert internal not in actions  # not offered to shops or consumers
        channel = doc["channels"][internal]
        assert channel["x-internal"] is True
        assert {tag["name"] for tag in channel["tags"]} == {"internal"}
        assert "INTERNAL" in channel["description"]


# ------------------------------------------------------------------------ enums and constants


def test_enums_are_the_codes_sets() -> None:
    assert enum_of("purchases", "properties", "kind") == PURCHASE_KINDS
    assert enum_of("wechat-interactions", "properties", "kind") == WECHAT_KINDS
    assert enum_of("suppressions", "properties", "kind") == SUPPRESSION_KINDS
    assert enum_of("suppressions", "properties", "channel") == SUPPRESSION_CHANNELS
    assert enum_of("tier-changes", "properties", "cause") == set(step.CAUSES)
    assert set(campaigns.CAUSES) == set(step.CAUSES)
    for name in ("tier-changes", "campaign-triggers", "churn-warnings", "profile"):
        assert tier_enum(name) == set(rules.TIERS), name
    for name in ("tier-changes", "campaign-triggers", "churn-warnings", "profile"):
        assert enum_of(name, "$defs", "stage") == set(lifecycle.STAGES), name
    assert set(campaigns.STAGES) == set(lifecycle.STAGES)
    for name in ("tier-changes", "profile"):
        assert enum_of(name, "$defs", "segment") == set(rfm.SEGMENTS), name
        assert enum_of(name, "$defs", "engagementLevel") == set(campaigns.ENGAGEMENT_LEVELS)
    assert enum_of("campaign-triggers", "properties", "channel") == set(campaigns.CHANNELS)
    assert enum_of("campaign-triggers", "properties", "variant") == set(get_args(campaigns.Variant))
    suppressions = schema("profile")["properties"]["suppressions"]
    assert set(suppressions["propertyNames"]["enum"]) == SUPPRESSION_CHANNELS


def test_defaults_are_the_codes_defaults() -> None:
    minimal = {"event_id": "e1", "customer_id": "c1", "occurred_at": MIN_EVENT_TIME_MS}
    purchase = parse("purchases", {**minimal, "order_id": "o1", "amount": 1})
    assert schema("purchases")["properties"]["kind"]["default"] == purchase.kind == "purchase"
    suppression = parse("suppressions", {**minimal, "kind": "unsubscribe"})
    assert schema("suppressions")["properties"]["channel"]["default"] == suppression.channel


@pytest.mark.parametrize("topic", INPUT_TOPICS)
def test_lengths_and_bounds_are_the_codes_constants(topic: str) -> None:
    defs = schema(topic)["$defs"]
    assert defs["identifier"]["maxLength"] == MAX_ID_LENGTH
    assert defs["identifier"]["minLength"] == 1
    time_string, time_integer = defs["eventTime"]["oneOf"]
    assert time_integer == {**time_integer, "type": "integer", "minimum": MIN_EVENT_TIME_MS}
    assert time_string["type"] == "string" and time_string["format"] == "date-time"
    assert schema(topic)["additionalProperties"] is True
    if topic == events.PURCHASES:
        number, text = schema(topic)["properties"]["amount"]["oneOf"]
        assert number["minimum"] == 0 and Decimal(number["maximum"]) == MAX_AMOUNT
        assert text["type"] == "string"
        assert re.search(text["pattern"], "0.5") and not re.search(text["pattern"], "-0.5")


@pytest.mark.parametrize("topic", INPUT_TOPICS)
def test_identifier_characters_match_the_code(topic: str) -> None:
    """Every Latin-1 character plus a few notable others: the schema forbids in identifiers
    exactly the characters the code forbids."""
    candidates = [chr(c) for c in range(0x100)] + ["\u2028", "\u200b", "\ufeff", "\ue000"]
    base = VALID_EVENTS[topic][0]
    for char in candidates:
        doc = {**base, "customer_id": f"c{char}1"}
        try:
            parse(topic, doc)
            code_ok = True
        except InvalidEvent:
            code_ok = False
        assert validator(topic).is_valid(doc) == code_ok, f"U+{ord(char):04X}"


@pytest.mark.parametrize("topic", INPUT_TOPICS)
def test_required_fields_are_what_the_code_requires(topic: str) -> None:
    """Derived from the code: a field is required iff leaving it out is `missing_field`."""
    base = VALID_EVENTS[topic][0]
    assert set(base) >= set(schema(topic)["properties"]) - {"timezone"}
    required_by_code = set()
    for field in base:
        try:
            parse(topic, {k: v for k, v in base.items() if k != field})
        except InvalidEvent as exc:
            assert exc.reason == "missing_field", (field, exc)
            required_by_code.add(field)
    assert set(schema(topic)["required"]) == required_by_code


def _string_results(node: ast.expr) -> set[str]:
    """The string constants an expression can evaluate to (`"a" if cond else "b"`)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return _string_results(node.body) | _string_results(node.orelse)
    return set()


def test_dead_letter_reasons_are_documented() -> None:
    """Every reason code the code can dead-letter with is listed in the dead-letters schema."""
    found: set[str] = set()
    for source in (ROOT / "segmentation" / "events.py", ROOT / "agents" / "segment.py"):
        for node in ast.walk(ast.parse(source.read_text("utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            args = {"InvalidEvent": node.args[:1], "dead_letter": node.args[2:3]}.get(name, [])
            found |= {code for arg in args for code in _string_results(arg)}
    assert {"missing_field", "empty_value", "internal_error"} <= found
    assert found <= set(schema("dead-letters")["properties"]["reason"]["examples"])


# ------------------------------------------------------------------------------------- inputs

T = "2026-03-01T14:30:00+08:00"
T_MS = parse_rfc3339(T)
IDS = {"event_id": "evt-1", "customer_id": "00003", "occurred_at": T}

VALID_EVENTS: dict[str, list[dict[str, Any]]] = {
    events.PURCHASES: [
        {
            **IDS,
            "order_id": "A-1001",
            "amount": "162.84",
            "currency": "USD",
            "kind": "purchase",
            "channel": "web",
            "timezone": "Asia/Shanghai",
        },
        {**IDS, "order_id": "A-1001", "amount": 20, "kind": "refund"},
        {**IDS, "order_id": "A-1", "amount": 0},
        {**IDS, "order_id": "A-1", "amount": "7.25", "kind": None},  # null: the default
        {**IDS, "order_id": "A-1", "amount": 12.5, "currency": "usd", "channel": None},
        {**IDS, "order_id": "A-1", "amount": "1000000000", "currency": None},
        {**IDS, "order_id": "A-1", "amount": 1_000_000_000},
        {**IDS, "order_id": "A-1", "amount": "0.005"},
        {**IDS, "occurred_at": MIN_EVENT_TIME_MS, "order_id": "A-1", "amount": "1"},
        {**IDS, "occurred_at": NOW_MS, "order_id": "A-1", "amount": "1"},
        {**IDS, "occurred_at": "2026-03-01t06:30:00.123456789z", "order_id": "1", "amount": 1},
        {**IDS, "occurred_at": "2026-03-01 06:30:00-05:30", "order_id": "1", "amount": 1},
        {**IDS, "occurred_at": "1990-01-01T00:00:00Z", "order_id": "1", "amount": 1},
        {
            "event_id": "e" * MAX_ID_LENGTH,
            "customer_id": "客户-四十二 🛒",
            "occurred_at": T,
            "order_id": "订单\u200b1",  # format characters (Cf) are fine; controls (Cc) not
            "amount": 5,
            "timezone": "Mars/Olympus_Mons",  # unknown zone: ignored, not a rejection
            "note": {"anything": ["goes", 1, None]},  # unknown fields are ignored
        },
        {**IDS, "order_id": "A-1", "amount": 1, "timezone": 8, "source": "pos"},
    ],
    events.EMAIL_OPENS: [
        {**IDS, "message_id": "msg-5512", "campaign_id": "spring-sale"},
        {**IDS, "message_id": "msg-5512"},
        {**IDS, "message_id": "msg-5512", "campaign_id": None, "user_agent": "Mail/1.0"},
    ],
    events.EMAIL_CLICKS: [
        {**IDS, "message_id": "m", "url": "https://shop.example.com/x", "campaign_id": "c"},
        {**IDS, "message_id": "m"},
        {**IDS, "message_id": "m", "url": None},
        {**IDS, "message_id": "m", "url": 42},  # informational only: not validated
    ],
    events.WECHAT: [{**IDS, "kind": kind} for kind in sorted(WECHAT_KINDS)],
    events.SUPPRESSIONS: [
        *(
            {**IDS, "kind": kind, "channel": channel}
            for kind in sorted(SUPPRESSION_KINDS)
            for channel in sorted(SUPPRESSION_CHANNELS)
        ),
        {**IDS, "kind": "unsubscribe"},
        {**IDS, "kind": "resubscribe", "channel": None},  # null: the default
        {**IDS, "kind": "erase"},
    ],
}


def _valid_cases() -> Iterator[Any]:
    for topic, docs in VALID_EVENTS.items():
        for index, doc in enumerate(docs):
            yield pytest.param(topic, doc, id=f"{topic}-{index}")
        for index, doc in enumerate(schema(topic).get("examples", [])):
            yield pytest.param(topic, doc, id=f"{topic}-schema-example-{index}")


@pytest.mark.parametrize(("topic", "doc"), list(_valid_cases()))
def test_valid_event_is_accepted_by_schema_and_code(topic: str, doc: dict[str, Any]) -> None:
    assert_valid(topic, doc)
    event = parse(topic, doc)
    assert (event.topic, event.event_id, event.customer_id) == (
        topic,
        doc["event_id"],
        doc["customer_id"],
    )
    occurred = doc["occurred_at"]
    assert event.occurred_ms == (occurred if isinstance(occurred, int) else parse_rfc3339(occurred))
    if topic == events.PURCHASES:
        assert event.kind == (doc.get("kind") or "purchase")
        expected_cents = (Decimal(str(doc["amount"])) * 100).quantize(Decimal(1))
        assert event.amount_cents == int(expected_cents)
    if topic == events.SUPPRESSIONS:
        assert (event.kind, event.channel) == (doc["kind"], doc.get("channel") or "all")


def _required_of(topic: str) -> list[str]:
    required: list[str] = schema(topic)["required"]
    return required


COMMON_INVALID: list[tuple[str, Any, str]] = [
    ("event_id", 42, "wrong_type"),
    ("event_id", "", "invalid_value"),
    ("event_id", "x" * (MAX_ID_LENGTH + 1), "invalid_value"),
    ("event_id", "evt\n1", "invalid_value"),
    ("event_id", "evt\x7f1", "invalid_value"),
    ("event_id", "evt\x001", "invalid_value"),
    ("event_id", "evt\x851", "invalid_value"),  # C1 control (NEL)
    ("customer_id", ["00003"], "wrong_type"),
    ("customer_id", True, "wrong_type"),
    ("customer_id", "\t", "invalid_value"),
    ("occurred_at", 1_772_346_600, "bad_timestamp"),  # seconds, not milliseconds
    ("occurred_at", -1, "bad_timestamp"),
    ("occurred_at", MIN_EVENT_TIME_MS - 1, "bad_timestamp"),
    ("occurred_at", "2026-03-01T14:30:00", "bad_timestamp"),  # no offset
    ("occurred_at", "2026-03-01", "bad_timestamp"),
    ("occurred_at", "yesterday", "bad_timestamp"),
    ("occurred_at", "", "bad_timestamp"),
    ("occurred_at", True, "wrong_type"),
    ("occurred_at", 1_772_346_600_000.5, "wrong_type"),
    ("occurred_at", {"ms": 1_772_346_600_000}, "wrong_type"),
]

TOPIC_INVALID: dict[str, list[tuple[str, Any, str]]] = {
    events.PURCHASES: [
        ("amount", -1, "invalid_amount"),
        ("amount", -0.01, "invalid_amount"),
        ("amount", "-0.01", "invalid_amount"),
        ("amount", "abc", "invalid_amount"),
        ("amount", "", "invalid_amount"),
        ("amount", "NaN", "invalid_amount"),
        ("amount", "Infinity", "invalid_amount"),
        ("amount", "1,50", "invalid_amount"),
        ("amount", "1_000", "invalid_amount"),
        ("amount", "\u0663", "invalid_amount"),  # ARABIC-INDIC DIGIT THREE
        ("amount", 1e10, "invalid_amount"),
        ("amount", 1_000_000_001, "invalid_amount"),
        ("amount", True, "wrong_type"),
        ("amount", [1], "wrong_type"),
        ("kind", "gift", "unknown_kind"),
        ("kind", "Purchase", "unknown_kind"),
        ("kind", 1, "wrong_type"),
        ("currency", 840, "wrong_type"),
        ("currency", "US Dollar", "foreign_currency"),
        ("order_id", 7, "wrong_type"),
        ("order_id", "", "invalid_value"),
        ("channel", "", "invalid_value"),
        ("channel", 5, "wrong_type"),
    ],
    events.EMAIL_OPENS: [
        ("message_id", 5, "wrong_type"),
        ("campaign_id", "", "invalid_value"),
        ("campaign_id", {}, "wrong_type"),
    ],
    events.EMAIL_CLICKS: [
        ("message_id", "m" * (MAX_ID_LENGTH + 1), "invalid_value"),
        ("campaign_id", "c\r", "invalid_value"),
    ],
    events.WECHAT: [
        ("kind", "poke", "unknown_kind"),
        ("kind", "Follow", "unknown_kind"),
        ("kind", ["follow"], "wrong_type"),
    ],
    events.SUPPRESSIONS: [
        ("kind", "delete", "unknown_kind"),
        ("kind", False, "wrong_type"),
        ("channel", "sms", "invalid_value"),
        ("channel", 1, "wrong_type"),
    ],
}


def _invalid_cases() -> Iterator[Any]:
    for topic in INPUT_TOPICS:
        base = VALID_EVENTS[topic][0]
        for field in _required_of(topic):
            missing = {k: v for k, v in base.items() if k != field}
            yield pytest.param(topic, missing, "missing_field", id=f"{topic}-no-{field}")
            null = {**base, field: None}
            yield pytest.param(topic, null, "missing_field", id=f"{topic}-null-{field}")
        for index, (field, value, reason) in enumerate(COMMON_INVALID + TOPIC_INVALID[topic]):
            doc = {**base, field: value}
            yield pytest.param(topic, doc, reason, id=f"{topic}-{field}-{index}")
        for index, value in enumerate(([], "purchase", 5, None)):
            yield pytest.param(topic, value, "invalid_json", id=f"{topic}-not-object-{index}")


@pytest.mark.parametrize(("topic", "doc", "reason"), list(_invalid_cases()))
def test_invalid_event_is_rejected_by_schema_and_code(topic: str, doc: Any, reason: str) -> None:
    assert not validator(topic).is_valid(doc), f"the {topic} schema accepts {doc!r}"
    with pytest.raises(InvalidEvent) as caught:
        parse(topic, doc)
    assert caught.value.reason == reason, caught.value


# Beyond the schema: rejected by the code only (see the module docstring).
CODE_ONLY_REJECTIONS: list[tuple[str, dict[str, Any], str]] = [
    (events.PURCHASES, {"occurred_at": NOW_MS + DAY_MS + 1}, "future_timestamp"),
    (events.PURCHASES, {"currency": "EUR"}, "foreign_currency"),
    (events.PURCHASES, {"amount": "1000000000.01"}, "invalid_amount"),
    (events.EMAIL_OPENS, {"occurred_at": "2026-02-30T10:00:00Z"}, "bad_timestamp"),
    (events.EMAIL_OPENS, {"occurred_at": "2016-12-31T23:59:60Z"}, "bad_timestamp"),
    (events.WECHAT, {"occurred_at": "1989-12-31T23:59:59Z"}, "bad_timestamp"),
    (events.WECHAT, {"occurred_at": 1.7e12}, "wrong_type"),
    (events.SUPPRESSIONS, {"occurred_at": 2**64}, "wrong_type"),
    (events.SUPPRESSIONS, {"extra": 10**400}, "invalid_json"),
]


@pytest.mark.parametrize(("topic", "change", "reason"), CODE_ONLY_REJECTIONS)
def test_known_code_only_rejections(topic: str, change: dict[str, Any], reason: str) -> None:
    doc = {**VALID_EVENTS[topic][0], **change}
    assert validator(topic).is_valid(json.loads(encode(doc)))
    with pytest.raises(InvalidEvent) as caught:
        parse(topic, doc)
    assert caught.value.reason == reason
    assert explained_code_only_rejection(doc, caught.value)


# Accepted by the code, forbidden by the contract (see the module docstring).
NON_CONTRACT_VALUES: list[tuple[str, Any]] = [
    ("occurred_at", "2026-03-01T10:00Z"),
    ("occurred_at", "20260301T100000+0100"),
    ("occurred_at", "2026-03-01T10:00:00+0100"),
    ("occurred_at", "2026-03-01T10:00:00+01"),
    ("occurred_at", "2026-W09-7T10:00:00Z"),
    ("occurred_at", "2026-03-01T10:00:00,5Z"),
    ("occurred_at", "2026-03-01T10:00:00.Z"),
    ("occurred_at", " 2026-03-01T10:00:00Z"),
    ("occurred_at", "2026-03-01_10:00:00Z"),
    ("amount", "+5"),
    ("amount", "1e3"),
    ("amount", " 12.5"),
    ("amount", "-0"),
    ("amount", ".5"),
    ("amount", "5."),
    ("currency", "u\u017fd"),  # LATIN SMALL LETTER LONG S: "uſd".upper() == "USD"
]


@pytest.mark.parametrize(("field", "value"), NON_CONTRACT_VALUES)
def test_schema_forbids_non_contract_forms(field: str, value: Any) -> None:
    doc = {**VALID_EVENTS[events.PURCHASES][0], field: value}
    assert not validator(events.PURCHASES).is_valid(doc)


@pytest.mark.parametrize(("field", "value"), NON_CONTRACT_VALUES)
def test_code_rejects_what_the_contract_forbids(field: str, value: Any) -> None:
    doc = {**VALID_EVENTS[events.PURCHASES][0], field: value}
    with pytest.raises(InvalidEvent):
        parse(events.PURCHASES, doc)


# ------------------------------------------------------------------- the one-way property


def explained_code_only_rejection(doc: Any, exc: InvalidEvent) -> bool:
    """True if the code rejected a schema-valid document for one of the documented reasons."""
    if not isinstance(doc, dict):
        return False
    occurred = doc.get("occurred_at")
    match exc.reason:
        case "future_timestamp" | "foreign_currency":
            return True
        case "invalid_amount":
            amount = doc.get("amount")
            return isinstance(amount, str) and Decimal(amount) > MAX_AMOUNT
        case "bad_timestamp":
            if not isinstance(occurred, str):
                return False
            try:
                return parse_rfc3339(occurred) < MIN_EVENT_TIME_MS
            except ValueError:
                return True  # calendar-invalid: the pattern only checks the shape
        case "wrong_type":
            return (isinstance(occurred, float) and occurred.is_integer()) or (
                isinstance(occurred, int) and occurred >= 2**64
            )
        case "invalid_json":
            return "infinity" in exc.detail  # a number outside the double range
    return False


def identifiers() -> st.SearchStrategy[str]:
    alphabet = st.characters(codec="utf-8", exclude_characters=CONTROL_CHARS)
    return st.text(alphabet, min_size=1, max_size=MAX_ID_LENGTH) | st.just("i" * MAX_ID_LENGTH)


def json_scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    )


def json_values() -> st.SearchStrategy[Any]:
    return st.recursive(
        json_scalars(),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=6,
    )


def bad_identifiers() -> st.SearchStrategy[Any]:
    alphabet = st.characters(codec="utf-8")
    with_control = st.tuples(
        st.text(alphabet, max_size=5), st.sampled_from(CONTROL_CHARS), st.text(alphabet, max_size=5)
    ).map("".join)
    return st.one_of(
        st.just(""),
        st.text(alphabet, min_size=MAX_ID_LENGTH + 1, max_size=MAX_ID_LENGTH + 40),
        with_control,
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    )


@st.composite
def rfc3339_times(draw: st.DrawFn, low: int = MIN_EVENT_TIME_MS, high: int = NOW_MS) -> str:
    ms = draw(st.integers(low, high))
    offset = draw(st.integers(-(23 * 60 + 59), 23 * 60 + 59))
    local = datetime.fromtimestamp(ms / 1000, tz=timezone(timedelta(minutes=offset)))
    text = local.strftime("%Y-%m-%d") + draw(st.sampled_from("Tt ")) + local.strftime("%H:%M:%S")
    digits = draw(st.integers(0, 9))
    if digits:
        text += "." + f"{local.microsecond:06d}{'0' * 3}"[:digits]
    if offset == 0 and draw(st.booleans()):
        return text + draw(st.sampled_from("Zz"))
    sign, minutes = ("-" if offset < 0 else "+"), abs(offset)
    return f"{text}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def valid_times() -> st.SearchStrategy[Any]:
    return st.integers(MIN_EVENT_TIME_MS, NOW_MS) | rfc3339_times()


def bad_times() -> st.SearchStrategy[Any]:
    naive = st.integers(MIN_EVENT_TIME_MS, NOW_MS).map(
        lambda ms: datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    )
    return st.one_of(
        st.integers(max_value=MIN_EVENT_TIME_MS - 1),
        st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
        st.booleans(),
        naive,  # no offset
        naive.map(lambda text: text[:10]),  # date only
        st.text(st.sampled_from(string.ascii_letters + " :-+.,/")),  # no digits at all
        st.lists(st.integers(), max_size=2),
    )


def beyond_times() -> st.SearchStrategy[Any]:
    """Schema-valid, rejected by the code (see the module docstring)."""
    return st.one_of(
        st.integers(NOW_MS + DAY_MS + 1, 2**63 - 1),
        st.integers(2**64, 2**70),
        st.floats(MIN_EVENT_TIME_MS, 1e15).map(float.__floor__).map(float),
        rfc3339_times(NOW_MS + DAY_MS + 1000, 253_402_214_400_000),  # up to 9999-12-31
        st.sampled_from(["2026-02-30T10:00:00Z", "2016-12-31T23:59:60Z", "1980-06-01T00:00:00Z"]),
    )


def valid_amounts() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.integers(0, 1_000_000_000),
        st.floats(0, 1e9, allow_nan=False),
        st.from_regex(r"\A[0-9]{1,9}(\.[0-9]{1,6})?\Z"),
    )


def bad_amounts() -> st.SearchStrategy[Any]:
    nonzero = st.from_regex(r"\A[0-9]{0,3}[1-9](\.[0-9]{1,2})?\Z")
    return st.one_of(
        st.integers(max_value=-1),
        st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False),
        nonzero.map(lambda text: "-" + text),
        st.integers(min_value=1_000_000_001),
        st.floats(min_value=1.0000001e9, allow_nan=False, allow_infinity=False),
        st.text(st.sampled_from(string.ascii_letters + " ,/")),
        st.sampled_from(["", "NaN", "Infinity", "-Infinity", "1,5", "1.2.3", "0x10", "--1"]),
        st.booleans(),
        st.lists(st.integers(), max_size=2),
    )


def beyond_amounts() -> st.SearchStrategy[Any]:
    return st.from_regex(r"\A[1-9][0-9]{9,12}(\.[0-9]{1,2})?\Z").filter(
        lambda text: Decimal(text) > MAX_AMOUNT
    )


def bad_choices(allowed: frozenset[str]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.text(max_size=20).filter(lambda text: text not in allowed),
        st.integers(),
        st.booleans(),
        st.lists(st.sampled_from(sorted(allowed)), max_size=2),
    )


def bad_currencies() -> st.SearchStrategy[Any]:
    ascii_text = st.text(st.sampled_from(string.printable), max_size=8)
    return st.one_of(
        ascii_text.filter(lambda text: not re.fullmatch(r"[A-Za-z]{3}", text)),
        st.integers(),
        st.booleans(),
        st.lists(st.just("USD"), max_size=1),
    )


@dataclasses.dataclass(frozen=True)
class FieldSpace:
    """Values of one field: contract-valid, contract-invalid, and valid-but-rejected-by-code."""

    required: bool
    valid: st.SearchStrategy[Any]
    invalid: st.SearchStrategy[Any]
    beyond: st.SearchStrategy[Any] | None = None


def _field_spaces(topic: str) -> dict[str, FieldSpace]:
    optional_ident = st.none() | identifiers()
    spaces = {
        "event_id": FieldSpace(True, identifiers(), bad_identifiers()),
        "customer_id": FieldSpace(True, identifiers(), bad_identifiers()),
        "occurred_at": FieldSpace(True, valid_times(), bad_times(), beyond_times()),
        "timezone": FieldSpace(False, st.sampled_from(["Asia/Shanghai", "UTC"]), json_values()),
    }
    if topic == events.PURCHASES:
        spaces |= {
            "order_id": FieldSpace(True, identifiers(), bad_identifiers()),
            "amount": FieldSpace(True, valid_amounts(), bad_amounts(), beyond_amounts()),
            "currency": FieldSpace(
                False,
                st.sampled_from([None, "USD", "usd", "Usd"]),
                bad_currencies(),
                st.sampled_from(["EUR", "cny", "XXX"]),
            ),
            "kind": FieldSpace(
                False, st.sampled_from(sorted(PURCHASE_KINDS)), bad_choices(PURCHASE_KINDS)
            ),
            "channel": FieldSpace(False, optional_ident, bad_identifiers()),
        }
    elif topic in (events.EMAIL_OPENS, events.EMAIL_CLICKS):
        spaces |= {
            "message_id": FieldSpace(True, identifiers(), bad_identifiers()),
            "campaign_id": FieldSpace(False, optional_ident, bad_identifiers()),
        }
        if topic == events.EMAIL_CLICKS:
            spaces["url"] = FieldSpace(False, json_values(), json_values())
    elif topic == events.WECHAT:
        spaces["kind"] = FieldSpace(
            True, st.sampled_from(sorted(WECHAT_KINDS)), bad_choices(WECHAT_KINDS)
        )
    else:
        spaces |= {
            "kind": FieldSpace(
                True, st.sampled_from(sorted(SUPPRESSION_KINDS)), bad_choices(SUPPRESSION_KINDS)
            ),
            "channel": FieldSpace(
                False,
                st.sampled_from(sorted(SUPPRESSION_CHANNELS)),
                bad_choices(SUPPRESSION_CHANNELS),
            ),
        }
    return spaces


@st.composite
def documents(draw: st.DrawFn, topic: str) -> Any:
    """Mostly valid documents with a few fields broken (left out, null, invalid, or valid for
    the schema but not for the code), unknown extra fields, and now and then no object."""
    # Rare cases test an inner value: hypothesis favours boundary values (0, the maximum).
    if draw(st.integers(0, 30)) == 13:
        return draw(json_values())
    spaces = _field_spaces(topic)
    broken = draw(st.sets(st.sampled_from(sorted(spaces)), max_size=3))
    doc: dict[str, Any] = {}
    for name, space in spaces.items():
        if name not in broken:
            if space.required or draw(st.booleans()):
                doc[name] = draw(space.valid)
            continue
        modes = ["absent", "null", "invalid"] + (["beyond"] if space.beyond is not None else [])
        mode = draw(st.sampled_from(modes))
        if mode == "null":
            doc[name] = None
        elif mode == "invalid":
            doc[name] = draw(space.invalid)
        elif mode == "beyond" and space.beyond is not None:
            doc[name] = draw(space.beyond)
    extras = draw(
        st.dictionaries(
            st.text(max_size=10).filter(lambda key: key not in spaces), json_values(), max_size=3
        )
    )
    if draw(st.integers(0, 20)) == 13:
        extras["huge"] = 10**400  # beyond the double range
    return {**extras, **doc}


@pytest.mark.parametrize("topic", INPUT_TOPICS)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_whatever_the_schema_rejects_the_code_rejects(topic: str, data: st.DataObject) -> None:
    doc = data.draw(documents(topic), label="document")
    payload = encode(doc)
    schema_ok = validator(topic).is_valid(json.loads(payload))
    try:
        parse_event(topic, payload, now_ms=NOW_MS)
    except InvalidEvent as exc:  # anything else escaping parse_event fails the test
        if schema_ok:
            assert explained_code_only_rejection(doc, exc), (
                f"schema accepts but the code rejects for an undocumented reason: {exc}"
            )
    else:
        assert schema_ok, f"the schema rejects what the code accepts: {schema_errors(topic, doc)}"


# ------------------------------------------------------------------------------------ outputs

RULES = default_rules()
EMITTED_AT = to_rfc3339(NOW_MS)
START = parse_rfc3339("2025-01-06T10:00:00+08:00")


@dataclasses.dataclass
class Outputs:
    changes: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    change_ms: list[int] = dataclasses.field(default_factory=list)
    profiles: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # Per change: the engagement level before it (for the campaign policy's Transition).
    previous_levels: list[str | None] = dataclasses.field(default_factory=list)


class Journey:
    """Drives the pure core like the segment agent does, for several customers."""

    def __init__(self) -> None:
        self.states: dict[str, CustomerState | None] = {}
        self.levels: dict[str, str | None] = {}
        self.out = Outputs()
        self.rules: Rules = RULES
        self.seq = 0

    def _collect(self, customer: str, result: StepResult, at_ms: int) -> None:
        for change in result.changes:
            change["emitted_at"] = EMITTED_AT  # as agents/segment.py does before publishing
            self.out.changes.append(change)
            self.out.change_ms.append(at_ms)
            self.out.previous_levels.append(self.levels.get(customer))
        if result.profile is not None:
            self.out.profiles.append(result.profile)
            self.levels[customer] = result.profile["engagement"]["level"]

    def event(
        self, topic: str, customer: str, day: float, cause: str = "event", **fields: Any
    ) -> StepResult:
        self.seq += 1
        at_ms = START + int(day * DAY_MS)
        doc = {
            "event_id": f"{customer}-{self.seq}",
            "customer_id": customer,
            "occurred_at": to_rfc3339(at_ms),
            **fields,
        }
        assert_valid(topic, doc)
        event = parse_event(topic, encode(doc), now_ms=NOW_MS)
        result = apply_event(
            self.states.get(customer), event, self.rules, DEFAULT_PARAMS, cause=cause
        )
        if result.duplicate:
            return result
        self.states[customer] = result.state
        self._collect(customer, result, at_ms)
        return result

    def redeliver(self, topic: str, doc: dict[str, Any]) -> StepResult:
        event = parse_event(topic, encode(doc), now_ms=NOW_MS)
        return apply_event(self.states.get(event.customer_id), event, self.rules, DEFAULT_PARAMS)

    def purchase(self, customer: str, day: float, amount: Any, order: str, **more: Any) -> None:
        self.event(events.PURCHASES, customer, day, order_id=order, amount=amount, **more)

    def tick(self, day: float, cause: str = "time") -> None:
        at_ms = START + int(day * DAY_MS)
        for customer, state in self.states.items():
            if state is not None:
                self._collect(
                    customer, reevaluate(state, self.rules, DEFAULT_PARAMS, at_ms, cause), at_ms
                )

    def change_rules(self, new_rules: Rules, day: float) -> None:
        self.rules = new_rules
        self.tick(day, cause="rules_change")


@cache
def journey() -> Journey:
    j = Journey()
    # A prospect who becomes a VIP, goes quiet, churns, comes back, then refunds.
    j.event(events.EMAIL_OPENS, "00001", 0, message_id="m1", campaign_id="launch")
    j.event(events.EMAIL_CLICKS, "00001", 0.1, message_id="m1", url="https://x.example/a")
    j.event(events.WECHAT, "00001", 0.2, kind="follow", timezone="Asia/Shanghai")
    j.purchase("00001", 1, "120.00", "o-1", channel="web", currency="USD")
    for n, day in enumerate((20, 40, 60, 80, 100, 120), start=2):
        j.purchase("00001", day, 250, f"o-{n}")
    for day in (121, 122, 123):
        j.event(events.WECHAT, "00001", day, kind="activity_join")
    j.tick(215)  # 95 days without a purchase: at_risk
    j.tick(305)  # 185 days: churned, no longer vip
    j.purchase("00001", 320, 99.5, "o-8")  # reactivated
    j.purchase("00001", 321, 99.5, "o-8", kind="refund")
    j.event(events.SUPPRESSIONS, "00001", 322, kind="unsubscribe", channel="email")
    # A one-time buyer whose refunds exceed what was seen bought.
    j.purchase("00002", 5, "30", "p-1")
    j.purchase("00002", 6, "45", "p-unknown", kind="refund")
    j.event(events.SUPPRESSIONS, "00002", 7, kind="complaint", channel="all")
    # Engaged but never bought.
    for day in range(10, 16):
        j.event(events.EMAIL_CLICKS, "00003", day, message_id=f"n{day}")
    # History imported by `tierstream replay`.
    for n, day in enumerate((30, 60, 75)):
        j.purchase("00004", day, 40 + n, f"b-{n}", cause="backfill")
    # Erased: nothing is published for it afterwards.
    j.purchase("00005", 3, 10, "e-1")
    erased = j.event(events.SUPPRESSIONS, "00005", 4, kind="erase")
    assert erased.erased and not erased.changes and erased.profile is None
    j.states.pop("00005")
    # A redelivered event changes nothing.
    again = j.redeliver(
        events.EMAIL_OPENS,
        {
            "event_id": "00001-1",
            "customer_id": "00001",
            "occurred_at": to_rfc3339(START),
            "message_id": "m1",
        },
    )
    assert again.duplicate and not again.changes
    # A new rules file: a lower VIP bar re-tiers customers.
    text = resources.files("segmentation").joinpath("default_rules.toml").read_text("utf-8")
    doc = tomllib.loads(text)
    (vip,) = [rule for rule in doc["tiers"] if rule["name"] == "vip"]
    vip["when"] = {"monetary_gt": 50, "frequency_gt": 1}
    doc["rules_version"] = "test-lower-vip"
    lowered = rules.parse_rules(doc, fallback_version="unused")
    j.change_rules(lowered, 323)
    j.tick(700)
    return j


def test_journey_covers_the_output_space() -> None:
    out = journey().out
    assert {c["cause"] for c in out.changes} == set(step.CAUSES)
    assert {c["stage"] for c in out.changes} == set(lifecycle.STAGES)
    assert {c["tier"] for c in out.changes} == set(rules.TIERS)
    assert any(c["previous_tier"] is None for c in out.changes)
    assert any(p["rfm"]["monetary"] < 0 for p in out.profiles)
    assert any(p["p_alive"] is None for p in out.profiles)
    assert any(p["suppressions"] for p in out.profiles)
    assert any(p["tags"] for p in out.profiles)


def test_tier_changes_match_their_schema() -> None:
    out = journey().out
    assert out.changes
    declared = set(schema("tier-changes")["properties"])
    for change in out.changes:
        assert set(change) == declared, "published and documented fields differ"
        assert_output("tier-changes", change)


def test_profiles_match_their_schema() -> None:
    out = journey().out
    assert out.profiles
    for profile in out.profiles:
        assert_output("profile", profile)


def test_campaign_triggers_match_their_schema() -> None:
    out = journey().out
    policy = campaigns.parse_campaign_policy({"holdout_share": 0.5})
    states: dict[str, campaigns.CampaignState] = {}
    triggers: list[dict[str, str]] = []
    skipped: list[tuple[str, str]] = []
    for change, at_ms, previous_level in zip(
        out.changes, out.change_ms, out.previous_levels, strict=True
    ):
        assert parse_rfc3339(change["occurred_at"]) == at_ms
        transition = campaigns.Transition(
            customer_id=change["customer_id"],
            previous_tier=change["previous_tier"],
            tier=change["tier"],
            previous_stage=change["previous_stage"],
            stage=change["stage"],
            engagement_level=change["engagement_level"],
            previous_engagement_level=previous_level,
            occurred_at_ms=at_ms,
            change_id=change["change_id"],
            cause=change["cause"],
        )
        customer = change["customer_id"]
        decision = campaigns.decide(transition, states.get(customer), None, policy, "Europe/Berlin")
        states[customer] = decision.state
        triggers += [trigger.to_message() for trigger in decision.triggers]
        skipped += decision.skipped
    assert {t["campaign"] for t in triggers} >= {"vip_welcome", "welcome", "winback"}
    assert "excluded_cause" in {reason for _, reason in skipped}  # the backfill
    declared = set(schema("campaign-triggers")["properties"])
    for trigger in triggers:
        assert set(trigger) == declared
        assert_output("campaign-triggers", trigger)


def test_hand_written_campaign_trigger_matches_its_schema() -> None:
    trigger = campaigns.Trigger(
        trigger_id=campaigns.trigger_id("0" * 32, "vip_welcome"),
        customer_id="00003",
        campaign="vip_welcome",
        channel="email",
        variant="holdout",
        tier="vip",
        stage="active",
        reason="entered tier vip (from active)",
        send_after="2026-03-02T09:00:00.000+08:00",
        occurred_at="2026-03-01T22:10:00.000+08:00",
    )
    assert_output("campaign-triggers", trigger.to_message())


def churn_warning(state: CustomerState, as_of_ms: int, severity: str) -> dict[str, Any]:
    """A churn-warnings message as the design describes it, from the core's own figures."""
    ev = evaluate(state, RULES, DEFAULT_PARAMS, as_of_ms)
    features = ev.features
    assert ev.last_purchase_ms is not None
    return {
        "warning_id": step.change_id(
            state.customer_id, ("churn", severity), ("churn", severity), as_of_ms, RULES.version
        ),
        "customer_id": state.customer_id,
        "p_alive": features["p_alive"],
        "days_since_last_purchase": (as_of_ms - ev.last_purchase_ms) / DAY_MS,
        "expected_days_between_purchases": expected_days_between_purchases(
            DEFAULT_PARAMS, features["x"], features["t_x"]
        ),
        "tier": ev.tier,
        "stage": ev.stage.stage,
        "severity": severity,
        "reason": f"P(alive) {features['p_alive']:.3f} below {RULES.churn.p_alive_below}",
        "occurred_at": to_rfc3339(as_of_ms),
    }


def test_churn_warnings_match_their_schema() -> None:
    """No producer yet: the schema is checked against messages built from the model."""
    state = journey().states["00001"]
    assert state is not None
    for days, severity in ((200, "warning"), (400, "critical")):
        warning = churn_warning(state, START + days * DAY_MS, severity)
        assert set(warning) == set(schema("churn-warnings")["properties"])
        assert_output("churn-warnings", warning)
    bad = churn_warning(state, START + 400 * DAY_MS, "critical") | {"severity": "severe"}
    assert not validator("churn-warnings").is_valid(bad)


# ------------------------------------------------------------------ through the agent's glue


class RecordingTopic:
    def __init__(self, name: str, sent: list[tuple[str, bytes | None, bytes | None]]) -> None:
        self.name = name
        self.sent = sent

    async def send(
        self,
        *,
        key: bytes | None = None,
        value: bytes | None = None,
        partition: int | None = None,
        headers: Any = None,
    ) -> None:
        self.sent.append((self.name, key, value))


def _glue() -> tuple[Any, list[tuple[str, bytes | None, bytes | None]]]:
    from agents.segment import SegmentProcessor
    from streams import metrics
    from streams.app import Runtime
    from streams.settings import load_settings

    @dataclasses.dataclass
    class FixedClockRuntime(Runtime):
        def now_ms(self) -> int:
            return NOW_MS

    sent: list[tuple[str, bytes | None, bytes | None]] = []
    # No Faust app, topics or table: the processor only needs `send` and a mapping.
    stand_ins: dict[str, Any] = {
        "app": None,
        "inputs": None,
        "customers": {},
        "out": {name: RecordingTopic(name, sent) for name in topics.ALL_TOPICS},
    }
    runtime = FixedClockRuntime(
        settings=load_settings({}),
        rules=RULES,
        params=DEFAULT_PARAMS,
        metrics=metrics.create(),
        **stand_ins,
    )
    return SegmentProcessor(runtime), sent


def test_agent_outputs_match_their_schemas() -> None:
    """The real SegmentProcessor (fake topics, fixed clock): tier changes with emitted_at,
    profiles and dead letters as published."""
    from streams.partitioning import partition_for

    processor, sent = _glue()
    partitions = processor.rt.settings.partitions
    offset = 0

    async def feed(topic: str, key: bytes | None, value: bytes | None) -> None:
        nonlocal offset
        offset += 1
        partition = partition_for(key, partitions) if key else 0
        message = SimpleNamespace(
            topic=topic, partition=partition, offset=offset, key=key, headers=None
        )
        await processor.handle(message, value)

    async def run() -> None:
        for topic, docs in VALID_EVENTS.items():
            for index, doc in enumerate(docs):
                if doc.get("kind") == "erase":
                    continue
                doc = {**doc, "event_id": f"{topic}-{index}", "customer_id": "00003"}
                await feed(topic, b"00003", encode(doc))
        await feed(events.PURCHASES, b"00003", b"\xff\xfe not utf-8")
        await feed(events.PURCHASES, b"00003", b"{not json")
        await feed(events.PURCHASES, None, encode({**IDS, "amount": 1}))
        await feed(events.WECHAT, b"00003", None)
        for topic, doc, _ in (c.values for c in _invalid_cases()):
            await feed(topic, b"00003", encode(doc))
        message = SimpleNamespace(topic=events.WECHAT, partition=0, offset=1, key=None)
        await processor.dead_letter(message, b"{}", "internal_error", "RuntimeError('boom')")
        # Profiles are published once per customer when a write batch is written.
        for partition in list(processor.profiles):
            await processor.send_profiles(partition)

    asyncio.run(run())
    published: dict[str, list[tuple[bytes | None, dict[str, Any]]]] = {}
    for name, key, value in sent:
        assert value is not None
        published.setdefault(name, []).append((key, json.loads(value)))
    assert {topics.TIER_CHANGES, topics.PROFILES, topics.DEAD_LETTERS} <= set(published)
    assert set(published) <= {*topics.OUTPUT_TOPICS, topics.PROFILES}
    for key, trigger in published.get(topics.CAMPAIGN_TRIGGERS, []):
        assert key == trigger["customer_id"].encode()
        assert_output("campaign-triggers", trigger)
    for key, warning in published.get(topics.CHURN_WARNINGS, []):
        assert key == warning["customer_id"].encode()
        assert_output("churn-warnings", warning)
    for key, change in published[topics.TIER_CHANGES]:
        assert change["emitted_at"] == EMITTED_AT
        assert key == change["customer_id"].encode()
        assert_output("tier-changes", change)
    for key, profile in published[topics.PROFILES]:
        assert key == profile["customer_id"].encode()
        assert_output("profile", profile)
    letters = [letter for _, letter in published[topics.DEAD_LETTERS]]
    assert len(letters) == 4 + len(list(_invalid_cases())) + 1
    for letter in letters:
        assert_output("dead-letters", letter)
        assert letter["source_topic"] in INPUT_TOPICS
        assert letter["error"].startswith(letter["reason"] + ": ")
        base64.b64decode(letter["payload"], validate=True)
    reasons = {letter["reason"] for letter in letters}
    assert {"not_utf8", "invalid_json", "empty_value", "internal_error"} <= reasons


def test_dead_letter_keeps_the_original_bytes() -> None:
    processor, sent = _glue()
    original = b'{"event_id": "e", "amount": -1}'
    message = SimpleNamespace(
        topic=events.PURCHASES, partition=3, offset=41, key=b"00003", headers=None
    )
    asyncio.run(processor.handle(message, original))
    ((name, key, value),) = sent
    assert (name, key) == (topics.DEAD_LETTERS, b"00003")
    assert value is not None
    letter = json.loads(value)
    assert_output("dead-letters", letter)
    assert base64.b64decode(letter["payload"]) == original
    assert base64.b64decode(letter["key"]) == b"00003"
    assert (letter["partition"], letter["offset"], letter["reason"]) == (3, 41, "missing_field")


def test_asyncapi_documents_the_tick_payload_the_code_reads() -> None:
    (message_ref,) = asyncapi()["channels"][topics.TICKS]["messages"].values()
    payload = _message(message_ref)["payload"]
    assert payload["required"] == ["t"]
    assert set(payload["properties"]) == {"t", "live"}
