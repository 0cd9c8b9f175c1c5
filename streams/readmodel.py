"""The Redis read model: every customer's current profile and tier/stage membership.

Writes are idempotent snapshots (the latest profile per customer), pipelined per batch, so a
batch replayed after a failure or a restart converges to the same state.

Redis may also come back from an outage empty (no persistence, a failover to an empty replica, a
FLUSHALL). Each partition of the read model therefore has a marker key, set once the partition
is complete in Redis; a marker found missing means Redis lost what it held, and the worker that
owns the partition fills in, from its table (the source of truth), every customer that Redis
does not hold (`fill_missing`), then sets the marker again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Final, NamedTuple

import orjson
import redis.asyncio as aioredis

from segmentation.bgnbd import BgNbdParams
from segmentation.evaluate import evaluate, profile_of
from segmentation.jsonbytes import dumps
from segmentation.lifecycle import STAGES
from segmentation.rules import TIERS, Rules
from segmentation.state import CustomerState
from streams import topics as names
from streams.partitioning import partition_for

PREFIX: Final = "tierstream:"


def customer_key(customer_id: str) -> str:
    return f"{PREFIX}customer:{customer_id}"


def tier_key(tier: str) -> str:
    return f"{PREFIX}tier:{tier}"


def stage_key(stage: str) -> str:
    return f"{PREFIX}stage:{stage}"


def marker_key(partition: int) -> str:
    """Set once the partition's customers are all in Redis; gone when Redis lost its data."""
    return f"{PREFIX}readmodel:partition:{partition}"


def rebuild_key(partition: int) -> str:
    """Set while a partition is being rebuilt (holds the rebuild's token)."""
    return f"{PREFIX}readmodel:rebuilding:{partition}"


def connect(
    url: str, *, password: str | None = None, tls: bool = False, ssl_ca_file: str | None = None
) -> aioredis.Redis:
    kwargs: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 5}
    if password:
        kwargs["password"] = password
    if tls or ssl_ca_file:
        # redis-py picks TLS by the URL scheme; ssl_* options on a redis:// URL are a TypeError.
        if url.startswith("redis://"):
            url = "rediss://" + url[len("redis://") :]
        if ssl_ca_file:
            kwargs["ssl_ca_certs"] = ssl_ca_file
    return aioredis.Redis.from_url(url, **kwargs)


# One script call per batch instead of a command per set per customer: with four tiers and six
# stages a profile took 11 pipelined commands, and packing them in redis-py cost the worker more
# than folding the event (the read model was the pipeline's bottleneck in `tierstream bench`).
# The script runs atomically, as the MULTI/EXEC transaction it replaces did. It builds its key
# names from the prefix it is given: fine on a single Redis (what the design names); a Redis
# Cluster would need every key of a batch in one hash slot.
WRITE_BATCH_LUA: Final = """
local prefix = ARGV[1]
local ntiers = tonumber(ARGV[2])
local tiers = {}
for i = 1, ntiers do tiers[i] = ARGV[2 + i] end
local at = 3 + ntiers
local nstages = tonumber(ARGV[at])
local stages = {}
for i = 1, nstages do stages[i] = ARGV[at + i] end
at = at + nstages + 1
while at <= #ARGV do
  local id, tier, stage, doc = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  for i = 1, ntiers do
    if tiers[i] ~= tier then redis.call('SREM', prefix .. 'tier:' .. tiers[i], id) end
  end
  for i = 1, nstages do
    if stages[i] ~= stage then redis.call('SREM', prefix .. 'stage:' .. stages[i], id) end
  end
  if doc == '' then
    redis.call('DEL', prefix .. 'customer:' .. id)
  else
    redis.call('SET', prefix .. 'customer:' .. id, doc)
    redis.call('SADD', prefix .. 'tier:' .. tier, id)
    redis.call('SADD', prefix .. 'stage:' .. stage, id)
  end
  at = at + 4
end
return #ARGV
"""


class EncodedProfile(NamedTuple):
    """A profile as published (its JSON bytes), with its tier and stage: written to Redis as
    it is, without decoding and encoding it again."""

    tier: str
    stage: str
    doc: bytes


#: A customer's latest profile for `write_batch`: decoded, encoded, or None (erased).
Profile = dict[str, Any] | EncodedProfile | None


