"""The Faust application, built by a function from a Settings object (no import-time globals)."""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass, field, replace
from typing import Any

import faust

from segmentation.bgnbd import DEFAULT_PARAMS, BgNbdParams
from segmentation.campaigns import CampaignPolicy, parse_campaign_policy
from segmentation.dueindex import DueIndex
from segmentation.errors import RulesError
from segmentation.events import INPUT_TOPICS
from segmentation.rules import Rules, load_rules
from streams import metrics as metrics_mod
from streams import topics as names
from streams.partitioning import producer_partitioner
from streams.settings import Settings

log = logging.getLogger("tierstream")

# Raw bytes in and out: decoding is ours (cheap, and a bad record becomes a dead letter instead
# of a decode error that would crash the agent).
RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}


@dataclass
class Runtime:
    """What the agents share: settings, rules, model parameters, metrics, topics and tables."""

    settings: Settings
    rules: Rules
    params: BgNbdParams
    metrics: metrics_mod.Metrics
    app: faust.App
    inputs: faust.TopicT
    customers: Any  # faust.Table of customer_id -> CustomerState bytes
    out: dict[str, faust.TopicT] = field(default_factory=dict)
    policy: CampaignPolicy = field(default_factory=lambda: parse_campaign_policy(None))
    # Backfilled records fire campaigns only when TIERSTREAM_CAMPAIGNS_ON_BACKFILL is set.
    backfill_policy: CampaignPolicy = field(default_factory=lambda: parse_campaign_policy(None))
    due: DueIndex = field(default_factory=DueIndex)
    clocks: dict[int, int] = field(default_factory=dict)
    clock_persisted: dict[int, int] = field(default_factory=dict)
    latest_event_ms: int = 0
    # Customers whose state was decided under other rules, re-tiered a chunk at a time.
    retier: dict[int, list[str]] = field(default_factory=dict)
    shadow_rules: Rules | None = None
    processor: Any = None
    read_model: Any = None  # agents.readmodel.ProfileFeed
    redis: Any = None
    # Profile updates this worker published and wrote to Redis: their difference is the read
    # model's backlog (Redis down or slow), which a gauge reports and tests wait on.
    profiles_sent: int = 0
    profiles_written: int = 0
    # Profiles waiting in the segment agent's write batch (published when it is written).
    profiles_pending: int = 0
    # The running worker sends the segment agent's outputs through the app's producer itself
    # (`produce`); off, through each topic's `send`, which agent tests replace with mocks.
    direct_sends: bool = False
    _producer: Any = None

    async def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Any:
        """Hand a record to the producer; returns its delivery (an awaitable).

        Faust's `Topic.send` wraps every record in its own message objects, callbacks and
        sensor calls before the same producer call: about a fifth of the segment agent's
        cost per event went there (README, Performance). The worker skips that layer."""
        if not self.direct_sends:
            extra: dict[str, Any] = {}
            if partition is not None:
                extra["partition"] = partition
            if headers is not None:
                extra["headers"] = headers
            return await self.out[topic].send(key=key, value=value, **extra)
        if self._producer is None:
            self._producer = await self.app.maybe_start_producer()
        return await self._producer.send(topic, key, value, partition, None, headers)

    def redis_backlog(self) -> int:
        return max(0, self.profiles_sent - self.profiles_written) + self.profiles_pending

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def due_partitions(self) -> list[int]:
        """The partitions whose state this worker serves (their due index is built)."""
        return sorted(self.clocks)

    def policy_for(self, cause: str) -> CampaignPolicy:
        return self.backfill_policy if cause == "backfill" else self.policy


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    context = ssl.create_default_context(
        cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
    )
    if settings.kafka_ssl_certfile:
        context.load_cert_chain(
            str(settings.kafka_ssl_certfile),
            str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
        )
    return context


def _credentials(settings: Settings) -> Any:
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = _ssl_context(settings) if protocol.endswith("SSL") else None
    if protocol.startswith("SASL"):
        mechanism = settings.kafka_sasl_mechanism or "PLAIN"
        if mechanism == "PLAIN":
            return faust.SASLCredentials(
                username=settings.kafka_sasl_username,
                password=settings.kafka_sasl_password.value,
                ssl_context=context,
            )
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.value,
            mechanism=mechanism,
            ssl_context=context,
        )
    return faust.SSLCredentials(context)


