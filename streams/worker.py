"""`tierstream worker`: one worker of the consumer group."""

from __future__ import annotations

import asyncio
import logging
import sys

from segmentation.errors import RulesError
from segmentation.rules import load_rules
from streams.gctuning import tune_gc
from streams.settings import ConfigError, Settings, bootstrap_servers, load_settings
from streams.topics import ALL_TOPICS


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """The worker's loop. With uvloop the policy is set too, so that the loop Faust's consumer
    thread makes for itself is a uvloop loop as well."""
    if kind == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run_worker(settings: Settings | None = None) -> int:
    try:
        settings = settings or load_settings()
        if settings.broker is None:
            raise ConfigError(
                "TIERSTREAM_BROKER is not set: point it at Kafka (kafka://host:9092), or run "
                "`tierstream up` for the embedded broker and export what it prints"
            )
        rules = load_rules(settings.rules_path)
    except (ConfigError, RulesError) as exc:
        print(f"tierstream worker: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        import faust  # noqa: F401
    except ImportError as exc:
        print(
            f"tierstream worker: {exc}; install with: pip install 'faust-streaming[fast,uvloop]'",
            file=sys.stderr,
        )
        return 2
    from streams.app import create_app
    from streams.embedded import create_topics

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    for warning in settings.warnings:
        logging.getLogger("tierstream").warning(warning)
    # Every input topic must exist with the same partition count before Faust subscribes
    # (tables are co-partitioned with their stream; some brokers auto-create with a default).
    asyncio.run(create_topics(bootstrap_servers(settings.broker), ALL_TOPICS, settings.partitions))
    try:
        asyncio.set_event_loop(new_event_loop(settings.event_loop))
    except ImportError as exc:
        print(
            f"tierstream worker: TIERSTREAM_EVENT_LOOP=uvloop but {exc}; install with: "
            "pip install uvloop (or set TIERSTREAM_EVENT_LOOP=asyncio)",
            file=sys.stderr,
        )
        return 2
    app, runtime = create_app(settings, rules=rules)
    runtime.direct_sends = True
    gc_thresholds = tune_gc(settings.gc_threshold)
    logging.getLogger("tierstream").info(
        "worker starting: broker=%s redis=%s partitions=%d rules=%s web=%s:%d loop=%s gc=%s",
        settings.broker,
        settings.redis_display,
        settings.partitions,
        rules.version,
        settings.web_host,
        settings.web_port,
        settings.event_loop,
        "/".join(map(str, gc_thresholds)),
    )
    from faust.worker import Worker

    worker = Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0
