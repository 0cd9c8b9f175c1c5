"""Data sources for the demo and for backfills.

- The CDNOW purchase history (bundled with the `lifetimes` package): 69,659 real orders by 23,570
  customers between January 1997 and June 1998, as `purchases` events.
- A seeded generator of email opens/clicks and WeChat interactions for the same customers (plus
  prospects who never buy), so the demo exercises every input topic.
- A reader for a shop's own history in JSONL or CSV, for `tierstream replay FILE`.

Everything here is plain data (dicts in the shapes of the design's input topics); publishing is
the caller's job.
"""

from __future__ import annotations

import bisect
import csv
import gzip
import importlib.util
import io
import math
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final, TextIO

import orjson

from segmentation.events import (
    EMAIL_CLICKS,
    EMAIL_OPENS,
    INPUT_TOPICS,
    PURCHASES,
    WECHAT,
)
from segmentation.timeutil import parse_rfc3339

Event = dict[str, Any]
TopicEvent = tuple[str, Event]

CDNOW_ROWS: Final = 69_659
CDNOW_CUSTOMERS: Final = 23_570

_DAY_S: Final = 86_400.0
_HOUR_S: Final = 3_600.0
# WeChat's servers and most of its users are on China Standard Time; emitting those events with
# their own offset keeps the demo honest about "RFC 3339 with any offset", not just UTC.
_CST: Final = timezone(timedelta(hours=8))


class DatasetError(RuntimeError):
    """A data file that is missing or cannot be read; the message says what to do."""


# --------------------------------------------------------------------------------------------
# CDNOW


def cdnow_path() -> Path:
    """Path of `CDNOW_master.txt` inside the installed `lifetimes` package.

    Located with `find_spec`, which does not import the package: importing lifetimes pulls in
    pandas/autograd and takes seconds, and all we need is one data file.
    """
    spec = importlib.util.find_spec("lifetimes")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "datasets" / "CDNOW_master.txt"
        if candidate.is_file():
            return candidate
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise DatasetError(
        "the CDNOW dataset ships with the 'lifetimes' package, which is not installed or has no "
        f"datasets/CDNOW_master.txt{where}; install it with: pip install lifetimes==0.11.3"
    )


def _noon_utc(yyyymmdd: str) -> str:
    day = date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8]))
    # The file only has dates; noon UTC keeps an order on its calendar day in every zone from
    # UTC-11 to UTC+11, so "same day" purchases stay same-day wherever they are read.
    return f"{day.isoformat()}T12:00:00+00:00"


def cdnow_purchases(path: Path | None = None) -> Iterator[Event]:
    """Yield the CDNOW orders as `purchases` events, in file order (which is by customer).

    `event_id` and `order_id` are `cdnow-N`, N being the 1-based data row (header excluded), so
    they are stable across runs. `amount` is the file's text exactly ("11.77"), never a float.
    The file holds exact duplicate rows (same customer, day, CD count and value); they are kept as
    distinct orders because they are distinct rows of the source.
    """
    source = path if path is not None else cdnow_path()
    row = 0
    with source.open("r", encoding="ascii", newline=None) as lines:
        for lineno, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields or (lineno == 1 and fields[0] == "customer_id"):
                continue
            if len(fields) != 4:
                raise DatasetError(f"{source}:{lineno}: expected 4 columns, got {len(fields)}")
            customer_id, day, _cds, amount = fields
            if len(day) != 8 or not day.isdigit():
                raise DatasetError(f"{source}:{lineno}: date {day!r} is not YYYYMMDD")
            try:
                Decimal(amount)
            except InvalidOperation:
                raise DatasetError(
                    f"{source}:{lineno}: amount {amount!r} is not a decimal"
                ) from None
            row += 1
            yield {
                "event_id": f"cdnow-{row}",
                "customer_id": customer_id,
                "occurred_at": _noon_utc(day),
                "order_id": f"cdnow-{row}",
                "amount": amount,
                "currency": "USD",
                "kind": "purchase",
                "channel": "cdnow",
            }