def aiokafka_security(settings: Settings) -> dict[str, Any]:
    """The broker security settings as aiokafka client arguments, for the clients the worker
    runs beside Faust's (the read model's feed): what Faust itself gives its aiokafka clients
    from the same credentials."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    credentials = _credentials(settings)
    return dict(credentials_to_aiokafka_auth(credentials)) if credentials is not None else {}


def faust_settings(settings: Settings) -> dict[str, Any]:
    assert settings.broker is not None, "a worker needs TIERSTREAM_BROKER"
    store = "memory://" if settings.store == "memory" else "rocksdb://"
    conf: dict[str, Any] = {
        "broker": settings.broker,
        "store": store,
        "datadir": str(settings.data_dir),
        "topic_partitions": settings.partitions,
        "topic_replication_factor": 1,
        "web_host": settings.web_host,
        "web_bind": settings.web_host,
        "web_port": settings.web_port,
        "web_in_thread": False,
        "consumer_auto_offset_reset": "earliest",
        # Measured in notes/faust-and-tansu.md: these keep the per-event overhead down.
        "stream_wait_empty": False,
        "stream_buffer_maxsize": 16384,
        "broker_max_poll_records": 2000,
        # Smaller fetches per partition interleave the input topics more finely, so the
        # event-time order across topics (streams/ordering.py) holds fewer records waiting for
        # a topic whose records sit behind another's in the fetch buffer.
        "consumer_max_fetch_size": 128 * 1024,
        "producer_linger": 0.005,
        # A write batch's profiles and states go out in a few record batches per partition, not
        # one per 16 KB (Faust's default): fewer produce requests on Kafka, and on the embedded
        # broker fewer stored batches, which it lists on every fetch of the partition (README,
        # Known limits: the read model's fetches of the profiles slowed as these accumulated).
        # Under Kafka's default message.max.bytes (1 MB); a consumer is sent a whole batch even
        # past its fetch size per partition (KIP-74; the embedded broker does too, checked).
        "producer_max_batch_size": 512 * 1024,
        # The default partitioner's placement, with each key's hash remembered.
        "producer_partitioner": producer_partitioner,
        "broker_commit_every": 2000,
        "broker_commit_interval": 1.0,
        "table_standby_replicas": 1,
        "logging_config": None,
    }
    credentials = _credentials(settings)
    if credentials is not None:
        conf["broker_credentials"] = credentials
    if settings.fast_group_join:
        # Tansu (the embedded broker) holds a first group join for the whole rebalance timeout.
        conf.update(
            broker_rebalance_timeout=4,
            broker_session_timeout=6,
            broker_heartbeat_interval=1,
        )
    return conf


def campaign_policy(rules: Rules, settings: Settings) -> CampaignPolicy:
    """The rules file's [campaigns] section, with the environment's overrides."""
    raw = dict(rules.campaigns)
    if settings.holdout_share is not None:
        raw["holdout_share"] = settings.holdout_share
    if settings.default_timezone is not None:
        raw["default_timezone"] = settings.default_timezone
    try:
        return parse_campaign_policy(raw)
    except ValueError as exc:
        raise RulesError(f"campaigns: {exc}") from None


def create_app(settings: Settings, *, rules: Rules | None = None) -> tuple[faust.App, Runtime]:
    from agents.readmodel import register_readmodel_agent
    from agents.segment import register_segment_agent
    from streams.kafka_fixes import install as install_kafka_fixes
    from streams.kafka_fixes import set_fetch_max_wait
    from streams.lag import register_lag_monitor
    from streams.models import register_cutpoint_refresh, register_model_refits
    from streams.recovery_check import install as install_recovery_check
    from streams.shadow_view import register_shadow_view
    from streams.web import register_views

    # A committed offset of 0 must rewind like any other (aiokafka#1003): streams/kafka_fixes.py.
    install_kafka_fixes()
    # Faust hard-codes a 1.5 s fetch wait, which the embedded broker holds in full.
    set_fetch_max_wait(settings.fetch_max_wait_ms)
    app = faust.App(settings.app_id, **faust_settings(settings))
    inputs = app.topic(*INPUT_TOPICS, names.TICKS, **RAW, partitions=settings.partitions)
    customers = app.Table(
        "customers",
        # The types, not only the schema: changelog recovery picks its serializers from them.
        key_type=bytes,
        value_type=bytes,
        schema=faust.Schema(**RAW),
        partitions=settings.partitions,
        help="customer_id -> state",
    )
    runtime = Runtime(
        settings=settings,
        rules=rules if rules is not None else load_rules(settings.rules_path),
        params=DEFAULT_PARAMS,
        metrics=metrics_mod.create(),
        app=app,
        inputs=inputs,
        customers=customers,
    )
    runtime.policy = campaign_policy(runtime.rules, settings)
    runtime.backfill_policy = (
        replace(runtime.policy, skip_causes=frozenset())
        if settings.campaigns_on_backfill
        else runtime.policy
    )
    for name in (*INPUT_TOPICS, *names.OUTPUT_TOPICS, *names.INTERNAL_TOPICS):
        runtime.out[name] = app.topic(name, **RAW, partitions=settings.partitions)
    runtime.metrics.rules_info.labels(rules_version=runtime.rules.version).set(1)
    for topic in INPUT_TOPICS:
        # Exported at 0 from the start: a late event is the exception worth seeing appear.
        runtime.metrics.events_late.labels(topic=topic)
    runtime.metrics.redis_backlog.set_function(runtime.redis_backlog)
    runtime.metrics.model_info.labels(params_version=runtime.params.version).set(0)
    # Faust's recovery trusts the broker's high-water marks, which the embedded broker under-
    # reports after batched produces: after every recovery, read each changelog partition to its
    # real end and re-apply what recovery stopped short of (a no-op on Apache Kafka).
    install_recovery_check(app, customers, runtime.metrics.registry)
    if settings.shadow_rules_path is not None:
        runtime.shadow_rules = load_rules(settings.shadow_rules_path)
    register_segment_agent(runtime)
    runtime.read_model = register_readmodel_agent(runtime)
    register_views(runtime)
    register_shadow_view(runtime)
    register_model_refits(runtime)
    register_cutpoint_refresh(runtime)
    register_lag_monitor(runtime)
    return app, runtime
