"""The route table: one place that both registers the agent's routes and documents them.

Each area of the API (health, workloads, later migrations) is a module with
a :class:`RouteTable`; its handlers are registered with decorators that name
the request and response models::

    table = RouteTable("workloads")

    @table.json_body("POST", "/v1/workloads", body=WorkloadSpec, response=WorkloadView,
                     status=201, name="startWorkload", summary="Start a workload",
                     errors={409: "the name is taken"})
    async def start(request: web.Request, spec: WorkloadSpec) -> WorkloadView: ...

The decorator wraps the handler: it parses and validates the body into the
model (400 with one line otherwise), serialises the returned model, and
records a :class:`Route`. :func:`haul.agent.app.make_app` registers exactly
these routes, and :mod:`haul.agent.openapi` documents exactly these routes,
so the document cannot drift from what is served.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from haul.agent.wire import JSON, BadRequest, ErrorBody, model_response, one_line

B = TypeVar("B", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Reply(Generic[R]):
    """A handler's answer with a status other than its route's default one."""

    model: R
    status: int


@dataclass(frozen=True, slots=True)
class Response:
    """One documented response of a route."""

    status: int
    description: str
    model: type[BaseModel] | None = None
    media_type: str = JSON


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    #: the operationId in the OpenAPI document
    name: str
    summary: str
    #: what aiohttp calls: body parsing and serialisation included
    handler: Handler
    responses: tuple[Response, ...]
    body: type[BaseModel] | None = None
    auth: bool = True
    tag: str = ""
    #: path parameter name -> description
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return self.method, self.path

    def path_params(self) -> list[str]:
        return _PARAM_RE.findall(self.path)


class RouteTable:
    """The routes of one area of the API, in the order they were declared."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self._routes: list[Route] = []

    @property
    def routes(self) -> tuple[Route, ...]:
        return tuple(self._routes)

    def add(self, route: Route) -> None:
        if route.method not in METHODS:
            raise ValueError(f"route {route.path}: unknown method {route.method}")
        if any(r.key == route.key for r in self._routes):
            raise ValueError(f"route {route.method} {route.path} declared twice")
        self._routes.append(route)

    def _responses(
        self,
        path: str,
        *,
        status: int,
        response: type[BaseModel],
        also: Mapping[int, str],
        errors: Mapping[int, str],
        has_body: bool,
        auth: bool,
        summary: str,
    ) -> tuple[Response, ...]:
        out = [Response(status, summary, response)]
        out += [Response(s, d, response) for s, d in also.items()]
        implied: dict[int, str] = {}
        if has_body or _PARAM_RE.search(path):
            implied[400] = "malformed or invalid request"
        if auth:
            implied[401] = "no valid credentials"
        implied.update(errors)
        out += [Response(s, d, ErrorBody) for s, d in sorted(implied.items())]
        return tuple(out)

    def json(
        self,
        method: str,
        path: str,
        *,
        name: str,
        summary: str,
        response: type[R],
        status: int = 200,
        also: Mapping[int, str] | None = None,
        errors: Mapping[int, str] | None = None,
        params: Mapping[str, str] | None = None,
        auth: bool = True,
    ) -> Callable[
        [Callable[[web.Request], Awaitable[R | Reply[R]]]],
        Callable[[web.Request], Awaitable[R | Reply[R]]],
    ]:
        """Register a handler with no request body that answers with ``response``."""

        def register(
            fn: Callable[[web.Request], Awaitable[R | Reply[R]]],
        ) -> Callable[[web.Request], Awaitable[R | Reply[R]]]:
            async def handler(request: web.Request) -> web.StreamResponse:
                return _serialise(await fn(request), status)

            self.add(
                Route(
                    method=method,
                    path=path,
                    name=name,
                    summary=summary,
                    handler=handler,
                    responses=self._responses(
                        path,
                        status=status,
                        response=response,
                        also=also or {},
                        errors=errors or {},
                        has_body=False,
                        auth=auth,
                        summary=summary,
                    ),
                    auth=auth,
                    tag=self.tag,
                    params=dict(params or {}),
                )
            )
            return fn

        return register

    def json_body(
        self,
        method: str,
        path: str,
        *,
        body: type[B],
        name: str,
        summary: str,
        response: type[R],
        status: int = 200,
        also: Mapping[int, str] | None = None,
        errors: Mapping[int, str] | None = None,
        params: Mapping[str, str] | None = None,
        auth: bool = True,
    ) -> Callable[
        [Callable[[web.Request, B], Awaitable[R | Reply[R]]]],
        Callable[[web.Request, B], Awaitable[R | Reply[R]]],
    ]:
        """Register a handler that takes a JSON body validated into ``body``."""

        def register(
            fn: Callable[[web.Request, B], Awaitable[R | Reply[R]]],
        ) -> Callable[[web.Request, B], Awaitable[R | Reply[R]]]:
            async def handler(request: web.Request) -> web.StreamResponse:
                parsed = await read_body(request, body)
                return _serialise(await fn(request, parsed), status)

            self.add(
                Route(
                    method=method,
                    path=path,
                    name=name,
                    summary=summary,
                    handler=handler,
                    responses=self._responses(
                        path,
                        status=status,
                        response=response,
                        also=also or {},
                        errors=errors or {},
                        has_body=True,
                        auth=auth,
                        summary=summary,
                    ),
                    body=body,
                    auth=auth,
                    tag=self.tag,
                    params=dict(params or {}),
                )
            )
            return fn

        return register

    def raw(
        self,
        method: str,
        path: str,
        *,
        name: str,
        summary: str,
        media_type: str,
        auth: bool = True,
    ) -> Callable[[Handler], Handler]:
        """Register a handler that builds its own response (not JSON, e.g. metrics text)."""

        def register(fn: Handler) -> Handler:
            responses = [Response(200, summary, None, media_type)]
            if auth:
                responses.append(Response(401, "no valid credentials", ErrorBody))
            self.add(
                Route(
                    method=method,
                    path=path,
                    name=name,
                    summary=summary,
                    handler=fn,
                    responses=tuple(responses),
                    auth=auth,
                    tag=self.tag,
                )
            )
            return fn

        return register


def _serialise(result: BaseModel | Reply[R], status: int) -> web.Response:
    if isinstance(result, Reply):
        return model_response(result.model, result.status)
    return model_response(result, status)


async def read_body(request: web.Request, model: type[B]) -> B:
    """The request's JSON body validated into ``model``; BadRequest with one line otherwise.

    The Content-Type is not insisted on (``curl -d`` sends a form type): the body
    must parse as JSON, whatever it is labelled.
    """
    raw = await request.read()
    if not raw.strip():
        raise BadRequest("the body is empty; send a JSON object", code="malformed_json")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not JSON: {exc}", code="malformed_json") from None
    except ValueError:  # Python parses no integer of more digits than sys.get_int_max_str_digits()
        raise BadRequest(
            f"the body holds a number of more than {sys.get_int_max_str_digits()} digits",
            code="malformed_json",
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(f"invalid body: {describe_validation(exc)}", code="invalid_body") from None


def describe_validation(exc: ValidationError, limit: int = 3) -> str:
    """Pydantic's errors as one line: ``name: String should match ...; argv: Field required``."""
    parts = []
    errors = exc.errors(include_url=False)
    for error in errors[:limit]:
        loc = ".".join(str(p) for p in error["loc"]) or "body"
        msg = one_line(str(error["msg"])).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more")
    return "; ".join(parts)


#: the routes an app registered, in order: what the OpenAPI document describes
ROUTES: web.AppKey[tuple[Route, ...]] = web.AppKey("haul.agent.routes")
