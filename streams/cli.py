"""The `tierstream` command."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson


def _cmd_up(args: argparse.Namespace) -> int:
    from streams.embedded import run_up

    return run_up(args.partitions)


def _cmd_worker(args: argparse.Namespace) -> int:
    from streams.worker import run_worker

    return run_worker()


def _cmd_replay(args: argparse.Namespace) -> int:
    from streams import datasets
    from streams.replay import publish
    from streams.settings import ConfigError, bootstrap_servers, load_settings

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"tierstream replay: configuration error: {exc}", file=sys.stderr)
        return 2
    if settings.broker is None:
        print("tierstream replay: set TIERSTREAM_BROKER (see `tierstream up`)", file=sys.stderr)
        return 2
    if args.source == "cdnow":
        purchases = datasets.time_ordered(datasets.cdnow_purchases())
        events: list[tuple[str, dict[str, Any]]] = [("purchases", e) for e in purchases]
        if args.engagement:
            events = datasets.merge_by_time(
                events, datasets.generate_engagement(purchases, seed=args.seed)
            )
    else:
        try:
            events = list(datasets.load_events_file(Path(args.source)))
        except (OSError, ValueError) as exc:
            print(f"tierstream replay: {exc}", file=sys.stderr)
            return 2
    stats = asyncio.run(publish(bootstrap_servers(settings.broker), events, backfill=not args.live))
    print(
        f"published {stats.total:,} events in {stats.seconds:.1f}s "
        f"({stats.events_per_second:,.0f}/s): "
        + ", ".join(f"{t}={n:,}" for t, n in sorted(stats.per_topic.items()))
    )
    return 0


def _http_get(args: argparse.Namespace, path: str) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    url = f"{args.url.rstrip('/')}{path}"
    request = urllib.request.Request(url)
    if args.token:
        request.add_header("Authorization", f"Bearer {args.token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, orjson.loads(body)
        except orjson.JSONDecodeError:
            return exc.code, {"error": body.decode(errors="replace")}
    except urllib.error.URLError as exc:
        return 0, {"error": f"cannot reach {url}: {exc.reason}"}


def _cmd_customer(args: argparse.Namespace) -> int:
    from streams.render import render_profile

    status, body = _http_get(args, f"/customers/{args.customer_id}")
    if status != 200:
        print(f"tierstream customer: {body.get('error', status)}", file=sys.stderr)
        return 1 if status == 404 else 2
    print(
        orjson.dumps(body, option=orjson.OPT_INDENT_2).decode()
        if args.json
        else render_profile(body)
    )
    return 0


def _cmd_tiers(args: argparse.Namespace) -> int:
    from streams.render import render_tiers

    status, body = _http_get(args, "/tiers")
    if status != 200:
        print(f"tierstream tiers: {body.get('error', status)}", file=sys.stderr)
        return 2
    print(
        orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() if args.json else render_tiers(body)
    )
    return 0


def _cmd_shadow(args: argparse.Namespace) -> int:
    status, body = _http_get(args, "/shadow")
    if status != 200:
        print(f"tierstream shadow: {body.get('error', status)}", file=sys.stderr)
        return 2
    if args.json:
        print(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(
        f"rules {body['rules_version']} -> shadow {body['shadow_rules_version']}: "
        f"{body['would_move']:,} of {body['customers']:,} customers would change tier"
    )
    for move, count in body["tier_moves"].items():
        sample = ", ".join(body["examples"].get(move, []))
        print(f"  {move:<24} {count:>8,}   e.g. {sample}")
    for move, count in body["stage_moves"].items():
        print(f"  stage {move:<18} {count:>8,}")
    return 0


def _cmd_advance(args: argparse.Namespace) -> int:
    from segmentation.timeutil import parse_rfc3339
    from streams.replay import send_ticks
    from streams.settings import ConfigError, bootstrap_servers, load_settings

    try:
        settings = load_settings()
        at_ms = parse_rfc3339(args.to)
    except (ConfigError, ValueError) as exc:
        print(f"tierstream advance: {exc}", file=sys.stderr)
        return 2
    if settings.broker is None:
        print("tierstream advance: set TIERSTREAM_BROKER", file=sys.stderr)
        return 2
    count = asyncio.run(send_ticks(bootstrap_servers(settings.broker), at_ms))
    print(f"advanced the clock of {count} partitions to {args.to}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from streams.demo import run_demo

    return run_demo(out_dir=Path(args.out_dir), seed=args.seed, partitions=args.partitions)


def _cmd_bench_ticks(args: argparse.Namespace) -> int:
    from streams.bench_ticks import run_tick_bench

    result = run_tick_bench(large=args.large, small=args.small, due=args.due)
    if args.out:
        Path(args.out).write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from streams.bench import run_bench

    return run_bench(
        customers=args.customers,
        events=args.events,
        out=args.out,
        workers=args.workers,
        partitions=args.partitions,
        latency_seconds=args.latency_seconds,
        seed=args.seed,
    )


def build_parser() -> argparse.ArgumentParser:
    import os

    parser = argparse.ArgumentParser(prog="tierstream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="start the embedded broker and Redis in the foreground")
    p.add_argument(
        "--partitions", type=int, default=int(os.environ.get("TIERSTREAM_PARTITIONS", "8"))
    )
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser("worker", help="run one worker (TIERSTREAM_BROKER, TIERSTREAM_REDIS_URL)")
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("replay", help="publish a history to the input topics")
    p.add_argument("source", help="'cdnow' (the bundled real dataset) or a .jsonl/.csv file")
    p.add_argument(
        "--no-engagement",
        dest="engagement",
        action="store_false",
        help="cdnow only: skip the generated email/WeChat engagement",
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--live",
        action="store_true",
        help="publish as live traffic (changes say cause=event, not backfill)",
    )
    p.set_defaults(func=_cmd_replay)

    for name, func, helptext in (
        ("customer", _cmd_customer, "print a customer's profile and explanation"),
        ("tiers", _cmd_tiers, "print customers per tier and stage"),
        ("shadow", _cmd_shadow, "who the shadow rules (TIERSTREAM_SHADOW_RULES) would move"),
    ):
        p = sub.add_parser(name, help=helptext)
        if name == "customer":
            p.add_argument("customer_id")
        p.add_argument(
            "--url",
            default=os.environ.get(
                "TIERSTREAM_URL",
                f"http://127.0.0.1:{os.environ.get('TIERSTREAM_WEB_PORT', '6066')}",
            ),
        )
        p.add_argument("--token", default=os.environ.get("TIERSTREAM_WEB_TOKEN"))
        p.add_argument("--json", action="store_true", help="print the raw JSON")
        p.set_defaults(func=func)

    p = sub.add_parser(
        "advance", help="move every partition's event-time clock to a time (replays, tests)"
    )
    p.add_argument("--to", required=True, help="RFC 3339 time, e.g. 1998-07-01T00:00:00Z")
    p.set_defaults(func=_cmd_advance)

    p = sub.add_parser("demo", help="replay CDNOW + engagement through a local stack and report")
    p.add_argument("--out-dir", default="reports")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--partitions", type=int, default=4)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "bench", help="benchmark the pipeline against three baselines and a batched prototype"
    )
    p.add_argument("--customers", type=int, default=100_000)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--out", default=None, help="write the results as JSON to this file")
    p.add_argument("--workers", type=int, default=1, help="also measure N workers in one group")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--latency-seconds", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=_cmd_bench)
    p = sub.add_parser("bench-ticks", help="per-tick cost against the customers held")
    p.add_argument("--large", type=int, default=1_000_000)
    p.add_argument("--small", type=int, default=10_000)
    p.add_argument("--due", type=int, default=100)
    p.add_argument("--out", default=None)
    p.set_defaults(func=_cmd_bench_ticks)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
