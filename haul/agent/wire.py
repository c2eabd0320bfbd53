"""What goes over the agent's HTTP wire besides the bodies: errors and their codes.

Every error a caller sees is ``{"error": {"code": "...", "message": "one line"}}``
with a status that fits. Handlers raise :class:`ApiError` (or one of its
kinds) for what the caller got wrong; any other :class:`HaulError` maps by its
family (:func:`http_status_of`). The client turns the code back into
:class:`haul.errors.PeerError`.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web
from pydantic import BaseModel

from haul.errors import (
    ChecksumMismatch,
    ConfigError,
    CriuError,
    HaulError,
    NoRoom,
    OverBudget,
    PeerError,
    StateError,
    TooMany,
    TransportError,
    UsageError,
    WorkloadError,
)

JSON = "application/json"


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class ApiError(HaulError):
    """An error with an HTTP status and a wire code chosen by the raiser."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code


class BadRequest(ApiError):
    status = 400
    code = "bad_request"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class Unavailable(ApiError):
    status = 503
    code = "unavailable"


#: HaulError families, most specific first: (family, status, code)
_FAMILIES: tuple[tuple[type[HaulError], int, str], ...] = (
    (TooMany, 429, "too_many"),
    (OverBudget, 413, "over_budget"),
    (NoRoom, 507, "no_room"),
    (UsageError, 400, "usage"),
    (StateError, 409, "wrong_state"),
    (ConfigError, 500, "config"),
    (CriuError, 500, "criu"),
    (WorkloadError, 500, "workload"),
    (ChecksumMismatch, 502, "checksum"),
    (TransportError, 502, "transport"),
    (PeerError, 502, "peer"),
)


def http_status_of(exc: HaulError) -> tuple[int, str]:
    """The HTTP status and wire code for an error a handler raised."""
    if isinstance(exc, ApiError):
        return exc.status, exc.code
    for family, status, code in _FAMILIES:
        if isinstance(exc, family):
            return status, code
    return 500, "failed"


def one_line(text: str) -> str:
    return " ".join(text.split())


def error_response(
    status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    body = ErrorBody(error=ErrorDetail(code=code, message=one_line(message)))
    return web.Response(
        status=status, text=body.model_dump_json(), content_type=JSON, headers=headers
    )


def model_response(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(status=status, text=model.model_dump_json(), content_type=JSON)
