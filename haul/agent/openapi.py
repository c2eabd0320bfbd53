"""The OpenAPI 3.1 document of an agent, built from the route table the app registers.

Request and response schemas come from the pydantic models the handlers are
declared with (validation schemas for request bodies, serialisation schemas
for answers), collected under ``components/schemas``. Each operation says who
may call it (``x-haul-callers``, from :mod:`haul.agent.roles`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from haul.agent.roles import access_of, described
from haul.agent.routing import Route
from haul.agent.wire import JSON, ErrorBody

REF_TEMPLATE = "#/components/schemas/{model}"
SECURITY_SCHEMES = {
    "bearerToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "the operator token ([agent.auth]), or a peer's inbound_token "
        "([agent.peers.NAME]); over TLS, the unix socket or loopback only",
    },
    "clientCertificate": {
        "type": "mutualTLS",
        "description": "a certificate signed by the agent's CA whose name is an operator's "
        "([agent.auth] operators) or a peer's ([agent.peers.NAME]), not revoked",
    },
}

#: (model, mode) -> the schema (a $ref into components/schemas)
Schemas = dict[tuple[type[Any], JsonSchemaMode], dict[str, Any]]


def _model_uses(routes: Sequence[Route]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    uses: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorBody, "serialization")]
    for route in routes:
        if route.body is not None:
            uses.append((route.body, "validation"))
        uses += [(r.model, "serialization") for r in route.responses if r.model is not None]
    return list(dict.fromkeys(uses))


def _operation(route: Route, schemas: Schemas) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": route.name, "summary": route.summary}
    if route.tag:
        op["tags"] = [route.tag]
    params = route.path_params()
    if params:
        op["parameters"] = [
            {
                "name": p,
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
                **({"description": route.params[p]} if p in route.params else {}),
            }
            for p in params
        ]
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": schemas[(route.body, "validation")]}},
        }
    responses: dict[str, Any] = {}
    for r in route.responses:
        schema = schemas[(r.model, "serialization")] if r.model is not None else {"type": "string"}
        responses[str(r.status)] = {
            "description": r.description,
            "content": {r.media_type: {"schema": schema}},
        }
    if route.auth:
        # who may call it (haul/agent/roles.py); anyone else known to the agent gets 403
        op["x-haul-callers"] = described(access_of(route.key))
        responses.setdefault(
            "403",
            {
                "description": "the caller's role may not call it (docs/security.md)",
                "content": {JSON: {"schema": schemas[(ErrorBody, "serialization")]}},
            },
        )
    op["responses"] = responses
    if not route.auth:
        op["security"] = []
    return op


def build_openapi(
    routes: Sequence[Route], *, title: str, version: str, description: str = ""
) -> dict[str, Any]:
    """The OpenAPI document that describes exactly ``routes``."""
    keymap, defs = models_json_schema(_model_uses(routes), ref_template=REF_TEMPLATE)
    schemas: Schemas = dict(keymap.items())
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, schemas)
    info: dict[str, Any] = {"title": title, "version": version}
    if description:
        info["description"] = description
    return {
        "openapi": "3.1.0",
        "info": info,
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": SECURITY_SCHEMES,
        },
        "security": [{"bearerToken": []}, {"clientCertificate": []}],
    }
