"""Every Prometheus metric of the worker, built in one place against an injected registry.

Names follow Prometheus conventions (base units, `_total` on counters) and no label ever holds a
customer id: labels are topics, reasons, tiers, stages, campaigns — small closed sets.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    events_consumed: Counter
    events_rejected: Counter
    dead_letters: Counter
    events_forwarded: Counter
    processing_latency: Histogram
    customers_by_tier: Gauge
    customers_by_stage: Gauge
    transitions: Counter
    campaign_triggers: Counter
    campaign_triggers_suppressed: Counter
    churn_warnings: Counter
    redis_write_failures: Counter
    redis_backlog: Gauge
    consumer_lag: Gauge
    last_event_time: Gauge
    time_transition_lag: Histogram
    rules_info: Gauge
    customers_erased: Counter
    events_ignored: Counter
    model_info: Gauge
    events_held: Gauge
    events_late: Counter
    order_forced: Counter


def create(registry: CollectorRegistry | None = None) -> Metrics:
    reg = registry if registry is not None else CollectorRegistry()
    p = "tierstream_"
    return Metrics(
        registry=reg,
        events_consumed=Counter(
            p + "events_consumed_total", "Input events consumed", ["topic"], registry=reg
        ),
        events_rejected=Counter(
            p + "events_rejected_total",
            "Input events rejected (sent to dead-letters)",
            ["topic", "reason"],
            registry=reg,
        ),
        dead_letters=Counter(
            p + "dead_letters_total", "Records published to dead-letters", ["topic"], registry=reg
        ),
        events_forwarded=Counter(
            p + "events_forwarded_total",
            "Records re-routed to the partition their customer belongs to",
            ["topic"],
            registry=reg,
        ),
        processing_latency=Histogram(
            p + "processing_latency_seconds",
            "Event time to tier change emitted, for live (non-backfill) events",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        ),
        customers_by_tier=Gauge(
            p + "customers_by_tier",
            "Customers per tier (from the read model)",
            ["tier"],
            registry=reg,
        ),
        customers_by_stage=Gauge(
            p + "customers_by_stage",
            "Customers per lifecycle stage (from the read model)",
            ["stage"],
            registry=reg,
        ),
        transitions=Counter(
            p + "transitions_total",
            "Tier and stage transitions published",
            ["kind", "from_state", "to_state", "cause"],
            registry=reg,
        ),
        campaign_triggers=Counter(
            p + "campaign_triggers_total",
            "Campaign triggers published",
            ["campaign", "variant"],
            registry=reg,
        ),
        campaign_triggers_suppressed=Counter(
            p + "campaign_triggers_suppressed_total",
            "Campaign triggers not published",
            ["campaign", "reason"],
            registry=reg,
        ),
        churn_warnings=Counter(
            p + "churn_warnings_total", "Churn warnings published", ["severity"], registry=reg
        ),
        redis_write_failures=Counter(
            p + "redis_write_failures_total", "Failed Redis read-model batch writes", registry=reg
        ),
        redis_backlog=Gauge(
            p + "redis_backlog",
            "Profile updates received but not yet written to Redis",
            registry=reg,
        ),
        consumer_lag=Gauge(
            p + "consumer_lag",
            "Messages between the committed offset and the high-water mark",
            ["topic", "partition"],
            registry=reg,
        ),
        last_event_time=Gauge(
            p + "last_event_time_seconds",
            "Unix time of the newest event time processed",
            registry=reg,
        ),
        time_transition_lag=Histogram(
            p + "time_transition_lag_seconds",
            "Boundary passed to time-caused change published (live clock)",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        ),
        rules_info=Gauge(
            p + "rules_info",
            "The rules version in force (value 1)",
            ["rules_version"],
            registry=reg,
        ),
        customers_erased=Counter(
            p + "customers_erased_total", "Customers erased on request", registry=reg
        ),
        model_info=Gauge(
            p + "model_info",
            "The BG/NBD parameters version in force (value: customers it was fitted on)",
            ["params_version"],
            registry=reg,
        ),
        events_ignored=Counter(
            p + "events_ignored_total",
            "Valid events that changed nothing: redelivered (duplicate) or of an erased customer",
            ["topic", "reason"],
            registry=reg,
        ),
        events_held=Gauge(
            p + "events_held",
            "Input records held until every input topic has passed their event time",
            registry=reg,
        ),
        events_late=Counter(
            p + "events_late_total",
            "Events folded after later events of their partition (arrived late)",
            ["topic"],
            registry=reg,
        ),
        order_forced=Counter(
            p + "order_forced_total",
            "Records folded before their event-time turn because too many were held",
            registry=reg,
        ),
    )