def profile_headers(profile: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """The headers a profile record carries, so the read model can file it undecoded."""
    return [
        (names.TIER_HEADER, profile["tier"].encode()),
        (names.STAGE_HEADER, profile["stage"].encode()),
    ]


def write_batch_args(
    profiles: Mapping[str, Profile],
    tiers: Iterable[str] = TIERS,
    stages: Iterable[str] = STAGES,
) -> list[str | bytes]:
    """The script's arguments: prefix, tier and stage names, then per customer its id, tier,
    stage and profile document ("" for an erased customer: removed from every set)."""
    tiers, stages = tuple(tiers), tuple(stages)
    args: list[str | bytes] = [PREFIX, str(len(tiers)), *tiers, str(len(stages)), *stages]
    for customer_id, profile in profiles.items():
        if profile is None:
            args += (customer_id, "", "", "")
        elif isinstance(profile, EncodedProfile):
            args += (customer_id, profile.tier, profile.stage, profile.doc)
        else:
            args += (customer_id, profile["tier"], profile["stage"], dumps(profile))
    return args


async def write_batch(
    client: aioredis.Redis,
    profiles: Mapping[str, Profile],
    tiers: Iterable[str] = TIERS,
    stages: Iterable[str] = STAGES,
) -> None:
    """Write the latest profile of each customer (None = erased) and its tier and stage
    memberships, atomically, in one script call (loaded once per Redis: redis-py's script object
    sends EVALSHA and falls back to EVAL after a restart emptied the script cache)."""
    if not profiles:
        return
    script = client.register_script(WRITE_BATCH_LUA)
    await script(keys=[], args=write_batch_args(profiles, tiers, stages))


async def read_profile(client: aioredis.Redis, customer_id: str) -> dict[str, Any] | None:
    raw = await client.get(customer_key(customer_id))
    return None if raw is None else orjson.loads(raw)


async def read_counts(
    client: aioredis.Redis, tiers: Iterable[str] = TIERS
) -> dict[str, dict[str, int]]:
    tiers = tuple(tiers)
    pipe = client.pipeline(transaction=False)
    for tier in tiers:
        pipe.scard(tier_key(tier))
    for stage in STAGES:
        pipe.scard(stage_key(stage))
    counts = await pipe.execute()
    return {
        "tiers": dict(zip(tiers, counts[: len(tiers)], strict=True)),
        "stages": dict(zip(STAGES, counts[len(tiers) :], strict=True)),
    }


# -- rebuilding after Redis lost its data ------------------------------------------------------


def is_customer_key(key: bytes) -> bool:
    """Table keys that hold a customer's state (reserved keys start with a control byte)."""
    return not key.startswith(b"\x00")


def partition_states(
    items: Iterable[tuple[bytes, bytes | None]], partition: int, partitions: int
) -> list[bytes]:
    """The state records of one partition's customers among a table's (key, value) items (a
    table may also hold standby partitions and reserved keys)."""
    return [
        raw
        for key, raw in items
        if raw is not None and is_customer_key(key) and partition_for(key, partitions) == partition
    ]


def profile_from_state(raw: bytes, rules: Rules, params: BgNbdParams) -> dict[str, Any]:
    """The profile the segment agent published with this state: the state is saved evaluated at
    its own `as_of`, so evaluating it there again gives the same profile (under the same rules,
    cut points and model parameters; under newer ones, the profile they give)."""
    state = CustomerState.from_bytes(raw)
    return profile_of(state, evaluate(state, rules, params, state.as_of_ms), rules, params)


async def missing_markers(client: aioredis.Redis, partitions: Iterable[int]) -> list[int]:
    """The partitions whose marker is missing: Redis does not hold all their customers."""
    wanted = sorted(set(partitions))
    if not wanted:
        return []
    pipe = client.pipeline(transaction=False)
    for partition in wanted:
        pipe.exists(marker_key(partition))
    found = await pipe.execute()
    return [p for p, n in zip(wanted, found, strict=True) if not n]


async def begin_rebuild(client: aioredis.Redis, partition: int) -> str:
    token = uuid.uuid4().hex
    await client.set(rebuild_key(partition), token)
    return token


async def finish_rebuild(client: aioredis.Redis, partition: int, token: str) -> bool:
    """Set the partition's marker if Redis kept everything since `begin_rebuild`: if it lost its
    data again meanwhile (the token is gone), the marker is removed and False says so."""
    pipe = client.pipeline(transaction=True)
    pipe.get(rebuild_key(partition))
    pipe.set(marker_key(partition), token)
    pipe.delete(rebuild_key(partition))
    held, _, _ = await pipe.execute()
    if held is not None and held.decode() == token:
        return True
    await client.delete(marker_key(partition))
    return False


async def fill_missing(
    client: aioredis.Redis,
    profiles: Mapping[str, dict[str, Any]],
    tiers: Iterable[str] = TIERS,
    stages: Iterable[str] = STAGES,
) -> int:
    """Write the profiles of the customers Redis does not hold; returns how many. A customer it
    holds was written from the profiles topic since Redis lost its data, so it is at least as
    recent as the table; the caller keeps other writers out between the check and the write."""
    if not profiles:
        return 0
    customers = list(profiles)
    pipe = client.pipeline(transaction=False)
    for customer_id in customers:
        pipe.exists(customer_key(customer_id))
    held = await pipe.execute()
    missing = {c: profiles[c] for c, n in zip(customers, held, strict=True) if not n}
    if missing:
        await write_batch(client, missing, tiers, stages)
    return len(missing)
