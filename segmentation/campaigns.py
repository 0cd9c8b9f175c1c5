"""Campaign policy: which tier/stage transitions fire which campaigns, and whether each may go out.

Everything here is a pure function over plain data. Time is always epoch milliseconds passed in by
the caller (the transition's event time), never read from a clock, so replaying history yields
exactly the triggers that live traffic yielded.

Decisions worth knowing before reading the code:

* Frequency caps and cooldowns are counted at a trigger's ``send_after`` (its occurred_at, held to
  the end of quiet hours). That is still event time, derived deterministically, but it is when
  the message lands in the inbox: counting at occurred_at would let a trigger held overnight and
  one fired the next morning arrive minutes apart.
* Holdout triggers are published (so lift can be measured) but consume no channel cap, because
  nothing is sent to a holdout customer (Braze's control groups behave the same). They pass the
  same eligibility checks (suppression, cooldown, cap) as treatment triggers, so both groups are
  "customers who would have been sent this", and they do count toward the campaign's cooldown.
* A trigger's id is recorded in the campaign state whatever the verdict, so a redelivered
  transition is never re-judged: one that was suppressed or capped stays unsent after a
  resubscribe or after the cap window has passed.
* Transitions with a ``cause`` listed in ``skip_causes`` (default: ``backfill``) fire nothing, so
  importing a shop's history does not mail its whole customer base with stale welcomes.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from typing import Any, Final, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

Channel = Literal["email", "wechat"]
Variant = Literal["treatment", "holdout"]
SuppressionKind = Literal["unsubscribe", "complaint", "resubscribe"]
SkipReason = Literal[
    "duplicate", "excluded_cause", "suppressed", "late", "cooldown", "frequency_cap"
]

CHANNELS: Final[tuple[Channel, ...]] = ("email", "wechat")
STAGES: Final[tuple[str, ...]] = (
    "prospect", "new", "active", "at_risk", "churned", "reactivated"
)
ENGAGEMENT_LEVELS: Final[tuple[str, ...]] = ("high", "medium", "low")
CAUSES: Final[tuple[str, ...]] = ("event", "time", "rules_change", "backfill")
SUPPRESSION_KINDS: Final[tuple[SuppressionKind, ...]] = ("unsubscribe", "complaint", "resubscribe")
SKIP_REASONS: Final[tuple[SkipReason, ...]] = (
    "duplicate", "excluded_cause", "suppressed", "late", "cooldown", "frequency_cap"
)
HOLDOUT_BUCKETS: Final = 10_000
# Enough for several multi-campaign transitions: redelivery replays recent input, not old.
RECENT_TRIGGER_IDS: Final = 32

_HOUR_MS: Final = 3_600_000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)
_HHMM: Final = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
# Campaign names end up in Prometheus label values and downstream routing keys.
_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Rank breaks ties between suppression events with the same timestamp, safest first, so the
# outcome does not depend on arrival order.
_KIND_RANK: Final[Mapping[str, int]] = {"resubscribe": 0, "unsubscribe": 1, "complaint": 2}
_CAUSE_PHRASE: Final[Mapping[str, str]] = {
    "event": "",
    "time": " as time passed",
    "rules_change": " after a rules change",
    "backfill": " during a backfill",
}


# --------------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------------

DEFAULT_CAMPAIGN_POLICY: Final[Mapping[str, Any]] = {
    "default_timezone": "Asia/Shanghai",
    "quiet_hours": {"start": "21:00", "end": "09:00"},
    "holdout_share": 0.10,
    "holdout_salt": "",
    "skip_causes": ["backfill"],
    "caps": {
        "email": [{"limit": 1, "window_hours": 16}, {"limit": 3, "window_hours": 168}],
        "wechat": [{"limit": 1, "window_hours": 24}],
    },
    "rules": [
        {"campaign": "vip_welcome", "channel": "email", "entered": {"tier": "vip"},
         "cooldown_hours": 720},
        {"campaign": "welcome", "channel": "email", "entered": {"stage": "new"},
         "cooldown_hours": 720},
        {"campaign": "winback", "channel": "email", "entered": {"stage": "at_risk"},
         "cooldown_hours": 720},
        {"campaign": "welcome_back", "channel": "email", "entered": {"stage": "reactivated"},
         "cooldown_hours": 720},
        {"campaign": "nurture", "channel": "wechat",
         "entered": {"tier": "potential", "engagement_level": "high"}, "cooldown_hours": 720},
    ],
}
"""The ``[campaigns]`` section as it would read in the rules file, e.g.::

    [campaigns]
    default_timezone = "Asia/Shanghai"
    quiet_hours = { start = "21:00", end = "09:00" }   # equal start and end, or false: none
    holdout_share = 0.10
    skip_causes = ["backfill"]

    [campaigns.caps]          # channels not named here keep their default caps; [] removes them
    email = [{ limit = 1, window_hours = 16 }, { limit = 3, window_hours = 168 }]

    [[campaigns.rules]]       # listing rules replaces the default list; order is priority
    campaign = "vip_welcome"
    channel = "email"
    entered = { tier = "vip" }
    cooldown_hours = 720      # optional, default 0
