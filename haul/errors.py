"""One root, HaulError, and the few families a user or a caller can act on.

Every error renders as one line that says what failed, where, and (when known)
where the workload is now. Third-party exceptions are mapped to these at the
edge of the module that calls the third party.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar


class HaulError(Exception):
    """Root of every error haul raises on purpose."""

    #: where the workload is after this error, when the raiser knows it
    workload_state: str | None = None

    def __init__(self, message: str, *, workload_state: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if workload_state is not None:
            self.workload_state = workload_state

    def one_line(self) -> str:
        text = " ".join(self.message.split())
        if self.workload_state:
            text = f"{text}; workload: {self.workload_state}"
        return text

    def __str__(self) -> str:
        return self.one_line()


class ConfigError(HaulError):
    """Bad configuration, flags, inventory or install record."""


class UsageError(HaulError):
    """The caller asked for something that cannot be meant (bad name, bad path)."""


class StateError(HaulError):
    """Asked at the wrong time: what is there now does not take that request (an
    incoming migration whose copy is restored takes no more files)."""


class LabError(HaulError):
    """Creating or removing lab hosts (namespaces, links, addresses) failed."""


class WorkloadError(HaulError):
    """Starting, finding, stopping or resuming a workload failed."""


class ContainerError(WorkloadError):
    """runc refused or failed (run, checkpoint, restore, kill, ...); the line is runc's."""


class NoSuchContainer(ContainerError):
    """runc knows no container of that ID under its root."""


class ImageError(ContainerError):
    """An OCI image layout cannot be read, resolved or unpacked."""


class TransportError(HaulError):
    """Moving images or pages between hosts failed."""


class LimitError(HaulError):
    """One of the agent's limits refuses the request ([agent.limits], docs/limits.md)."""


class TooMany(LimitError):
    """As many incoming migrations, or migrations, as the agent takes at once run already."""


class OverBudget(LimitError):
    """An incoming migration was sent more than its byte budget (what its pre-flight
    claimed, with a margin)."""


class NoRoom(LimitError):
    """What arrives would leave the disk less free space than the journal's reserve."""


class ChecksumMismatch(TransportError):
    """A copied file's content does not match what the sender hashed."""


class CriuError(HaulError):
    """CRIU refused or failed a request.

    Carries CRIU's errno (``cr_errno`` in its RPC response, 0 when it gave none),
    its own message, and the last lines of its log file.
    """

    def __init__(
        self,
        message: str,
        *,
        request: str,
        errno: int = 0,
        criu_message: str = "",
        log_path: str | None = None,
        log_tail: tuple[str, ...] = (),
        workload_state: str | None = None,
    ) -> None:
        super().__init__(message, workload_state=workload_state)
        self.request = request
        self.errno = errno
        self.criu_message = criu_message
        self.log_path = log_path
        self.log_tail = log_tail

    def one_line(self) -> str:
        parts = [f"CRIU {self.request}: {' '.join(self.message.split())}"]
        if self.errno:
            parts.append(f"errno {self.errno}")
        if self.criu_message:
            parts.append(self.criu_message)
        err = _first_error_line(self.log_tail)
        if err:
            parts.append(f"log: {err}")
        if self.log_path:
            parts.append(f"(full log {self.log_path})")
        text = " ".join("; ".join(parts).split())
        if self.workload_state:
            text = f"{text}; workload: {self.workload_state}"
        return text


class CriuProtocolError(CriuError):
    """CRIU's RPC conversation broke (process died, bad message, wrong type)."""


class PeerError(HaulError):
    """Another agent answered with an error: ``code`` is its wire code.

    Each code an agent sends has a subclass below (its ``codes``), so a caller
    acts on an ``except`` clause, never on the text; :func:`peer_error` picks the
    class. The wire side is haul/agent/wire.py and the routes' ``code=...``.
    """

    #: the wire codes this class stands for; the first is its default ``code``
    codes: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, message: str, *, code: str | None = None, workload_state: str | None = None
    ) -> None:
        super().__init__(message, workload_state=workload_state)
        self.code = code if code is not None else (self.codes[0] if self.codes else "unknown")


# -- what the caller may change: the agent refused the request as it was asked


class PeerUnauthorized(PeerError):
    """No valid credentials: token, client certificate, or root on the unix socket."""

    codes = ("unauthorized",)


class PeerForbidden(PeerError):
    """Valid credentials, but not for this: a peer agent asking for what only an
    operator may, or for a migration it did not open (docs/security.md)."""

    codes = ("forbidden",)


class PeerBadRequest(PeerError):
    """The request is malformed or asks for what cannot be meant (400 and the like)."""

    codes = ("bad_request",)


class MalformedBody(PeerBadRequest):
    codes = ("malformed_json",)


class InvalidBody(PeerBadRequest):
    codes = ("invalid_body",)


class PeerUsageError(PeerBadRequest):
    """The agent's own UsageError (a bad id, name or path; an incoming migration that
    is not there)."""

    codes = ("usage",)


class BadWorkloadName(PeerBadRequest):
    codes = ("bad_name",)


class BadNetSpec(PeerBadRequest):
    codes = ("bad_net",)


class NoBridge(PeerBadRequest):
    codes = ("no_bridge",)


class NoDataDir(PeerBadRequest):
    codes = ("no_data_dir",)


class NotATree(PeerBadRequest):
    codes = ("not_a_tree",)


