"""GET /shadow: what the shadow rules (TIERSTREAM_SHADOW_RULES) would change, for the customers
of this worker's partitions; nothing is published."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
from faust.web import Request, Response, View

from segmentation.shadow import shadow_diff
from segmentation.state import CustomerState
from streams.app import Runtime
from streams.web import authorized


def local_states(runtime: Runtime) -> Iterator[CustomerState]:
    for key, raw in list(runtime.customers.items()):
        if raw is None or key.startswith(b"\x00"):
            continue
        yield CustomerState.from_dict(orjson.loads(raw))


def register_shadow_view(runtime: Runtime) -> None:
    @runtime.app.page("/shadow")
    class ShadowView(View):
        async def get(self, request: Request) -> Response:
            if not authorized(runtime, request):
                return self.json({"error": "missing or wrong bearer token"}, status=401)
            if runtime.shadow_rules is None:
                return self.json(
                    {"error": "no shadow rules: set TIERSTREAM_SHADOW_RULES to a rules file"},
                    status=404,
                )
            report = shadow_diff(
                local_states(runtime), runtime.rules, runtime.shadow_rules, runtime.params
            )
            return self.json(report)
