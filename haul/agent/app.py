"""The agent's aiohttp application, built from an AgentContext and route tables.

``make_app(ctx)`` registers every route of :data:`TABLES` (one table per area
of the API; a new area is a new module in ``haul/agent/routes/`` whose table
is added here) and wraps them, outermost first, in:

1. metrics: counts every answer by method, route template and status;
2. errors: every failure becomes ``{"error": {"code", "message"}}`` (unknown
   route 404, wrong method 405, a HaulError by its family, a bug 500);
3. auth: see :mod:`haul.agent.auth`; a refused request stops here (401: no
   caller it knows; 403: a caller whose role may not call the route, as
   :mod:`haul.agent.roles` says).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from haul.agent.auth import AuthPolicy, Credentials, auth_middleware, route_key
from haul.agent.context import CONTEXT, AgentContext
from haul.agent.metrics import AgentMetrics
from haul.agent.routes import health, incoming, migrations, workloads
from haul.agent.routing import METHODS, ROUTES, Route, RouteTable
from haul.agent.wire import error_response, http_status_of, one_line
from haul.errors import HaulError

log = logging.getLogger(__name__)

#: every area of the API, in the order the OpenAPI document lists them
TABLES: tuple[RouteTable, ...] = (health.table, workloads.table, migrations.table, incoming.table)
#: the largest request body accepted (the 413 beyond is JSON too)
MAX_BODY_BYTES = 1 << 20


def metrics_middleware(metrics: AgentMetrics) -> Middleware:
    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        key = route_key(request)
        route = key[1] if key is not None else "unmatched"
        method = request.method if request.method in METHODS | {"HEAD", "OPTIONS"} else "other"
        started = time.monotonic()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        finally:
            metrics.requests.labels(method, route, str(status)).inc()
            metrics.request_seconds.labels(route).observe(time.monotonic() - started)

    return count


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    if isinstance(exc, web.HTTPNotFound):
        return error_response(404, "not_found", f"no route {request.method} {request.path}")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return error_response(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed on {request.path} (allowed: {allowed})",
            headers={"Allow": allowed},
        )
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return error_response(413, "too_large", f"the body is larger than {MAX_BODY_BYTES} bytes")
    code = one_line(exc.reason).lower().replace(" ", "_") or "http_error"
    return error_response(exc.status, code, exc.text or exc.reason)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HaulError as exc:
        status, code = http_status_of(exc)
        if status >= 500:
            log.error("%s %s failed: %s", request.method, request.path, exc.one_line())
        return error_response(status, code, exc.one_line())
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_error(request, exc)
    except Exception as exc:  # the edge of the server: a bug still answers in JSON, and is logged
        log.exception("%s %s: unexpected error", request.method, request.path)
        return error_response(
            500, "internal", f"internal error ({type(exc).__name__}); see the agent's log"
        )


def _collect(tables: Sequence[RouteTable]) -> tuple[Route, ...]:
    routes: list[Route] = []
    seen: set[tuple[str, str]] = set()
    for table in tables:
        for route in table.routes:
            if route.key in seen:
                raise ValueError(f"route {route.method} {route.path} is in two tables")
            seen.add(route.key)
            routes.append(route)
    return tuple(routes)


async def _open(app: web.Application) -> None:
    await app[CONTEXT].open()


async def _close(app: web.Application) -> None:
    await app[CONTEXT].aclose()


def make_app(ctx: AgentContext, *, tables: Sequence[RouteTable] = TABLES) -> web.Application:
    """The agent's application over ``ctx``; ``tables`` are the areas of the API it serves."""
    routes = _collect(tables)
    policy = AuthPolicy(
        token=ctx.config.auth.bearer_token(),
        public=frozenset(r.key for r in routes if not r.auth),
        credentials=Credentials.of(ctx.config),
        bindings=ctx.bindings,
        opener=ctx.incoming_opener,
    )
    app = web.Application(
        middlewares=[metrics_middleware(ctx.metrics), errors_middleware, auth_middleware(policy)],
        client_max_size=MAX_BODY_BYTES,
    )
    app[CONTEXT] = ctx
    app[ROUTES] = routes
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)
    app.on_startup.append(_open)
    app.on_cleanup.append(_close)
    return app