"""


@dataclass(frozen=True)
class CampaignRule:
    """Fires ``campaign`` when a transition enters the state named by the conditions.

    "Entering" means every given condition holds after the transition and not all of them held
    before; an unknown previous value (a brand-new customer) counts as not holding.
    """

    campaign: str
    channel: Channel
    tier: str | None = None
    stage: str | None = None
    engagement_level: str | None = None
    cooldown_ms: int = 0

    def entered_by(self, t: Transition) -> bool:
        return self._holds(t.tier, t.stage, t.engagement_level) and not self._holds(
            t.previous_tier, t.previous_stage, t.previous_engagement_level
        )

    def _holds(self, tier: str | None, stage: str | None, level: str | None) -> bool:
        return (
            (self.tier is None or tier == self.tier)
            and (self.stage is None or stage == self.stage)
            and (self.engagement_level is None or level == self.engagement_level)
        )


@dataclass(frozen=True)
class FrequencyCap:
    """At most ``limit`` sends in any window of ``window_ms`` (half-open, so sends exactly one
    window apart are both allowed)."""

    limit: int
    window_ms: int


@dataclass(frozen=True)
class QuietHours:
    """Local wall-clock window, in minutes after midnight; wraps midnight when start > end."""

    start_minute: int
    end_minute: int

    def contains(self, minute_of_day: int) -> bool:
        if self.start_minute < self.end_minute:
            return self.start_minute <= minute_of_day < self.end_minute
        return minute_of_day >= self.start_minute or minute_of_day < self.end_minute


@dataclass(frozen=True)
class CampaignPolicy:
    rules: tuple[CampaignRule, ...]
    caps: Mapping[str, tuple[FrequencyCap, ...]]
    quiet_hours: QuietHours | None
    default_timezone: str
    holdout_share: float
    holdout_salt: str = ""
    skip_causes: frozenset[str] = frozenset()

    def lateness_limit_ms(self, rule: CampaignRule) -> int:
        """How late a transition may be and still be judged by this rule (0: any lateness).

        Each history (channel sends, campaign fires) is kept for twice its longest window, which
        judges a transition at most one such window late; the rule needs all of its histories,
        so the shortest of them is the limit.
        """
        cap_window = max((c.window_ms for c in self.caps.get(rule.channel, ())), default=0)
        return min((h for h in (cap_window, rule.cooldown_ms) if h), default=0)


def parse_campaign_policy(d: Mapping[str, Any] | None) -> CampaignPolicy:
    """Build a policy from the ``[campaigns]`` section; keys left out keep their defaults.

    Raises ``ValueError`` naming the offending key (``campaigns.rules[2].channel: ...``).
    """
    if d is None:
        d = {}
    section = _table(d, "campaigns")
    _no_unknown_keys(section, DEFAULT_CAMPAIGN_POLICY.keys(), "campaigns")
    merged = {**DEFAULT_CAMPAIGN_POLICY, **section}

    tz_name = _string(merged["default_timezone"], "campaigns.default_timezone")
    if load_zone(tz_name) is None:
        raise ValueError(f"campaigns.default_timezone: unknown time zone {tz_name!r}")

    share = _number(merged["holdout_share"], "campaigns.holdout_share")
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"campaigns.holdout_share: must be between 0 and 1, got {share}")

    causes = _list(merged["skip_causes"], "campaigns.skip_causes")
    for i, cause in enumerate(causes):
        _choice(cause, CAUSES, f"campaigns.skip_causes[{i}]")

    raw_caps = _table(merged["caps"], "campaigns.caps")
    _no_unknown_keys(raw_caps, CHANNELS, "campaigns.caps")
    caps = {
        channel: _parse_caps(raw, f"campaigns.caps.{channel}")
        for channel, raw in {**DEFAULT_CAMPAIGN_POLICY["caps"], **raw_caps}.items()
    }

    raw_rules = _list(merged["rules"], "campaigns.rules")
    rules = tuple(_parse_rule(r, f"campaigns.rules[{i}]") for i, r in enumerate(raw_rules))
    seen: set[str] = set()
    for i, rule in enumerate(rules):
        # The trigger id hashes (change_id, campaign): two rules with one name would collide.
        if rule.campaign in seen:
            raise ValueError(f"campaigns.rules[{i}].campaign: {rule.campaign!r} is used twice")
        seen.add(rule.campaign)

    return CampaignPolicy(
        rules=rules,
        caps=caps,
        quiet_hours=_parse_quiet_hours(merged["quiet_hours"], "campaigns.quiet_hours"),
        default_timezone=tz_name,
        holdout_share=share,
        holdout_salt=_string(merged["holdout_salt"], "campaigns.holdout_salt", allow_empty=True),
        skip_causes=frozenset(cast(list[str], causes)),
    )


def _parse_rule(raw: Any, path: str) -> CampaignRule:
    rule = _table(raw, path)
    _no_unknown_keys(rule, ("campaign", "channel", "entered", "cooldown_hours"), path)
    campaign = _string(_required(rule, "campaign", path), f"{path}.campaign")
    if not _NAME.match(campaign):
        raise ValueError(
            f"{path}.campaign: {campaign!r} must be 1-64 letters, digits, '_', '.' or '-'"
        )
    channel = cast(Channel, _choice(_required(rule, "channel", path), CHANNELS, f"{path}.channel"))
    entered = _table(_required(rule, "entered", path), f"{path}.entered")
    _no_unknown_keys(entered, ("tier", "stage", "engagement_level"), f"{path}.entered")
    if not entered:
        raise ValueError(f"{path}.entered: name at least one of tier, stage, engagement_level")
    tier = entered.get("tier")
    stage = entered.get("stage")
    level = entered.get("engagement_level")
    cooldown_hours = _number(rule.get("cooldown_hours", 0), f"{path}.cooldown_hours")
    if cooldown_hours < 0:
        raise ValueError(f"{path}.cooldown_hours: must not be negative, got {cooldown_hours}")
    return CampaignRule(
        campaign=campaign,
        channel=channel,
        tier=None if tier is None else _string(tier, f"{path}.entered.tier"),
        stage=None if stage is None else _choice(stage, STAGES, f"{path}.entered.stage"),
        engagement_level=None
        if level is None
        else _choice(level, ENGAGEMENT_LEVELS, f"{path}.entered.engagement_level"),
        cooldown_ms=round(cooldown_hours * _HOUR_MS),
    )


def _parse_caps(raw: Any, path: str) -> tuple[FrequencyCap, ...]:
    caps = []
    for i, item in enumerate(_list(raw, path)):
        cap_path = f"{path}[{i}]"
        cap = _table(item, cap_path)
        _no_unknown_keys(cap, ("limit", "window_hours"), cap_path)
        limit = _required(cap, "limit", cap_path)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"{cap_path}.limit: must be a whole number >= 1, got {limit!r}")
        hours = _number(_required(cap, "window_hours", cap_path), f"{cap_path}.window_hours")
        window_ms = round(hours * _HOUR_MS)
        if window_ms < 1:
            raise ValueError(f"{cap_path}.window_hours: must be positive, got {hours}")
        caps.append(FrequencyCap(limit=limit, window_ms=window_ms))
    return tuple(caps)


def _parse_quiet_hours(raw: Any, path: str) -> QuietHours | None:
    # TOML has no null, so `false` is the spelling for "no quiet hours".
    if raw is False:
        return None
    window = _table(raw, path)
    _no_unknown_keys(window, ("start", "end"), path)
    start = _clock_minute(_required(window, "start", path), f"{path}.start")
    end = _clock_minute(_required(window, "end", path), f"{path}.end")
    return None if start == end else QuietHours(start_minute=start, end_minute=end)


def _clock_minute(raw: Any, path: str) -> int:
    match = _HHMM.match(raw) if isinstance(raw, str) else None
    if match is None:
        raise ValueError(f"{path}: expected a local time \"HH:MM\" (00:00-23:59), got {raw!r}")
    return int(match[1]) * 60 + int(match[2])


def _table(raw: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a table, got {type(raw).__name__}")
    return raw


def _list(raw: Any, path: str) -> list[Any]:
    if not isinstance(raw, list | tuple):
        raise ValueError(f"{path}: expected a list, got {type(raw).__name__}")
    return list(raw)


def _required(table: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in table:
        raise ValueError(f"{path}.{key}: missing")
    return table[key]


def _no_unknown_keys(table: Mapping[str, Any], allowed: Any, path: str) -> None:
    for key in table:
        if key not in allowed:
            raise ValueError(
                f"{path}.{key}: unknown key (expected one of {', '.join(sorted(allowed))})"
            )


def _string(raw: Any, path: str, *, allow_empty: bool = False) -> str:
    if not isinstance(raw, str) or (not raw and not allow_empty):
        raise ValueError(f"{path}: expected a non-empty string, got {raw!r}")
    return raw


def _number(raw: Any, path: str) -> float:
    # bool is an int subclass; `true` where a number belongs is a typo, not 1.
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise ValueError(f"{path}: expected a number, got {raw!r}")
    return float(raw)


def _choice(raw: Any, options: Sequence[str], path: str) -> str:
    if raw not in options:
        raise ValueError(f"{path}: expected one of {', '.join(options)}, got {raw!r}")
    return cast(str, raw)


# --------------------------------------------------------------------------------------------
# Inputs and outputs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    """One change of a customer's tier, stage or engagement level, at event time."""

    customer_id: str
    previous_tier: str | None
    tier: str
    previous_stage: str | None
    stage: str
    engagement_level: str
    previous_engagement_level: str | None
    occurred_at_ms: int
    change_id: str
    cause: str = "event"


