"""Topic names: the contract's input and output topics, and the internal ones."""

from __future__ import annotations

from typing import Final

from segmentation.events import INPUT_TOPICS

TIER_CHANGES: Final = "tier-changes"
CAMPAIGN_TRIGGERS: Final = "campaign-triggers"
CHURN_WARNINGS: Final = "churn-warnings"
DEAD_LETTERS: Final = "dead-letters"
OUTPUT_TOPICS: Final = (TIER_CHANGES, CAMPAIGN_TRIGGERS, CHURN_WARNINGS, DEAD_LETTERS)
# Internal: the latest profile per customer (key = customer id, compacted on real Kafka), the
# outbox the Redis read model is written from, so a Redis outage only makes that agent lag.
PROFILES: Final = "tierstream-profiles"
# Internal: clock ticks, one record per partition (live mode: wall time; `tierstream advance`:
# an explicit event time), consumed by the state-owning agent with the input topics.
TICKS: Final = "tierstream-ticks"
INTERNAL_TOPICS: Final = (PROFILES, TICKS)
ALL_TOPICS: Final = (*INPUT_TOPICS, *OUTPUT_TOPICS, *INTERNAL_TOPICS)

# Header set on a record re-published to the partition its key belongs to.
FORWARDED_HEADER: Final = "tierstream-forwarded-from"
# Header set by `tierstream replay`: changes caused by it carry cause=backfill.
BACKFILL_HEADER: Final = "tierstream-backfill"
# Headers of a profile record: its tier and stage, so the read model can file the profile's
# bytes in Redis without decoding them.
TIER_HEADER: Final = "tierstream-tier"
STAGE_HEADER: Final = "tierstream-stage"
