"""HTTP views on the worker's Faust web server: lookups are served from Redis, never Kafka."""

from __future__ import annotations

import hmac
from typing import Any

from faust.web import Request, Response, View
from prometheus_client import generate_latest
from redis.exceptions import RedisError

from streams import readmodel
from streams.app import Runtime

# aiohttp takes the charset separately, so prometheus_client's CONTENT_TYPE_LATEST cannot be used.
PROMETHEUS_TEXT = "text/plain; version=0.0.4"


def authorized(runtime: Runtime, request: Request) -> bool:
    token = runtime.settings.web_token.value
    if not token:
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


def register_views(runtime: Runtime) -> None:
    app = runtime.app

    class Guarded(View):
        async def refuse(self, request: Request) -> Response | None:
            if authorized(runtime, request):
                return None
            return self.json(
                {"error": "missing or wrong bearer token"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
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
