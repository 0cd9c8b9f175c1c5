"""HTTP views on the worker's Faust web server: lookups are served from Redis, never Kafka.

With `TIERSTREAM_WEB_TOKEN` set, every path except `/health` and `/metrics` needs
`Authorization: Bearer <token>`, enforced by a middleware in front of the whole web server, so
Faust's own pages (`/table/...` serves table data, `/router/...`, `/stats/`) are covered as
well as ours. The server binds to `TIERSTREAM_WEB_HOST`, 127.0.0.1 unless configured.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from aiohttp import web as aioweb
from faust.web import Request, Response, View
from prometheus_client import generate_latest
from redis.exceptions import RedisError

from streams import readmodel
from streams.app import Runtime

log = logging.getLogger("tierstream.web")

# aiohttp takes the charset separately, so prometheus_client's CONTENT_TYPE_LATEST cannot be used.
PROMETHEUS_TEXT = "text/plain; version=0.0.4"

#: Paths served without the bearer token: liveness probes and Prometheus scrapes.
OPEN_PATHS: Final = frozenset({"/health", "/metrics"})

_Handler = Callable[[aioweb.Request], Awaitable[aioweb.StreamResponse]]


def token_matches(token: str, header: str | None) -> bool:
    """`header` is `Bearer <token>` (scheme case-insensitive), compared in constant time."""
    scheme, _, given = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Bytes: compare_digest refuses non-ASCII str, and a header may hold anything.
    return hmac.compare_digest(given.strip().encode("utf-8", "replace"), token.encode("utf-8"))


def authorized(runtime: Runtime, request: Any) -> bool:
    token = runtime.settings.web_token.value
    if not token:
        return True
    return token_matches(token, request.headers.get("Authorization"))


def is_open_path(path: str) -> bool:
    return (path.rstrip("/") or "/") in OPEN_PATHS


def unauthorized_body() -> bytes:
    return orjson.dumps({"error": "missing or wrong bearer token"})


def token_middleware(runtime: Runtime) -> Any:
    """An aiohttp middleware that refuses (401) any request but `/health` and `/metrics` without
    the configured bearer token."""

    @aioweb.middleware
    async def require_token(request: aioweb.Request, handler: _Handler) -> aioweb.StreamResponse:
        if is_open_path(request.path) or authorized(runtime, request):
            return await handler(request)
        return aioweb.Response(
            status=401,
            body=unauthorized_body(),
            content_type="application/json",
            headers={"WWW-Authenticate": 'Bearer realm="tierstream"'},
        )

    return require_token


def install_token_middleware(runtime: Runtime) -> bool:
    """Put the token check in front of the whole web server. False (and a warning) if the web
    driver is not the aiohttp one; the views below check the token themselves anyway."""
    web_app = getattr(runtime.app.web, "web_app", None)
    if not isinstance(web_app, aioweb.Application):
        log.warning("web driver is not aiohttp: only tierstream's own views check the token")
        return False
    web_app.middlewares.append(token_middleware(runtime))
    return True


def register_views(runtime: Runtime) -> None:
    app = runtime.app
    if runtime.settings.web_token:
        install_token_middleware(runtime)

    class Guarded(View):
        async def refuse(self, request: Request) -> Response | None:
            if authorized(runtime, request):
                return None
            return self.json(
                {"error": "missing or wrong bearer token"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="tierstream"'},
            )

    @app.page("/customers/{customer_id}")
    class CustomerView(Guarded):
        async def get(self, request: Request, customer_id: str) -> Response:
            refused = await self.refuse(request)
            if refused is not None:
                return refused
            try:
                profile = await readmodel.read_profile(runtime.redis, customer_id)
            except (RedisError, OSError):
                return self.json({"error": "read model (Redis) unavailable"}, status=503)
            if profile is None:
                return self.json({"error": "unknown customer"}, status=404)
            return self.json(profile)

    @app.page("/tiers")
    class TiersView(Guarded):
        async def get(self, request: Request) -> Response:
            refused = await self.refuse(request)
            if refused is not None:
                return refused
            try:
                counts = await readmodel.read_counts(runtime.redis, runtime.rules.tier_names)
            except (RedisError, OSError):
                return self.json({"error": "read model (Redis) unavailable"}, status=503)
            body: dict[str, Any] = {**counts, "rules_version": runtime.rules.version}
            return self.json(body)

    @app.page("/health")
    class HealthView(View):
        async def get(self, request: Request) -> Response:
            redis_ok = True
            try:
                await runtime.redis.ping()
            except (RedisError, OSError):
                redis_ok = False
            # Redis down degrades lookups only; the worker itself keeps processing.
            return self.json(
                {
                    "status": "ok",
                    "redis": "ok" if redis_ok else "unavailable",
                    "rules_version": runtime.rules.version,
                }
            )

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(
                generate_latest(runtime.metrics.registry), content_type=PROMETHEUS_TEXT
            )