class NotDumpable(PeerBadRequest):
    """A container that runc and CRIU could not checkpoint there (the reasons follow)."""

    codes = ("not_dumpable",)


class NoChecksum(PeerBadRequest):
    codes = ("no_sha256",)


class BadFileOwner(PeerBadRequest):
    """A workload file's owner (X-Haul-Owner) that is not UID:GID."""

    codes = ("bad_owner",)


class BadFileMode(PeerBadRequest):
    codes = ("bad_mode",)


class MethodNotAllowed(PeerBadRequest):
    codes = ("method_not_allowed",)


class BodyTooLarge(PeerBadRequest):
    codes = ("too_large",)


class PeerNotFound(PeerError):
    """No such thing on that agent (an unknown route too)."""

    codes = ("not_found",)


class NoSuchWorkload(PeerNotFound):
    codes = ("no_workload",)


class NoSuchProcess(PeerNotFound):
    codes = ("no_process",)


class UnknownContainer(PeerNotFound):
    """runc knows no container of that ID under that root on that host."""

    codes = ("no_container",)


class NoSuchMigration(PeerNotFound):
    """That agent runs and ran no migration with this id."""

    codes = ("no_migration",)


class PeerConflict(PeerError):
    """The request conflicts with what is there now."""

    codes = ("conflict",)


class WorkloadExists(PeerConflict):
    codes = ("workload_exists",)


class AddressTaken(PeerConflict):
    codes = ("address_taken",)


class WorkloadBusy(PeerConflict):
    codes = ("workload_busy",)


class MigrationEnded(PeerConflict):
    codes = ("migration_ended",)


class PastCommit(PeerConflict):
    """The migration is past its commit point: it can only finish."""

    codes = ("past_commit",)


class PeerWrongState(PeerConflict):
    """The agent's own StateError: not now (e.g. files for a copy already restored)."""

    codes = ("wrong_state",)


class PeerUnavailable(PeerError):
    """The agent cannot serve this now (e.g. it is not ready)."""

    codes = ("unavailable",)


class PeerBusy(PeerUnavailable):
    """The agent takes no more migrations (incoming, or its own) at once now."""

    codes = ("too_many",)


class PeerOverBudget(PeerBadRequest):
    """More was sent for an incoming migration than its budget allows."""

    codes = ("over_budget",)


class PeerNoRoom(PeerError):
    """The agent's disk has no room for it beyond the reserve kept for its journal."""

    codes = ("no_room",)


# -- what failed on the agent's side, by the family of its own error


class PeerFailed(PeerError):
    """The agent tried and failed."""

    codes = ("failed",)


class PeerInternalError(PeerFailed):
    """A bug in the agent (its log says more)."""

    codes = ("internal",)


class PeerConfigError(PeerFailed):
    codes = ("config",)


class PeerCriuError(PeerFailed):
    codes = ("criu",)


class PeerWorkloadError(PeerFailed):
    codes = ("workload",)


class PeerTransportError(PeerFailed):
    codes = ("transport",)


class PeerChecksumMismatch(PeerTransportError):
    """What arrived does not match the SHA-256 it came with (the sender may send again)."""

    codes = ("checksum",)


class PeerUpstreamError(PeerFailed):
    """The agent's own call to a third agent failed."""

    codes = ("peer",)


def _peer_classes(cls: type[PeerError]) -> list[type[PeerError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found += _peer_classes(sub)
    return found


#: wire code -> the class that stands for it (each code once)
PEER_ERRORS: Mapping[str, type[PeerError]] = MappingProxyType(
    {code: cls for cls in _peer_classes(PeerError) for code in cls.codes}
)
#: an answer with no known code: the class its HTTP status stands for
_BY_STATUS: Mapping[int, type[PeerError]] = MappingProxyType(
    {
        400: PeerBadRequest,
        401: PeerUnauthorized,
        403: PeerForbidden,
        404: PeerNotFound,
        405: MethodNotAllowed,
        409: PeerConflict,
        413: BodyTooLarge,
        429: PeerBusy,
        503: PeerUnavailable,
        507: PeerNoRoom,
    }
)


def peer_error(code: str, message: str, *, status: int | None = None) -> PeerError:
    """The error for an agent's answer with wire ``code``: its class, or for a code no
    class stands for the one its HTTP ``status`` does (a 5xx: PeerFailed), else PeerError."""
    cls = PEER_ERRORS.get(code)
    if cls is None and status is not None:
        cls = _BY_STATUS.get(status, PeerFailed if status >= 500 else PeerError)
    return (cls or PeerError)(message, code=code)


class IllegalTransition(HaulError):
    """The migration state machine was asked to do something its table forbids."""


#: CRIU log errors that every run logs on these machines and that say nothing about the
#: failure (root lacks CAP_SYS_RESOURCE on these machines: docs/environment.md)
HARMLESS_CRIU_ERRORS = ("rlimit: Can't setup RLIMIT_NOFILE",)


def _first_error_line(lines: tuple[str, ...]) -> str:
    """The most telling line of a CRIU log tail: the first 'Error' line that is not one
    every run logs, else the last line."""
    for line in lines:
        if any(harmless in line for harmless in HARMLESS_CRIU_ERRORS):
            continue
        if "Error" in line or "error" in line.split(":", 1)[0]:
            return line.strip()
    return lines[-1].strip() if lines else ""