# --------------------------------------------------------------------------------------------
# Ordering


def event_time_ms(event: Mapping[str, Any]) -> int:
    """Epoch milliseconds of an event's `occurred_at` (RFC 3339 with offset, or epoch ms)."""
    value = event["occurred_at"]
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return parse_rfc3339(value)
    raise ValueError(f"occurred_at must be RFC 3339 text or epoch ms, got {value!r}")


def time_ordered(events: Iterable[Event]) -> list[Event]:
    """The events sorted by the instant they occurred, ties kept in input order.

    CDNOW is ordered by customer; publishing it that way would tell the stream that one customer
    lived through all 18 months before the next one bought anything. A replay should look like
    live traffic, so it goes out in event-time order. Sorting compares instants, not strings,
    because events may carry different UTC offsets.
    """
    return sorted(events, key=event_time_ms)


def merge_by_time(*streams: Iterable[TopicEvent]) -> list[TopicEvent]:
    """Merge (topic, event) streams into one list in event-time order.

    Inputs need not be sorted. On equal times, earlier streams come first and each stream keeps
    its own order (the sort is stable over the concatenation), so the result is deterministic.
    """
    merged: list[TopicEvent] = [item for stream in streams for item in stream]
    merged.sort(key=lambda item: event_time_ms(item[1]))
    return merged


def cdnow_demo_events(seed: int = 7, path: Path | None = None) -> list[TopicEvent]:
    """The demo's whole input: CDNOW purchases plus generated engagement, in event-time order."""
    purchases = time_ordered(cdnow_purchases(path))
    engagement = generate_engagement(purchases, seed=seed)
    return merge_by_time([(PURCHASES, event) for event in purchases], engagement)


# --------------------------------------------------------------------------------------------
# Events files (tierstream replay FILE)


def _open_text(path: Path) -> TextIO:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


def _events_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    last = suffixes[-1] if suffixes else ""
    if last in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if last == ".csv":
        return "csv"
    with _open_text(path) as handle:
        for line in handle:
            if line.strip():
                return "jsonl" if line.lstrip().startswith("{") else "csv"
    return "jsonl"