@dataclass(frozen=True)
class Trigger:
    """One ``campaign-triggers`` message; fields are exactly the topic's contract."""

    trigger_id: str
    customer_id: str
    campaign: str
    channel: Channel
    variant: Variant
    tier: str
    stage: str
    reason: str
    send_after: str
    occurred_at: str

    def to_message(self) -> dict[str, str]:
        return {
            "trigger_id": self.trigger_id,
            "customer_id": self.customer_id,
            "campaign": self.campaign,
            "channel": self.channel,
            "variant": self.variant,
            "tier": self.tier,
            "stage": self.stage,
            "reason": self.reason,
            "send_after": self.send_after,
            "occurred_at": self.occurred_at,
        }


@dataclass(frozen=True)
class CampaignState:
    """What one customer's campaign history must remember, all in event time.

    ``sends``: per channel, the send times of treatment triggers (what caps count).
    ``fires``: per campaign, the send times of every published trigger (what cooldowns count).
    Both are sorted and kept for twice the longest window behind ``watermark_ms`` (the newest
    transition seen): a transition up to one window late may still be judged, and windows that
    contain its send time reach back one more window.
    """

    watermark_ms: int | None = None
    sends: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    fires: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    recent_trigger_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        # Empty parts are left out: most customers never fire a campaign.
        out: dict[str, Any] = {}
        if self.watermark_ms is not None:
            out["watermark_ms"] = self.watermark_ms
        if self.sends:
            out["sends"] = {k: list(v) for k, v in sorted(self.sends.items())}
        if self.fires:
            out["fires"] = {k: list(v) for k, v in sorted(self.fires.items())}
        if self.recent_trigger_ids:
            out["recent_trigger_ids"] = list(self.recent_trigger_ids)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CampaignState:
        try:
            watermark = d.get("watermark_ms")
            return cls(
                watermark_ms=None if watermark is None else int(watermark),
                sends=_times_by_key(d.get("sends", {})),
                fires=_times_by_key(d.get("fires", {})),
                recent_trigger_ids=tuple(str(x) for x in d.get("recent_trigger_ids", ())),
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed campaign state: {exc}") from exc


def _times_by_key(raw: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {str(k): tuple(sorted(int(t) for t in v)) for k, v in raw.items() if v}


@dataclass(frozen=True)
class ChannelSuppression:
    kind: SuppressionKind
    changed_at_ms: int

    @property
    def suppressed(self) -> bool:
        return self.kind != "resubscribe"


@dataclass(frozen=True)
class SuppressionState:
    """Per channel, the latest suppression change by event time (last writer wins)."""

    channels: Mapping[str, ChannelSuppression] = field(default_factory=dict)

    def is_suppressed(self, channel: str) -> bool:
        entry = self.channels.get(channel)
        return entry is not None and entry.suppressed

    def to_dict(self) -> dict[str, Any]:
        return {
            channel: {"kind": e.kind, "changed_at_ms": e.changed_at_ms}
            for channel, e in sorted(self.channels.items())
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SuppressionState:
        channels: dict[str, ChannelSuppression] = {}
        for channel, entry in d.items():
            path = f"suppression state {channel!r}"
            _choice(channel, CHANNELS, path)
            e = _table(entry, path)
            kind = cast(SuppressionKind, _choice(e.get("kind"), SUPPRESSION_KINDS, f"{path}.kind"))
            at = e.get("changed_at_ms")
            if isinstance(at, bool) or not isinstance(at, int):
                raise ValueError(f"{path}.changed_at_ms: expected an integer, got {at!r}")
            channels[channel] = ChannelSuppression(kind=kind, changed_at_ms=at)
        return cls(channels=channels)


def apply_suppression(
    state: SuppressionState | None, kind: str, channel: str, occurred_at_ms: int
) -> SuppressionState:
    """Fold one ``suppressions`` event in; the result does not depend on arrival order.

    Each channel is a last-writer-wins register on (event time, kind rank), so a late
    ``resubscribe`` older than a later ``unsubscribe`` changes nothing, and simultaneous events
    resolve to the safer kind. ``channel="all"`` writes every channel. ``erase`` is not a
    suppression (it deletes the customer) and is rejected here like any unknown value.
    """
    state = state or SuppressionState()
    checked_kind = cast(SuppressionKind, _choice(kind, SUPPRESSION_KINDS, "suppression kind"))
    targets = CHANNELS if channel == "all" else (_choice(channel, CHANNELS, "suppression channel"),)
    incoming = ChannelSuppression(kind=checked_kind, changed_at_ms=occurred_at_ms)
    channels = dict(state.channels)
    for target in targets:
        current = channels.get(target)
        if current is None or _suppression_order(incoming) > _suppression_order(current):
            channels[target] = incoming
    return SuppressionState(channels=channels)


def _suppression_order(e: ChannelSuppression) -> tuple[int, int]:
    return (e.changed_at_ms, _KIND_RANK[e.kind])


@dataclass(frozen=True)
class Decision:
    """``triggers`` to publish, ``skipped`` (campaign, reason) pairs, and the state to store."""

    triggers: list[Trigger]
    skipped: list[tuple[str, SkipReason]]
    state: CampaignState


# --------------------------------------------------------------------------------------------
# Deterministic hashes
# --------------------------------------------------------------------------------------------


def trigger_id(change_id: str, campaign: str) -> str:
    """Same transition and campaign, same id: redeliveries and replays re-derive it."""
    key = f"{change_id}\x1f{campaign}".encode()
    return hashlib.blake2b(key, digest_size=16, person=b"tierstream-trig").hexdigest()


def holdout_bucket(customer_id: str, campaign: str, salt: str = "") -> int:
    """A stable bucket 0-9999 (Braze-style); Python's hash() is salted per process."""
    key = f"{salt}\x1f{customer_id}\x1f{campaign}".encode()
    digest = hashlib.blake2b(key, digest_size=8, person=b"tierstream-hold").digest()
    return int.from_bytes(digest, "big") % HOLDOUT_BUCKETS


def variant_for(customer_id: str, campaign: str, policy: CampaignPolicy) -> Variant:
    threshold = round(policy.holdout_share * HOLDOUT_BUCKETS)
    in_holdout = holdout_bucket(customer_id, campaign, policy.holdout_salt) < threshold
    return "holdout" if in_holdout else "treatment"


# --------------------------------------------------------------------------------------------
# Time zones and quiet hours
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def load_zone(name: str) -> ZoneInfo | None:
    """The zone, or None when the name is not a known IANA zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def resolve_zone(tz_name: str | None, default: str) -> ZoneInfo:
    """The customer's zone; an absent or unknown name falls back to the configured default,
    since a bad profile field must not stop the stream."""
    zone = load_zone(tz_name) if tz_name else None
    if zone is None:
        zone = load_zone(default)
    if zone is None:
        raise ValueError(f"default time zone {default!r} is not a known IANA zone")
    return zone


def to_local(ms: int, zone: ZoneInfo) -> datetime:
    # Integer arithmetic from the epoch: fromtimestamp(ms / 1000) would round through a float.
    return (_EPOCH + timedelta(milliseconds=ms)).astimezone(zone)


def to_epoch_ms(dt: datetime) -> int:
    return (dt - _EPOCH) // _ONE_MS


def format_rfc3339(ms: int, zone: ZoneInfo) -> str:
    return to_local(ms, zone).isoformat(timespec="milliseconds")


def in_quiet_hours(ms: int, zone: ZoneInfo, quiet: QuietHours | None) -> bool:
    if quiet is None:
        return False
    local = to_local(ms, zone)
    return quiet.contains(local.hour * 60 + local.minute)


def send_after_ms(occurred_at_ms: int, zone: ZoneInfo, quiet: QuietHours | None) -> int:
    """``occurred_at_ms`` when outside quiet hours, else the first later instant that is.

    Normally that is the next local ``end`` (09:00). Clock changes can end the window
    elsewhere: a jump over ``end`` ends it at the jump, a jump back to before ``start`` ends it
    there, and a zone that skipped a day can land in the next night's window. So the walk stops
    at every offset change between here and the next ``end`` and looks again.
    """
    at = occurred_at_ms
    for _ in range(8):  # one or two rounds in practice; the bound keeps it total
        if not in_quiet_hours(at, zone, quiet):
            break
        end = _next_wall_end(at, zone, cast(QuietHours, quiet))
        change = _offset_change_between(at, end, zone)
        at = end if change is None else change
    return at


def _next_wall_end(at: int, zone: ZoneInfo, quiet: QuietHours) -> int:
    """The first instant after ``at`` whose local wall time is the window's end, ignoring gaps
    (a non-existent wall time maps past the gap; the offset change before it is caught)."""
    local = to_local(at, zone)
    end_date = local.date()
    if quiet.start_minute > quiet.end_minute and (
        local.hour * 60 + local.minute >= quiet.start_minute
    ):
        end_date += timedelta(days=1)
    wall = datetime.combine(end_date, time(quiet.end_minute // 60, quiet.end_minute % 60))
    # fold=0 is the earlier of a repeated wall time; fold=1 serves a window that started in
    # the repeated hour after the first pass of ``end``.
    instants = [to_epoch_ms(wall.replace(tzinfo=zone, fold=fold)) for fold in (0, 1)]
    later = [i for i in instants if i > at]
    return min(later) if later else at + 24 * _HOUR_MS


def _offset_change_between(lo: int, hi: int, zone: ZoneInfo) -> int | None:
    """First instant in (lo, hi] with a UTC offset other than lo's, if the offsets differ."""
    before = to_local(lo, zone).utcoffset()
    if to_local(hi, zone).utcoffset() == before:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if to_local(mid, zone).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return hi


# --------------------------------------------------------------------------------------------
# The decision
# --------------------------------------------------------------------------------------------


def decide(
    transition: Transition,
    customer_campaign_state: CampaignState | None,
    suppression_state: SuppressionState | None,
    policy: CampaignPolicy,
    tz_name: str | None,
) -> Decision:
    """Which campaigns this transition fires, which of them may be published, and the new state.

    Rules are judged in policy order, so an earlier rule wins a cap both could hit. Checks run
    cheapest and most final first: duplicate, excluded cause, suppression, lateness, cooldown,
    frequency cap; a trigger that passes all of them is assigned its variant and published.
    """
    state = customer_campaign_state or CampaignState()
    suppression = suppression_state or SuppressionState()
    occurred = transition.occurred_at_ms
    entered = [rule for rule in policy.rules if rule.entered_by(transition)]
    watermark = occurred if state.watermark_ms is None else max(state.watermark_ms, occurred)
    if not entered:
        # Most transitions enter no campaign: only the watermark moves and old times age out,
        # with no copy of the history to add to.
        return Decision(
            triggers=[],
            skipped=[],
            state=_pruned(watermark, state.sends, state.fires, state.recent_trigger_ids, policy),
        )
    zone = resolve_zone(tz_name, policy.default_timezone)
    send_at = send_after_ms(occurred, zone, policy.quiet_hours)

    sends = {k: list(v) for k, v in state.sends.items()}
    fires = {k: list(v) for k, v in state.fires.items()}
    recent = list(state.recent_trigger_ids)
    seen = set(recent)
    triggers: list[Trigger] = []
    skipped: list[tuple[str, SkipReason]] = []

    for rule in entered:
        tid = trigger_id(transition.change_id, rule.campaign)
        if tid in seen:
            skipped.append((rule.campaign, "duplicate"))
            continue
        seen.add(tid)
        recent.append(tid)
        verdict = _skip_reason(
            rule, transition, state.watermark_ms, send_at, sends, fires, suppression, policy
        )
        if verdict is not None:
            skipped.append((rule.campaign, verdict))
            continue
        variant = variant_for(transition.customer_id, rule.campaign, policy)
        bisect.insort(fires.setdefault(rule.campaign, []), send_at)
        if variant == "treatment":
            bisect.insort(sends.setdefault(rule.channel, []), send_at)
        triggers.append(
            Trigger(
                trigger_id=tid,
                customer_id=transition.customer_id,
                campaign=rule.campaign,
                channel=rule.channel,
                variant=variant,
                tier=transition.tier,
                stage=transition.stage,
                reason=_reason(rule, transition),
                send_after=format_rfc3339(send_at, zone),
                occurred_at=format_rfc3339(occurred, zone),
            )
        )

    return Decision(
        triggers=triggers,
        skipped=skipped,
        state=_pruned(watermark, sends, fires, recent, policy),
    )


def _skip_reason(
    rule: CampaignRule,
    t: Transition,
    watermark_ms: int | None,
    send_at: int,
    sends: Mapping[str, list[int]],
    fires: Mapping[str, list[int]],
    suppression: SuppressionState,
    policy: CampaignPolicy,
) -> SkipReason | None:
    if t.cause in policy.skip_causes:
        return "excluded_cause"
    if suppression.is_suppressed(rule.channel):
        return "suppressed"
    limit = policy.lateness_limit_ms(rule)
    if limit and watermark_ms is not None and t.occurred_at_ms < watermark_ms - limit:
        return "late"
    # Both directions: a late transition must also keep its distance from later sends.
    if rule.cooldown_ms and any(
        abs(send_at - f) < rule.cooldown_ms for f in fires.get(rule.campaign, ())
    ):
        return "cooldown"
    history = sends.get(rule.channel, [])
    for cap in policy.caps.get(rule.channel, ()):
        if _window_peak(history, send_at, cap.window_ms) >= cap.limit:
            return "frequency_cap"
    return None


def _window_peak(times: Sequence[int], at: int, window_ms: int) -> int:
    """Most of ``times`` inside any window [a, a + window_ms) that also contains ``at``.

    Checking only the window ending at ``at`` would let an out-of-order (earlier) send squeeze
    a later window over its limit. The count changes only where a time enters the window, so
    the maximum is at the earliest possible start or at one of those entry points.
    """
    lowest = at - window_ms + 1
    starts = [lowest, *(t - window_ms + 1 for t in times if lowest < t - window_ms + 1 <= at)]
    return max(sum(1 for t in times if a <= t < a + window_ms) for a in starts)


def _pruned(
    watermark: int,
    sends: Mapping[str, Sequence[int]],
    fires: Mapping[str, Sequence[int]],
    recent: Sequence[str],
    policy: CampaignPolicy,
) -> CampaignState:
    kept_sends: dict[str, tuple[int, ...]] = {}
    for channel, times in sends.items():
        longest = max((c.window_ms for c in policy.caps.get(channel, ())), default=0)
        kept = tuple(t for t in times if t >= watermark - 2 * longest) if longest else ()
        if kept:
            kept_sends[channel] = kept
    cooldowns = {r.campaign: r.cooldown_ms for r in policy.rules}
    kept_fires: dict[str, tuple[int, ...]] = {}
    for campaign, times in fires.items():
        cooldown = cooldowns.get(campaign, 0)
        kept = tuple(t for t in times if t >= watermark - 2 * cooldown) if cooldown else ()
        if kept:
            kept_fires[campaign] = kept
    return CampaignState(
        watermark_ms=watermark,
        sends=kept_sends,
        fires=kept_fires,
        recent_trigger_ids=tuple(recent[-RECENT_TRIGGER_IDS:]),
    )


def _reason(rule: CampaignRule, t: Transition) -> str:
    conditions = [
        (name, value, previous)
        for name, value, previous in (
            ("tier", rule.tier, t.previous_tier),
            ("stage", rule.stage, t.previous_stage),
            ("engagement", rule.engagement_level, t.previous_engagement_level),
        )
        if value is not None
    ]
    text = "entered " + " with ".join(f"{name} {value}" for name, value, _ in conditions)
    if len(conditions) == 1 and conditions[0][2] is not None:
        text += f" (from {conditions[0][2]})"
    return text + _CAUSE_PHRASE.get(t.cause, f" (cause {t.cause})")


DEFAULT_POLICY: Final[CampaignPolicy] = parse_campaign_policy(DEFAULT_CAMPAIGN_POLICY)