def _checked_topic(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise DatasetError(f"{where}: missing 'topic' (one of {', '.join(INPUT_TOPICS)})")
    if value not in INPUT_TOPICS:
        raise DatasetError(
            f"{where}: topic {value!r} is not an input topic (one of {', '.join(INPUT_TOPICS)})"
        )
    return value


def load_events_file(path: str | Path) -> Iterator[TopicEvent]:
    """Read a history file for `tierstream replay FILE`, yielding (topic, event) in file order.

    Two formats, chosen by extension (`.jsonl`/`.ndjson`/`.json` or `.csv`, optionally `.gz`),
    else by the first non-blank line (`{` means JSONL):

    - JSONL: one JSON object per line, the event itself plus a `topic` field naming its input
      topic, e.g. ``{"topic": "purchases", "event_id": "o-1", "customer_id": "c1",
      "occurred_at": "2024-05-01T10:00:00+02:00", "order_id": "o-1", "amount": "19.90"}``.
      Blank lines are skipped.
    - CSV: a header row with a `topic` column and the event's fields as further columns; rows of
      different topics share the header, and an empty cell means the field is absent. Every
      value stays text (so customer ids keep leading zeros and amounts stay exact decimals),
      except an all-digit `occurred_at`, which is epoch milliseconds.

    `topic` must be one of the input topics and is removed from the event. Nothing else is
    validated here: the worker checks each event and sends what it cannot use to `dead-letters`
    with the reason, exactly as for live traffic. Raises DatasetError (with file:line) for a
    line that is not a JSON object or has no valid topic.
    """
    source = Path(path)
    if not source.is_file():
        raise DatasetError(f"{source}: no such file")
    if _events_format(source) == "jsonl":
        yield from _load_jsonl(source)
    else:
        yield from _load_csv(source)


def _load_jsonl(path: Path) -> Iterator[TopicEvent]:
    with _open_text(path) as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise DatasetError(f"{where}: not valid JSON ({exc})") from None
            if not isinstance(doc, dict):
                raise DatasetError(f"{where}: each line must be a JSON object")
            topic = _checked_topic(doc.pop("topic", None), where)
            yield topic, doc


def _load_csv(path: Path) -> Iterator[TopicEvent]:
    with _open_text(path) as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "topic" not in reader.fieldnames:
            raise DatasetError(f"{path}:1: the CSV header needs a 'topic' column")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:
                raise DatasetError(f"{where}: more cells than header columns")
            topic = _checked_topic(row.pop("topic", None), where)
            event: Event = {k: v for k, v in row.items() if v is not None and v != ""}
            occurred = event.get("occurred_at")
            if isinstance(occurred, str) and occurred.isdigit():
                event["occurred_at"] = int(occurred)
            yield topic, event


def dump_events_jsonl(events: Iterable[TopicEvent], path: str | Path) -> int:
    """Write (topic, event) pairs in the JSONL format `load_events_file` reads; returns the count.

    Lets a user export the demo's input (or any generated workload) and replay it elsewhere.
    """
    count = 0
    with Path(path).open("wb") as out:
        for topic, event in events:
            out.write(orjson.dumps({"topic": topic, **event}))
            out.write(b"\n")
            count += 1
    return count


# --------------------------------------------------------------------------------------------
# Engagement generator

_WECHAT_KINDS_CALM: Final = (
    ("moments_like", 0.40),
    ("miniprogram_visit", 0.22),
    ("message_reply", 0.14),
    ("moments_comment", 0.12),
    ("activity_join", 0.12),
)
# Around a purchase people browse the shop's mini-program far more than they like posts.
_WECHAT_KINDS_SHOPPING: Final = (
    ("miniprogram_visit", 0.50),
    ("moments_like", 0.20),
    ("message_reply", 0.15),
    ("activity_join", 0.10),
    ("moments_comment", 0.05),
)
_CLICK_PATHS: Final = (
    "new-releases",
    "top-100",
    "genre/rock",
    "genre/jazz",
    "genre/classical",
    "genre/country",
    "deals",
    "artist-of-the-week",
)
# Seasonal promotions on top of the weekly newsletter: every subscriber gets them.
_PROMOS: Final = (
    ("promo-valentines-1997", date(1997, 2, 6)),
    ("promo-spring-1997", date(1997, 4, 10)),
    ("promo-summer-1997", date(1997, 6, 19)),
    ("promo-back-to-school-1997", date(1997, 8, 21)),
    ("promo-black-friday-1997", date(1997, 11, 28)),
    ("promo-holiday-1997", date(1997, 12, 11)),
    ("promo-valentines-1998", date(1998, 2, 5)),
    ("promo-spring-1998", date(1998, 4, 9)),
)


@dataclass(frozen=True, slots=True)
class _Send:
    campaign_id: str
    at: float  # epoch seconds
    week: int
    month: tuple[int, int]
    promo: bool


@dataclass(frozen=True, slots=True)
class _Audience:
    """One person on the mailing list: `purchases` is empty for a prospect."""

    customer_id: str
    subscribed_at: float
    purchases: tuple[float, ...]
    prospect: bool


def _utc_seconds(day: date, hour: float = 0.0) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() + hour * _HOUR_S


def _format(at: float, tz: timezone = UTC) -> str:
    return datetime.fromtimestamp(int(at), tz=tz).isoformat(timespec="seconds")


def _calendar(start: float, end: float) -> list[_Send]:
    """The shop's send calendar: a newsletter every Tuesday 15:00 UTC (10:00 US Eastern, CDNOW's
    home market) plus the seasonal promotions, all within [start, end)."""
    sends: list[_Send] = []
    day = datetime.fromtimestamp(start, tz=UTC).date()
    day += timedelta(days=(1 - day.weekday()) % 7)
    while (at := _utc_seconds(day, 15)) < end:
        if at >= start:
            iso = day.isocalendar()
            sends.append(
                _Send(f"newsletter-{day.isoformat()}", at, iso.week, (day.year, day.month), False)
            )
        day += timedelta(days=7)
    for campaign_id, promo_day in _PROMOS:
        at = _utc_seconds(promo_day, 15)
        if start <= at < end:
            iso = promo_day.isocalendar()
            sends.append(_Send(campaign_id, at, iso.week, (promo_day.year, promo_day.month), True))
    sends.sort(key=lambda s: s.at)
    return sends


def _pick(rng: random.Random, weighted: Sequence[tuple[str, float]]) -> str:
    roll = rng.random()
    for value, weight in weighted:
        roll -= weight
        if roll < 0:
            return value
    return weighted[-1][0]


class _Person:
    """Propensity model shared by email and WeChat: a personal base level, lifted around each
    purchase (people read the shop's messages while deciding and right after buying) and decaying
    after the last purchase (or after sign-up, for a prospect) down to a floor."""

    def __init__(self, who: _Audience, rng: random.Random) -> None:
        self.who = who
        self.rng = rng
        self.purchases = who.purchases
        # After the last purchase; a prospect's interest fades from the day they signed up.
        self.fade_from = who.purchases[-1] if who.purchases else who.subscribed_at
        self.fade_days = rng.uniform(45, 150)
        self.floor = rng.uniform(0.03, 0.15)

    def nearest_purchase_days(self, at: float) -> float:
        purchases = self.purchases
        if not purchases:
            return math.inf
        i = bisect.bisect_left(purchases, at)
        before = at - purchases[i - 1] if i > 0 else math.inf
        after = purchases[i] - at if i < len(purchases) else math.inf
        return min(before, after) / _DAY_S

    def lift(self, at: float) -> float:
        return 1.0 + 2.0 * math.exp(-self.nearest_purchase_days(at) / 10.0)

    def fade(self, at: float) -> float:
        if at <= self.fade_from:
            return 1.0
        return max(self.floor, math.exp(-(at - self.fade_from) / _DAY_S / self.fade_days))


class _Generator:
    def __init__(self, seed: int, start: float, end: float) -> None:
        self.seed = seed
        self.start = start
        self.end = end
        self.calendar = _calendar(start, end)
        # (whole seconds, topic, event): sorting on the number avoids re-parsing every timestamp.
        self.out: list[tuple[int, str, Event]] = []

    def emit(self, at: float, topic: str, event: Event) -> None:
        self.out.append((int(at), topic, event))

    # -- email -------------------------------------------------------------------------------

    def email(self, person: _Person) -> None:
        rng = person.rng
        who = person.who
        # Personal open rate: most people open little, a few open almost everything.
        base = rng.betavariate(1.0, 12.0) if not who.prospect else rng.betavariate(1.5, 10.0)
        cadence = _pick(rng, (("weekly", 0.25), ("biweekly", 0.45), ("monthly", 0.30)))
        seen_months: set[tuple[int, int]] = set()

        # The welcome mail at sign-up; prospects confirm their subscription (double opt-in), which
        # is why every prospect has at least one open and one click.
        welcome = _Send("welcome", who.subscribed_at + 300, 0, (0, 0), False)
        self.message(
            person,
            welcome,
            opened=who.prospect or rng.random() < 0.45,
            click_rate=1.0 if who.prospect else 0.25,
            confirm=who.prospect,
        )

        for send in self.calendar:
            if send.at < who.subscribed_at:
                continue
            if not send.promo:
                if cadence == "biweekly" and send.week % 2:
                    continue
                if cadence == "monthly":
                    if send.month in seen_months:
                        continue
                    seen_months.add(send.month)
            p_open = base * person.lift(send.at) * person.fade(send.at) * (1.3 if send.promo else 1)
            if rng.random() < min(p_open, 0.95):
                click_rate = min(0.6, 0.12 * person.lift(send.at))
                self.message(person, send, opened=True, click_rate=click_rate)

    def message(
        self,
        person: _Person,
        send: _Send,
        *,
        opened: bool,
        click_rate: float,
        confirm: bool = False,
    ) -> None:
        if not opened:
            return
        rng = person.rng
        cid = person.who.customer_id
        campaign_id = send.campaign_id
        message_id = f"m-{campaign_id}-{cid}"
        # Half of opens happen within a few hours of the send, the rest trickle in over days.
        delay = (
            rng.expovariate(1 / (2 * _HOUR_S))
            if rng.random() < 0.5
            else rng.expovariate(1 / (30 * _HOUR_S))
        )
        opened_at = send.at + 60 + min(delay, 6 * _DAY_S)
        opens = [opened_at]
        if rng.random() < 0.12:
            opens.append(opened_at + 600 + rng.expovariate(1 / (24 * _HOUR_S)))
        for n, at in enumerate(opens, start=1):
            if at >= self.end:
                break
            self.emit(
                at,
                EMAIL_OPENS,
                {
                    "event_id": f"eo-{self.seed}-{message_id}-{n}",
                    "customer_id": cid,
                    "occurred_at": _format(at),
                    "message_id": message_id,
                    "campaign_id": campaign_id,
                },
            )
        if rng.random() >= click_rate:
            return
        clicked_at = opened_at + 5 + rng.expovariate(1 / 120)
        if clicked_at >= self.end:
            return
        target = "subscribe/confirm" if confirm else rng.choice(_CLICK_PATHS)
        self.emit(
            clicked_at,
            EMAIL_CLICKS,
            {
                "event_id": f"ec-{self.seed}-{message_id}-1",
                "customer_id": cid,
                "occurred_at": _format(clicked_at),
                "message_id": message_id,
                "url": f"https://www.cdnow.example/{target}?utm_source=email"
                f"&utm_campaign={campaign_id}",
                "campaign_id": campaign_id,
            },
        )

    # -- WeChat ------------------------------------------------------------------------------

    def wechat(self, person: _Person) -> None:
        rng = person.rng
        who = person.who
        cid = who.customer_id
        if who.purchases:
            follow_at = who.purchases[0] + rng.uniform(-20, 60) * _DAY_S
        else:
            follow_at = who.subscribed_at + rng.uniform(0, 14) * _DAY_S
        follow_at = max(follow_at, self.start + rng.uniform(0, 1) * _DAY_S)
        # Interactions per day at the personal base level: about one a month, widely spread.
        rate = rng.gammavariate(1.5, 0.012 / 1.5)
        max_rate = rate * 3.0  # lift() peaks at 3: the bound for thinning
        seq = 0

        def send(at: float, kind: str) -> None:
            nonlocal seq
            seq += 1
            self.emit(
                at,
                WECHAT,
                {
                    "event_id": f"wx-{self.seed}-{cid}-{seq}",
                    "customer_id": cid,
                    "occurred_at": _format(at, _CST),
                    "kind": kind,
                },
            )

        at = follow_at
        while at < self.end:
            send(at, "follow")
            # Some followers leave: most for good, a few come back after a while.
            leaves = rng.random() < 0.12
            until = at + rng.uniform(30, 400) * _DAY_S if leaves else self.end
            until = min(until, self.end)
            t = at
            while max_rate > 0:
                t += rng.expovariate(max_rate / _DAY_S)
                if t >= until:
                    break
                lift = person.lift(t)
                if rng.random() * max_rate < rate * lift * person.fade(t):
                    send(t, _pick(rng, _WECHAT_KINDS_SHOPPING if lift > 2 else _WECHAT_KINDS_CALM))
            if not leaves or until >= self.end:
                break
            send(until, "unfollow")
            if rng.random() >= 0.25:
                break
            at = until + rng.uniform(20, 120) * _DAY_S


def _purchase_times(purchases: Iterable[Mapping[str, Any]]) -> dict[str, list[float]]:
    by_customer: dict[str, list[float]] = {}
    for event in purchases:
        if event.get("kind", "purchase") != "purchase":
            continue
        by_customer.setdefault(str(event["customer_id"]), []).append(event_time_ms(event) / 1000)
    return by_customer


def generate_engagement(
    purchases: Sequence[Mapping[str, Any]],
    seed: int = 7,
    *,
    prospects: int = 3_000,
    wechat_share: float = 0.30,
    prospect_wechat_share: float = 0.40,
    presubscribed_share: float = 0.25,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[TopicEvent]:
    """Seeded, realistic engagement for the customers in `purchases`, in event-time order.

    The model, per person (each with its own RNG derived from `seed` and the customer id, so the
    output does not depend on the order of `purchases`):

    - Email: everyone joins the mailing list at their first purchase, or (`presubscribed_share`)
      up to 45 days before it, and gets a welcome mail. The shop sends a newsletter every Tuesday
      and eight seasonal promotions; each person reads weekly, every other week or monthly. The
      open probability is a personal rate (Beta-distributed), tripled near a purchase and fading
      after the last one to a personal floor; clicks are 12% of opens, more near a purchase.
      Some opens are followed by a second open of the same message.
    - WeChat: `wechat_share` of customers follow the official account near their first purchase
      and interact about once a month (likes, mini-program visits, replies, comments, activity
      sign-ups), more near purchases and less as they drift away; 12% unfollow, a quarter of
      those follow again later.
    - Prospects: `prospects` people (ids P00001…) who sign up during the period, confirm their
      subscription (an open and a click) and engage for a while, but never buy;
      `prospect_wechat_share` of them also follow on WeChat.

    Events are `email-opens` (message_id, campaign_id), `email-clicks` (message_id, url,
    campaign_id) and `wechat-interactions` (kind) with deterministic, unique event_ids. Email
    times are UTC, WeChat times are China Standard Time (+08:00). The period defaults to the
    purchases' first day through the end of their last day. For CDNOW with the defaults this is
    about 130k events.
    """
    for bound in (start, end):
        if bound is not None and bound.tzinfo is None:
            raise ValueError("start and end must be timezone-aware datetimes")
    times = _purchase_times(purchases)
    if (start is None or end is None) and not times:
        raise ValueError("no purchases to take the period from: pass start and end")
    if start is not None:
        start_s = start.timestamp()
    else:
        first = min(min(ts) for ts in times.values())
        start_s = _utc_seconds(datetime.fromtimestamp(first, tz=UTC).date())
    if end is not None:
        end_s = end.timestamp()
    else:
        last = max(max(ts) for ts in times.values())
        end_s = _utc_seconds(datetime.fromtimestamp(last, tz=UTC).date() + timedelta(days=1))
    if end_s <= start_s:
        raise ValueError("end must be after start")

    gen = _Generator(seed, start_s, end_s)
    audience: list[tuple[_Audience, float]] = []
    for cid in sorted(times):
        rng = random.Random(f"{seed}/{cid}")
        purchase_times = tuple(sorted(t for t in times[cid] if start_s <= t < end_s))
        if not purchase_times:
            continue
        subscribed = purchase_times[0]
        if rng.random() < presubscribed_share:
            subscribed = max(start_s, subscribed - rng.uniform(1, 45) * _DAY_S)
        who = _Audience(cid, subscribed, purchase_times, prospect=False)
        audience.append((who, wechat_share))
    # Prospects sign up no later than two weeks before the end so each has time to engage.
    prospect_rng = random.Random(f"{seed}/prospects")
    width = max(5, len(str(prospects)))
    for n in range(1, prospects + 1):
        cid = f"P{n:0{width}d}"
        signup = prospect_rng.uniform(start_s, max(start_s, end_s - 14 * _DAY_S))
        audience.append((_Audience(cid, signup, (), prospect=True), prospect_wechat_share))

    for who, wechat in audience:
        rng = random.Random(f"{seed}/{who.customer_id}/engagement")
        person = _Person(who, rng)
        gen.email(person)
        if rng.random() < wechat:
            gen.wechat(person)

    gen.out.sort(key=lambda item: item[0])
    return [(topic, event) for _, topic, event in gen.out]
